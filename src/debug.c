/* The checked build (HAK_DEBUG): what must hold after every malloc slow path
 * and at thread exit, verified; and the hook tests use to stop a thread at a
 * named point of the remote-free protocol. Not compiled into release. */
#ifdef HAK_DEBUG
#include "internal.h"

#include <stdio.h>
#include <stdlib.h>

void (*_Atomic hak_debug_hook)(int point);

HAK_EXPORT void hak_debug_set_hook(void (*hook)(int point)) {
  atomic_store(&hak_debug_hook, hook);
}

void hak_debug_assert_fail(const char *what, const char *file, int line) {
  fprintf(stderr, "hakmem: invariant failed at %s:%d: %s\n", file, line, what);
  abort();
}

/* A block list of the page: every block inside its carved part, on a block
 * boundary; returns its length (at most the blocks carved: no cycle). */
static size_t block_list_len(const hak_page_t *page, const hak_block_t *b) {
  const char *start = page_start(page);
  size_t n = 0;
  for (; b; b = b->next) {
    size_t off = (size_t)((const char *)b - start);
    HAK_ASSERT((const char *)b >= start);
    HAK_ASSERT(off % page->block_size == 0);
    HAK_ASSERT(off / page->block_size < page->reserved);
    HAK_ASSERT(n++ < page->reserved);
  }
  return n;
}

/* A page the heap holds: its owner, and with blocks, used = carved blocks
 * minus those on its free and local lists (uncollected remote frees and
 * delayed blocks still count as used). */
static void check_page(hak_heap_t *heap, hak_page_t *page, bool blocks) {
  HAK_ASSERT(page_heap(page) == heap);
  HAK_ASSERT(!atomic_load(&page->abandoned));
  HAK_ASSERT(page->reserved <= page->capacity);
  uintptr_t remote = atomic_load(&page->remote);
  HAK_ASSERT((remote & REMOTE_STATE_MASK) != REMOTE_NEVER);
  HAK_ASSERT(remote / REMOTE_COUNT_ONE <= page->used);
  if (!blocks) return;
  size_t nfree = block_list_len(page, page->free) + block_list_len(page, page->local_free);
  HAK_ASSERT(page->used == page->reserved - nfree);
}

/* One queue: linked both ways, no cycle, last is last. */
static void check_queue(hak_heap_t *heap, hak_queue_t *q, int cls, bool blocks) {
  hak_page_t *prev = NULL;
  size_t n = 0;
  for (hak_page_t *p = q->first; p; prev = p, p = p->next) {
    HAK_ASSERT(n++ < ((size_t)1 << 30) / PAGE_SIZE * 1024);
    HAK_ASSERT(p->prev == prev);
    if (cls >= 0) {
      HAK_ASSERT(p->cls == cls);
      HAK_ASSERT(!(page_flags(p) & PAGE_IN_FULL));
    } else {
      HAK_ASSERT(page_flags(p) & PAGE_IN_FULL);
    }
    check_page(heap, p, blocks);
  }
  HAK_ASSERT(q->last == prev);
}

/* The mid cache: each block a carved block of a page of its class the heap
 * owns, counted as used there and on none of its free lists; the bytes
 * add up. */
static void check_midcache(hak_heap_t *heap) {
  size_t bytes = 0;
  for (unsigned i = 0; i < MIDCACHE_CLASSES; i++) {
    void **base = midcache_base(heap, i);
    unsigned n = midcache_count(heap, i);
    HAK_ASSERT(base[-1] == NULL);
    HAK_ASSERT(midcache_slot(heap, heap->mid_top[i]) >= base);
    HAK_ASSERT(midcache_slot(heap, heap->mid_end[i]) == base + hak_midcache_max[i]);
    HAK_ASSERT(n <= hak_midcache_max[i]);
    for (unsigned k = 0; k < n; k++) {
      char *b = base[k];
      HAK_ASSERT(b != NULL);
      hak_page_t *page = page_of(region_of(b), b);
      HAK_ASSERT(page_heap(page) == heap);
      HAK_ASSERT(page_flags(page) & PAGE_MID);
      HAK_ASSERT(page->cls == MIDCACHE_FIRST + i);
      size_t off = (size_t)(b - page_start(page));
      HAK_ASSERT(off % page->block_size == 0 && off / page->block_size < page->reserved);
      HAK_ASSERT(page->used > 0);
      HAK_ASSERT(!hak_debug_on_list(page->free, (hak_block_t *)b, page->reserved));
      HAK_ASSERT(!hak_debug_on_list(page->local_free, (hak_block_t *)b, page->reserved));
      for (unsigned j = k + 1; j < n; j++)
        HAK_ASSERT(base[j] != b);
      bytes += page->block_size;
    }
  }
  HAK_ASSERT(heap->mid_room > -(ptrdiff_t)MIDCACHE_MAX);
  HAK_ASSERT((ptrdiff_t)bytes == (ptrdiff_t)MIDCACHE_HEAP_BYTES - heap->mid_room);
}

/* cls: the class whose pages get their blocks counted too; -1 all. */
void hak_debug_check_heap(hak_heap_t *heap, int cls) {
  if (heap == &hak_heap_empty) return;
  check_midcache(heap);
  for (unsigned c = 0; c < NUM_CLASSES; c++) {
    check_queue(heap, &heap->queues[c], (int)c, cls < 0 || (unsigned)cls == c);
    HAK_ASSERT(heap->direct[c] ==
               (heap->queues[c].first ? heap->queues[c].first : &hak_page_empty));
  }
  check_queue(heap, &heap->full, -1, cls < 0);
  hak_remote_stash_check(heap);
}

HAK_EXPORT void hak_debug_check(void) {
  hak_debug_check_heap(hak_tls_heap, -1);
  hak_abandoned_check();
}
#endif
