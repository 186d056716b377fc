/* Node mailboxes: frees of blocks whose region belongs to another node are
 * collected per target node in the freeing thread's heap and sent as one
 * batch, with one atomic operation on the target's mailbox, a stack of
 * batches alone on its cache line. Any thread of the target node drains it
 * in its slow path and routes each block as a free from that node would go:
 * into its own page, a page it claims, or the owner page's remote list. */
#include "internal.h"

#define DRAIN_BYTES ((size_t)1 << 20) /* per slow path: no malloc call stalls */

typedef struct hak_mailbox {
  _Alignas(64) _Atomic(hak_block_t *) head; /* a batch's tail links to the batch below */
} hak_mailbox_t;

static hak_mailbox_t mailboxes[KMEM_MAX_NODES];

static void push_chain(int node, hak_block_t *head, hak_block_t *tail) {
  _Atomic(hak_block_t *) *top = &mailboxes[node].head;
  hak_block_t *old = atomic_load_explicit(top, memory_order_relaxed);
  do {
    tail->next = old;
  } while (!atomic_compare_exchange_weak_explicit(top, &old, head, memory_order_release,
                                                  memory_order_relaxed));
}

static void outbox_send(hak_heap_t *heap, int node) {
  hak_outbox_t *o = &heap->out[node];
  push_chain(node, o->head, o->tail);
  o->head = o->tail = NULL;
  o->count = 0;
  heap->out_pending &= ~(1ull << node);
  stat_inc(&heap->stats.batches_sent, 1);
}

void hak_mailbox_send(hak_heap_t *heap, int node, hak_block_t *b) {
  hak_outbox_t *o = &heap->out[node];
  b->next = o->head;
  o->head = b;
  if (!o->tail) o->tail = b;
  heap->out_pending |= 1ull << node;
  if (++o->count >= (uint32_t)hak_opt.mailbox_batch) outbox_send(heap, node);
}

void hak_mailbox_flush(hak_heap_t *heap) {
  while (heap->out_pending)
    outbox_send(heap, __builtin_ctzll(heap->out_pending));
}

bool hak_mailbox_waiting(int node) {
  return atomic_load_explicit(&mailboxes[node].head, memory_order_relaxed) != NULL;
}

void hak_mailbox_drain(hak_heap_t *heap, int node, size_t max_bytes) {
  hak_block_t *b = atomic_exchange_explicit(&mailboxes[node].head, NULL, memory_order_acquire);
  if (!b) return;
  size_t bytes = 0, n = 0;
  while (b && bytes < max_bytes) {
    hak_block_t *next = b->next;
    hak_page_t *page = page_of(region_of(b), b);
    bytes += page->block_size;
    if (page_owner(page) == (uintptr_t)heap && page->used > 1) {
      /* our own page, staying in use: a plain local free */
      b->next = page->local_free;
      page->local_free = b;
      page->used--;
    } else {
      hak_free_route(heap, page, b);
    }
    b = next;
    n++;
  }
  if (b) { /* past the budget: the rest goes back for the next drain */
    hak_block_t *tail = b;
    while (tail->next)
      tail = tail->next;
    push_chain(node, b, tail);
  }
  stat_inc(&heap->stats.mailbox_drains, 1);
  stat_inc(&heap->stats.blocks_drained, n);
}

void hak_mailbox_drain_slow(hak_heap_t *heap) {
  if (hak_mailbox_waiting(heap->node)) hak_mailbox_drain(heap, heap->node, DRAIN_BYTES);
}
