/* Thread heaps: creation on a thread's first allocation, abandonment at its
 * exit, reuse of heap structs, and what fork leaves behind. */
#include "internal.h"

#include <errno.h>
#include <string.h>

hak_page_t hak_page_empty;
/* Every direct entry points at the empty page, and every mid class's top
 * past a NULL slot, so a thread's first malloc takes the slow path without
 * a separate "initialised?" test. */
#define EMPTY_MID_TOP offsetof(hak_heap_t, mid_slot[0][1])
hak_heap_t hak_heap_empty = {.direct = {[0 ... NUM_CLASSES - 1] = &hak_page_empty},
                             .mid_top = {[0 ... MIDCACHE_CLASSES - 1] = EMPTY_MID_TOP},
                             .mid_end = {[0 ... MIDCACHE_CLASSES - 1] = EMPTY_MID_TOP},
                             .region_tag = REGION_TAG_NONE};
#ifdef HAK_TLS_DLOPEN
__thread hak_heap_t *hak_tls_heap = &hak_heap_empty;
#else
__thread hak_heap_t *hak_tls_heap __attribute__((tls_model("initial-exec"))) = &hak_heap_empty;
#endif

static pthread_mutex_t heaps_lock = PTHREAD_MUTEX_INITIALIZER;
static _Atomic(hak_heap_t *) heaps;   /* every heap struct ever made; never freed */
static _Atomic unsigned thread_heaps; /* heaps threads own now, or are about to */
/* heap_exited: the thread's heap destructor ran. glibc runs pthread key
 * destructors in at most 4 rounds, so a heap a later destructor took in
 * the last round would never be given back (one that re-arms its key and
 * allocates each time left a heap per thread, 70 KB each): from then on
 * the thread allocates from the shared heaps. */
#ifdef HAK_TLS_DLOPEN
static __thread bool heap_reserved, heap_exited;
#else
static __thread bool heap_reserved __attribute__((tls_model("initial-exec")));
static __thread bool heap_exited __attribute__((tls_model("initial-exec")));
#endif
pthread_key_t hak_thread_key;

static void heap_reset(hak_heap_t *heap) {
  for (unsigned c = 0; c < NUM_CLASSES; c++) {
    heap->queues[c] = (hak_queue_t){0};
    heap->direct[c] = &hak_page_empty;
  }
  heap->full = (hak_queue_t){0};
  heap->slow_calls = 0;
  heap->foreign = false;
  /* a new owner's large blocks are probed afresh (slow.c large_populate) */
  heap->large_probe = NULL;
  heap->large_fresh = 0;
  heap->large_written = false;
  hak_midcache_reset(heap);
}

/* A heap struct for a new owner: one a thread left, or a new one. */
static hak_heap_t *heap_take(void) {
  hak_heap_t *heap = NULL;
  pthread_mutex_lock(&heaps_lock);
  for (hak_heap_t *h = atomic_load_explicit(&heaps, memory_order_relaxed); h; h = h->pool_next) {
    if (!h->in_use) {
      heap = h;
      break;
    }
  }
  if (!heap) {
    heap = kmem_meta_alloc(sizeof *heap);
    if (heap) {
      heap_reset(heap);
      heap->pool_next = atomic_load_explicit(&heaps, memory_order_relaxed);
      atomic_store_explicit(&heaps, heap, memory_order_release);
      atomic_fetch_add_explicit(&hak_gstats.heaps_created, 1, memory_order_relaxed);
    }
  }
  if (heap) heap->in_use = true;
  pthread_mutex_unlock(&heaps_lock);
  if (!heap) {
    errno = ENOMEM;
    return NULL;
  }
  hak_heap_set_node(heap, kmem_current_node());
  return heap;
}

/* Whether the calling thread may own a heap with `max` owned already (0:
 * any number); counted then, so threads starting together see each other.
 * Never once its heap's destructor ran. */
bool hak_thread_heap_reserve(unsigned max) {
  if (heap_exited) return false;
  if (heap_reserved) return true;
  unsigned n = atomic_load_explicit(&thread_heaps, memory_order_relaxed);
  do {
    if (max && n >= max) return false;
  } while (!atomic_compare_exchange_weak_explicit(&thread_heaps, &n, n + 1, memory_order_relaxed,
                                                  memory_order_relaxed));
  heap_reserved = true;
  return true;
}

hak_heap_t *hak_heap_for_thread(void) {
  if (!hak_thread_heap_reserve(0)) return NULL; /* it shares (hak_shared_enter) */
  heap_reserved = false;                        /* the count is the heap's from here */
  if (atomic_load_explicit(&hak_init_state, memory_order_acquire) != 2) hak_init();
  hak_heap_t *heap = heap_take();
  if (!heap) {
    atomic_fetch_sub_explicit(&thread_heaps, 1, memory_order_relaxed);
    return NULL;
  }
  hak_tls_heap = heap;
  /* the key's destructor abandons the heap when the thread exits */
  pthread_setspecific(hak_thread_key, heap);
  return heap;
}

/* A heap no thread owns, for the shared set (shared.c): never abandoned,
 * listed for the counters and fork. */
void hak_heap_register(hak_heap_t *heap) {
  heap_reset(heap);
  heap->in_use = true;
  hak_heap_set_node(heap, kmem_current_node());
  pthread_mutex_lock(&heaps_lock);
  heap->pool_next = atomic_load_explicit(&heaps, memory_order_relaxed);
  atomic_store_explicit(&heaps, heap, memory_order_release);
  pthread_mutex_unlock(&heaps_lock);
}

static bool heap_has_pages(const hak_heap_t *heap) {
  for (unsigned c = 0; c < NUM_CLASSES; c++)
    if (heap->queues[c].first) return true;
  return heap->full.first != NULL;
}

void hak_heap_set_node(hak_heap_t *heap, int node) {
  if (node != heap->node && heap_has_pages(heap)) heap->foreign = true;
  heap->node = node;
  heap->region_tag = region_small_tag(node);
}

/* Applies fn to every page the heap holds, in its class queues and parked. */
static void heap_each_page(hak_heap_t *heap, void (*fn)(hak_page_t *)) {
  for (unsigned c = 0; c < NUM_CLASSES; c++)
    for (hak_page_t *p = heap->queues[c].first; p; p = p->next)
      fn(p);
  for (hak_page_t *p = heap->full.first; p; p = p->next)
    fn(p);
}

/* Collects the pages of a list; empty ones go back to their region, the
 * others are prepended to *keep for the abandoned pools. */
static void abandon_list(hak_page_t *first, hak_page_t **keep) {
  for (hak_page_t *p = first, *next; p; p = next) {
    next = p->next;
    hak_page_collect(p);
    p->prev = NULL;
    page_flags_set(p, page_flags(p) & ~PAGE_IN_FULL);
    if (p->used == 0) {
      p->next = NULL;
      hak_span_free(p);
      HAK_HOOK(HAK_HOOK_ABANDON); /* mid-dismantle: what runs here must not use the heap */
    } else {
      page_set_heap(p, NULL);
      p->next = *keep;
      *keep = p;
    }
  }
}

/* Thread exit. The heap leaves TLS first: whatever this thread still
 * allocates or frees (other TLS destructors, the pool's purging) must not
 * touch queues that are being taken apart. Then every page is released
 * (no freer delivers to this heap any more), the blocks already delivered
 * are taken, and the pages with live blocks go to their nodes' pools. */
void hak_heap_abandon(hak_heap_t *heap) {
  if (heap == &hak_heap_empty) return;
  HAK_ASSERT(!hak_heap_is_shared(heap)); /* the set's heaps outlive their threads */
  if (hak_tls_heap == heap) hak_tls_heap = &hak_heap_empty;
  /* cross-node frees leave first; then the node's mailbox, some of it ours */
  hak_mailbox_flush(heap);
  hak_mailbox_drain(heap, heap->node, SIZE_MAX);
  hak_mailbox_orphan(heap);
  hak_remote_stash_flush(heap); /* the drain above may have stashed blocks too */
  if (atomic_load_explicit(&heap->delayed, memory_order_relaxed)) hak_remote_drain_delayed(heap);
  hak_midcache_flush(heap); /* after the drains, which may cache blocks */
  HAK_CHECK_HEAP(heap, -1);
  heap_each_page(heap, hak_remote_release);
  hak_block_t *b = atomic_exchange_explicit(&heap->delayed, NULL, memory_order_acquire);
  while (b) {
    hak_block_t *next = b->next;
    page_push_local(page_of(region_of(b), b), b);
    b = next;
  }
  hak_page_t *keep = NULL;
  for (unsigned c = 0; c < NUM_CLASSES; c++)
    abandon_list(heap->queues[c].first, &keep);
  abandon_list(heap->full.first, &keep);
  stat_inc(&heap->stats.pages_abandoned, hak_abandoned_push(keep));
  heap_reset(heap);
  pthread_mutex_lock(&heaps_lock);
  heap->in_use = false;
  pthread_mutex_unlock(&heaps_lock);
  atomic_fetch_sub_explicit(&thread_heaps, 1, memory_order_relaxed);
}

/* NULL past the thread's heap destructor: it has none, and takes none. */
static hak_heap_t *heap_of_caller(void) {
  if (heap_exited) return NULL;
  hak_heap_t *heap = hak_tls_heap;
  return heap != &hak_heap_empty ? heap : hak_heap_for_thread();
}

HAK_EXPORT int hakmem_thread_set_node(int node) {
  hak_heap_t *heap = heap_of_caller();
  if (!heap && !heap_exited) return -1;
  if (node < 0 || node >= kmem_node_count()) {
    errno = EINVAL;
    return -1;
  }
  if (heap) hak_heap_set_node(heap, node); /* pages it has stay; new ones come from this node */
  return 0;
}

HAK_EXPORT int hakmem_thread_node(void) {
  hak_heap_t *heap = heap_of_caller();
  return heap ? heap->node : kmem_current_node();
}

HAK_EXPORT void hakmem_flush(void) {
  hak_heap_t *heap = heap_of_caller();
  if (!heap) return;
  hak_mailbox_flush(heap);
  hak_mailbox_drain(heap, heap->node, SIZE_MAX);
  hak_remote_stash_flush(heap);
  hak_heaps_stash_take(heap, false);
  if (atomic_load_explicit(&heap->delayed, memory_order_relaxed)) hak_remote_drain_delayed(heap);
  hak_midcache_flush(heap);
}

/* malloc_trim: the caller's empty pages go back too, even the one page per
 * class a heap otherwise keeps for its next malloc. */
void hak_heap_trim(hak_heap_t *heap) {
  hak_remote_stash_flush(heap); /* other heaps' blocks, for their owners' trim */
  hak_midcache_flush(heap);
  for (unsigned c = 0; c < NUM_CLASSES; c++) {
    for (hak_page_t *p = heap->queues[c].first, *next; p; p = next) {
      next = p->next;
      hak_page_collect(p);
      if (p->used == 0) {
        queue_remove(&heap->queues[c], p);
        hak_span_free(p);
      }
    }
    heap_sync_direct(heap, c);
  }
}

void hak_heap_thread_exit(hak_heap_t *heap) {
  heap_exited = true;
  hak_heap_abandon(heap);
}

HAK_EXPORT void hak_thread_done(void) {
  hak_heap_t *heap = hak_tls_heap;
  if (heap == &hak_heap_empty) return;
  pthread_setspecific(hak_thread_key, NULL);
  hak_heap_abandon(heap);
}

void hak_heaps_stats(hak_heap_stats_t *sum) {
  for (hak_heap_t *h = atomic_load_explicit(&heaps, memory_order_acquire); h; h = h->pool_next) {
    _Atomic uint64_t *src = (_Atomic uint64_t *)&h->stats, *dst = (_Atomic uint64_t *)sum;
    for (size_t i = 0; i < sizeof *sum / sizeof(uint64_t); i++)
      dst[i] += atomic_load_explicit(&src[i], memory_order_relaxed);
  }
}

/* Takes the stashed chains of every heap but except (its thread hands its
 * own over). Without the lock: heaps are never freed, and a take is safe
 * whatever the heap's thread is doing. Returns whether blocks were left. */
bool hak_heaps_stash_take(hak_heap_t *except, bool idle_only) {
  bool left = false;
  for (hak_heap_t *h = atomic_load_explicit(&heaps, memory_order_acquire); h; h = h->pool_next)
    if (h != except) left |= hak_remote_stash_take(h, idle_only);
  return left;
}

void hak_heaps_fork_prepare(void) {
  pthread_mutex_lock(&heaps_lock);
}
void hak_heaps_fork_release(void) {
  pthread_mutex_unlock(&heaps_lock);
}

/* In the child only the forking thread lives. The other threads' heaps stay
 * in use for good: those threads may have been halfway through a queue
 * change or a remote-free hand-off, so their lists cannot be trusted. Their
 * pages are unreachable here (as in mimalloc): a free into one is a remote
 * free that nobody collects, and they stay counted as committed. Heaps that
 * were already free (cleanly abandoned) are reused as usual; the shared
 * heaps were locked across fork and are whole. The child's threads count
 * against HAKMEM_MAX_HEAPS afresh. Stashes are taken, so what other threads
 * freed into live pages comes back; a thread that was pushing a block or
 * handing a chain over at the fork loses that block or chain, as a remote
 * free under way at the fork always could. The survivor's own stash stays:
 * it may have forked from a signal handler in the middle of a push. */
void hak_heaps_fork_child(hak_heap_t *survivor) {
  for (hak_heap_t *h = atomic_load_explicit(&heaps, memory_order_relaxed); h; h = h->pool_next)
    if (h == survivor || hak_heap_is_shared(h)) heap_each_page(h, hak_remote_fork_child);
  atomic_store_explicit(&thread_heaps, survivor != &hak_heap_empty, memory_order_relaxed);
  hak_heaps_stash_take(survivor, false);
  pthread_mutex_unlock(&heaps_lock);
}
