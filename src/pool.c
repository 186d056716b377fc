/* Node pools: the regions of a node and their free pages. One mutex per
 * node; heaps come here once per span, not per block. */
#include "internal.h"

#define MAX_NODES KMEM_MAX_NODES
/* The background thread is wanted once a node's regions hold more than a
 * region's worth: past a tiny heap, an idle process should give back what
 * it frees, and the frees that make the memory free may be the last thing
 * it does. Bytes, not regions: each thread's spans come from regions of
 * its own (pool_find), so two tiny threads hold two regions. */
#define BACKGROUND_AFTER_BYTES REGION_SIZE

typedef struct hak_pool {
  pthread_mutex_t lock;
  /* regions by the longest span they can take: a region found in bucket k
   * fits every request of up to k pages, so finding one costs no scan */
  hak_region_t *buckets[PAGES_PER_REGION + 1];
  uint64_t delay_ms;                   /* purge delay now (pool_delay) */
  uint64_t busy_ms;                    /* when a span was last taken or freed */
  _Atomic uint64_t last_purge_scan_ms; /* read without the lock */
  _Atomic uint64_t regions, committed; /* hak_node_stats_t */
} hak_pool_t;

static hak_pool_t pools[MAX_NODES] = {[0 ... MAX_NODES - 1] = {.lock = PTHREAD_MUTEX_INITIALIZER}};

/* The lowest and highest small region ever made: the smaps scan for THP
 * bytes looks up only that span of a mapping, not the terabytes a
 * sanitizer's or a runtime's reservations cover (each 2 MiB a map load). */
static _Atomic uint64_t regions_lo = UINT64_MAX, regions_hi;

/* *x = max(*x, v), and min: counters read without a lock. */
static void atomic_raise(_Atomic uint64_t *x, uint64_t v) {
  uint64_t old = atomic_load_explicit(x, memory_order_relaxed);
  while (v > old && !atomic_compare_exchange_weak_explicit(x, &old, v, memory_order_relaxed,
                                                           memory_order_relaxed)) {
  }
}

static void atomic_lower(_Atomic uint64_t *x, uint64_t v) {
  uint64_t old = atomic_load_explicit(x, memory_order_relaxed);
  while (v < old && !atomic_compare_exchange_weak_explicit(x, &old, v, memory_order_relaxed,
                                                           memory_order_relaxed)) {
  }
}

static hak_pool_t *pool_of(int node) {
  return &pools[node >= 0 && node < MAX_NODES ? node : 0];
}

/* Longest run of free pages; page 0 (after the header) takes only 1-page
 * spans. */
static unsigned region_fit(const hak_region_t *r) {
  uint32_t m = r->free_mask & ~1u;
  unsigned len = 0;
  while (m) {
    m &= m >> 1;
    len++;
  }
  return len ? len : r->free_mask & 1;
}

static void bucket_remove(hak_pool_t *pool, hak_region_t *r) {
  if (r->prev)
    r->prev->next = r->next;
  else
    pool->buckets[r->bucket] = r->next;
  if (r->next) r->next->prev = r->prev;
  r->next = r->prev = NULL;
}

static void bucket_insert(hak_pool_t *pool, hak_region_t *r) {
  r->bucket = (uint8_t)region_fit(r);
  r->prev = NULL;
  r->next = pool->buckets[r->bucket];
  if (r->next) r->next->prev = r;
  pool->buckets[r->bucket] = r;
}

void hak_committed_add(int64_t delta) {
  uint64_t now = atomic_fetch_add_explicit(&hak_gstats.committed_bytes, (uint64_t)delta,
                                           memory_order_relaxed) +
                 (uint64_t)delta;
  if (delta > 0) atomic_raise(&hak_gstats.peak_committed_bytes, now);
}

/* Bytes of a node's regions in use or not yet purged, globally and per node;
 * returns the node's before the change. */
static uint64_t node_committed_add(int node, int64_t delta) {
  hak_committed_add(delta);
  return atomic_fetch_add_explicit(&pools[node].committed, (uint64_t)delta, memory_order_relaxed);
}

static hak_region_t *region_new(int node) {
  unsigned flags;
  hak_region_t *r = kmem_region_alloc(node, &flags);
  if (!r) return NULL;
  r->hugetlb = flags & KMEM_REGION_HUGETLB;
  r->thp = flags & KMEM_REGION_THP;
  r->free_mask = 0xFFFFFFFFu;
  r->dirty_mask = 0;
  r->nfree = PAGES_PER_REGION;
  r->node = (uint16_t)node;
  r->kind = REGION_SMALL;
  r->heap = NULL;
  atomic_fetch_add_explicit(&hak_gstats.regions_reserved, 1, memory_order_relaxed);
  atomic_fetch_add_explicit(&pools[node].regions, 1, memory_order_relaxed);
  node_committed_add(node, (int64_t)REGION_HEADER_SIZE);
  atomic_store_explicit(&hak_region_map[(uintptr_t)r >> REGION_SHIFT], region_small_tag(node),
                        memory_order_release);
  atomic_lower(&regions_lo, (uintptr_t)r);
  atomic_raise(&regions_hi, (uintptr_t)r);
  return r;
}

bool hak_pool_has_region(uintptr_t start, uintptr_t end) {
  uint64_t lo = atomic_load_explicit(&regions_lo, memory_order_relaxed);
  uint64_t hi = atomic_load_explicit(&regions_hi, memory_order_relaxed);
  if (start < lo) start = lo;
  for (uintptr_t a = start & ~(uintptr_t)(REGION_SIZE - 1); a < end && a <= hi; a += REGION_SIZE)
    if (region_kind((hak_region_t *)a) == REGION_SMALL) return true;
  return false;
}

/* Pages first .. first+count-1 as a mask. */
static uint32_t run_mask(unsigned first, unsigned count) {
  return (count == 32 ? 0xFFFFFFFFu : ((1u << count) - 1)) << first;
}

/* Bit i of the result is set when pages i .. i+n-1 are all free. */
static uint32_t run_starts(uint32_t mask, unsigned n) {
  uint64_t m = mask;
  for (unsigned i = 1; i < n; i++)
    m &= (uint64_t)mask >> i;
  return (uint32_t)m;
}

#define DIRTY_SEARCH 8 /* regions looked at for a run of touched pages */

/* ---- the purge delay -------------------------------------------------------
 * Pages purged and soon taken again cost a fault per 4 KiB page and gain
 * nothing: a server between phases of its load gives back what its next
 * phase uses again (redis: a popped list of 16 KiB values, then 100 KB
 * replies, faulted 136 MB in again for 200 MB of replies). A pool's delay
 * starts at HAKMEM_PURGE_DELAY_MS and doubles, up to PURGE_DELAY_MAX_SHIFT
 * times, whenever a span takes pages purged less than the longest delay ago:
 * phases longer than the delay show as pages taken again a few delays after
 * their purge. It lasts while the process is busy, and bridges its phases;
 * a pool that took or freed no span for IDLE_DELAYS base delays is idle and
 * back at the base delay, so an idle process gives its memory back as soon
 * as before. 16x cost redis 1.18x glibc's peak RSS while its 100 KB blocks
 * took 8-page spans, which fitted none of the pages its 16 KiB phase kept;
 * in spans of their own 2 pages they reuse them. */
#define PURGE_DELAY_MAX_SHIFT 4
#define IDLE_DELAYS 2 /* above 1: an idle pause between two phases is no idle process */

/* Locked. The delay as of now: the base for a new or idle pool (now may be
 * a little older than busy_ms: read before the lock). */
static uint64_t pool_delay(hak_pool_t *pool, uint64_t now) {
  uint64_t base = hak_opt.purge_delay_ms;
  if (pool->delay_ms < base || now >= pool->busy_ms + IDLE_DELAYS * base) pool->delay_ms = base;
  return pool->delay_ms;
}

/* Locked: span pages of r were purged and are taken again. */
static void pool_note_reuse(hak_pool_t *pool, const hak_region_t *r) {
  uint64_t now = hak_now_ms(), delay = pool_delay(pool, now);
  if (now - r->purged_ms >= hak_opt.purge_delay_ms << PURGE_DELAY_MAX_SHIFT) return; /* long ago */
  if (delay < hak_opt.purge_delay_ms << PURGE_DELAY_MAX_SHIFT) pool->delay_ms = delay * 2;
}

/* How find_run looks: RUN_TOUCHED only at runs of resident pages (they cost
 * no new memory) in the first DIRTY_SEARCH regions; RUN_OWN only in regions
 * of the heap's own or of none. */
enum { RUN_TOUCHED = 1, RUN_OWN = 2 };

/* Pages resident: touched, or all but the purged of a huge-page region,
 * whose first touch brought in the whole 2 MiB. */
static uint32_t resident_mask(const hak_region_t *r) {
  return r->hugetlb || r->thp ? ~r->clean_mask : r->dirty_mask;
}

/* A region with a run of npages free pages: the one with the shortest run
 * that fits, which keeps long runs (and empty regions) for later. */
static hak_region_t *find_run(hak_pool_t *pool, const hak_heap_t *heap, unsigned npages,
                              uint32_t skip, unsigned how, uint32_t *starts) {
  unsigned seen = 0;
  for (unsigned k = npages; k <= PAGES_PER_REGION; k++) {
    for (hak_region_t *c = pool->buckets[k]; c; c = c->next) {
      if ((how & RUN_TOUCHED) && seen++ == DIRTY_SEARCH) return NULL;
      if ((how & RUN_OWN) && c->heap && c->heap != heap) continue;
      uint32_t free = c->free_mask & ~skip;
      if ((*starts = run_starts(how & RUN_TOUCHED ? free & resident_mask(c) : free, npages)) != 0)
        return c;
    }
  }
  return NULL;
}

/* A free run for heap in this pool, or in a new region of it (create);
 * locked. Each heap's spans come from regions of its own where that costs
 * no memory: two threads taking spans from the same regions cost
 * churn_small at two threads 9% (both running: 54 against 59M ops per
 * CPU-second), the owner's free stalling on the load of its page's
 * descriptor in the shared header (descriptors 128 B apart, when a descriptor
 * was one line, did not help;
 * HAKMEM_NODES=2, a region set per thread, did). Touched pages of any heap
 * still go before untouched ones (RSS), and a new region before another
 * heap's untouched pages. heap NULL: a span of no heap's, from any region. */
static hak_region_t *pool_find(hak_pool_t *pool, const hak_heap_t *heap, int node, unsigned npages,
                               uint32_t skip, bool create, uint32_t *starts) {
  unsigned own = heap ? RUN_OWN : 0;
  hak_region_t *r = heap ? find_run(pool, heap, npages, skip, RUN_TOUCHED | own, starts) : NULL;
  if (!r) r = find_run(pool, heap, npages, skip, RUN_TOUCHED, starts);
  if (!r) r = find_run(pool, heap, npages, skip, own, starts);
  if (!r && create && (r = region_new(node)) != NULL) {
    *starts = run_starts(r->free_mask & ~skip, npages);
    return r;
  }
  if (!r && own) r = find_run(pool, heap, npages, skip, 0, starts); /* another heap's too */
  if (r) bucket_remove(pool, r);
  return r;
}

/* A descriptor as new. The words a thread of the span's previous life may
 * still load (a freer checking whether it freed an abandoned page's last
 * block reads `abandoned`) are stored atomically, not by a memset. */
static void page_clear(hak_page_t *d) {
  d->free = d->local_free = NULL;
  atomic_store_explicit(&d->owner, 0, memory_order_relaxed);
  d->used = 0;
  d->cls = 0;
  atomic_store_explicit(&d->align_shifts, 0, memory_order_relaxed);
  d->block_size = 0;
  d->capacity = d->reserved = 0;
  d->color = 0;
  d->free_is_zero = d->fresh_zero = 0;
  atomic_store_explicit(&d->abandoned, 0, memory_order_relaxed);
  d->span_pages = 0;
  atomic_store_explicit(&d->remote, 0, memory_order_relaxed);
  d->next = d->prev = NULL;
}

/* Locked, r out of its bucket: the free pages `run` of r taken, r back in
 * the bucket its longest free run now fits. Returns the pages of the run
 * not resident (never touched, or purged since), for run_committed once
 * unlocked. */
static uint32_t run_take(hak_pool_t *pool, hak_region_t *r, uint32_t run) {
  uint32_t newly = run & ~r->dirty_mask;
  if (r->descs_purged) { /* span_pages_init writes them */
    r->descs_purged = false;
    node_committed_add(r->node, (int64_t)REGION_DESC_BYTES);
  }
  if (run & r->clean_mask) pool_note_reuse(pool, r);
  r->free_mask &= ~run;
  r->dirty_mask |= run;
  r->clean_mask &= ~run;
  r->nfree = (uint16_t)(r->nfree - __builtin_popcount(run));
  bucket_insert(pool, r);
  pool->busy_ms = hak_now_ms();
  return newly;
}

/* Unlocked: the pages run_take found not resident count as committed. */
static void run_committed(const hak_region_t *r, uint32_t newly) {
  if (!newly) return;
  uint64_t add = (uint64_t)__builtin_popcount(newly) * PAGE_SIZE;
  uint64_t was = node_committed_add(r->node, (int64_t)add);
  if (was < BACKGROUND_AFTER_BYTES && was + add >= BACKGROUND_AFTER_BYTES) hak_background_want();
}

/* The descriptors of pages from .. to-1 of the span at page first, as new
 * pages of that span. */
static void span_pages_init(hak_region_t *r, unsigned first, unsigned from, unsigned to) {
  for (unsigned i = from; i < to; i++) {
    page_clear(&r->pages[first + i]);
    r->back[first + i] = (uint8_t)i;
  }
}

/* A run of npages pages from the node's pool, at the start of a free run of
 * at least room pages (room >= npages: pages left free after it, for it to
 * grow into); when the node has no room and no new region can be made,
 * from the next nodes' (node_fallbacks). */
hak_page_t *hak_span_alloc(const hak_heap_t *heap, int node, unsigned npages, unsigned room,
                           bool allow_page0, bool *zero) {
  uint32_t skip = allow_page0 ? 0 : 1;
  uint32_t starts = 0;
  int nodes = kmem_node_count();
  hak_region_t *r = NULL;
  hak_pool_t *pool = NULL;
  for (int k = 0; k < nodes && !r; k++) {
    int n = (node + k) % nodes;
    pool = pool_of(n);
    pthread_mutex_lock(&pool->lock);
    r = pool_find(pool, heap, n, room, skip, k == 0, &starts);
    if (!r)
      pthread_mutex_unlock(&pool->lock);
    else if (k)
      atomic_fetch_add_explicit(&hak_gstats.node_fallbacks, 1, memory_order_relaxed);
  }
  if (!r) return NULL;
  unsigned first = (unsigned)__builtin_ctz(starts);
  uint32_t run = run_mask(first, npages);
  if (!r->heap) r->heap = heap;
  uint32_t newly = run_take(pool, r, run);
  pthread_mutex_unlock(&pool->lock);
  *zero = newly == run;
  run_committed(r, newly);
  span_pages_init(r, first, 0, npages);
  hak_page_t *head = &r->pages[first];
  head->span_pages = (uint8_t)npages;
  return head;
}

/* Span grows to npages (more than it has) onto the pages right after it in
 * its region, when they are all free: a large block's realloc, which would
 * otherwise copy it. *zero: the pages taken were not resident. The block's
 * owner's call: nobody else changes its length. */
bool hak_span_grow(hak_page_t *span, unsigned npages, bool *zero) {
  hak_region_t *r = region_of_page(span);
  hak_pool_t *pool = pool_of(r->node);
  unsigned first = (unsigned)(span - r->pages), old = span->span_pages;
  if (first + npages > PAGES_PER_REGION) return false;
  uint32_t more = run_mask(first + old, npages - old), newly = 0;
  pthread_mutex_lock(&pool->lock);
  bool ok = (r->free_mask & more) == more; /* pages out for purging are not free */
  if (ok) {
    bucket_remove(pool, r);
    newly = run_take(pool, r, more);
    span->span_pages = (uint8_t)npages;
  }
  pthread_mutex_unlock(&pool->lock);
  if (!ok) return false;
  *zero = newly == more;
  run_committed(r, newly);
  span_pages_init(r, first, old, npages);
  return true;
}

/* ---- purging: free pages back to the kernel --------------------------------
 * Pages chosen for purging leave free_mask (nobody allocates them) for
 * purging_mask until kmem reports the purge done; the pool lock is not held
 * across the system calls. */

#define PURGE_BATCH 64

typedef struct purge_run {
  hak_region_t *r;
  unsigned first, count;
} purge_run_t;

/* HAKMEM_THP=collapse takes regions with at most this many free pages
 * (below); a settled purge leaves them alone, so it never purges pages of a
 * region the background thread is collapsing without the lock. */
#define COLLAPSE_MAX_FREE 2

/* A pool that took or freed no span for the longest delay is settled: its
 * program idles, or keeps to the spans it has. Then HAKMEM_PURGE=region
 * gives back the free pages of regions still in use too, not only empty
 * regions: a block left in a region would keep its 2 MiB resident for good
 * (a thread that idles with a few pages kept 22-26 MB committed after the
 * rest of the program's memory was freed). A huge page only once half its
 * region is free: up to then it still pays. */
static bool pool_settled(const hak_pool_t *pool, uint64_t now) {
  return now >= pool->busy_ms + (hak_opt.purge_delay_ms << PURGE_DELAY_MAX_SHIFT);
}

/* Pages of r free and resident (touched, or all of a huge-page region), and
 * old enough to purge. */
static uint32_t purgeable(const hak_region_t *r, uint64_t now, uint64_t delay, bool force,
                          bool settled) {
  uint32_t cand = r->free_mask & (r->thp ? ~r->clean_mask : r->dirty_mask);
  if (!cand || r->hugetlb) return 0; /* hugetlbfs pages go back only whole */
  if (force) return cand;
  if (r->nfree == PAGES_PER_REGION) return now - r->empty_since_ms >= delay ? cand : 0;
  if (hak_opt.purge != PURGE_PAGE &&
      !(settled && r->nfree > COLLAPSE_MAX_FREE && (!r->thp || r->nfree >= PAGES_PER_REGION / 2)))
    return 0;
  uint32_t old = 0;
  for (uint32_t m = cand; m; m &= m - 1) {
    unsigned i = (unsigned)__builtin_ctz(m);
    if (now - r->page_freed_ms[i] >= delay) old |= 1u << i;
  }
  return old;
}

/* An empty hugetlbfs region goes back whole: its pages cannot be purged one
 * by one. */
static void hugetlb_release(hak_pool_t *pool, hak_region_t *r) {
  int node = r->node;
  bucket_remove(pool, r);
  atomic_store_explicit(&hak_region_map[(uintptr_t)r >> REGION_SHIFT], 0, memory_order_release);
  atomic_fetch_sub_explicit(&pools[node].regions, 1, memory_order_relaxed);
  node_committed_add(node, -(int64_t)REGION_HEADER_SIZE -
                               (int64_t)__builtin_popcount(r->dirty_mask) * (int64_t)PAGE_SIZE);
  kmem_region_free_hugetlb(r);
}

/* Takes the purgeable pages of one pool out of circulation, as runs; notes
 * in *waiting pages that will be once their delay has passed. */
static size_t collect_purgeable(hak_pool_t *pool, uint64_t now, bool force, purge_run_t *out,
                                bool *waiting) {
  size_t n = 0;
  uint64_t delay = pool_delay(pool, now);
  bool settled = pool_settled(pool, now);
  /* empty regions all sit in the bucket of 31-page runs */
  unsigned from = force || hak_opt.purge == PURGE_PAGE || settled ? 0 : PAGES_PER_REGION - 1;
  for (unsigned nf = from; nf <= PAGES_PER_REGION; nf++) {
    for (hak_region_t *r = pool->buckets[nf], *next; r && n < PURGE_BATCH; r = next) {
      next = r->next;
      if (r->hugetlb && r->nfree == PAGES_PER_REGION) {
        if (force || now - r->empty_since_ms >= delay)
          hugetlb_release(pool, r);
        else
          *waiting = true;
        continue;
      }
      uint32_t mask = purgeable(r, now, delay, force, settled);
      /* an empty region goes out whole, its untouched pages too (a no-op
       * for the kernel): then nobody writes a descriptor meanwhile, and
       * their page is discarded with it */
      if (mask && r->nfree == PAGES_PER_REGION) mask = r->free_mask;
      if (!mask) {
        *waiting |= purgeable(r, now, 0, false, settled) != 0;
        continue;
      }
      bucket_remove(pool, r);
      r->free_mask &= ~mask;
      r->purging_mask |= mask;
      r->nfree = (uint16_t)(r->nfree - __builtin_popcount(mask));
      bucket_insert(pool, r);
      while (mask && n < PURGE_BATCH) {
        unsigned first = (unsigned)__builtin_ctz(mask);
        unsigned count = (unsigned)__builtin_ctzll(~(uint64_t)(mask >> first));
        out[n++] = (purge_run_t){r, first, count};
        mask &= ~run_mask(first, count);
      }
      if (mask) { /* batch full: give the rest back untouched */
        bucket_remove(pool, r);
        r->free_mask |= mask;
        r->purging_mask &= ~mask;
        r->nfree = (uint16_t)(r->nfree + __builtin_popcount(mask));
        bucket_insert(pool, r);
      }
    }
  }
  return n;
}

/* Locked: n more free pages in r. Empty, it is nobody's and its idle time
 * starts (whichever way its last pages came back: freed, purged, or in the
 * fork child). */
static void region_add_free(hak_region_t *r, unsigned n, uint64_t now) {
  r->nfree = (uint16_t)(r->nfree + n);
  if (r->nfree == PAGES_PER_REGION) {
    r->empty_since_ms = now;
    r->heap = NULL;
  }
}

/* kmem's completion: the pages return to the free pages, zero if it worked. */
static void purge_done(void *cookie, bool ok) {
  uintptr_t c = (uintptr_t)cookie;
  hak_region_t *r = (hak_region_t *)(c & ~(uintptr_t)(REGION_SIZE - 1));
  unsigned first = (unsigned)(c >> 6) & 31, count = (unsigned)c & 63;
  uint32_t mask = run_mask(first, count);
  hak_pool_t *pool = pool_of(r->node);
  pthread_mutex_lock(&pool->lock);
  bucket_remove(pool, r);
  r->purging_mask &= ~mask;
  r->free_mask |= mask;
  region_add_free(r, count, hak_now_ms());
  if (ok && r->collapsed) { /* a purge splits the huge page: 4 KiB pages again */
    r->collapsed = false;
    r->thp = false;
    r->collapse_ms = hak_now_ms();
  }
  if (ok && count == PAGES_PER_REGION && !r->descs_purged) { /* purge_submit discarded them */
    r->descs_purged = true;
    node_committed_add(r->node, -(int64_t)REGION_DESC_BYTES);
  }
  if (ok) {
    node_committed_add(r->node,
                       -(int64_t)__builtin_popcount(r->dirty_mask & mask) * (int64_t)PAGE_SIZE);
    r->dirty_mask &= ~mask;
    r->clean_mask |= mask;
    r->purged_ms = hak_now_ms();
  }
  bucket_insert(pool, r);
  pthread_mutex_unlock(&pool->lock);
}

static void purge_submit(const purge_run_t *run) {
  char *start = (char *)run->r + (size_t)run->first * PAGE_SIZE;
  size_t len = (size_t)run->count * PAGE_SIZE;
  if (run->first == 0) { /* the header stays: it links the region into its bucket */
    start += REGION_HEADER_SIZE;
    len -= REGION_HEADER_SIZE;
  }
  /* the whole region: its descriptors' page too, all zero again as
   * page_clear leaves them; uncounted once the purge worked (a refused one,
   * as on mlocked memory, discarded nothing) */
  if (run->count == PAGES_PER_REGION) kmem_discard(run->r, REGION_DESC_BYTES);
  void *cookie = (void *)((uintptr_t)run->r | (uintptr_t)run->first << 6 | run->count);
  while (!kmem_purge_submit(start, len, cookie))
    kmem_purge_reap(purge_done, false);
}

/* Returns the runs sent. *later (may be NULL): whether work is left for a
 * later look, pages to purge once their delay has passed, or purges sent or
 * completed (more may be under way). */
size_t hak_pool_purge(bool force, bool wait, bool *later) {
  uint64_t now = hak_now_ms();
  size_t total = 0;
  bool waiting = false;
  if (later) *later = false;
  if (hak_opt.purge == PURGE_OFF && !force) return 0;
  for (int node = 0; node < kmem_node_count(); node++) {
    hak_pool_t *pool = &pools[node];
    purge_run_t runs[PURGE_BATCH];
    size_t n;
    do {
      pthread_mutex_lock(&pool->lock);
      n = collect_purgeable(pool, now, force, runs, &waiting);
      atomic_store_explicit(&pool->last_purge_scan_ms, now, memory_order_relaxed);
      pthread_mutex_unlock(&pool->lock);
      for (size_t i = 0; i < n; i++)
        purge_submit(&runs[i]);
      total += n;
    } while (n == PURGE_BATCH);
  }
  size_t reaped = kmem_purge_reap(purge_done, wait);
  if (later) *later = waiting || total || reaped;
  return total;
}

/* From slow paths: purges when the delay has passed since the last look. */
void hak_pool_purge_maybe(void) {
  if (hak_opt.purge == PURGE_OFF) return;
  uint64_t now = hak_now_ms();
  hak_pool_t *pool = &pools[0];
  uint64_t last = atomic_load_explicit(&pool->last_purge_scan_ms, memory_order_relaxed);
  if (now - last >= hak_opt.purge_delay_ms / 2 + 1 || hak_opt.purge_delay_ms == 0)
    hak_pool_purge(false, false, NULL);
}

/* ---- HAKMEM_THP=collapse: huge pages only where they pay --------------------
 * Regions start on 4 KiB pages (MADV_NOHUGEPAGE): a first touch commits 4 KiB,
 * never 2 MiB. The background thread collapses a region into one huge page
 * (MADV_COLLAPSE) once it has been dense -- at most COLLAPSE_MAX_FREE of its
 * pages free, none out for purging -- at every pass for COLLAPSE_DENSE_MS,
 * and 31/32 of its memory is resident (mincore), so the huge page adds at
 * most 64 KiB (3%) to what the region uses (redis LPUSH of 16 KiB values
 * leaves 1/16 of its regions untouched: collapsing at 7/8 cost 6% of peak
 * RSS). A collapsed region is a THP region for purging (its free pages are
 * resident, purged whole with it); the first purge of any of its pages splits
 * the huge page, the region is 4 KiB-grained again and not collapsed again
 * for COLLAPSE_RETRY_MS. At most COLLAPSE_PER_PASS regions a pass: the
 * copying runs on the background thread, which competes with the
 * application for CPUs (a collapse took 6-17 ms on a loaded 2-CPU VM; at 8
 * a pass, fragment's two threads saw 6-18 in 0.4 s and ran 1.2x slower
 * than at 1 a pass, with 1-4). Every node's dense regions are looked at each pass
 * (their streaks go on) even when the picks are full. */
#define COLLAPSE_DENSE_MS 100
#define COLLAPSE_MIN_RESIDENT (REGION_SIZE / 4096 * 31 / 32) /* 4 KiB pages */
#define COLLAPSE_RETRY_MS 5000
#define COLLAPSE_SPARSE_RETRY_MS 1000 /* dense in spans, not yet resident */
#define COLLAPSE_PER_PASS 1

static bool collapse_due(hak_region_t *r, uint32_t pass, uint64_t now) {
  if (r->thp || r->hugetlb || r->purging_mask ||
      __builtin_popcount(r->free_mask) > COLLAPSE_MAX_FREE)
    return false;
  if (r->dense_pass + 1 != pass) r->dense_since_ms = now; /* a new streak */
  r->dense_pass = pass;
  if (now - r->dense_since_ms < COLLAPSE_DENSE_MS) return false;
  return !r->collapse_ms || now - r->collapse_ms >= COLLAPSE_RETRY_MS;
}

/* One pass of the background thread; returns the regions collapsed. *later:
 * whether dense regions wait for a next pass (due past this pass's picks,
 * or dense for less than COLLAPSE_DENSE_MS). */
size_t hak_pool_collapse(bool *later) {
  static uint32_t pass = 1; /* the background thread's only */
  *later = false;
  if (hak_opt.uffd || !kmem_collapse_usable()) return 0;
  pass++;
  uint64_t now = hak_now_ms();
  size_t done = 0, tried = 0;
  for (int node = 0; node < kmem_node_count(); node++) {
    hak_pool_t *pool = &pools[node];
    hak_region_t *pick[COLLAPSE_PER_PASS];
    size_t n = 0;
    pthread_mutex_lock(&pool->lock);
    /* a region with at most k pages free has no free run longer than k */
    for (unsigned k = 0; k <= COLLAPSE_MAX_FREE; k++)
      for (hak_region_t *r = pool->buckets[k]; r; r = r->next)
        if (!collapse_due(r, pass, now)) {
          *later |= r->dense_pass == pass && now - r->dense_since_ms < COLLAPSE_DENSE_MS;
        } else if (tried + n < COLLAPSE_PER_PASS) {
          r->collapse_ms = now;
          pick[n++] = r;
        } else {
          *later = true;
        }
    pthread_mutex_unlock(&pool->lock);
    /* regions of ordinary pages are never unmapped: safe unlocked */
    for (size_t i = 0; i < n; i++) {
      hak_region_t *r = pick[i];
      if (kmem_region_resident_pages(r) < COLLAPSE_MIN_RESIDENT) {
        pthread_mutex_lock(&pool->lock);
        r->collapse_ms = now - COLLAPSE_RETRY_MS + COLLAPSE_SPARSE_RETRY_MS;
        pthread_mutex_unlock(&pool->lock);
        continue;
      }
      int err = kmem_region_collapse(r);
      pthread_mutex_lock(&pool->lock);
      if (!err) {
        r->thp = true;
        r->collapsed = true;
        done++;
      }
      r->collapse_ms = hak_now_ms();
      pthread_mutex_unlock(&pool->lock);
    }
    tried += n;
  }
  return done;
}

#define AHEAD_PAGES 4

/* HAKMEM_PREFAULT=ahead, on the background thread: populates the untouched
 * free pages from page `next` of the region at address `region`, so the
 * heap's next spans take no faults. The region may be gone since it was
 * named (an empty hugetlbfs region is unmapped whole, under its pool lock):
 * its node comes from the region map, and its header is read only once that
 * pool's lock is held and the map still says small of that node. Regions of
 * ordinary pages are never unmapped, so the system call runs unlocked;
 * hugetlbfs regions are skipped (one huge page, faulted whole by the first
 * touch). Populating a page someone just took is harmless: only missing
 * pages are filled, with zeros. */
void hak_pool_populate_at(uintptr_t region, unsigned next) {
  uintptr_t idx = region >> REGION_SHIFT;
  if (idx >= REGION_MAP_ENTRIES || next >= PAGES_PER_REGION) return;
  uint8_t tag = atomic_load_explicit(&hak_region_map[idx], memory_order_acquire);
  if ((tag & 3) != REGION_SMALL) return;
  hak_pool_t *pool = pool_of(tag >> 2);
  pthread_mutex_lock(&pool->lock);
  unsigned n = 0;
  if (atomic_load_explicit(&hak_region_map[idx], memory_order_relaxed) == tag) {
    hak_region_t *r = (hak_region_t *)region;
    uint32_t untouched = r->hugetlb ? 0 : r->free_mask & ~r->dirty_mask & ~r->purging_mask;
    while (next + n < PAGES_PER_REGION && n < AHEAD_PAGES && (untouched >> (next + n) & 1))
      n++;
  }
  pthread_mutex_unlock(&pool->lock);
  if (n) kmem_populate((char *)region + (size_t)next * PAGE_SIZE, (size_t)n * PAGE_SIZE);
}

/* Locked: n pages of r from page first free again. */
static void run_release(hak_pool_t *pool, hak_region_t *r, unsigned first, unsigned n) {
  bucket_remove(pool, r);
  r->free_mask |= run_mask(first, n);
  uint64_t now = hak_now_ms();
  region_add_free(r, n, now);
  bucket_insert(pool, r);
  pool->busy_ms = now;
  for (unsigned i = first; i < first + n; i++)
    r->page_freed_ms[i] = now;
}

/* Unlocked, after pages went back to their region: now there is something
 * for an idle process to give back. */
static void pages_released(bool empty) {
  if (empty || hak_opt.purge == PURGE_PAGE) hak_background_want();
  hak_pool_purge_maybe();
}

/* False when the run is free already (or out for purging): a second free of
 * a large block that raced the first past free's checks. */
static bool span_free_locked(hak_pool_t *pool, hak_page_t *span) {
  hak_region_t *r = region_of_page(span);
  unsigned first = (unsigned)(span - r->pages), n = span->span_pages;
  uint32_t run = run_mask(first, n);
  if ((r->free_mask | r->purging_mask) & run) return false;
  atomic_store_explicit(&span->owner, 0, memory_order_relaxed);
  span->block_size = 0;
  run_release(pool, r, first, n);
  return true;
}

void hak_span_free(hak_page_t *span) {
  hak_region_t *r = region_of_page(span);
  hak_pool_t *pool = pool_of(r->node);
  pthread_mutex_lock(&pool->lock);
  bool freed = span_free_locked(pool, span);
  bool empty = r->nfree == PAGES_PER_REGION;
  pthread_mutex_unlock(&pool->lock);
  if (!freed) {
    hak_invalid_free(page_start(span));
    return;
  }
  pages_released(empty);
}

/* Span shrinks to npages (fewer than it has, at least one): its tail
 * pages go back to the region, as a free of a span would give them. */
void hak_span_shrink(hak_page_t *span, unsigned npages) {
  hak_region_t *r = region_of_page(span);
  hak_pool_t *pool = pool_of(r->node);
  unsigned first = (unsigned)(span - r->pages), old = span->span_pages;
  pthread_mutex_lock(&pool->lock);
  run_release(pool, r, first + npages, old - npages);
  span->span_pages = (uint8_t)npages;
  pthread_mutex_unlock(&pool->lock);
  pages_released(false);
}

/* Gives back every free page. Returns the number of purged runs. */
size_t hak_pool_trim(void) {
  return hak_pool_purge(true, true, NULL);
}

void hak_pool_fork_prepare(void) {
  for (int n = 0; n < kmem_node_count(); n++)
    pthread_mutex_lock(&pools[n].lock);
}

void hak_pool_fork_release(void) {
  for (int n = kmem_node_count() - 1; n >= 0; n--)
    pthread_mutex_unlock(&pools[n].lock);
}

/* In the fork child, after the pools are unlocked. kmem sends the purges it
 * still holds again here: they finish now. Pages still out for purging were
 * on the stacks of threads that do not exist here (between collecting and
 * submitting, or between a reap and its completion): no completion comes for
 * them, so they go back to the free pages, dirty (maybe purged, not known
 * zero), and a later purge takes them again. */
void hak_pool_fork_child(void) {
  kmem_purge_reap(purge_done, true);
  for (int n = 0; n < kmem_node_count(); n++) {
    hak_pool_t *pool = &pools[n];
    pthread_mutex_lock(&pool->lock);
    for (unsigned k = 0; k <= PAGES_PER_REGION; k++) {
      for (hak_region_t *r = pool->buckets[k], *next; r; r = next) {
        next = r->next;
        uint32_t mask = r->purging_mask;
        if (!mask) continue;
        bucket_remove(pool, r); /* reinserted at a bucket's head: looked at again, mask 0 */
        r->purging_mask = 0;
        r->free_mask |= mask;
        region_add_free(r, (unsigned)__builtin_popcount(mask), hak_now_ms());
        bucket_insert(pool, r);
      }
    }
    pthread_mutex_unlock(&pool->lock);
  }
}

HAK_EXPORT int hak_node_count(void) {
  return kmem_node_count();
}

HAK_EXPORT int hak_node_stats_get(int node, hak_node_stats_t *out) {
  if (node < 0 || node >= kmem_node_count()) return -1;
  out->regions = atomic_load_explicit(&pools[node].regions, memory_order_relaxed);
  out->committed_bytes = atomic_load_explicit(&pools[node].committed, memory_order_relaxed);
  return 0;
}
