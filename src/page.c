/* MF2 pages: carving blocks and collecting their free lists (the remote
 * list's protocol is remote.c's). */
#include "internal.h"

#include <string.h>

/* Carve at most this much at a time: RSS follows use. A page's first carve
 * is one 4 KiB page: a class a process uses a few blocks of (a forked
 * server's backend, a short-lived thread) costs 4 KiB, not 16. */
#define EXTEND_FIRST_BYTES 4096
#define EXTEND_BYTES 16384

/* The span's color: an offset within the bytes its blocks leave over, from
 * its address, so spans of a class taken one after another differ. Within
 * the 4 KiB page the blocks end in, so the span touches no page more; but
 * where the blocks end on a page boundary (sizes of whole KiBs, the ones
 * whose blocks begin at a few offsets modulo 4 KiB) a color costs one 4 KiB
 * page more of a full span. Blocks of a power-of-two size stay aligned to
 * it (aligned_alloc relies on it); they fill their pages exactly anyway,
 * but on page 0. */
static unsigned span_color(const hak_page_t *page, size_t used, size_t spare, size_t bs) {
  size_t pad = -used & 4095; /* spans start on a 4 KiB boundary */
  size_t colors = (pad ? pad : spare) / SPAN_COLOR_STEP + 1;
  if (!size_colored(bs) || colors == 1) return 0;
  if (colors > SPAN_COLORS) colors = SPAN_COLORS;
  /* a multiplicative hash of the descriptor's index: spans of any length
   * in a row (every 4th page for 4-page spans) take colors all over */
  return (unsigned)((uint32_t)((uintptr_t)page / sizeof *page * 2654435761u) >> 26) % colors;
}

void hak_page_init(hak_page_t *page, unsigned cls, hak_heap_t *heap, bool zero) {
  char *start = page_start(page); /* color 0: as the pool hands spans out */
  size_t bytes = page->span_pages * PAGE_SIZE - ((uintptr_t)start & (PAGE_SIZE - 1));
  size_t bs = hak_class_size[cls];
  page->block_size = (uint32_t)bs;
  page->capacity = (uint16_t)(bytes / bs);
  size_t used = page->capacity * bs;
  page->color = (uint8_t)span_color(page, used, bytes - used, bs);
  page->reserved = 0;
  page->used = 0;
  page->free = NULL;
  page->local_free = NULL;
  page->cls = (uint8_t)cls;
  page->fresh_zero = zero;
  page->free_is_zero = zero;
  atomic_store_explicit(&page->remote, REMOTE_PLAIN, memory_order_relaxed);
  bool mid = cls >= MIDCACHE_FIRST && cls < MIDCACHE_FIRST + MIDCACHE_CLASSES;
  atomic_store_explicit(&page->owner, (uintptr_t)heap | (mid ? PAGE_MID : 0), memory_order_release);
}

/* Called when `free` is empty: links the next not yet carved blocks, in
 * address order. */
void hak_page_extend(hak_page_t *page) {
  size_t bs = page->block_size;
  unsigned n = page->capacity - page->reserved;
  size_t most = page->reserved ? EXTEND_BYTES : EXTEND_FIRST_BYTES;
  unsigned max = bs >= most ? 1 : (unsigned)(most / bs);
  if (n > max) n = max;
  char *first = page_start(page) + (size_t)page->reserved * bs, *p = first;
  for (unsigned i = 0; i + 1 < n; i++, p += bs)
    ((hak_block_t *)p)->next = (hak_block_t *)(p + bs);
  ((hak_block_t *)p)->next = NULL;
  page->free = (hak_block_t *)first;
  page->free_is_zero = page->fresh_zero;
  page->reserved += n;
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
