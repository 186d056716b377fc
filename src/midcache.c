/* Mid-size blocks (past the direct table up to 32 KiB): a per-heap array of
 * block pointers per class, as tcmalloc's per-CPU caches. An intrusive free
 * list keeps its link in the block, a cold line for blocks this big: malloc
 * misses reading block->next, free writing it. With the array the owner's
 * malloc and free touch only its heap. Blocks move between the array and
 * their pages in batches: a refill counts fresh blocks out by address, an
 * overflow writes the links of the older half, and a malloc that finds the
 * array empty pops the page's free list as before. Cached blocks stay
 * `used` on their pages, so a page holding any is never retired. */
#include "internal.h"

#include <string.h>

uint8_t hak_midcache_max[MIDCACHE_CLASSES];

void hak_midcache_init(void) {
  for (unsigned i = 0; i < MIDCACHE_CLASSES; i++) {
    size_t n = MIDCACHE_CLASS_BYTES / hak_class_size[MIDCACHE_FIRST + i];
    hak_midcache_max[i] = (uint8_t)(n < MIDCACHE_SLOTS ? n : MIDCACHE_SLOTS);
  }
}

void hak_midcache_reset(hak_heap_t *heap) {
  for (unsigned i = 0; i < MIDCACHE_CLASSES; i++) {
    heap->mid_top[i] = midcache_off(heap, midcache_base(heap, i));
    heap->mid_end[i] = midcache_off(heap, midcache_base(heap, i) + hak_midcache_max[i]);
  }
  heap->mid_room = (ptrdiff_t)MIDCACHE_HEAP_BYTES;
}

/* Up to want blocks of page not carved yet, counted out by address: none
 * is touched. */
static unsigned page_carve(hak_page_t *page, void **out, unsigned want) {
  unsigned n = page->capacity - page->reserved;
  if (n > want) n = want;
  if (!n) return 0; /* nothing written on the shared empty page */
  char *p = page_start(page) + (size_t)page->reserved * page->block_size;
  for (unsigned k = 0; k < n; k++, p += page->block_size)
    out[k] = p;
  page->reserved = (uint16_t)(page->reserved + n);
  page->used = (uint16_t)(page->used + n);
  return n;
}

/* An empty array: a block for the caller, from the page's free list as
 * before; the array is filled to half with blocks not carved yet only.
 * Filling it from the free list would read the links in a row, a chain of
 * misses when another thread freed them (prodcons: 0.45x on two threads),
 * where one pop per malloc overlaps each miss with the caller's work. */
static HAK_NOINLINE void *midcache_refill(hak_heap_t *heap, unsigned cls, size_t size) {
  void *b = page_pop(heap->direct[cls]);
  if (!b && !page_carve(heap->direct[cls], &b, 1)) {
    /* the page is spent: the slow path finds or makes another (and makes
     * the heap on the thread's first malloc); its drains may cache blocks */
    b = hak_malloc_slow(heap, size, false);
    if (!b) return NULL;
    heap = hak_tls_heap;
  }
  /* once its pages are carved whole, a class's refills stop here */
  hak_page_t *page = heap->direct[cls];
  unsigned i = cls - MIDCACHE_FIRST, n = hak_midcache_max[i] / 2u;
  unsigned have = midcache_count(heap, i);
  if (page->reserved == page->capacity || n <= have) return b;
  n -= have;
  size_t bs = hak_class_size[cls];
  if ((ptrdiff_t)(n * bs) > heap->mid_room) return b;
  n = page_carve(page, midcache_slot(heap, heap->mid_top[i]), n);
  heap->mid_top[i] = (uint16_t)(heap->mid_top[i] + n * sizeof b);
  heap->mid_room -= (ptrdiff_t)(n * bs);
  stat_inc(&heap->stats.midcache_filled, n);
  return b;
}

void *hak_midcache_miss(hak_heap_t *heap, unsigned cls, size_t size) {
  /* nothing to carve: the page's free list, as for the other sizes */
  hak_page_t *page = heap->direct[cls];
  if (page->reserved == page->capacity) {
    void *b = page_pop(page);
    if (likely(b != NULL)) return b;
  }
  return midcache_refill(heap, cls, size);
}

/* Cached blocks back on their pages' local lists, emptied pages retired. */
static void give_back(hak_heap_t *heap, void **blocks, unsigned n) {
  for (unsigned k = 0; k < n; k++) {
    hak_block_t *b = blocks[k];
    hak_free_local_slow(heap, page_of(region_of(b), b), b);
  }
  stat_inc(&heap->stats.midcache_flushed, n);
}

/* A free into a full array (or past the heap's byte cap): the older half
 * goes back to the pages; the recently freed blocks, warm in the CPU's
 * cache, stay for the next mallocs. */
void hak_midcache_overflow(hak_heap_t *heap, hak_page_t *page, void *p) {
  unsigned i = page->cls - MIDCACHE_FIRST;
  void **slot = midcache_base(heap, i);
  unsigned n = midcache_count(heap, i), out = (n + 1) / 2;
  give_back(heap, slot, out); /* p's page keeps p: it is not retired here */
  memmove(slot, slot + out, (n - out) * sizeof *slot);
  heap->mid_top[i] = midcache_off(heap, slot + (n - out));
  heap->mid_room += (ptrdiff_t)(out * page->block_size);
  if (heap->mid_room > 0)
    midcache_push(heap, page, p);
  else
    hak_free_local_slow(heap, page, p); /* other classes hold the bytes */
}

/* Thread exit, hakmem_flush and malloc_trim: the pages get every block back. */
void hak_midcache_flush(hak_heap_t *heap) {
  for (unsigned i = 0; i < MIDCACHE_CLASSES; i++)
    give_back(heap, midcache_base(heap, i), midcache_count(heap, i));
  hak_midcache_reset(heap);
}
