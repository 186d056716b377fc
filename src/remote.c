/* The remote-free protocol: how a block freed by a thread that does not own
 * its page gets back to that page, and who may move a page between the
 * states below. Every transition is one function of this file.
 *
 * A page's state is its owner word (page->owner: a heap, or none), the two
 * state bits of its remote word (page->remote) and, without an owner,
 * whether it is on the abandoned list of its region's node (page->abandoned,
 * under that node's abandoned lock).
 *
 *   OWNED      owner H, PLAIN    remote frees push onto page->remote
 *   NOTIFY     owner H, NOTIFY   H parked the page as full (and may have taken
 *                                it back since): the next remote free goes to
 *                                H->delayed, so H sees the page again
 *   FREEING    owner H, FREEING  a freer is delivering to H->delayed
 *   RELEASED   NEVER, not listed H is dismantled at thread exit; remote
 *                                frees push onto page->remote
 *   ABANDONED  NEVER, listed     in its region node's pool; remote frees push
 *                                onto page->remote
 *
 *   transition  from -> to                  by                   function
 *   own         fresh span -> OWNED         the heap taking it   hak_page_init (page.c)
 *   free        OWNED|RELEASED|ABANDONED    any other thread     hak_remote_free,
 *               -> the same                 (a chain: stashed    hak_remote_stash
 *                                           blocks of an owned
 *                                           page, see below)
 *   notify      NOTIFY -> FREEING -> OWNED  any other thread     hak_remote_free
 *   park        OWNED -> NOTIFY             H, lists all empty   hak_remote_park
 *               (FREEING: not parked; the delivery under way brings it back)
 *   deliver     H takes H->delayed; a block  H                   hak_remote_drain_delayed
 *               of a FREEING page stays there (no page is retired under a freer)
 *   release     OWNED|NOTIFY -> RELEASED    H at exit; waits out hak_remote_release
 *                                           FREEING
 *   fork        FREEING -> NOTIFY           the fork child (the  hak_remote_fork_child
 *                                           freer is gone there)
 *   abandon     RELEASED -> ABANDONED       H at exit            hak_abandoned_push
 *   claim       ABANDONED -> OWNED          a freer of its node  hak_abandoned_claim
 *   adopt       ABANDONED -> OWNED          a heap of its node   hak_abandoned_adopt
 *   reclaim     ABANDONED, all blocks free  the last block's     abandoned_reclaim_check,
 *               -> back to its region       freer; push, adopt,  hak_abandoned_push,
 *                                           trim                 _adopt, _trim
 *
 * A freer may first keep blocks of a page another heap owns in its stash and
 * hand them over later with one free of the whole chain. Until then they
 * are not the page's (the owner cannot collect them, a parked page is not
 * notified) but still count as used, so the page cannot go back to its
 * region under them; whatever state the page is in by then, the chain takes
 * the free or notify transition as a single block would. Any other thread
 * may take the blocks off the stash (one CAS on its cut) and hand them over
 * the same way: malloc_trim, hakmem_flush, the background thread for a stash left
 * unchanged for one of its periods, a fork child for the threads it lost.
 *
 * RELEASED and ABANDONED pages have nobody to collect their remote lists, so
 * whoever frees into one checks, under the abandoned lock, whether that was
 * the page's last block: an abandoned page goes back to its region the
 * moment its last block is freed, by whichever thread frees it. */
#include "internal.h"

#include <sched.h>

#define ADOPT_SCAN 8 /* abandoned pages looked at per adoption attempt */
/* A freer claims an abandoned page only while it holds few pages of that
 * class: a thread that frees into many dead threads' pages but allocates
 * little would otherwise pile them up, remote frees emptying the ones it
 * never gets to (RSS grew without bound under thread churn). */
#define CLAIM_QUEUE_MAX 4

typedef struct hak_abandoned {
  pthread_mutex_t lock;
  hak_page_t *first[NUM_CLASSES], *last[NUM_CLASSES];
  _Atomic uint32_t count[NUM_CLASSES]; /* read without the lock */
} hak_abandoned_t;

static hak_abandoned_t abandoned[KMEM_MAX_NODES] = {
    [0 ... KMEM_MAX_NODES - 1] = {.lock = PTHREAD_MUTEX_INITIALIZER}};

static hak_abandoned_t *abandoned_of(const hak_page_t *page) {
  return &abandoned[region_of_page(page)->node];
}

static unsigned remote_state(uintptr_t word) {
  return (unsigned)(word & REMOTE_STATE_MASK);
}

static size_t remote_count(uintptr_t word) {
  return word / REMOTE_COUNT_ONE;
}

/* Moves the state from any state in from_mask (bit per state) to `to`,
 * keeping the list. Returns false if the state was not in from_mask. */
static bool remote_set_state(hak_page_t *page, unsigned from_mask, uintptr_t to) {
  uintptr_t old = atomic_load_explicit(&page->remote, memory_order_relaxed);
  do {
    if (!(from_mask & (1u << remote_state(old)))) return false;
  } while (!atomic_compare_exchange_weak_explicit(&page->remote, &old,
                                                  (old & ~REMOTE_STATE_MASK) | to,
                                                  memory_order_acq_rel, memory_order_relaxed));
  return true;
}

static void abandoned_reclaim_check(hak_page_t *page);

/* Pushes the chain first..last onto a heap's delayed list. */
static void delayed_push(hak_heap_t *heap, hak_block_t *first, hak_block_t *last) {
  hak_block_t *head = atomic_load_explicit(&heap->delayed, memory_order_relaxed);
  do {
    last->next = head;
  } while (!atomic_compare_exchange_weak_explicit(&heap->delayed, &head, first,
                                                  memory_order_release, memory_order_relaxed));
}

/* free, notify: one CAS puts the chain first..last (n blocks of the page)
 * on the page's remote list; a NOTIFY page's chain goes to its owner's
 * delayed list instead, which the owner drains on its next slow path: that
 * is how a parked page gets revisited. */
static void remote_push(hak_page_t *page, hak_block_t *first, hak_block_t *last, size_t n) {
  uintptr_t old = atomic_load_explicit(&page->remote, memory_order_relaxed);
  for (;;) {
    if (remote_state(old) == REMOTE_NOTIFY) {
      if (!atomic_compare_exchange_weak_explicit(&page->remote, &old,
                                                 (old & ~REMOTE_STATE_MASK) | REMOTE_FREEING,
                                                 memory_order_acquire, memory_order_relaxed))
        continue;
      /* FREEING keeps the owner: it cannot release the page (remote_release
       * waits) nor retire it (our blocks on its delayed list stay there
       * until we are done). */
      delayed_push(page_heap(page), first, last);
      HAK_HOOK(HAK_HOOK_FREEING);
      remote_set_state(page, 1u << REMOTE_FREEING, REMOTE_PLAIN);
      return;
    }
    last->next = remote_list(old);
    uintptr_t count = (old & ~(REMOTE_COUNT_ONE - 1)) + n * REMOTE_COUNT_ONE;
    if (atomic_compare_exchange_weak_explicit(&page->remote, &old,
                                              (uintptr_t)first | count | remote_state(old),
                                              memory_order_release, memory_order_relaxed))
      break;
  }
  if (remote_state(old) == REMOTE_NEVER) abandoned_reclaim_check(page);
}

void hak_remote_free(hak_page_t *page, hak_block_t *b) {
  remote_push(page, b, b, 1);
}

/* ---- the freer's stash: blocks of another heap's page, handed over together */

/* Bytes of one page's blocks a stash entry gathers before handing them
 * over: one CAS per chain instead of one per block, and at most
 * NUM_CLASSES * STASH_BYTES held back from the owners per heap. */
#define STASH_BYTES 8192

/* Blocks pushed and not yet handed over: past the cut. */
static size_t stash_pending(uintptr_t top, uint64_t cut) {
  return (size_t)((top / STASH_PUSH_ONE - cut) & 0xFFFF);
}

/* The n-th block of a chain from first (its end as far as a hand-over
 * goes; the blocks below were handed over already). */
static hak_block_t *chain_at(hak_block_t *first, size_t n) {
  while (--n)
    first = first->next;
  return first;
}

/* The blocks pushed past cut, up to top, onto page's remote list: the CAS
 * moves the cut past them (it fails when a taker moved it first); mine:
 * the freer's pushes since its entry's last start, whose chain ends at
 * s->last, else the rest is walked for its end. */
static void stash_give(hak_heap_t *heap, unsigned cls, hak_page_t *page, uintptr_t top,
                       uint64_t cut, size_t mine) {
  size_t n;
  do {
    n = stash_pending(top, cut);
    if (!n) return; /* taken whole */
  } while (!atomic_compare_exchange_weak_explicit(&heap->stash_cut[cls], &cut, cut + n,
                                                  memory_order_release, memory_order_relaxed));
  hak_block_t *first = remote_list(top);
  remote_push(page, first, n == mine ? heap->stash[cls].last : chain_at(first, n), n);
  stat_inc(&heap->stats.remote_handoffs, 1);
}

/* The entry's chain, all of it, to its page, and the entry empty: when the
 * freer frees into another page of the class, or flushes. */
static void stash_hand_over(hak_heap_t *heap, unsigned cls) {
  hak_stash_t *s = &heap->stash[cls];
  heap->stash_mask &= ~((uint64_t)1 << cls);
  hak_page_t *page = s->page;
  s->page = NULL;
  uintptr_t top = atomic_load_explicit(&s->top, memory_order_relaxed);
  uint64_t cut = atomic_load_explicit(&heap->stash_cut[cls], memory_order_relaxed);
  stash_give(heap, cls, page, top, cut, (uint16_t)(top / STASH_PUSH_ONE - s->start));
}

/* Blocks of class cls a chain holds: ceil(STASH_BYTES / size), by the
 * class's inverse (no divide); at least 2, as sizes of STASH_BYTES and
 * more are not stashed. */
static size_t stash_chain_blocks(unsigned cls) {
  return class_block_index(cls, STASH_BYTES + hak_class_size[cls] - 1);
}

/* The push that filled the entry's chain hands the chain over, and the
 * entry keeps its page and its copy of the page's blocks: the next free
 * into the page is a push again, not a new start (a start costs more than
 * the rest of a chain's pushes together), and comes here once more only to
 * note where its chain ends. Out of line: the stashing free stays a leaf
 * without saved registers. */
HAK_NOINLINE void hak_remote_stash_rotate(hak_heap_t *heap, unsigned cls) {
  hak_stash_t *s = &heap->stash[cls];
  uintptr_t top = atomic_load_explicit(&s->top, memory_order_relaxed);
  uint16_t pushes = (uint16_t)(top / STASH_PUSH_ONE);
  size_t mine = (uint16_t)(pushes - s->start);
  if (mine == 1) { /* the first push after the hand-over */
    s->last = remote_list(top);
    s->limit = (uint16_t)(s->start + stash_chain_blocks(cls));
    hak_background_want(); /* as a start: a chain the freer may leave behind */
    return;
  }
  uint64_t cut = atomic_load_explicit(&heap->stash_cut[cls], memory_order_relaxed);
  s->start = pushes;
  s->limit = (uint16_t)(pushes + 1);
  HAK_HOOK(HAK_HOOK_ROTATE);
  stash_give(heap, cls, s->page, top, cut, mine);
}

/* stash, first block: of page in its class's empty entry (the push, the
 * rest of the time, is hak_remote_stash in internal.h). */
static inline void stash_begin(hak_heap_t *heap, hak_page_t *page, hak_block_t *b) {
  unsigned cls = page->cls;
  uint32_t block_size = page->block_size;
  if (block_size >= STASH_BYTES) {
    stat_inc(&heap->stats.remote_handoffs, 1);
    remote_push(page, b, b, 1);
    return;
  }
  hak_stash_t *s = &heap->stash[cls];
  s->page = page;
  s->last = b;
  s->span = (uint32_t)page->capacity * block_size;
  s->inverse = hak_class_inverse[cls];
  s->first = page_start(page);
  /* once pushed, a taker may hand b over and the page may be freed and
   * reused: its descriptor is not read after the push */
  uint16_t pushes = (uint16_t)(hak_stash_push(s, b) / STASH_PUSH_ONE);
  s->start = (uint16_t)(pushes - 1);
  s->limit = (uint16_t)(s->start + stash_chain_blocks(cls));
  heap->stash_mask |= (uint64_t)1 << cls;
  hak_background_want(); /* it takes the stashes of threads that stopped freeing */
}

/* A block of another page of the class hands the entry over first; out of
 * line, so that the common start, into an empty entry, saves no registers. */
static HAK_NOINLINE void stash_switch(hak_heap_t *heap, hak_page_t *page, hak_block_t *b) {
  stash_hand_over(heap, page->cls);
  stash_begin(heap, page, b);
}

HAK_NOINLINE void hak_remote_stash_start(hak_heap_t *heap, hak_page_t *page, hak_block_t *b) {
  if (heap->stash[page->cls].page)
    stash_switch(heap, page, b);
  else
    stash_begin(heap, page, b);
}

/* Hands every stash entry over: on the slow path every so often, on
 * hakmem_flush, malloc_trim and thread exit. */
void hak_remote_stash_flush(hak_heap_t *heap) {
  while (heap->stash_mask)
    stash_hand_over(heap, (unsigned)__builtin_ctzll(heap->stash_mask));
}

/* take: another thread hands over the blocks heap pushed past the cut, so
 * that they do not wait for a freer that stopped freeing (idle, or gone in
 * a fork child): malloc_trim and hakmem_flush take every entry, the
 * background thread (idle_only) those unchanged since its previous pass.
 * The cut is read before top, so top has every push the cut counts; the
 * CAS on the cut makes the blocks between the taker's, and fails when the
 * freer (or another taker) moved it first: they are handed over then. All
 * pushes past a cut are of one page: the freer moves the cut before it
 * pushes a block of another page. Returns whether blocks were left (a busy
 * freer's, idle_only). */
bool hak_remote_stash_take(hak_heap_t *heap, bool idle_only) {
  bool left = false;
  for (unsigned c = 0; c < NUM_CLASSES; c++) {
    uint64_t cut = atomic_load_explicit(&heap->stash_cut[c], memory_order_acquire);
    uintptr_t top = atomic_load_explicit(&heap->stash[c].top, memory_order_acquire);
    if (idle_only && top != heap->stash_seen[c]) {
      heap->stash_seen[c] = top; /* changed: its freer is busy, look again next pass */
      left |= stash_pending(top, cut) != 0;
      continue;
    }
    size_t n = stash_pending(top, cut);
    if (!n || !atomic_compare_exchange_strong_explicit(&heap->stash_cut[c], &cut, cut + n,
                                                       memory_order_acq_rel, memory_order_relaxed))
      continue;
    hak_block_t *first = remote_list(top);
    remote_push(page_of(region_of(first), first), first, chain_at(first, n), n);
    atomic_fetch_add_explicit(&hak_gstats.remote_handoffs, 1, memory_order_relaxed);
    /* marked: the freer's next push wants the background thread
     * (hak_stash_pushed). A push under way, which read top before the
     * mark, wants nothing: the background thread comes to look again. */
    atomic_compare_exchange_strong_explicit(&heap->stash[c].top, &top, top | STASH_TAKEN,
                                            memory_order_relaxed, memory_order_relaxed);
    hak_background_want();
  }
  return left;
}

/* Takes the remote list, leaving the state bits, and puts it on `free`:
 * without a walk when `free` is empty, as it is when malloc looks. Called
 * by the owner, or under the abandoned lock for an abandoned page. */
size_t hak_page_collect_remote(hak_page_t *page) {
  uintptr_t old = atomic_load_explicit(&page->remote, memory_order_relaxed);
  do {
    if (!remote_list(old)) return 0;
  } while (!atomic_compare_exchange_weak_explicit(&page->remote, &old, old & REMOTE_STATE_MASK,
                                                  memory_order_acquire, memory_order_relaxed));
  hak_block_t *head = remote_list(old);
  size_t n = remote_count(old);
  if (page->free) {
    hak_block_t *tail = head;
    while (tail->next)
      tail = tail->next;
    tail->next = page->free;
  }
  page->free = head;
  page->free_is_zero = 0;
  page->used = (uint16_t)(page->used - n);
  return n;
}

/* park: the owner found every list of the page empty. PARK_RETRY: a remote
 * free came in meanwhile, collect again; PARK_LATER: a freer is delivering
 * to our delayed list right now, which will bring the page back anyway, and
 * parking it then would strand it (the freer resets the state after us). */
park_result_t hak_remote_park(hak_heap_t *heap, hak_page_t *page) {
  uintptr_t old = atomic_load_explicit(&page->remote, memory_order_relaxed);
  for (;;) {
    if (remote_list(old)) return PARK_RETRY;
    if (remote_state(old) == REMOTE_FREEING) return PARK_LATER;
    if (remote_state(old) == REMOTE_NOTIFY) break; /* taken back without a reset */
    if (atomic_compare_exchange_weak_explicit(&page->remote, &old, REMOTE_NOTIFY,
                                              memory_order_acq_rel, memory_order_relaxed))
      break;
  }
  queue_remove(&heap->queues[page->cls], page);
  queue_push_back(&heap->full, page);
  page_flags_set(page, page_flags(page) | PAGE_IN_FULL);
  return PARK_DONE;
}

/* deliver: the owner takes its delayed list. A block whose page is still
 * FREEING goes back on the list for the next slow path: freeing it now could
 * retire the page under the freer, whose late reset would then land on the
 * page's next life. */
void hak_remote_drain_delayed(hak_heap_t *heap) {
  hak_block_t *b = atomic_exchange_explicit(&heap->delayed, NULL, memory_order_acquire);
  hak_block_t *wait_first = NULL, *wait_last = NULL;
  size_t n = 0;
  while (b) {
    hak_block_t *next = b->next;
    hak_page_t *page = page_of(region_of(b), b);
    if (remote_state(atomic_load_explicit(&page->remote, memory_order_acquire)) == REMOTE_FREEING) {
      b->next = wait_first;
      wait_first = b;
      if (!wait_last) wait_last = b;
    } else {
      hak_free_local_slow(heap, page, b); /* delayed blocks are always of our pages */
      n++;
    }
    b = next;
  }
  if (wait_first) delayed_push(heap, wait_first, wait_last);
  stat_inc(&heap->stats.remote_blocks_collected, n);
}

/* release: at thread exit, before the heap is dismantled. Waits out a freer
 * delivering to the heap's delayed list, so after this no block can reach
 * that list any more. */
void hak_remote_release(hak_page_t *page) {
  const unsigned not_freeing = (1u << REMOTE_PLAIN) | (1u << REMOTE_NOTIFY) | (1u << REMOTE_NEVER);
  while (!remote_set_state(page, not_freeing, REMOTE_NEVER))
    sched_yield();
}

/* fork child: a freer that was delivering to the survivor's delayed list
 * (FREEING) does not exist here, and its block may be lost. The state must
 * not stay (the thread's exit would wait for it forever), and a parked page
 * must still be revisited: the next remote free notifies. */
void hak_remote_fork_child(hak_page_t *page) {
  remote_set_state(page, 1u << REMOTE_FREEING, REMOTE_NOTIFY);
}

/* ---- abandoned pages: one list per size class on each node ---------------- */

/* Every block of an abandoned page has come back (abandoned lock held). Its
 * used count is stable here: nobody owns the page. */
static bool abandoned_all_free(const hak_page_t *p) {
  return remote_count(atomic_load_explicit(&p->remote, memory_order_acquire)) == p->used;
}

static void abandoned_link(hak_abandoned_t *a, hak_page_t *p) {
  unsigned c = p->cls;
  p->next = NULL;
  p->prev = a->last[c];
  if (a->last[c])
    a->last[c]->next = p;
  else
    a->first[c] = p;
  a->last[c] = p;
  atomic_store_explicit(&p->abandoned, 1, memory_order_relaxed);
  atomic_fetch_add_explicit(&a->count[c], 1, memory_order_relaxed);
}

static void abandoned_unlink(hak_abandoned_t *a, hak_page_t *p) {
  unsigned c = p->cls;
  if (p->prev)
    p->prev->next = p->next;
  else
    a->first[c] = p->next;
  if (p->next)
    p->next->prev = p->prev;
  else
    a->last[c] = p->prev;
  p->next = p->prev = NULL;
  atomic_store_explicit(&p->abandoned, 0, memory_order_relaxed);
  atomic_fetch_sub_explicit(&a->count[c], 1, memory_order_relaxed);
}

/* Spans unlinked under the lock go back to their regions after it: the
 * pool lock is never taken inside the abandoned lock. */
static void spans_free(hak_page_t *list) {
  for (hak_page_t *p = list, *next; p; p = next) {
    next = p->next;
    p->next = NULL;
    hak_span_free(p);
  }
}

/* reclaim, by a freer that pushed onto a page without owner: if that was
 * the page's last block and the page is abandoned, it goes back. A page
 * still RELEASED is checked by hak_abandoned_push instead, under the same
 * lock, after every push before it. */
static void abandoned_reclaim_check(hak_page_t *page) {
  hak_abandoned_t *a = abandoned_of(page);
  pthread_mutex_lock(&a->lock);
  bool reclaim =
      atomic_load_explicit(&page->abandoned, memory_order_relaxed) && abandoned_all_free(page);
  if (reclaim) abandoned_unlink(a, page);
  pthread_mutex_unlock(&a->lock);
  if (reclaim) hak_span_free(page);
}

/* abandon: pages of a dismantled heap (linked by next, all RELEASED, their
 * lists collected) go to the pool of their region's node, which need not be
 * the heap's; a page whose last block came back meanwhile goes back to its
 * region instead. Returns the pages listed. */
size_t hak_abandoned_push(hak_page_t *pages) {
  size_t listed = 0;
  while (pages) {
    hak_abandoned_t *a = abandoned_of(pages);
    hak_page_t *empty = NULL;
    pthread_mutex_lock(&a->lock);
    /* the run of pages of this node */
    while (pages && abandoned_of(pages) == a) {
      hak_page_t *p = pages;
      pages = p->next;
      if (abandoned_all_free(p)) {
        p->next = empty;
        empty = p;
      } else {
        abandoned_link(a, p);
        listed++;
      }
    }
    pthread_mutex_unlock(&a->lock);
    spans_free(empty);
  }
  return listed;
}

/* An abandoned page, off its list, becomes heap's: remote frees go to its
 * remote list again. */
static void page_take(hak_page_t *page, hak_heap_t *heap) {
  if (region_of_page(page)->node != heap->node) heap->foreign = true;
  page_set_heap(page, heap);
  remote_set_state(page, 1u << REMOTE_NEVER, REMOTE_PLAIN);
}

/* claim: by a thread freeing into an abandoned page of its node. The
 * blocks a dead thread left are mostly freed by the thread that inherited
 * its work, which then reuses the page locally. */
bool hak_abandoned_claim(hak_page_t *page, hak_heap_t *heap) {
  if (heap->queues[page->cls].count >= CLAIM_QUEUE_MAX) return false;
  if (region_of_page(page)->node != heap->node) return false;
  hak_abandoned_t *a = abandoned_of(page);
  pthread_mutex_lock(&a->lock);
  bool ok = atomic_load_explicit(&page->abandoned, memory_order_relaxed);
  if (ok) abandoned_unlink(a, page);
  pthread_mutex_unlock(&a->lock);
  if (ok) page_take(page, heap);
  return ok;
}

/* adopt: an abandoned page of class cls with room, now heap's; NULL if
 * none. Pages found all free on the way go back to their regions; pages
 * found full move to the back, so the next look sees others. */
hak_page_t *hak_abandoned_adopt(int node, unsigned cls, hak_heap_t *heap) {
  hak_abandoned_t *a = &abandoned[node];
  if (!atomic_load_explicit(&a->count[cls], memory_order_relaxed)) return NULL;
  hak_page_t *found = NULL, *empty = NULL;
  pthread_mutex_lock(&a->lock);
  for (unsigned i = 0; i < ADOPT_SCAN && a->first[cls] && !found; i++) {
    hak_page_t *p = a->first[cls];
    hak_page_collect(p);
    abandoned_unlink(a, p);
    if (p->used == 0) {
      p->next = empty;
      empty = p;
    } else if (p->free || p->reserved < p->capacity) {
      found = p;
    } else {
      abandoned_link(a, p);
    }
  }
  pthread_mutex_unlock(&a->lock);
  spans_free(empty);
  if (found) {
    page_take(found, heap);
    hak_page_collect_remote(found); /* frees that raced the state change */
  }
  return found;
}

/* malloc_trim: every abandoned page whose blocks have all come back goes
 * back to its region. */
void hak_abandoned_trim(void) {
  for (int n = 0; n < kmem_node_count(); n++) {
    hak_abandoned_t *a = &abandoned[n];
    hak_page_t *empty = NULL;
    pthread_mutex_lock(&a->lock);
    for (unsigned c = 0; c < NUM_CLASSES; c++) {
      for (hak_page_t *p = a->first[c], *next; p; p = next) {
        next = p->next;
        hak_page_collect(p);
        if (p->used == 0) {
          abandoned_unlink(a, p);
          p->next = empty;
          empty = p;
        }
      }
    }
    pthread_mutex_unlock(&a->lock);
    spans_free(empty);
  }
}

void hak_abandoned_fork_prepare(void) {
  for (int n = 0; n < kmem_node_count(); n++)
    pthread_mutex_lock(&abandoned[n].lock);
}

void hak_abandoned_fork_release(void) {
  for (int n = kmem_node_count() - 1; n >= 0; n--)
    pthread_mutex_unlock(&abandoned[n].lock);
}

#ifdef HAK_DEBUG
/* The checked build, by the stash's own heap: an entry has a page exactly
 * while its mask bit is set, and blocks past the cut only then, no more
 * than it pushed since its first one nor than its hand-over point. */
void hak_remote_stash_check(hak_heap_t *heap) {
  for (unsigned c = 0; c < NUM_CLASSES; c++) {
    hak_stash_t *s = &heap->stash[c];
    uintptr_t top = atomic_load(&s->top);
    size_t n = stash_pending(top, atomic_load(&heap->stash_cut[c]));
    HAK_ASSERT(!s->page == !(heap->stash_mask & ((uint64_t)1 << c)));
    if (!s->page) {
      HAK_ASSERT(n == 0);
      continue;
    }
    HAK_ASSERT(n <= (uint16_t)(top / STASH_PUSH_ONE - s->start));
    HAK_ASSERT((uint16_t)(top / STASH_PUSH_ONE - s->start) < (uint16_t)(s->limit - s->start));
  }
}

/* The checked build: every listed page is abandoned, without owner, NEVER,
 * of its list's class, linked both ways, and the counts agree. */
void hak_abandoned_check(void) {
  for (int n = 0; n < kmem_node_count(); n++) {
    hak_abandoned_t *a = &abandoned[n];
    pthread_mutex_lock(&a->lock);
    for (unsigned c = 0; c < NUM_CLASSES; c++) {
      uint32_t count = 0;
      hak_page_t *prev = NULL;
      for (hak_page_t *p = a->first[c]; p; prev = p, p = p->next) {
        HAK_ASSERT(count++ < (1u << 30));
        HAK_ASSERT(p->prev == prev);
        HAK_ASSERT(p->cls == c);
        HAK_ASSERT(region_of_page(p)->node == n);
        HAK_ASSERT(atomic_load(&p->abandoned) == 1);
        HAK_ASSERT(page_heap(p) == NULL);
        HAK_ASSERT(remote_state(atomic_load(&p->remote)) == REMOTE_NEVER);
      }
      HAK_ASSERT(a->last[c] == prev);
      HAK_ASSERT(atomic_load(&a->count[c]) == count);
    }
    pthread_mutex_unlock(&a->lock);
  }
}
#endif
