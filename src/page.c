/* MF2 pages: carving blocks, collecting the three free lists, and the
 * remote-list state machine that guarantees a page is revisited. */
#include "internal.h"

#include <sched.h>
#include <string.h>

#define EXTEND_BYTES 16384 /* carve at most this much at a time: RSS follows use */

void hak_page_init(hak_page_t *page, unsigned cls, hak_heap_t *heap, bool zero) {
  char *start = page_start(page);
  size_t bytes = page->span_pages * PAGE_SIZE - ((uintptr_t)start & (PAGE_SIZE - 1));
  page->block_size = hak_class_size[cls];
  page->capacity = (uint16_t)(bytes / page->block_size);
  page->reserved = 0;
  page->used = 0;
  page->free = NULL;
  page->local_free = NULL;
  page->cls = (uint8_t)cls;
  page->fresh_zero = zero;
  page->free_is_zero = zero;
  atomic_store_explicit(&page->remote, REMOTE_PLAIN, memory_order_relaxed);
  atomic_store_explicit(&page->owner, (uintptr_t)heap, memory_order_release);
}

/* Called when `free` is empty: links the next not yet carved blocks, in
 * address order. */
void hak_page_extend(hak_page_t *page) {
  size_t bs = page->block_size;
  unsigned n = page->capacity - page->reserved;
  unsigned max = bs >= EXTEND_BYTES ? 1 : (unsigned)(EXTEND_BYTES / bs);
  if (n > max) n = max;
  char *first = page_start(page) + (size_t)page->reserved * bs, *p = first;
  for (unsigned i = 0; i + 1 < n; i++, p += bs)
    ((hak_block_t *)p)->next = (hak_block_t *)(p + bs);
  ((hak_block_t *)p)->next = NULL;
  page->free = (hak_block_t *)first;
  page->free_is_zero = page->fresh_zero;
  page->reserved += n;
}

/* Takes the remote list, leaving the state bits, and puts it on `free`:
 * without a walk when `free` is empty, as it is when malloc looks. */
size_t hak_page_collect_remote(hak_page_t *page) {
  uintptr_t old = atomic_load_explicit(&page->remote, memory_order_relaxed);
  do {
    if (!remote_list(old)) return 0;
  } while (!atomic_compare_exchange_weak_explicit(&page->remote, &old, old & REMOTE_STATE_MASK,
                                                  memory_order_acquire, memory_order_relaxed));
  hak_block_t *head = remote_list(old);
  size_t n = old / REMOTE_COUNT_ONE;
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

/* The remote list first, onto `free` while that is still empty, then the
 * owner's own frees in front of it. */
size_t hak_page_collect(hak_page_t *page) {
  size_t n = hak_page_collect_remote(page);
  if (page->local_free) {
    if (page->free) {
      hak_block_t *t = page->local_free;
      while (t->next)
        t = t->next;
      t->next = page->free;
    }
    page->free = page->local_free;
    page->local_free = NULL;
    page->free_is_zero = 0;
  }
  return n;
}

/* Moves the state from any state in from_mask (bit per state) to `to`,
 * keeping the list. Returns false if the state was not in from_mask. */
bool hak_page_set_remote_state(hak_page_t *page, uintptr_t from_mask, uintptr_t to) {
  uintptr_t old = atomic_load_explicit(&page->remote, memory_order_relaxed);
  do {
    if (!(from_mask & (1u << (old & REMOTE_STATE_MASK)))) return false;
  } while (!atomic_compare_exchange_weak_explicit(&page->remote, &old,
                                                  (old & ~REMOTE_STATE_MASK) | to,
                                                  memory_order_acq_rel, memory_order_relaxed));
  return true;
}

/* Ownerless from now on: waits out a freer that is delivering to the owner's
 * delayed list, so after this no block can reach that list any more. */
void hak_page_set_never(hak_page_t *page) {
  const uintptr_t not_freeing = (1u << REMOTE_PLAIN) | (1u << REMOTE_NOTIFY) | (1u << REMOTE_NEVER);
  while (!hak_page_set_remote_state(page, not_freeing, REMOTE_NEVER))
    sched_yield();
}

void *hak_block_start(const hak_page_t *page, const void *p) {
  char *start = page_start(page);
  size_t off = (size_t)((const char *)p - start);
  return start + off - off % page->block_size;
}
