/* Node pools: the regions of a node, their free pages, and the pages that
 * exited threads left behind. One mutex per node; heaps come here once per
 * span, not per block. */
#include "internal.h"

#include <string.h>

#define MAX_NODES 1
#define ADOPT_SCAN 8 /* abandoned pages looked at per adoption attempt */

typedef struct hak_pool {
  pthread_mutex_t lock;
  hak_region_t *buckets[PAGES_PER_REGION + 1]; /* by number of free pages */
  uint64_t last_purge_scan_ms;
  hak_page_t *abandoned[NUM_CLASSES];
  _Atomic uint32_t nabandoned[NUM_CLASSES]; /* read without the lock */
} hak_pool_t;

static hak_pool_t pools[MAX_NODES] = {[0 ... MAX_NODES - 1] = {.lock = PTHREAD_MUTEX_INITIALIZER}};

static hak_pool_t *pool_of(int node) {
  return &pools[node >= 0 && node < MAX_NODES ? node : 0];
}

static void bucket_remove(hak_pool_t *pool, hak_region_t *r) {
  if (r->prev) r->prev->next = r->next;
  else pool->buckets[r->nfree] = r->next;
  if (r->next) r->next->prev = r->prev;
  r->next = r->prev = NULL;
}

static void bucket_insert(hak_pool_t *pool, hak_region_t *r) {
  r->prev = NULL;
  r->next = pool->buckets[r->nfree];
  if (r->next) r->next->prev = r;
  pool->buckets[r->nfree] = r;
}

void hak_committed_add(int64_t delta) {
  uint64_t now = atomic_fetch_add_explicit(&hak_gstats.committed_bytes, (uint64_t)delta,
                                           memory_order_relaxed) + (uint64_t)delta;
  uint64_t peak = atomic_load_explicit(&hak_gstats.peak_committed_bytes, memory_order_relaxed);
  while (delta > 0 && now > peak &&
         !atomic_compare_exchange_weak_explicit(&hak_gstats.peak_committed_bytes, &peak, now,
                                                memory_order_relaxed, memory_order_relaxed)) {
  }
}

static hak_region_t *region_new(int node) {
  hak_region_t *r = kmem_region_alloc();
  if (!r) return NULL;
  r->free_mask = 0xFFFFFFFFu;
  r->dirty_mask = 0;
  r->nfree = PAGES_PER_REGION;
  r->node = (uint16_t)node;
  r->kind = REGION_SMALL;
  atomic_fetch_add_explicit(&hak_gstats.regions_reserved, 1, memory_order_relaxed);
  hak_committed_add((int64_t)REGION_HEADER_SIZE);
  atomic_store_explicit(&hak_region_map[(uintptr_t)r >> REGION_SHIFT], REGION_SMALL,
                        memory_order_release);
  return r;
}

/* Bit i of the result is set when pages i .. i+n-1 are all free. */
static uint32_t run_starts(uint32_t mask, unsigned n) {
  uint64_t m = mask;
  for (unsigned i = 1; i < n; i++) m &= (uint64_t)mask >> i;
  return (uint32_t)m;
}

#define SEARCH_MAX 64 /* regions looked at per pass: bounds the time under the lock */

/* The fullest region with a run of npages free pages (so the emptiest
 * regions drain and go back to the kernel whole); with dirty_only, a run of
 * pages already touched, which costs no new memory. */
static hak_region_t *find_run(hak_pool_t *pool, unsigned npages, uint32_t skip, bool dirty_only,
                              uint32_t *starts) {
  unsigned seen = 0;
  for (unsigned nf = npages; nf <= PAGES_PER_REGION; nf++) {
    for (hak_region_t *c = pool->buckets[nf]; c; c = c->next) {
      uint32_t mask = c->free_mask & ~skip & (dirty_only ? c->dirty_mask : ~0u);
      if ((*starts = run_starts(mask, npages)) != 0) return c;
      if (++seen == SEARCH_MAX) return NULL;
    }
  }
  return NULL;
}

hak_page_t *hak_span_alloc(int node, unsigned npages, bool allow_page0, bool *zero) {
  hak_pool_t *pool = pool_of(node);
  uint32_t skip = allow_page0 ? 0 : 1;
  uint32_t starts = 0;
  pthread_mutex_lock(&pool->lock);
  hak_region_t *r = find_run(pool, npages, skip, true, &starts);
  if (!r) r = find_run(pool, npages, skip, false, &starts);
  if (!r) {
    r = region_new(node);
    if (!r) {
      pthread_mutex_unlock(&pool->lock);
      return NULL;
    }
    starts = run_starts(r->free_mask & ~skip, npages);
  } else {
    bucket_remove(pool, r);
  }
  unsigned first = (unsigned)__builtin_ctz(starts);
  uint32_t run = (npages == 32 ? 0xFFFFFFFFu : ((1u << npages) - 1)) << first;
  uint32_t newly = run & ~r->dirty_mask;
  *zero = newly == run;
  r->free_mask &= ~run;
  r->dirty_mask |= run;
  r->nfree = (uint16_t)(r->nfree - npages);
  bucket_insert(pool, r);
  pthread_mutex_unlock(&pool->lock);
  if (newly) hak_committed_add((int64_t)__builtin_popcount(newly) * (int64_t)PAGE_SIZE);

  hak_page_t *head = &r->pages[first];
  for (unsigned i = 0; i < npages; i++) {
    hak_page_t *d = &r->pages[first + i];
    memset(d, 0, sizeof *d);
    d->back = (uint8_t)i;
  }
  head->span_pages = (uint8_t)npages;
  return head;
}

static void region_purge(hak_region_t *r) {
  if (!r->dirty_mask) return;
  size_t bytes = (size_t)__builtin_popcount(r->dirty_mask) * PAGE_SIZE;
  /* the header stays: it links the region into its bucket */
  if (kmem_purge((char *)r + REGION_HEADER_SIZE, REGION_SIZE - REGION_HEADER_SIZE)) {
    r->dirty_mask = 0;
    hak_committed_add(-(int64_t)bytes);
    atomic_fetch_add_explicit(&hak_gstats.purges, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&hak_gstats.purged_bytes, bytes, memory_order_relaxed);
  }
}

/* Empty regions are purged once empty for HAKMEM_PURGE_DELAY_MS: memory
 * freed and soon wanted again is not faulted in twice. */
static void purge_expired(hak_pool_t *pool, uint64_t now) {
  uint64_t delay = hak_opt.purge_delay_ms;
  if (now - pool->last_purge_scan_ms < delay / 2 + 1) return;
  pool->last_purge_scan_ms = now;
  for (hak_region_t *r = pool->buckets[PAGES_PER_REGION]; r; r = r->next)
    if (r->dirty_mask && now - r->empty_since_ms >= delay) region_purge(r);
}

static void span_free_locked(hak_pool_t *pool, hak_page_t *span) {
  hak_region_t *r = region_of_page(span);
  unsigned first = (unsigned)(span - r->pages), n = span->span_pages;
  uint32_t run = (n == 32 ? 0xFFFFFFFFu : ((1u << n) - 1)) << first;
  atomic_store_explicit(&span->heap, NULL, memory_order_relaxed);
  span->block_size = 0;
  bucket_remove(pool, r);
  r->free_mask |= run;
  r->nfree = (uint16_t)(r->nfree + n);
  bucket_insert(pool, r);
  uint64_t now = hak_now_ms();
  if (r->nfree == PAGES_PER_REGION) {
    r->empty_since_ms = now;
    if (hak_opt.purge_delay_ms == 0) region_purge(r);
  }
  purge_expired(pool, now);
}

void hak_span_free(hak_page_t *span) {
  hak_region_t *r = region_of_page(span);
  hak_pool_t *pool = pool_of(r->node);
  pthread_mutex_lock(&pool->lock);
  span_free_locked(pool, span);
  pthread_mutex_unlock(&pool->lock);
}

static void list_remove(hak_page_t **head, hak_page_t *p) {
  if (p->prev) p->prev->next = p->next;
  else *head = p->next;
  if (p->next) p->next->prev = p->prev;
  p->next = p->prev = NULL;
}

static void abandoned_remove(hak_pool_t *pool, hak_page_t *p) {
  list_remove(&pool->abandoned[p->cls], p);
  atomic_store_explicit(&p->abandoned, 0, memory_order_relaxed);
  atomic_fetch_sub_explicit(&pool->nabandoned[p->cls], 1, memory_order_relaxed);
}

void hak_abandoned_push(int node, hak_page_t *pages) {
  hak_pool_t *pool = pool_of(node);
  pthread_mutex_lock(&pool->lock);
  for (hak_page_t *p = pages, *next; p; p = next) {
    next = p->next;
    hak_page_t **head = &pool->abandoned[p->cls];
    p->prev = NULL;
    p->next = *head;
    if (*head) (*head)->prev = p;
    *head = p;
    atomic_store_explicit(&p->abandoned, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&pool->nabandoned[p->cls], 1, memory_order_relaxed);
  }
  pthread_mutex_unlock(&pool->lock);
}

/* Takes page off the abandoned list for heap. Called by a thread freeing
 * into an abandoned page: the blocks a dead thread left are mostly freed by
 * the thread that inherited its work, which then reuses the page locally. */
bool hak_abandoned_claim(hak_page_t *page, hak_heap_t *heap) {
  hak_region_t *r = region_of_page(page);
  if (r->node != heap->node) return false;
  hak_pool_t *pool = pool_of(r->node);
  pthread_mutex_lock(&pool->lock);
  bool ok = atomic_load_explicit(&page->abandoned, memory_order_relaxed);
  if (ok) abandoned_remove(pool, page);
  pthread_mutex_unlock(&pool->lock);
  if (ok) {
    atomic_store_explicit(&page->heap, heap, memory_order_release);
    hak_page_set_remote_state(page, 1u << REMOTE_NEVER, REMOTE_PLAIN);
  }
  return ok;
}

/* An abandoned page of class cls with room, now owned by heap; NULL if none.
 * Pages found empty on the way go back to their region. */
hak_page_t *hak_abandoned_adopt(int node, unsigned cls, hak_heap_t *heap) {
  hak_pool_t *pool = pool_of(node);
  if (!atomic_load_explicit(&pool->nabandoned[cls], memory_order_relaxed)) return NULL;
  pthread_mutex_lock(&pool->lock);
  hak_page_t *p = pool->abandoned[cls];
  for (unsigned i = 0; p && i < ADOPT_SCAN; i++) {
    hak_page_t *next = p->next;
    hak_page_collect(p);
    if (p->free || p->reserved < p->capacity) {
      abandoned_remove(pool, p);
      pthread_mutex_unlock(&pool->lock);
      atomic_store_explicit(&p->heap, heap, memory_order_release);
      hak_page_set_remote_state(p, 1u << REMOTE_NEVER, REMOTE_PLAIN);
      hak_page_collect_remote(p); /* frees that raced the state change */
      return p;
    }
    p = next;
  }
  pthread_mutex_unlock(&pool->lock);
  return NULL;
}

/* Gives back what is free now: abandoned pages whose blocks have all come
 * back, and every empty region. Returns the number of bytes purged. */
size_t hak_pool_trim(void) {
  uint64_t before = atomic_load_explicit(&hak_gstats.purged_bytes, memory_order_relaxed);
  for (int n = 0; n < MAX_NODES; n++) {
    hak_pool_t *pool = &pools[n];
    pthread_mutex_lock(&pool->lock);
    for (unsigned c = 0; c < NUM_CLASSES; c++) {
      for (hak_page_t *p = pool->abandoned[c], *next; p; p = next) {
        next = p->next;
        hak_page_collect(p);
        if (p->used == 0) {
          abandoned_remove(pool, p);
          span_free_locked(pool, p);
        }
      }
    }
    for (hak_region_t *r = pool->buckets[PAGES_PER_REGION]; r; r = r->next) region_purge(r);
    pthread_mutex_unlock(&pool->lock);
  }
  return (size_t)(atomic_load_explicit(&hak_gstats.purged_bytes, memory_order_relaxed) - before);
}

void hak_pool_fork_prepare(void) {
  for (int n = 0; n < MAX_NODES; n++) pthread_mutex_lock(&pools[n].lock);
}

void hak_pool_fork_release(void) {
  for (int n = MAX_NODES - 1; n >= 0; n--) pthread_mutex_unlock(&pools[n].lock);
}

