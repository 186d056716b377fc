/* The malloc slow path: find a page with a free block (collecting every page
 * it looks at, the current one first), adopt or take a fresh span, and the
 * large sizes that are runs of pages. */
#include "internal.h"

#include <errno.h>
#include <string.h>

/* HAKMEM_PREFAULT: fault a fresh span in now (page) or have the background
 * thread fault the next ones in (ahead), instead of page by page on use. */
static void hak_prefault(hak_page_t *span, bool zero) {
  if (hak_opt.prefault == PREFAULT_PAGE && zero) {
    /* the 4 KiB pages its blocks cover: from the first (its color moves
     * its blocks past it) to the last block's end, not the tail past it
     * (48 KiB of an 80 KiB block's 2 pages) */
    uintptr_t start = (uintptr_t)page_start(span);
    uintptr_t end = start + (size_t)span->capacity * span->block_size;
    uintptr_t base = start & ~(uintptr_t)4095;
    kmem_populate((char *)base, ((end + 4095) & ~(uintptr_t)4095) - base);
  } else if (hak_opt.prefault == PREFAULT_AHEAD) {
    hak_background_ahead(span);
  }
}

static hak_page_t *page_fresh(hak_heap_t *heap, unsigned cls) {
  hak_page_t *page = hak_abandoned_adopt(heap->node, cls, heap);
  if (page) {
    stat_inc(&heap->stats.pages_adopted, 1);
  } else {
    bool zero;
    unsigned npages = hak_class_pages[cls];
    page = hak_span_alloc(heap, heap->node, npages, npages, npages == 1, &zero);
    if (!page) return NULL;
    if (region_of_page(page)->node != heap->node) heap->foreign = true; /* a fallback */
    hak_page_init(page, cls, heap, zero);
    hak_prefault(page, zero);
    stat_inc(zero ? &heap->stats.pages_fresh : &heap->stats.pages_reused, npages);
    stat_inc(&heap->stats.pages_activated, npages);
  }
  queue_push_front(&heap->queues[cls], page);
  return page;
}

/* Walks the queue from the current page: collects each page, returns the
 * first with a free block; pages still full afterwards move to the full queue. */
static hak_page_t *page_find(hak_heap_t *heap, unsigned cls) {
  hak_queue_t *q = &heap->queues[cls];
  hak_page_t *page = q->first;
  while (page) {
    if (!page->free) {
      size_t n = hak_page_collect(page);
      if (n) stat_inc(&heap->stats.remote_blocks_collected, n);
    }
    if (!page->free && page->reserved < page->capacity) hak_page_extend(page);
    if (page->free) {
      if (page != q->first) {
        queue_remove(q, page);
        queue_push_front(q, page);
      }
      return page;
    }
    hak_page_t *next = page->next;
    park_result_t parked = hak_remote_park(heap, page);
    if (parked != PARK_RETRY) page = next; /* PARK_LATER: left in the queue */
  }
  page = page_fresh(heap, cls);
  if (page && !page->free) {
    hak_page_collect(page);
    if (!page->free) hak_page_extend(page);
  }
  return page;
}

/* Past the mid cache: a pop from the class's page, as the small sizes;
 * past the classes, or no block there, the slow path. */
void *hak_malloc_big(hak_heap_t *heap, size_t size) {
  if (likely(size <= SMALL_MAX)) {
    void *b = page_pop(heap->direct[hak_class_of_large(size)]);
    if (likely(b != NULL)) return b;
  }
  return hak_malloc_slow(heap, size, false);
}

void *hak_malloc_slow(hak_heap_t *heap, size_t size, bool zero) {
  if (heap == &hak_heap_empty) {
    hak_heap_t *shared = hak_shared_enter();
    if (shared) { /* its heap now: the fast path first */
      void *p = zero ? hak_malloc_slow(shared, size, true) : hak_alloc_inline(size);
      hak_shared_leave(shared);
      return p;
    }
    heap = hak_heap_for_thread();
    if (!heap) return NULL;
  }
  /* here, never from free or thread exit: creating a thread allocates */
  hak_background_start_if_wanted();
  /* large and huge sizes count too: a thread that allocates only those
   * takes no other slow path */
  if ((++heap->slow_calls & 63) == 0) {
    hak_mailbox_flush(heap);      /* no cross-node free waits for a batch forever */
    hak_remote_stash_flush(heap); /* nor a remote free in the stash */
    hak_mailbox_drain_stale(heap);
    hak_pool_purge_maybe();
  }
  if (size > SMALL_MAX) {
    /* a run of pages, or past MAP_MIN a mapping of its own; fresh pages
     * and new mappings are zero already */
    bool fresh;
    void *p;
    if (size > MAP_MIN) {
      p = hak_huge_alloc(size, 0, &fresh);
    } else {
      p = hak_large_alloc(heap, size, zero, false);
      fresh = p && page_of(region_of(p), p)->fresh_zero;
    }
    if (p && zero && !fresh) memset(p, 0, size);
    return p;
  }
  if (atomic_load_explicit(&heap->delayed, memory_order_relaxed)) hak_remote_drain_delayed(heap);
  hak_mailbox_drain_slow(heap);
  unsigned cls = class_of(size);
  hak_page_t *page = page_find(heap, cls);
  heap_sync_direct(heap, cls);
  HAK_CHECK_HEAP(heap, (int)cls);
  if (!page) {
    errno = ENOMEM;
    return NULL;
  }
  hak_block_t *b = page_pop(page); /* page_find returns a page with a free block */
  if (zero) {
    if (page->free_is_zero)
      b->next = NULL;
    else
      memset(b, 0, size);
  }
  return b;
}

/* HAKMEM_PREFAULT=large: whether to populate a fresh large block of bytes.
 * A caller that writes what it asks for (memcached memsets every 1 MiB slab
 * page it takes) gets one MADV_POPULATE_WRITE instead of a fault per 4 KiB,
 * 0.65x their CPU; one that leaves its block mostly untouched (a buffer
 * sized for the worst case) must not pay its RSS. So one fresh block in
 * LARGE_PROBE_EVERY is left to fault: the blocks after it are populated
 * while the latest such probe is found resident whole. */
#define LARGE_PROBE_EVERY 8
void hak_large_probe_judge(hak_heap_t *heap) {
  heap->large_written = kmem_resident_all(heap->large_probe, heap->large_probe_bytes);
  heap->large_probe = NULL;
}

static bool large_populate(hak_heap_t *heap, void *p, size_t bytes) {
  if (heap->large_probe) hak_large_probe_judge(heap);
  if (heap->large_fresh++ % LARGE_PROBE_EVERY == 0) {
    heap->large_probe = p;
    heap->large_probe_bytes = bytes;
    return false;
  }
  return heap->large_written;
}

static unsigned large_pages(size_t size) {
  return (unsigned)((size + PAGE_SIZE - 1) >> PAGE_SHIFT);
}

static void large_count(hak_heap_t *heap, unsigned npages, bool zero) {
  stat_inc(&heap->stats.pages_activated, npages);
  stat_inc(zero ? &heap->stats.pages_fresh : &heap->stats.pages_reused, npages);
}

/* One block spanning whole pages. It belongs to no heap: whichever thread
 * frees it gives the pages straight back, so it never waits for an owner.
 * growing: realloc moves a block that grows, which is placed with as many
 * free pages after it as it takes, so that it grows where it lies next time
 * (postgres's sort array takes spans of 256, 448 and 640 KiB each query;
 * best fit put the first at page 25, where the third could not follow). */
void *hak_large_alloc(hak_heap_t *heap, size_t size, bool cleared, bool growing) {
  unsigned npages = large_pages(size);
  unsigned room = growing && 2 * npages < PAGES_PER_REGION ? 2 * npages : npages;
  bool zero;
  hak_page_t *span = hak_span_alloc(NULL, heap->node, npages, room, false, &zero); /* no heap's */
  if (!span) {
    errno = ENOMEM;
    return NULL;
  }
  span->block_size = npages * (uint32_t)PAGE_SIZE;
  span->capacity = span->reserved = 1;
  span->used = 1;
  page_flags_set(span, PAGE_LARGE);
  hak_region_t *r = region_of_page(span);
  atomic_fetch_or_explicit(&r->large_starts, region_page_bit(r, page_start(span)),
                           memory_order_relaxed);
  span->fresh_zero = zero;
  hak_prefault(span, zero);
  /* only the bytes asked for, not the span's tail; never for calloc, whose
   * caller may leave zero pages untouched */
  size_t bytes = (size + 4095) & ~(size_t)4095;
  if (hak_opt.prefault == PREFAULT_LARGE && zero && !cleared &&
      large_populate(heap, page_start(span), bytes))
    kmem_populate(page_start(span), bytes);
  large_count(heap, npages, zero);
  return page_start(span);
}

/* A large block resized where it lies: grown onto the free pages right
 * after its span (a vector doubling keeps its pointer, no copy), or its
 * tail pages given back. Its contents stay; the pages taken need not be
 * zero (realloc's caller reads only what it writes there). */
bool hak_large_resize(hak_region_t *r, void *p, size_t size) {
  hak_page_t *span = page_of(r, p);
  if (!(page_flags(span) & PAGE_LARGE) || (char *)p != page_start(span)) return false;
  unsigned npages = large_pages(size), old = span->span_pages;
  hak_heap_t *heap = hak_tls_heap;
  if (npages > old) {
    bool zero;
    if (!hak_span_grow(span, npages, &zero)) return false;
    if (heap != &hak_heap_empty) large_count(heap, npages - old, zero);
  } else if (npages < old) {
    /* judged now, as at its free: the tail may soon be another block's */
    if (unlikely(heap->large_probe == p)) hak_large_probe_judge(heap);
    hak_span_shrink(span, npages);
  }
  span->block_size = npages * (uint32_t)PAGE_SIZE;
  return true;
}
