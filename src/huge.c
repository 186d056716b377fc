/* Huge blocks (beyond LARGE_MAX, or aligned beyond 64 KiB): each its own
 * mapping. Its header sits on the 2 MiB boundary just below the block, so
 * region_of() finds it exactly as for regions.
 *
 * Freed mappings are kept for HAKMEM_PURGE_DELAY_MS and reused by a later
 * request of about the same size: a program that frees and allocates big
 * buffers in a loop must not pay an mmap and a fault per page every time. */
#include "internal.h"

#include <errno.h>
#include <string.h>

#define CACHE_SLOTS 8
#define CACHE_MAX_BYTES ((size_t)32 << 20)

typedef struct cached_map {
  char *base;
  size_t len;
  uint64_t freed_ms;
  int node; /* its memory policy: reused only on the same node */
} cached_map_t;

static pthread_mutex_t cache_lock = PTHREAD_MUTEX_INITIALIZER;
static cached_map_t cache[CACHE_SLOTS];
static size_t cache_bytes;

static void unmap(char *base, size_t len) {
  hak_committed_add(-(int64_t)len);
  kmem_unmap(base, len);
}

/* Unmaps cached mappings freed more than the purge delay ago (all if force).
 * Called with cache_lock held; returns the bytes released. */
static size_t cache_expire(uint64_t now, bool force) {
  size_t released = 0;
  for (int i = 0; i < CACHE_SLOTS; i++) {
    cached_map_t *c = &cache[i];
    if (c->base && (force || now - c->freed_ms >= hak_opt.purge_delay_ms)) {
      unmap(c->base, c->len);
      cache_bytes -= c->len;
      released += c->len;
      c->base = NULL;
    }
  }
  return released;
}

/* A cached mapping of the node, at least len bytes and at most twice that. */
static char *cache_take(size_t len, int node, size_t *got) {
  pthread_mutex_lock(&cache_lock);
  cached_map_t *best = NULL;
  for (int i = 0; i < CACHE_SLOTS; i++) {
    cached_map_t *c = &cache[i];
    if (c->base && c->node == node && c->len >= len && c->len / 2 <= len &&
        (!best || c->len < best->len))
      best = c;
  }
  char *base = NULL;
  if (best) {
    base = best->base;
    *got = best->len;
    cache_bytes -= best->len;
    best->base = NULL;
  }
  cache_expire(hak_now_ms(), false);
  pthread_mutex_unlock(&cache_lock);
  return base;
}

static bool cache_put(char *base, size_t len, int node) {
  pthread_mutex_lock(&cache_lock);
  uint64_t now = hak_now_ms();
  cache_expire(now, false);
  bool kept = false;
  if (hak_opt.purge_delay_ms > 0 && cache_bytes + len <= CACHE_MAX_BYTES) {
    for (int i = 0; i < CACHE_SLOTS && !kept; i++) {
      if (!cache[i].base) {
        cache[i] = (cached_map_t){base, len, now, node};
        cache_bytes += len;
        kept = true;
      }
    }
  }
  pthread_mutex_unlock(&cache_lock);
  return kept;
}

void hak_huge_expire(void) {
  pthread_mutex_lock(&cache_lock);
  cache_expire(hak_now_ms(), false);
  pthread_mutex_unlock(&cache_lock);
}

size_t hak_huge_trim(void) {
  pthread_mutex_lock(&cache_lock);
  size_t released = cache_expire(0, true);
  pthread_mutex_unlock(&cache_lock);
  return released;
}

static void *huge_setup(char *base, size_t len, size_t off, int node) {
  char *block = base + off;
  hak_region_t *r = region_of(block);
  r->kind = REGION_HUGE;
  r->map_base = base;
  r->map_len = len;
  r->huge_usable = len - off;
  r->node = (uint16_t)node;
  atomic_store_explicit(&hak_region_map[(uintptr_t)r >> REGION_SHIFT], REGION_HUGE,
                        memory_order_release);
  return block;
}

void *hak_huge_alloc(size_t size, size_t align, bool *zero) {
  if (atomic_load_explicit(&hak_init_state, memory_order_acquire) != 2) hak_init();
  size_t off = align > PAGE_SIZE ? align : PAGE_SIZE; /* header page before the block */
  /* a real block for size 0 too: it must lie inside its mapping, where free
   * and malloc_usable_size find it (and, aligned past 2 MiB, its header) */
  if (size == 0) size = 1;
  size_t map_align = align > REGION_SIZE ? align : REGION_SIZE;
  size_t ps = kmem_os_page_size();
  if (size > ((size_t)1 << VA_BITS) || off > ((size_t)1 << VA_BITS)) {
    errno = ENOMEM;
    return NULL;
  }
  size_t len = (off + size + ps - 1) & ~(ps - 1);
  atomic_fetch_add_explicit(&hak_gstats.huge_allocs, 1, memory_order_relaxed);
  hak_background_want(); /* freed mappings are cached until it expires them */
  size_t got;
  int node = hak_tls_heap->node;
  char *base = map_align == REGION_SIZE ? cache_take(len, node, &got) : NULL;
  if (base) {
    *zero = false;
    return huge_setup(base, got, off, node);
  }
  base = kmem_map_aligned(len, map_align);
  if (!base) {
    errno = ENOMEM;
    return NULL;
  }
  kmem_bind(base, len, node); /* the caller's node, like its regions */
  hak_committed_add((int64_t)len);
  *zero = true;
  return huge_setup(base, len, off, node);
}

void hak_huge_free(hak_region_t *r) {
  char *base = r->map_base;
  size_t len = r->map_len;
  bool cacheable = (char *)r == base; /* alignment beyond 2 MiB is not reused */
  atomic_store_explicit(&hak_region_map[(uintptr_t)r >> REGION_SHIFT], 0, memory_order_release);
  if (cacheable && cache_put(base, len, r->node))
    hak_background_want();
  else
    unmap(base, len);
}

/* Grows a huge block: where it lies if the address space after it is free,
 * else by moving its pages to a larger mapping (the kernel moves page table
 * entries: no copy, no new faults). Returns the block, or NULL if neither
 * worked (the caller copies). */
void *hak_huge_grow(hak_region_t *r, size_t size) {
  size_t ps = kmem_os_page_size();
  size_t off = r->map_len - r->huge_usable;
  size_t len = (off + size + ps - 1) & ~(ps - 1);
  if ((char *)r != (char *)r->map_base || off + size < size) return NULL;
  size_t old_len = r->map_len;
  if (!kmem_resize_inplace(r->map_base, old_len, len)) {
    /* unmark before the move: once moved, another mapping may take the old
     * place and mark it */
    _Atomic(uint8_t) *mark = &hak_region_map[(uintptr_t)r >> REGION_SHIFT];
    atomic_store_explicit(mark, 0, memory_order_relaxed);
    hak_region_t *moved = kmem_move(r->map_base, old_len, len, REGION_SIZE);
    if (!moved) {
      atomic_store_explicit(mark, REGION_HUGE, memory_order_release);
      return NULL;
    }
    r = moved;
    r->map_base = moved;
    atomic_store_explicit(&hak_region_map[(uintptr_t)r >> REGION_SHIFT], REGION_HUGE,
                          memory_order_release);
  }
  hak_committed_add((int64_t)(len - old_len));
  r->map_len = len;
  r->huge_usable = len - off;
  return (char *)r + off;
}

void hak_huge_fork_prepare(void) {
  pthread_mutex_lock(&cache_lock);
}
void hak_huge_fork_release(void) {
  pthread_mutex_unlock(&cache_lock);
}
