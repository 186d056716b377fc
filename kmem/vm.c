/* Address-space reservation, aligned mappings and purging. */
#define _GNU_SOURCE /* mremap */
#include "kmem_priv.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>

#include <pthread.h>
#include <sys/mman.h>
#include <unistd.h>

#define RESERVE_CHUNK ((size_t)64 << 20) /* 32 regions per reservation */
/* A huge page makes a region's first touch commit 2 MiB: only worth it once
 * the heap is past a few regions, so small programs keep a small footprint. */
#define THP_AFTER_REGIONS 16

kmem_config_t kmem_cfg;
kmem_counters_t kmem_counters;
static pthread_mutex_t reserve_lock = PTHREAD_MUTEX_INITIALIZER;
static uintptr_t chunk_next, chunk_end; /* the rest of the current reservation */
static size_t regions_carved;

void kmem_init(const kmem_config_t *cfg) {
  kmem_cfg = *cfg;
}

void kmem_stats_get(kmem_stats_t *out) {
  kmem_counters_t *c = &kmem_counters;
  *out = (kmem_stats_t){
      .purges = atomic_load_explicit(&c->purges, memory_order_relaxed),
      .purged_bytes = atomic_load_explicit(&c->purged_bytes, memory_order_relaxed),
      .purges_uring = atomic_load_explicit(&c->purges_uring, memory_order_relaxed),
      .purges_vector = atomic_load_explicit(&c->purges_vector, memory_order_relaxed),
      .uffd_faults = atomic_load_explicit(&c->uffd_faults, memory_order_relaxed),
      .hugetlb_bytes = atomic_load_explicit(&c->hugetlb_bytes, memory_order_relaxed),
      .thp_collapses = atomic_load_explicit(&c->thp_collapses, memory_order_relaxed),
  };
}

void kmem_say(const char *a, const char *b, const char *c) {
  char line[512];
  size_t n = 0;
  const char *parts[] = {"hakmem: ", a, b, c, "\n"};
  for (size_t i = 0; i < sizeof parts / sizeof *parts; i++)
    for (const char *s = parts[i]; *s && n < sizeof line; s++)
      line[n++] = *s;
  if (write(2, line, n) < 0) {
  }
}

void kmem_fallback(bool asked, const char *feature, const char *why) {
  if (asked || kmem_cfg.verbose) kmem_say(feature, " unavailable: ", why);
}

size_t kmem_os_page_size(void) {
  return 4096;
}

static void *map_anon(size_t len) {
  void *p =
      mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
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

void kmem_unmap(void *p, size_t len) {
  munmap(p, len);
}

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

static bool reserve_chunk(size_t len) {
  char *p = kmem_map_aligned(len, KMEM_REGION_SIZE);
  if (!p) return false;
  chunk_next = (uintptr_t)p;
  chunk_end = (uintptr_t)p + len;
  return true;
}

/* A region of hugetlbfs pages. Without MAP_NORESERVE the kernel reserves
 * the huge page at map time, so a later fault cannot SIGBUS; an empty pool
 * fails here instead, and the caller falls back to ordinary pages. */
static void *hugetlb_region(void) {
  static _Atomic bool warned;
  void *p = mmap(NULL, KMEM_REGION_SIZE, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB | (21 << MAP_HUGE_SHIFT), -1, 0);
  if (p == MAP_FAILED) {
    if (!atomic_exchange(&warned, true))
      kmem_say("HAKMEM_HUGETLB=1: no free 2 MiB hugetlbfs page (vm.nr_hugepages);",
               " using transparent huge pages instead", "");
    return NULL;
  }
  if ((uintptr_t)p & (KMEM_REGION_SIZE - 1)) { /* cannot happen for 2 MiB pages */
    munmap(p, KMEM_REGION_SIZE);
    return NULL;
  }
  kmem_count(&kmem_counters.hugetlb_bytes, KMEM_REGION_SIZE);
  return p;
}

void *kmem_region_alloc(int node, unsigned *flags) {
  void *r = kmem_cfg.hugetlb ? hugetlb_region() : NULL;
  *flags = r ? KMEM_REGION_HUGETLB : 0;
  if (!r) {
    pthread_mutex_lock(&reserve_lock);
    /* Large chunks keep VMAs few; when address space is short (ulimit -v),
     * fall back to a single region. */
    if (chunk_next < chunk_end || reserve_chunk(RESERVE_CHUNK) || reserve_chunk(KMEM_REGION_SIZE)) {
      r = (void *)chunk_next;
      chunk_next += KMEM_REGION_SIZE;
      /* explicit both ways: with THP "always" the kernel would decide */
      bool huge = (kmem_cfg.thp == KMEM_THP_ADVISE || kmem_cfg.hugetlb) &&
                  ++regions_carved > THP_AFTER_REGIONS;
      madvise(r, KMEM_REGION_SIZE, huge ? MADV_HUGEPAGE : MADV_NOHUGEPAGE);
      if (huge) *flags |= KMEM_REGION_THP;
    }
    pthread_mutex_unlock(&reserve_lock);
    if (r) kmem_uffd_register(r, KMEM_REGION_SIZE);
  }
  if (r) kmem_bind(r, KMEM_REGION_SIZE, node);
  return r;
}

void kmem_region_free_hugetlb(void *r) {
  munmap(r, KMEM_REGION_SIZE);
  atomic_fetch_sub_explicit(&kmem_counters.hugetlb_bytes, KMEM_REGION_SIZE, memory_order_relaxed);
}

#ifndef MADV_COLLAPSE
#define MADV_COLLAPSE 25
#endif

/* Resident 4 KiB pages of [p, p + len), len at most a region; 0 where
 * mincore refuses (not mapped). */
static size_t resident_pages(void *p, size_t len) {
  unsigned char vec[KMEM_REGION_SIZE / 4096];
  size_t pages = (len + 4095) / 4096, n = 0;
  if (pages > sizeof vec || mincore(p, len, vec) != 0) return 0;
  for (size_t i = 0; i < pages; i++)
    n += vec[i] & 1;
  return n;
}

unsigned kmem_region_resident_pages(void *r) {
  return (unsigned)resident_pages(r, KMEM_REGION_SIZE);
}

bool kmem_resident_all(void *p, size_t len) {
  return resident_pages(p, len) == (len + 4095) / 4096;
}

static _Atomic bool collapse_refused;

/* "never" in /sys/kernel/mm/transparent_hugepage/enabled: MADV_COLLAPSE
 * would still work (it ignores the sysfs settings), but the administrator
 * asked for no huge pages. Read once, at the first collapse. */
static bool thp_never(void) {
  char buf[128];
  int fd = open("/sys/kernel/mm/transparent_hugepage/enabled", O_RDONLY | O_CLOEXEC);
  if (fd < 0) return true; /* no THP in this kernel */
  ssize_t n = read(fd, buf, sizeof buf - 1);
  close(fd);
  if (n <= 0) return true;
  buf[n] = 0;
  return strstr(buf, "[never]") != NULL;
}

bool kmem_collapse_usable(void) {
  return !atomic_load_explicit(&collapse_refused, memory_order_relaxed);
}

int kmem_region_collapse(void *r) {
  static _Atomic int checked; /* 0 not yet, 1 THP allowed */
  if (!atomic_load_explicit(&checked, memory_order_relaxed)) {
    if (thp_never()) {
      if (!atomic_exchange(&collapse_refused, true))
        kmem_fallback(
            false, "HAKMEM_THP=collapse",
            "transparent huge pages are \"never\" on this machine; regions keep 4 KiB pages");
      return EPERM;
    }
    atomic_store_explicit(&checked, 1, memory_order_relaxed);
  }
  if (madvise(r, KMEM_REGION_SIZE, MADV_HUGEPAGE) != 0) return errno;
  int err = madvise(r, KMEM_REGION_SIZE, MADV_COLLAPSE) == 0 ? 0 : errno;
  madvise(r, KMEM_REGION_SIZE, MADV_NOHUGEPAGE);
  if (err == 0) {
    kmem_count(&kmem_counters.thp_collapses, 1);
  } else if ((err == EINVAL || err == EPERM) && !atomic_exchange(&collapse_refused, true)) {
    kmem_fallback(false, "HAKMEM_THP=collapse: MADV_COLLAPSE",
                  err == EINVAL
                      ? "refused (EINVAL: Linux before 6.1, or THP off); regions keep 4 KiB pages"
                      : "refused (EPERM); regions keep 4 KiB pages");
  }
  return err;
}

bool kmem_populate(void *p, size_t len) {
  return madvise(p, len, MADV_POPULATE_WRITE) == 0;
}

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
  kmem_purge_fork_prepare();
}

void kmem_fork_release(void) {
  kmem_purge_fork_release();
  pthread_mutex_unlock(&reserve_lock);
  pthread_mutex_unlock(&meta_lock);
}
