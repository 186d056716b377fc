/* The malloc family as hak_* functions. override.c maps the standard names
 * onto the same inline paths. */
#include "internal.h"

#include <errno.h>
#include <string.h>

HAK_EXPORT void *hak_malloc(size_t size) {
  return hak_alloc_inline(size);
}

HAK_EXPORT void hak_free(void *p) {
  hak_free_inline(p);
}

void *hak_calloc_impl(size_t n, size_t size);
void *hak_calloc_impl(size_t n, size_t size) {
  size_t total;
  if (unlikely(__builtin_mul_overflow(n, size, &total))) {
    errno = ENOMEM;
    return NULL;
  }
  hak_heap_t *heap = hak_tls_heap;
  if (likely(total <= SMALL_MAX)) {
    hak_page_t *page = heap->direct[class_of(total)];
    hak_block_t *b = page_pop(page);
    if (likely(b != NULL)) {
      if (page->free_is_zero)
        b->next = NULL;
      else
        memset(b, 0, total);
      return b;
    }
  }
  return hak_malloc_slow(heap, total, true);
}

HAK_EXPORT void *hak_calloc(size_t n, size_t size) {
  return hak_calloc_impl(n, size);
}

size_t hak_usable_size(const void *p) {
  hak_region_t *r = region_of(p);
  int kind = region_kind(r);
  if (kind == REGION_HUGE) {
    char *block = (char *)r->map_base + r->map_len - r->huge_usable;
    return r->huge_usable - (size_t)((const char *)p - block);
  }
  if (kind != REGION_SMALL) return 0;
  hak_page_t *page = page_of(r, p);
  size_t bs = page->block_size;
  const char *start = page_start(page);
  if (bs == 0 || (const char *)p < start) return 0;
  /* past its block's start: redis asks after every malloc and free */
  size_t off = (size_t)((const char *)p - start);
  /* one block, no class: the class index would size off in 16 B blocks */
  if (page_flags(page) & PAGE_LARGE) return off < bs ? bs - off : 0;
  return bs - (off - class_block_index(page->cls, off) * bs);
}

/* p is what malloc & co. returned (as glibc and mimalloc, the release build
 * takes no other): on a page that never handed out an aligned address it is
 * its block's start, and the block's size is the answer (redis asks after
 * every malloc and before every free: 53 instructions a call went to finding
 * the block p is in). The checked build answers for interior pointers too. */
HAK_EXPORT size_t hak_malloc_usable_size(const void *p) {
  if (!p) return 0;
#ifndef HAK_DEBUG
  hak_region_t *r = region_of(p);
  if (region_kind(r) == REGION_SMALL) {
    hak_page_t *page = page_of(r, p);
    if (!atomic_load_explicit(&page->align_shifts, memory_order_relaxed)) return page->block_size;
  }
#endif
  return hak_usable_size(p);
}

HAK_EXPORT void *hak_realloc(void *p, size_t size) {
  if (!p) return hak_alloc_inline(size);
  size_t old = hak_usable_size(p);
  if (old == 0) { /* not ours: nothing safe to copy */
    hak_invalid_free(p);
    errno = EINVAL;
    return NULL;
  }
  if (size == 0) { /* glibc frees and returns NULL here; programs rely on it */
    hak_free_inline(p);
    return NULL;
  }
  hak_region_t *r = region_of(p);
  /* a large block to a large size: its span grown or shrunk where it lies */
  if (size > SMALL_MAX && size <= MAP_MIN && region_kind(r) == REGION_SMALL &&
      hak_large_resize(r, p, size))
    return p;
  /* stay in place while the block fits and is not mostly empty */
  if (size <= old && size >= old / 2) {
    if (region_kind(r) == REGION_HUGE && (char *)p == (char *)r + PAGE_SIZE)
      hak_huge_resized(r, size); /* written that far now, maybe */
    return p;
  }
  if (region_kind(r) == REGION_HUGE && (char *)p == (char *)r + PAGE_SIZE) {
    /* grown or shrunk where it lies (mremap), while it stays past MAP_MIN */
    void *q = size > old       ? hak_huge_grow(r, size)
              : size > MAP_MIN ? hak_huge_shrink(r, size)
                               : NULL;
    if (q) return q;
  }
  void *q = NULL;
  hak_heap_t *heap = hak_tls_heap;
  if (size > old && size > SMALL_MAX && size <= MAP_MIN && heap != &hak_heap_empty) {
    int saved = errno; /* NULL: no such room, any run will do, and a success keeps errno */
    q = hak_large_alloc(heap, size, false, true);
    if (!q) errno = saved;
  }
  if (!q) q = hak_alloc_inline(size);
  if (!q) return NULL; /* errno set; the old block is untouched */
  memcpy(q, p, size < old ? size : old);
  hak_free_inline(p);
  return q;
}

HAK_EXPORT void *hak_reallocarray(void *p, size_t n, size_t size) {
  size_t total;
  if (__builtin_mul_overflow(n, size, &total)) {
    errno = ENOMEM;
    return NULL;
  }
  return hak_realloc(p, total);
}

/* free takes an aligned block's address only as the first multiple, at or
 * after its block's start, of an alignment between the smallest and the
 * largest the page has used: records them (the owner only writes). */
static void page_note_align(hak_page_t *page, size_t align) {
  unsigned s = (unsigned)__builtin_ctzl(align) - 4; /* 32 B .. 64 KiB: 1 .. 12 */
  unsigned old = atomic_load_explicit(&page->align_shifts, memory_order_relaxed);
  unsigned lo = old & 15, hi = old >> 4;
  if (!lo || s < lo) lo = s;
  if (s > hi) hi = s;
  if ((hi << 4 | lo) != old)
    atomic_store_explicit(&page->align_shifts, (uint8_t)(hi << 4 | lo), memory_order_relaxed);
}

/* Alignment up to 64 KiB from size classes (over-allocating and marking the
 * page, so free finds the block start) or page runs; beyond, a huge mapping. */
static void *aligned_alloc_heap(size_t align, size_t size) {
  if (size > SIZE_MAX - align) {
    errno = ENOMEM;
    return NULL;
  }
  if (align <= PAGE_SIZE) {
    if (size <= SMALL_MAX) {
      unsigned cls = class_of(size);
      /* blocks of a size that is a multiple of align are aligned already,
       * past the colors of their spans for a size not a power of two */
      size_t bs = hak_class_size[cls];
      if (bs % align == 0 && (align <= SPAN_COLOR_STEP || !size_colored(bs)) &&
          align <= REGION_HEADER_SIZE)
        return hak_alloc_inline(size);
    }
    if (size + align - 1 <= SMALL_MAX) {
      char *p = hak_alloc_inline(size + align - 1);
      if (!p) return NULL;
      char *q = (char *)(((uintptr_t)p + align - 1) & ~(uintptr_t)(align - 1));
      if (q != p) {
        hak_page_t *page = page_of(region_of(p), p);
        page_note_align(page, align);
        page_flags_set(page, page_flags(page) | PAGE_HAS_ALIGNED);
      }
      return q;
    }
  }
  if (align <= PAGE_SIZE && size <= MAP_MIN) {
    hak_heap_t *heap = hak_tls_heap;
    if (heap == &hak_heap_empty && !(heap = hak_heap_for_thread())) return NULL;
    return hak_large_alloc(heap, size, false, false); /* spans start on a 64 KiB boundary */
  }
  /* a mapping's block starts 64 KiB past a 2 MiB boundary, or at align */
  bool zero;
  return hak_huge_alloc(size, align, &zero);
}

static void *aligned_alloc_impl(size_t align, size_t size) {
  if (align <= MIN_ALIGN) return hak_alloc_inline(size);
  /* a thread sharing a heap holds it throughout: marking a page is its owner's write */
  hak_heap_t *shared = NULL;
  if (hak_tls_heap == &hak_heap_empty) {
    shared = hak_shared_enter();
    /* NULL: the thread reserved a heap's place; take the heap now, as its
     * thread-exit destructor gives the place back (a mapping alone would not) */
    if (!shared && !hak_heap_for_thread()) return NULL;
  }
  void *p = aligned_alloc_heap(align, size);
  if (shared) hak_shared_leave(shared);
  return p;
}

static bool is_pow2(size_t x) {
  return x && !(x & (x - 1));
}

HAK_EXPORT int hak_posix_memalign(void **out, size_t align, size_t size) {
  if (!is_pow2(align) || align % sizeof(void *)) return EINVAL;
  int saved = errno;
  void *p = aligned_alloc_impl(align, size);
  if (!p) {
    errno = saved;
    return ENOMEM;
  }
  *out = p;
  return 0;
}

HAK_EXPORT void *hak_aligned_alloc(size_t align, size_t size) {
  if (!is_pow2(align)) {
    errno = EINVAL;
    return NULL;
  }
  return aligned_alloc_impl(align, size);
}

HAK_EXPORT void *hak_memalign(size_t align, size_t size) {
  if (!is_pow2(align)) { /* glibc rounds up to the next power of two */
    if (align > (SIZE_MAX >> 1) + 1) {
      errno = EINVAL;
      return NULL;
    }
    size_t a = MIN_ALIGN;
    while (a < align)
      a <<= 1;
    align = a;
  }
  return aligned_alloc_impl(align, size);
}

HAK_EXPORT void *hak_valloc(size_t size) {
  return aligned_alloc_impl(kmem_os_page_size(), size);
}

HAK_EXPORT void *hak_pvalloc(size_t size) {
  size_t ps = kmem_os_page_size();
  if (size > SIZE_MAX - ps) {
    errno = ENOMEM;
    return NULL;
  }
  return aligned_alloc_impl(ps, size ? (size + ps - 1) & ~(ps - 1) : ps);
}

HAK_EXPORT void hak_free_sized(void *p, size_t size) {
  (void)size;
  hak_free_inline(p);
}

HAK_EXPORT void hak_free_aligned_sized(void *p, size_t align, size_t size) {
  (void)align;
  (void)size;
  hak_free_inline(p);
}

HAK_EXPORT int hak_malloc_trim(size_t pad) {
  (void)pad;
  hak_shared_trim(); /* their batches go out before the drains below */
  hak_heap_t *heap = hak_tls_heap;
  if (heap != &hak_heap_empty) {
    /* every mailbox: frees for pages whose owners are gone end in the pool */
    hak_mailbox_flush(heap);
    for (int node = 0; node < kmem_node_count(); node++)
      hak_mailbox_drain(heap, node, SIZE_MAX);
    hak_remote_stash_flush(heap); /* the drains may have stashed blocks */
  }
  /* every other thread's stash too: the blocks idle threads freed into our
   * pages (and into abandoned ones) come back before the trim */
  hak_heaps_stash_take(heap, false);
  if (heap != &hak_heap_empty) {
    if (atomic_load_explicit(&heap->delayed, memory_order_relaxed)) hak_remote_drain_delayed(heap);
    hak_heap_trim(heap);
  }
  hak_shared_trim(); /* the blocks those drains gave them */
  hak_abandoned_trim();
  size_t released = hak_pool_trim() + hak_huge_trim();
  return released > 0;
}

HAK_EXPORT int hak_owns(const void *p) {
  return p && hak_usable_size(p) > 0;
}
