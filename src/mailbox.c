/* Node mailboxes: frees of blocks whose region belongs to another node are
 * collected per target node in the freeing thread's heap and sent as one
 * batch, with one atomic operation on the target's mailbox, a stack of
 * batches alone on its cache line. Any thread of the target node drains it
 * in its slow path and routes each block as a free from that node would go:
 * into its own page, a page it claims, or the owner page's remote list.
 *
 * A batch is an array of block pointers, not a list linked through the
 * blocks: the freeing thread never writes a block, and the drainer knows
 * every block's address up front, so the CPU overlaps the misses on them.
 * A list would make the drainer load each block, written last on the other
 * CPU, before it can find the next one (that chase was 94% of the drain's
 * time). Each drained batch goes back to the heap that filled it for reuse;
 * an exiting heap leaves its batches to the next heap that needs one.
 *
 * A mailbox whose node has no thread that allocates would keep its blocks
 * for good: one that waited longer than the background thread's period is
 * drained by that thread, or by any slow path of another node. */
#include "internal.h"

#define DRAIN_BLOCKS 4096 /* per slow path, so no malloc call stalls */

typedef struct hak_batch {
  struct hak_batch *next; /* the batch below in a mailbox, or in a spare list */
  hak_heap_t *origin;     /* the heap that filled it and gets it back */
  uint32_t count;
  hak_block_t *blocks[]; /* as freed: checked by the drainer */
} hak_batch_t;

typedef struct hak_mailbox {
  _Alignas(64) _Atomic(hak_batch_t *) head;
  _Atomic uint64_t drained_ms; /* last drain */
} hak_mailbox_t;

static hak_mailbox_t mailboxes[KMEM_MAX_NODES];
/* batches of exited heaps; taken whole (an exchange), so no ABA */
static _Atomic(hak_batch_t *) orphans;

/* Pushes the chain first..last onto an atomic stack of batches. */
static void push_batches(_Atomic(hak_batch_t *) *top, hak_batch_t *first, hak_batch_t *last) {
  hak_batch_t *old = atomic_load_explicit(top, memory_order_relaxed);
  do {
    last->next = old;
  } while (!atomic_compare_exchange_weak_explicit(top, &old, first, memory_order_release,
                                                  memory_order_relaxed));
}

static hak_batch_t *batch_new(hak_heap_t *heap) {
  if (!heap->spare)
    heap->spare = atomic_exchange_explicit(&heap->returned, NULL, memory_order_acquire);
  if (!heap->spare) heap->spare = atomic_exchange_explicit(&orphans, NULL, memory_order_acquire);
  hak_batch_t *bt = heap->spare;
  if (bt) {
    heap->spare = bt->next;
  } else {
    size_t size = sizeof *bt + (size_t)hak_opt.mailbox_batch * sizeof bt->blocks[0];
    bt = kmem_meta_alloc(size);
    if (!bt) return NULL;
    atomic_fetch_add_explicit(&hak_gstats.mailbox_bytes, size, memory_order_relaxed);
  }
  bt->origin = heap;
  return bt;
}

/* At thread exit, after the last flush: the heap's spare batches go to the
 * next heap that needs one. Batches drained later still come back to this
 * heap, for the thread that takes it over. */
static void orphan_chain(hak_batch_t *first) {
  if (!first) return;
  hak_batch_t *last = first;
  while (last->next)
    last = last->next;
  push_batches(&orphans, first, last);
}

void hak_mailbox_orphan(hak_heap_t *heap) {
  orphan_chain(heap->spare);
  heap->spare = NULL;
  orphan_chain(atomic_exchange_explicit(&heap->returned, NULL, memory_order_acquire));
}

/* noinline, as batch_start: hak_mailbox_send's common path then needs no
 * stack frame. */
__attribute__((noinline)) static void batch_send(hak_heap_t *heap, int node) {
  hak_batch_t *bt = heap->out[node];
  push_batches(&mailboxes[node].head, bt, bt);
  heap->out[node] = NULL;
  heap->out_pending &= ~(1ull << node);
  stat_inc(&heap->stats.batches_sent, 1);
  hak_background_want(); /* in case no thread of that node allocates */
}

/* The first free of a batch: a spare batch, or a new one. */
__attribute__((noinline)) static void batch_start(hak_heap_t *heap, int node, void *p) {
  hak_batch_t *bt = batch_new(heap);
  if (!bt) { /* no memory for a batch: this free goes alone */
    hak_free_block(heap, region_of(p), p);
    return;
  }
  bt->blocks[0] = p;
  bt->count = 1;
  heap->out[node] = bt;
  heap->out_pending |= 1ull << node;
}

void hak_mailbox_send(hak_heap_t *heap, int node, void *p) {
  hak_batch_t *bt = heap->out[node];
  if (unlikely(!bt)) {
    batch_start(heap, node, p);
    return;
  }
  bt->blocks[bt->count++] = p;
  if (bt->count == (uint32_t)hak_opt.mailbox_batch) batch_send(heap, node);
}

void hak_mailbox_flush(hak_heap_t *heap) {
  while (heap->out_pending)
    batch_send(heap, __builtin_ctzll(heap->out_pending));
}

bool hak_mailbox_waiting(int node) {
  return atomic_load_explicit(&mailboxes[node].head, memory_order_relaxed) != NULL;
}

static void batch_route(hak_heap_t *heap, const hak_batch_t *bt) {
  for (uint32_t i = 0; i < bt->count; i++) {
    hak_block_t *b = bt->blocks[i];
    hak_region_t *r = region_of(b);
    hak_page_t *page = page_of(r, b);
    if ((page_owner(page) & ~(uintptr_t)PAGE_MID) == (uintptr_t)heap) {
      /* our own page: a plain local free, not into the mid cache. Like a
       * collected remote list it leaves an emptied page in its queue:
       * retired here, pages cycled through the pool, taken again by the
       * next malloc of the class. */
      if (hak_free_check(page, b)) page_push_local(page, b); /* sent unchecked */
    } else {
      hak_free_block(heap, r, b);
    }
  }
}

void hak_mailbox_drain(hak_heap_t *heap, int node, size_t max_blocks) {
  hak_batch_t *bt = atomic_exchange_explicit(&mailboxes[node].head, NULL, memory_order_acquire);
  if (!bt) return;
  atomic_store_explicit(&mailboxes[node].drained_ms, hak_now_ms(), memory_order_relaxed);
  size_t n = 0;
  while (bt && n < max_blocks) {
    hak_batch_t *next = bt->next;
    batch_route(heap, bt);
    n += bt->count;
    push_batches(&bt->origin->returned, bt, bt);
    bt = next;
  }
  if (bt) { /* past the budget: the rest goes back for the next drain */
    hak_batch_t *last = bt;
    while (last->next)
      last = last->next;
    push_batches(&mailboxes[node].head, bt, last);
  }
  if (heap == &hak_heap_empty) { /* the background thread: no heap */
    atomic_fetch_add_explicit(&hak_gstats.mailbox_drains, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&hak_gstats.blocks_drained, n, memory_order_relaxed);
  } else {
    stat_inc(&heap->stats.mailbox_drains, 1);
    stat_inc(&heap->stats.blocks_drained, n);
  }
}

/* Mailboxes that waited longer than the background thread's period (or
 * their node has no thread that allocates), drained by whoever looks:
 * the background thread (heap: none), or a slow path every 64 calls. */
void hak_mailbox_drain_stale(hak_heap_t *heap) {
  uint64_t now = hak_now_ms(), wait = hak_background_period_ms();
  for (int node = 0; node < kmem_node_count(); node++) {
    if (!hak_mailbox_waiting(node)) continue;
    if (now - atomic_load_explicit(&mailboxes[node].drained_ms, memory_order_relaxed) < wait)
      continue;
    hak_mailbox_drain(heap, node, SIZE_MAX); /* rare: waited long enough */
  }
}

void hak_mailbox_drain_slow(hak_heap_t *heap) {
  if (hak_mailbox_waiting(heap->node)) hak_mailbox_drain(heap, heap->node, DRAIN_BLOCKS);
}
