/* Address-space reservation, aligned mappings and purging. */
#define _GNU_SOURCE /* mremap */
#include "kmem.h"

#include <pthread.h>
#include <sys/mman.h>
#include <unistd.h>

#define RESERVE_CHUNK ((size_t)64 << 20) /* 32 regions per reservation */
/* A huge page makes a region's first touch commit 2 MiB: only worth it once
 * the heap is past a few regions, so small programs keep a small footprint. */
#define THP_AFTER_REGIONS 4

static kmem_config_t config;
static pthread_mutex_t reserve_lock = PTHREAD_MUTEX_INITIALIZER;
static uintptr_t chunk_next, chunk_end; /* the rest of the current reservation */
static size_t regions_carved;

void kmem_init(const kmem_config_t *cfg) { config = *cfg; }

size_t kmem_os_page_size(void) { return 4096; }

static void *map_anon(size_t len) {
  void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                 -1, 0);
  return p == MAP_FAILED ? NULL : p;
}

/* Over-maps by one alignment unit and trims both ends, so the kept part is
 * aligned; only the trimmed slack is ever mapped twice over, never the whole. */
void *kmem_map_aligned(size_t len, size_t align) {
  if (len + align < len) return NULL;
  char *raw = map_anon(len + align);
  if (!raw) return NULL;
  uintptr_t start = ((uintptr_t)raw + align - 1) & ~(uintptr_t)(align - 1);
  size_t head = start - (uintptr_t)raw;
  size_t tail = align - head;
  if (head) munmap(raw, head);
  if (tail) munmap((char *)start + len, tail);
  return (void *)start;
}

void kmem_unmap(void *p, size_t len) { munmap(p, len); }

bool kmem_resize_inplace(void *p, size_t old_len, size_t new_len) {
  return mremap(p, old_len, new_len, 0) != MAP_FAILED;
}

void *kmem_move(void *p, size_t old_len, size_t new_len, size_t align) {
  void *dst = kmem_map_aligned(new_len, align); /* reserves an aligned place */
  if (!dst) return NULL;
  if (mremap(p, old_len, new_len, MREMAP_MAYMOVE | MREMAP_FIXED, dst) == MAP_FAILED) {
    munmap(dst, new_len);
    return NULL;
  }
  return dst;
}

void *kmem_reserve_sparse(size_t len) { return map_anon(len); }

static bool reserve_chunk(size_t len) {
  char *p = kmem_map_aligned(len, KMEM_REGION_SIZE);
  if (!p) return false;
  chunk_next = (uintptr_t)p;
  chunk_end = (uintptr_t)p + len;
  return true;
}

void *kmem_region_alloc(void) {
  pthread_mutex_lock(&reserve_lock);
  void *r = NULL;
  /* Large chunks keep VMAs few; when address space is short (ulimit -v),
   * fall back to a single region. */
  if (chunk_next < chunk_end || reserve_chunk(RESERVE_CHUNK) ||
      reserve_chunk(KMEM_REGION_SIZE)) {
    r = (void *)chunk_next;
    chunk_next += KMEM_REGION_SIZE;
    if (config.thp && ++regions_carved > THP_AFTER_REGIONS) madvise(r, KMEM_REGION_SIZE, MADV_HUGEPAGE);
  }
  pthread_mutex_unlock(&reserve_lock);
  return r;
}

bool kmem_purge(void *p, size_t len) { return madvise(p, len, MADV_DONTNEED) == 0; }

static pthread_mutex_t meta_lock = PTHREAD_MUTEX_INITIALIZER;

/* Metadata comes in 64 KiB chunks, bump-allocated, cache-line aligned. */
void *kmem_meta_alloc(size_t size) {
  static char *next, *end;
  size = (size + 63) & ~(size_t)63;
  pthread_mutex_lock(&meta_lock);
  if ((size_t)(end - next) < size) {
    size_t len = size > 65536 ? (size + 65535) & ~(size_t)65535 : 65536;
    char *p = map_anon(len);
    if (!p) {
      pthread_mutex_unlock(&meta_lock);
      return NULL;
    }
    next = p;
    end = p + len;
  }
  void *r = next;
  next += size;
  pthread_mutex_unlock(&meta_lock);
  return r;
}

void kmem_fork_prepare(void) {
  pthread_mutex_lock(&meta_lock);
  pthread_mutex_lock(&reserve_lock);
}

void kmem_fork_release(void) {
  pthread_mutex_unlock(&reserve_lock);
  pthread_mutex_unlock(&meta_lock);
}
