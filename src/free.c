/* free beyond the fast path: pages with flags, remote frees, the owner's
 * delayed list, retiring empty pages, and pointers that are not ours. */
#include "format.h"
#include "internal.h"

#include <stdlib.h>
#include <unistd.h>

/* An empty page leaves the heap unless it is the class's only page, which
 * stays to spare the next malloc a trip to the pool. */
void hak_heap_retire(hak_heap_t *heap, hak_page_t *page) {
  hak_queue_t *q = &heap->queues[page->cls];
  if (q->first == page && q->last == page) return;
  queue_remove(q, page);
  heap_sync_direct(heap, page->cls);
  hak_span_free(page);
}

static void page_unfull(hak_heap_t *heap, hak_page_t *page) {
  page_flags_set(page, page_flags(page) & ~PAGE_IN_FULL);
  queue_remove(&heap->full, page);
  queue_push_back(&heap->queues[page->cls], page);
  heap_sync_direct(heap, page->cls);
  /* The NOTIFY state stays: the next remote free takes the delayed route
   * once and resets it, and a page that fills again is parked without a CAS,
   * which is the common case of a thread freeing its own blocks. */
}

void hak_free_local_slow(hak_heap_t *heap, hak_page_t *page, hak_block_t *b) {
  page_push_local(page, b);
  if (page_flags(page) & PAGE_IN_FULL) page_unfull(heap, page);
  if (page->used == 0) hak_heap_retire(heap, page);
}

static _Atomic int invalid_warned;

void hak_invalid_free(const void *p) {
  atomic_fetch_add_explicit(&hak_gstats.invalid_frees, 1, memory_order_relaxed);
  if (hak_opt.abort_on_error) {
    static const char msg[] = "hakmem: free of a pointer hakmem never returned; aborting\n";
    if (write(2, msg, sizeof msg - 1) < 0) {
    }
    abort();
  }
  if (!atomic_exchange_explicit(&invalid_warned, 1, memory_order_relaxed)) {
    char mem[32];
    hak_buf_t ptr = {mem, 0, sizeof mem};
    buf_hex(&ptr, (uintptr_t)p);
    hak_warn("free of a pointer hakmem never returned (", mem,
             ") ignored; further ones are only counted (HAKMEM_ABORT_ON_ERROR=1 aborts)");
  }
}

#ifdef HAK_DEBUG
/* Debug builds: whether b is free already, on one of the lists of a page
 * the calling thread owns (only the owner may walk them: it alone takes
 * blocks off them). Bounded, so a list a missed double free made circular
 * ends the walk. */
bool hak_debug_on_list(const hak_block_t *x, const hak_block_t *b, size_t max) {
  for (size_t i = 0; x && i <= max; x = x->next, i++)
    if (x == b) return true;
  return false;
}

static bool in_midcache(hak_heap_t *heap, const hak_page_t *page, const hak_block_t *b) {
  if (!(page_flags(page) & PAGE_MID)) return false;
  for (void **slot = midcache_slot(heap, heap->mid_top[page->cls - MIDCACHE_FIRST]); slot[-1];
       slot--)
    if (slot[-1] == b) return true;
  return false;
}

static bool debug_block_free(hak_page_t *page, const hak_block_t *b) {
  hak_heap_t *heap = page_heap(page);
  size_t max = page->capacity;
  return in_midcache(heap, page, b) || hak_debug_on_list(page->free, b, max) ||
         hak_debug_on_list(page->local_free, b, max) ||
         hak_debug_on_list(remote_list(atomic_load_explicit(&page->remote, memory_order_acquire)),
                           b, max) ||
         hak_debug_on_list(atomic_load_explicit(&heap->delayed, memory_order_acquire), b,
                           (size_t)1 << 20);
}
#endif

/* What the slow path (and the debug fast path) accepts on a small-class
 * page: p at a block boundary below the blocks carved so far (capacity for
 * a thread that does not own the page: `reserved` is the owner's, and a
 * pointer it handed out is covered by both), or, on a page with aligned
 * blocks, the address aligned_alloc_impl handed out. Release builds cannot
 * tell a free block from a live one; debug builds check the owner's lists. */
void *hak_free_check(hak_page_t *page, void *p) {
  char *start = page_start(page), *q = p;
  size_t bs = page->block_size;
  bool own = page_heap(page) == hak_tls_heap;
  if (bs == 0 || q < start) goto bad;
  size_t idx = class_block_index(page->cls, (size_t)(q - start));
  if (idx >= (own ? page->reserved : page->capacity)) goto bad;
  char *b = start + idx * bs;
  if (q != b) {
    /* An aligned block is handed out at q = roundup(b, align), align a
     * power of two between the page's smallest and largest (align_shifts).
     * Such a q is also roundup(b, a) for a = its own alignment capped at the
     * largest: q is a multiple of a >= align, and q - b < align <= a. So
     * every q handed out passes; with one alignment only exactly those do,
     * with several an interior q that is roundup(b, a) for an a between
     * them passes too. */
    unsigned s = atomic_load_explicit(&page->align_shifts, memory_order_relaxed);
    uintptr_t a = (uintptr_t)q & -(uintptr_t)q, max = (uintptr_t)16 << (s >> 4);
    if (a > max) a = max;
    if (!s || a < (uintptr_t)16 << (s & 15) || (((uintptr_t)b + a - 1) & ~(a - 1)) != (uintptr_t)q)
      goto bad;
  }
#ifdef HAK_DEBUG
  if (own && debug_block_free(page, (hak_block_t *)b)) goto bad; /* a double free */
#endif
  return b;
bad:
  hak_invalid_free(p);
  return NULL;
}

/* The page of *p, a pointer into small region r, with *p moved to its
 * block's start; NULL when the free is done already: p was no block
 * (counted), or a large block, whose span went back to its region. */
static hak_page_t *block_page(hak_region_t *r, void **p) {
  hak_page_t *page = page_of(r, *p);
  if (page_flags(page) & PAGE_LARGE) {
    if ((char *)*p != page_start(page)) { /* inside the span: not its block */
      hak_invalid_free(*p);
      return NULL;
    }
    hak_heap_t *heap = hak_tls_heap; /* the empty heap's probe stays NULL */
    if (unlikely(heap->large_probe == *p)) hak_large_probe_judge(heap);
    atomic_fetch_and_explicit(&r->large_starts, ~region_page_bit(r, *p), memory_order_relaxed);
    hak_span_free(page); /* counts a second free that raced this one */
    return NULL;
  }
  *p = hak_free_check(page, *p); /* a freed large span has block_size 0: counted */
  return *p ? page : NULL;
}

/* Every free the inline path does not finish nor pass to hak_free_other:
 * NULL, other nodes' blocks, huge blocks and pointers not ours. */
void hak_free_slow(hak_region_t *r, void *p) {
  if (!p) return;
  uint8_t tag = region_tag(r);
  int kind = tag & 3;
  if (kind == REGION_HUGE) {
    if ((char *)p == (char *)r->map_base + r->map_len - r->huge_usable)
      hak_huge_free(r);
    else
      hak_invalid_free(p);
    return;
  }
  if (kind != REGION_SMALL) {
    hak_invalid_free(p);
    return;
  }
  hak_heap_t *heap = hak_tls_heap;
  bool cross = tag != heap->region_tag && heap != &hak_heap_empty;
  if (cross && hak_opt.mailbox_batch > 1 && !heap->foreign &&
      !(atomic_load_explicit(&r->large_starts, memory_order_relaxed) & region_page_bit(r, p))) {
    /* another node's small block (a heap that is not foreign owns none of
     * them): batched without reading its page descriptor, a line its owner
     * writes on every malloc */
    stat_inc(&heap->stats.remote_frees, 1);
    stat_inc(&heap->stats.remote_frees_cross_node, 1);
    hak_mailbox_send(heap, tag >> 2, p);
    return;
  }
  hak_page_t *page = block_page(r, &p);
  if (!page) return;
  hak_heap_t *owner = page_heap(page);
  if (owner != heap) {
    if (hak_heap_is_shared(owner) && hak_shared_free(owner, page, p)) return;
    if (heap == &hak_heap_empty) {
      atomic_fetch_add_explicit(&hak_gstats.remote_frees, 1, memory_order_relaxed);
    } else {
      stat_inc(&heap->stats.remote_frees, 1);
      if (cross) stat_inc(&heap->stats.remote_frees_cross_node, 1);
    }
  }
  hak_free_route(heap, page, p);
}

/* Whether q starts one of the blocks in the bytes span past first, blocks
 * of their class's inverse (ceil(2^40 / size), an index without a
 * divide). With off = idx * size + rem, off * inverse is idx * 2^40 +
 * idx * e + rem * inverse (e = inverse * size - 2^40 < size <= 2^17): its
 * low 40 bits are idx * e < off < 2^22 (a span lies in a 2 MiB region)
 * when rem is 0, and at least inverse >= 2^23 otherwise: one multiply, no
 * second one to compare idx * size with off. No q below first passes: its
 * offset wraps past span. */
static inline bool is_block_start(const char *first, const char *q, size_t span, uint64_t inverse) {
  size_t off = (size_t)(q - first);
  uint64_t fraction = (off * inverse) & (((uint64_t)1 << CLASS_INVERSE_SHIFT) - 1);
  return off < span && fraction < ((uint64_t)1 << 22);
}

/* The inline free's page of a small region of the heap's node, not the
 * heap's own without flags: its page, owner word and region r as the
 * inline free read them. The common case is a remote free of a small
 * block into the stash, here without the general path's layers and with
 * the stash's push inline, one leaf function (on a pair of threads handing
 * blocks over, this is half of what free costs). */
void hak_free_other(hak_heap_t *heap, hak_page_t *page, void *p, uintptr_t owner, hak_region_t *r) {
  uintptr_t other = owner & ~PAGE_FLAG_MASK;
  if (unlikely(other == (uintptr_t)heap)) { /* ours, with flags: parked, aligned blocks */
    hak_free_block(heap, r, p);
    return;
  }
  if (unlikely(!other)) { /* no owner: abandoned, a large span (never owned) or free */
    hak_free_slow(r, p);
    return;
  }
  /* The common case: more of the page its stash entry gathers. An entry
   * holds pages of its class only, whose blocks lie the same in every life
   * of the page (its color too: page.c derives it from the descriptor's
   * address and the class), so p is checked against the blocks the entry
   * noted, without the descriptor's fields. */
  unsigned cls = page->cls;
  hak_stash_t *s = &heap->stash[cls];
  char *q = p;
  if (likely(s->page == page)) {
    if (unlikely(!is_block_start(s->first, q, s->span, s->inverse))) {
      hak_free_slow(r, p);
      return;
    }
    stat_inc(&heap->stats.remote_frees, 1);
    hak_stash_pushed(heap, cls, hak_stash_push(s, (hak_block_t *)q));
    return;
  }
  /* hak_free_check's test for a page not ours, its start (page_start) from
   * r at hand: p a block start below the capacity. Anything else (an
   * aligned block, no block at all) the general path checks in full. */
  uintptr_t at = ((uintptr_t)page - (uintptr_t)r) << (PAGE_SHIFT - PAGE_DESC_SHIFT);
  char *start = (char *)r + (at ? at : REGION_HEADER_SIZE) + (size_t)page->color * SPAN_COLOR_STEP;
  size_t span = (size_t)page->capacity * page->block_size; /* 0 for a freed span */
  if (unlikely(!is_block_start(start, q, span, hak_class_inverse[cls]))) {
    hak_free_slow(r, p);
    return;
  }
  stat_inc(&heap->stats.remote_frees, 1);
  hak_remote_stash_start(heap, page, (hak_block_t *)q);
}

/* Not inlined: hak_free_other stays a leaf that saves no registers. */
HAK_NOINLINE void hak_free_block(hak_heap_t *heap, hak_region_t *r, void *p) {
  hak_page_t *page = block_page(r, &p);
  if (page) hak_free_route(heap, page, p);
}

/* Where a free goes once it is known not to wait in a mailbox: the caller's
 * own page, an abandoned page the caller claims (same node only), the
 * caller's stash for another heap's page, or the page's remote list. */
void hak_free_route(hak_heap_t *heap, hak_page_t *page, hak_block_t *b) {
  hak_heap_t *owner = page_heap(page);
  if (owner == heap) {
    if (page_flags(page) & PAGE_MID)
      midcache_push(heap, page, b);
    else
      hak_free_local_slow(heap, page, b);
    return;
  }
  if (!owner && heap != &hak_heap_empty &&
      atomic_load_explicit(&page->abandoned, memory_order_relaxed) &&
      hak_abandoned_claim(page, heap)) {
    stat_inc(&heap->stats.pages_adopted, 1);
    size_t n = hak_page_collect_remote(page);
    stat_inc(&heap->stats.remote_blocks_collected, n);
    queue_push_front(&heap->queues[page->cls], page); /* its free blocks first */
    heap_sync_direct(heap, page->cls);
    hak_free_local_slow(heap, page, b);
    return;
  }
  /* a page without owner is freed into at once: its last block's freer
   * gives it back to its region */
  if (owner && heap != &hak_heap_empty)
    hak_remote_stash(heap, page, page->cls, b);
  else
    hak_remote_free(page, b);
}
