/* Size classes: 16-byte steps up to 128 B, then four classes per power of two
 * up to 128 KiB, so internal waste stays under 25%. From 4 KiB on, one more
 * class sits just past each power of two (2^b + 2^b/32): servers allocate
 * power-of-two buffers plus a small header (redis stores a 16 KiB value as a
 * 16390-byte sds and its reply blocks as 16 KiB plus 16), which the next
 * quarter step would round up by a fifth, all of it touched. */
#include "internal.h"

uint8_t hak_class_direct[DIRECT_MAX / MIN_ALIGN + 1];
uint8_t hak_class_large[(SMALL_MAX >> LARGE_STEP_SHIFT) + 1];
uint32_t hak_class_size[NUM_CLASSES];
uint8_t hak_class_pages[NUM_CLASSES];
uint64_t hak_class_inverse[NUM_CLASSES];

#define LINEAR_CLASSES 8    /* 16 .. 128 */
#define HEADER_CLASS_MIN 12 /* 4 KiB: the first power of two with a class past it */

/* Bytes at the end of a k-page span that no block covers. All of a span's
 * pages are committed, and once the span is freed they serve other classes,
 * which touch them: the tail becomes resident (largeheap, a heap of 16-64 KiB
 * blocks built 4 times, grew from 1.06x its bytes after the first build to
 * 1.16x after the fourth with tails of up to 1/8 of a span). */
static size_t span_tail(size_t bs, unsigned k) {
  return k * PAGE_SIZE % bs;
}

/* Pages of a span of bs-byte blocks: at least 4 blocks per span keeps span
 * churn low for mid sizes; more pages (up to 8) until the tail is at most
 * 1/32 of the span, else the pages with the smallest share of tail (4224 B:
 * one page leaves 2176 B, two leave 128 B; 56 KiB: four pages leave 32 KiB,
 * seven nothing). A size of whole 4 KiB pages, not a power of two, keeps 4 KiB
 * of tail where it can: the room page.c's span colors need, or all its
 * blocks begin at one offset in their 4 KiB pages, in the same cache sets
 * (12 KiB: 4 pages leave 4 KiB, 3 nothing). */
static unsigned span_pages(size_t bs) {
  /* A block longer than a page and ending on a 4 KiB page gets a span of its
   * own pages: free pages are scattered where smaller classes' spans left
   * them, and the shorter the run, the likelier a resident one fits (redis's
   * 100 KB values found no 8-page run among 600 free touched pages its
   * 16 KiB phase left). Its tail is never touched while the block lives. */
  if (bs > PAGE_SIZE && bs % 4096 == 0) return (unsigned)((bs + PAGE_SIZE - 1) / PAGE_SIZE);
  unsigned first = (unsigned)((4 * bs + PAGE_SIZE - 1) / PAGE_SIZE), best = first;
  bool colored = bs % 4096 == 0 && size_colored(bs);
  for (unsigned k = first; k <= 8; k++) {
    size_t tail = span_tail(bs, k);
    if (tail * 32 <= k * PAGE_SIZE && (!colored || tail >= 4096)) return k;
    if (tail * best < span_tail(bs, best) * k) best = k;
  }
  return best;
}

/* The smallest class holding size bytes (classes ascend). */
static unsigned class_fit(size_t size) {
  unsigned c = 0;
  while (hak_class_size[c] < size)
    c++;
  return c;
}

void hak_classes_init(void) {
  unsigned c = 0;
  for (; c < LINEAR_CLASSES; c++)
    hak_class_size[c] = (c + 1) * MIN_ALIGN;
  for (unsigned b = 7; (size_t)1 << b < SMALL_MAX; b++) { /* (2^b, 2^(b+1)] */
    if (b >= HEADER_CLASS_MIN) hak_class_size[c++] = (1u << b) + (1u << (b - 5));
    for (unsigned q = 1; q <= 4; q++)
      hak_class_size[c++] = (1u << b) + q * (1u << (b - 2));
  }
  HAK_ASSERT(c == NUM_CLASSES && hak_class_size[c - 1] == SMALL_MAX);
  HAK_ASSERT(class_fit(DIRECT_MAX + 1) == MIDCACHE_FIRST &&
             class_fit(MIDCACHE_MAX) == MIDCACHE_FIRST + MIDCACHE_CLASSES - 1);
  for (c = 0; c < NUM_CLASSES; c++) {
    size_t bs = hak_class_size[c];
    hak_class_inverse[c] = (((uint64_t)1 << CLASS_INVERSE_SHIFT) + bs - 1) / bs;
    hak_class_pages[c] = (uint8_t)span_pages(bs);
  }
  for (size_t i = 0; i <= DIRECT_MAX / MIN_ALIGN; i++)
    hak_class_direct[i] = (uint8_t)class_fit(i * MIN_ALIGN);
  /* past DIRECT_MAX every class size is a multiple of the step */
  for (size_t i = 0; i <= SMALL_MAX >> LARGE_STEP_SHIFT; i++)
    hak_class_large[i] = (uint8_t)class_fit(i << LARGE_STEP_SHIFT);
}
