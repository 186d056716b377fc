/* hakmem internals: the memory model of DESIGN.md as C types.
 *
 * region (2 MiB, aligned) = header page + 31 MF2 pages of 64 KiB
 * span   = run of contiguous pages holding blocks of one size class, or one
 *          large block; its first page descriptor describes it ("page")
 * heap   = per-thread set of pages, one queue per size class
 */
#ifndef HAK_INTERNAL_H
#define HAK_INTERNAL_H

#include "hakmem.h"
#include "kmem.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef HAK_DEBUG
/* The checked build: invariants verified, protocol points tests can stop at. */
void hak_debug_assert_fail(const char *what, const char *file, int line);
#define HAK_ASSERT(c) ((c) ? (void)0 : hak_debug_assert_fail(#c, __FILE__, __LINE__))
extern void (*_Atomic hak_debug_hook)(int point);
#define HAK_HOOK(point)                                                                            \
  do {                                                                                             \
    void (*hook_)(int) = atomic_load(&hak_debug_hook);                                             \
    if (hook_) hook_(point);                                                                       \
  } while (0)
struct hak_heap;
void hak_debug_check_heap(struct hak_heap *heap, int cls);
void hak_abandoned_check(void);
struct hak_block;
bool hak_debug_on_list(const struct hak_block *x, const struct hak_block *b, size_t max);
void hak_remote_stash_check(struct hak_heap *heap);
#define HAK_CHECK_HEAP(heap, cls) hak_debug_check_heap(heap, cls)
#else
#define HAK_ASSERT(c) ((void)0)
#define HAK_HOOK(point) ((void)0)
#define HAK_CHECK_HEAP(heap, cls) ((void)0)
#endif

#define likely(x) __builtin_expect(!!(x), 1)
#define unlikely(x) __builtin_expect(!!(x), 0)
#define HAK_EXPORT __attribute__((visibility("default")))
#define HAK_NOINLINE __attribute__((noinline))

#define REGION_SHIFT KMEM_REGION_SHIFT
#define REGION_SIZE KMEM_REGION_SIZE
#define PAGE_SHIFT 16
#define PAGE_SIZE ((size_t)1 << PAGE_SHIFT)
#define PAGES_PER_REGION 32
#define REGION_HEADER_SIZE ((size_t)8192) /* page 0 keeps its blocks after it */
#define VA_BITS 47

#define MIN_ALIGN 16
#define SMALL_MAX ((size_t)128 << 10)                  /* largest size-class block */
#define LARGE_MAX ((PAGES_PER_REGION - 1) * PAGE_SIZE) /* longest run of pages */
/* Blocks past this get a mapping of their own (huge.c); up to it, size
 * classes and then runs of pages. Huge pages only come to dense regions
 * (HAKMEM_THP=collapse), so a page run's unused neighbours stay unbacked. */
#define MAP_MIN LARGE_MAX
#define NUM_CLASSES 53
#define DIRECT_MAX 1024 /* sizes looked up in one table */

/* Mid-size classes (past the direct table up to 32 KiB) go through a per-heap
 * array of block pointers (midcache.c), so the owner's malloc and free do not
 * touch the block. Their pages carry PAGE_MID. */
#define MIDCACHE_MAX ((size_t)32 << 10)
#define MIDCACHE_FIRST 20   /* class_of(DIRECT_MAX + 1) */
#define MIDCACHE_CLASSES 23 /* up to class_of(MIDCACHE_MAX) */
#define MIDCACHE_SLOTS 64
#define MIDCACHE_CLASS_BYTES ((size_t)256 << 10)
#define MIDCACHE_HEAP_BYTES ((size_t)1 << 20)

/* ---- blocks, pages ------------------------------------------------------ */

typedef struct hak_block {
  struct hak_block *next;
} hak_block_t;

struct hak_heap;

/* Remote-list state in the low two bits of page->remote (blocks are 16-aligned).
 * NOTIFY: the owner parked the page as full; the next remote freer hands its
 * block to the owner's heap->delayed list instead, so the page is revisited.
 * FREEING: that freer is doing so now. NEVER: the page has no owner. */
enum { REMOTE_PLAIN = 0, REMOTE_NOTIFY = 1, REMOTE_FREEING = 2, REMOTE_NEVER = 3 };
#define REMOTE_STATE_MASK ((uintptr_t)3)
/* The list's length in the top 16 bits (a span has at most 65535 blocks), so
 * the owner takes a list without walking blocks other threads wrote last. */
#define REMOTE_COUNT_ONE ((uintptr_t)1 << 48)
#define REMOTE_LIST_MASK (REMOTE_COUNT_ONE - 16)
_Static_assert(VA_BITS <= 48, "block addresses below the remote count");

static inline hak_block_t *remote_list(uintptr_t word) {
  return (hak_block_t *)(word & REMOTE_LIST_MASK);
}

/* Flags in the low bits of page->owner (heaps are 64-byte aligned): any bit
 * set sends the owner's free to the slow path. */
enum { PAGE_IN_FULL = 1, PAGE_HAS_ALIGNED = 2, PAGE_LARGE = 4, PAGE_MID = 8 };
#define PAGE_FLAG_MASK ((uintptr_t)63)

/* A span's descriptor, in two cache lines: the first is written by the
 * owner's malloc and free, the second only when the span changes hands or
 * state, and read by every free. With one line, a thread freeing another's
 * blocks read a line the owner's mallocs kept writing (its owner word
 * missed in 77% of its free's samples), and the owner's next malloc found
 * the line taken back: pingpong with its sides on two CPUs does 30.2M
 * ops/s with two lines against 23.9M with one (2 pairs; 23.1M against
 * 20.5M with 1). The 32 descriptors fill the region's first OS page. */
typedef struct hak_page {
  hak_block_t *free;            /* malloc pops here (owner) */
  hak_block_t *local_free;      /* owner's frees */
  uint16_t used;                /* blocks out, remote frees not yet collected included */
  uint16_t reserved;            /* blocks carved so far */
  uint8_t free_is_zero : 1;     /* blocks on `free` are zero but for their first word */
  uint8_t fresh_zero : 1;       /* not yet carved blocks are zero */
  struct hak_page *next, *prev; /* heap queue or abandoned list */
  /* owning heap | PAGE_* flags, one word so free's fast path is one compare;
   * written by the owner only (or under the pool lock when it has none) */
  _Alignas(64) _Atomic uintptr_t owner;
  _Atomic uintptr_t remote; /* other threads' frees | state */
  uint32_t block_size;
  uint16_t capacity; /* blocks the span holds */
  uint8_t cls;
  /* alignments aligned_alloc_impl moved a block start to (set with
   * PAGE_HAS_ALIGNED; 0: none), log2 - 4 of the smallest in the low nibble,
   * of the largest in the high one: free accepts no other offsets */
  _Atomic uint8_t align_shifts;
  /* the first block's offset past the span's base, in SPAN_COLOR_STEPs
   * (page.c); set before the span has an owner, read by any freer */
  uint8_t color;
  _Atomic uint8_t abandoned; /* on its region node's abandoned list (remote.c) */
  uint8_t span_pages;
} hak_page_t;

enum { REGION_SMALL = 1, REGION_HUGE = 2 };

typedef struct hak_region {
  hak_page_t pages[PAGES_PER_REGION]; /* first: free indexes it from the region base */
  /* never written, zero: what page_of finds for a pointer at the region's
   * end (region_of maps the next unit's base here): no owner, no class, so
   * such a free takes the checked path instead of reading the fields below
   * as a descriptor (a class past NUM_CLASSES, a garbage owner) */
  hak_page_t past_end;
  /* per page, and 0 for past_end: descriptors back to its span's head. One
   * line for the region, read by every free (page_of), where a byte in each
   * descriptor cost a line per page: churn_mid's frees missed D1 on the
   * descriptor of their block's page, not the span's head, 0.33 times each */
  _Alignas(64) uint8_t back[PAGES_PER_REGION + 1];
  uint32_t free_mask;  /* pages not in any span (pool lock) */
  uint32_t dirty_mask; /* pages touched since last purge (pool lock) */
  uint16_t nfree;
  uint16_t node;
  uint8_t kind;
  uint8_t bucket;        /* pool bucket it is listed in (pool lock) */
  bool hugetlb;          /* hugetlbfs pages: never purged in parts */
  bool thp;              /* huge-page advised: free pages are resident too */
  uint32_t purging_mask; /* pages out for purging (pool lock) */
  uint32_t clean_mask;   /* purged and not handed out since: not resident */
  uint64_t purged_ms;    /* last purge of any of its pages (pool lock) */
  /* the heap that took its first span since it was empty, whose spans come
   * from it first (pool lock); NULL while empty */
  const struct hak_heap *heap;
  uint64_t empty_since_ms;
  uint64_t page_freed_ms[PAGES_PER_REGION]; /* HAKMEM_PURGE=page */
  /* HAKMEM_THP=collapse (pool lock): thp is set once collapsed, and cleared
   * when a purge splits the huge page again */
  bool collapsed;
  /* the descriptors' OS page was discarded with the region's pages when it
   * was purged whole (pool lock): committed again when a span is taken */
  bool descs_purged;
  uint32_t dense_pass;     /* the collapse pass that last found it dense */
  uint64_t dense_since_ms; /* found dense at every pass since */
  uint64_t collapse_ms;    /* last collapse tried, or split: not again soon */
  /* bit i: a large block starts on page i. Alone on its line: another node's
   * free reads it to keep large blocks out of the mailboxes. */
  _Alignas(64) _Atomic uint32_t large_starts;
  struct hak_region *next, *prev; /* pool bucket */
  /* huge mappings only */
  void *map_base;
  size_t map_len;
  size_t huge_usable;
  size_t huge_need; /* mapping bytes the block asked for, header page included */
  size_t huge_res;  /* bytes from map_base that may be resident (>= huge_need) */
} hak_region_t;

_Static_assert(sizeof(hak_region_t) <= REGION_HEADER_SIZE, "region header too big");
#define PAGE_DESC_SHIFT 7 /* log2 of a descriptor's size: free indexes by shift */
_Static_assert(sizeof(hak_page_t) == (size_t)1 << PAGE_DESC_SHIFT,
               "free indexes descriptors by shift");
/* the descriptors fill the region's first OS page, which a purge of the
 * whole region discards too */
#define REGION_DESC_BYTES ((size_t)PAGES_PER_REGION << PAGE_DESC_SHIFT)
_Static_assert(REGION_DESC_BYTES == 4096, "the descriptors are one OS page");

/* ---- heaps -------------------------------------------------------------- */

typedef struct hak_queue {
  hak_page_t *first, *last;
  uint32_t count;
} hak_queue_t;

/* Per-thread counters; merged by hak_stats_get. Written by the owner only. */
typedef struct hak_heap_stats {
  _Atomic uint64_t pages_fresh, pages_reused, pages_activated, remote_frees,
      remote_blocks_collected, pages_abandoned, pages_adopted, remote_frees_cross_node,
      batches_sent, mailbox_drains, blocks_drained, remote_handoffs, midcache_filled,
      midcache_flushed;
} hak_heap_stats_t;

/* Blocks a heap freed into one page of another heap, not yet handed over
 * (remote.c): a chain the freeing heap pushes onto with plain stores, of
 * which any thread may take the blocks pushed since the last cut (the
 * heap's stash_cut). */
typedef struct __attribute__((aligned(64))) hak_stash {
  /* the newest block | pushes mod 2^16 << 48; written by the freeing heap */
  _Atomic uintptr_t top;
  /* the freeing heap's own: the page it pushes blocks of (NULL: none), its
   * first push since its last hand-over, the push count before that push
   * and the one at which it hands the chain over (mod 2^16) */
  hak_page_t *page;
  hak_block_t *last;
  uint16_t start, limit;
  /* the page's blocks, for the remote free's check of a pointer without
   * its descriptor: the same in every life the page has in this class, the
   * only one in which the free finds the page in this entry */
  uint32_t span;    /* bytes its blocks cover */
  uint64_t inverse; /* hak_class_inverse of the class */
  char *first;      /* the first block */
} hak_stash_t;
_Static_assert(sizeof(hak_stash_t) == 64, "a stash entry is indexed by shift");
_Static_assert(NUM_CLASSES <= 64, "stash_mask has a bit per class");

struct hak_batch; /* cross-node frees bound for one node (mailbox.c) */

typedef struct __attribute__((aligned(64))) hak_heap {
  /* first: the remote free addresses an entry's top by the heap and the
   * class alone, no offset (one instruction less per remote free) */
  hak_stash_t stash[NUM_CLASSES];  /* per class: one page's foreign frees */
  hak_page_t *direct[NUM_CLASSES]; /* first page of each queue, or the empty page */
  /* The mid cache's bookkeeping, in two lines: per class, byte offsets
   * from the heap of its slot the next freed block goes to (its cached
   * blocks lie below, down to the second slot of mid_slot[class]: the
   * first stays NULL, so malloc's pop tests the block it reads, with no
   * bound to load) and of the slot past its last (hak_midcache_max). */
  _Alignas(64) uint16_t mid_top[MIDCACHE_CLASSES];
  /* MIDCACHE_HEAP_BYTES less the bytes the mid cache holds: a free caches
   * its block while this is positive (a test of the cap that does not
   * depend on the block's size: one that did would turn the large blocks
   * away first, churn_mid: 5 instructions more per malloc/free pair) */
  ptrdiff_t mid_room;
  uint16_t mid_end[MIDCACHE_CLASSES];
  hak_queue_t queues[NUM_CLASSES];
  hak_queue_t full; /* full pages and large spans */
  uint64_t slow_calls;
  /* HAKMEM_PREFAULT=large: a fresh large block left unpopulated, to see
   * whether its caller wrote it whole (slow.c large_populate) */
  void *large_probe;
  size_t large_probe_bytes;
  uint32_t large_fresh;                  /* fresh large blocks taken */
  bool large_written;                    /* the last probe was written whole */
  uint64_t out_pending;                  /* bit n: out[n] holds a partial batch */
  struct hak_batch *out[KMEM_MAX_NODES]; /* the batch being filled per node */
  struct hak_batch *spare;               /* empty batches for the next sends */
  int node;
  uint8_t region_tag; /* region_small_tag(node); REGION_TAG_NONE if empty */
  bool foreign;       /* may own pages of another node's regions */
  bool in_use;
  struct hak_heap *pool_next; /* all heaps ever made */
  hak_heap_stats_t stats;
  uint64_t stash_mask;                     /* bit c: stash[c] was pushed to, not flushed since */
  _Atomic uint64_t stash_cut[NUM_CLASSES]; /* per class: pushes handed over, by anyone */
  uintptr_t stash_seen[NUM_CLASSES];       /* the background thread's: top at its previous pass */
  /* cached mid blocks from [1], the most recently freed last; still `used`
   * on their pages. [0] is NULL, the pop's end. */
  void *mid_slot[MIDCACHE_CLASSES][MIDCACHE_SLOTS + 1];
  /* written by other threads: a line of their own */
  _Alignas(64) _Atomic(hak_block_t *) delayed; /* blocks of NOTIFY pages freed remotely */
  _Atomic(struct hak_batch *) returned;        /* batches drainers are done with */
} hak_heap_t;

_Static_assert(sizeof(hak_heap_t) <= UINT16_MAX, "mid slots at 16-bit offsets");

extern hak_heap_t hak_heap_empty;
extern hak_page_t hak_page_empty;
#ifdef HAK_TLS_DLOPEN
extern __thread hak_heap_t *hak_tls_heap;
#else
extern __thread hak_heap_t *hak_tls_heap __attribute__((tls_model("initial-exec")));
#endif

/* ---- region map: which 2 MiB units are ours ------------------------------ */

/* One byte per 2 MiB of VA (64 MiB of .bss, touched only where we map). */
#define REGION_MAP_ENTRIES ((uintptr_t)1 << (VA_BITS - REGION_SHIFT))
extern _Atomic(uint8_t) hak_region_map[REGION_MAP_ENTRIES];

static inline hak_region_t *region_of(const void *p) {
  /* p-1: a huge block may start exactly at a 2 MiB boundary, with its header
   * in the unit before; no block ever starts at its region's base. */
  return (hak_region_t *)(((uintptr_t)p - 1) & ~(uintptr_t)(REGION_SIZE - 1));
}

/* A region's map byte: its kind in the low two bits and, for small regions,
 * its node above them, so free's fast path learns "small and of my node"
 * from the one byte it loads anyway and sends other nodes' blocks on
 * without reading their page descriptors, lines their owner writes. */
#define REGION_TAG_NONE 0xFF /* the empty heap's tag: no region has it */
_Static_assert(((KMEM_MAX_NODES - 1) << 2 | REGION_SMALL) < REGION_TAG_NONE, "node in a map byte");

static inline uint8_t region_small_tag(int node) {
  return (uint8_t)(REGION_SMALL | node << 2);
}

static inline uint8_t region_tag(const hak_region_t *r) {
  uintptr_t idx = (uintptr_t)r >> REGION_SHIFT;
  if (unlikely(idx >= REGION_MAP_ENTRIES)) return 0;
  return atomic_load_explicit(&hak_region_map[idx], memory_order_relaxed);
}

static inline int region_kind(const hak_region_t *r) {
  return region_tag(r) & 3;
}

/* p's page as a bit; masked, as region_of lets p be the region's end. */
static inline uint32_t region_page_bit(const hak_region_t *r, const void *p) {
  return 1u << ((((uintptr_t)p - (uintptr_t)r) >> PAGE_SHIFT) & (PAGES_PER_REGION - 1));
}

static inline hak_page_t *page_of(hak_region_t *r, const void *p) {
  /* &r->pages[idx - back], by bytes: idx 32 (p at the region's end) is past_end */
  uintptr_t idx = ((uintptr_t)p - (uintptr_t)r) >> PAGE_SHIFT;
  return (hak_page_t *)((char *)r + ((idx - r->back[idx]) << PAGE_DESC_SHIFT));
}

static inline hak_region_t *region_of_page(const hak_page_t *page) {
  return (hak_region_t *)((uintptr_t)page & ~(uintptr_t)(REGION_SIZE - 1));
}

/* Spans of one size class start their blocks at different offsets (within
 * the bytes the blocks leave over), so that blocks whose size is a multiple
 * of 4 KiB do not all begin in the same cache sets: a program touching the
 * first lines of such blocks would use one of the L1's 64 sets (and 1/64 of
 * the L2's where huge pages back them). */
#define SPAN_COLOR_STEP 64
#define SPAN_COLORS 64

/* Blocks of a power-of-two size are never colored: they stay aligned to
 * their size, which aligned_alloc relies on. */
static inline bool size_colored(size_t bs) {
  return (bs & (bs - 1)) != 0;
}

/* First block of a span: its page's address, past the header on page 0,
 * and past its color. */
static inline char *page_start(const hak_page_t *page) {
  hak_region_t *r = region_of_page(page);
  size_t idx = (size_t)(page - r->pages);
  return (char *)r + (idx ? idx * PAGE_SIZE : REGION_HEADER_SIZE) +
         (size_t)page->color * SPAN_COLOR_STEP;
}

static inline uintptr_t page_owner(const hak_page_t *pg) {
  return atomic_load_explicit(&((hak_page_t *)pg)->owner, memory_order_relaxed);
}

static inline unsigned page_flags(const hak_page_t *pg) {
  return (unsigned)(page_owner(pg) & PAGE_FLAG_MASK);
}

static inline hak_heap_t *page_heap(const hak_page_t *pg) {
  return (hak_heap_t *)(page_owner(pg) & ~PAGE_FLAG_MASK);
}

static inline void page_flags_set(hak_page_t *pg, unsigned f) {
  atomic_store_explicit(&pg->owner, (page_owner(pg) & ~PAGE_FLAG_MASK) | f, memory_order_relaxed);
}

/* A new owner (NULL: none); the flags stay. Release: the page's lists as
 * they are now are the new owner's. */
static inline void page_set_heap(hak_page_t *pg, struct hak_heap *heap) {
  atomic_store_explicit(&pg->owner, (uintptr_t)heap | (page_owner(pg) & PAGE_FLAG_MASK),
                        memory_order_release);
}

static inline void stat_inc(_Atomic uint64_t *c, uint64_t n) {
  /* owner-only counter: a plain add, atomic only so readers see whole values */
  atomic_store_explicit(c, atomic_load_explicit(c, memory_order_relaxed) + n, memory_order_relaxed);
}

/* ---- size classes -------------------------------------------------------- */

extern uint8_t hak_class_direct[DIRECT_MAX / MIN_ALIGN + 1];
#define LARGE_STEP_SHIFT 7 /* sizes past DIRECT_MAX looked up in 128-byte steps */
extern uint8_t hak_class_large[(SMALL_MAX >> LARGE_STEP_SHIFT) + 1];
extern uint32_t hak_class_size[NUM_CLASSES];
extern uint8_t hak_class_pages[NUM_CLASSES];
/* ceil(2^40 / size): off * inverse >> 40 is off / size, without a divide on
 * every remote free. Exact while off * (inverse * size - 2^40) < 2^40, so
 * for every off below 2^40 / size >= 2^23 (sizes up to 128 KiB): any
 * offset within a region. */
#define CLASS_INVERSE_SHIFT 40
extern uint64_t hak_class_inverse[NUM_CLASSES];
static inline size_t class_block_index(unsigned cls, size_t off) {
  return (size_t)(((uint64_t)off * hak_class_inverse[cls]) >> CLASS_INVERSE_SHIFT);
}
void hak_classes_init(void);
/* DIRECT_MAX < size <= SMALL_MAX */
static inline unsigned hak_class_of_large(size_t size) {
  return hak_class_large[(size + (1u << LARGE_STEP_SHIFT) - 1) >> LARGE_STEP_SHIFT];
}

static inline unsigned class_of(size_t size) {
  if (likely(size <= DIRECT_MAX)) return hak_class_direct[(size + MIN_ALIGN - 1) / MIN_ALIGN];
  return hak_class_of_large(size);
}

/* ---- options ------------------------------------------------------------- */

enum { STATS_OFF, STATS_TEXT, STATS_JSON, STATS_TEXT_ALIAS };
enum { PURGE_REGION, PURGE_PAGE, PURGE_OFF };
enum { PREFAULT_OFF, PREFAULT_PAGE, PREFAULT_AHEAD, PREFAULT_LARGE };

typedef struct hak_options {
  int stats;
  char stats_file[256];
  int thp; /* enum kmem_thp */
  bool hugetlb, uffd;
  int purge; /* PURGE_*: what goes back to the kernel */
  uint64_t purge_delay_ms;
  int purge_engine; /* enum kmem_purge_engine */
  bool purge_engine_asked;
  bool background; /* a purger thread returns memory of idle processes */
  int prefault;    /* PREFAULT_* */
  int numa;        /* enum kmem_numa_mode */
  bool numa_asked;
  int nodes;         /* HAKMEM_NODES: virtual nodes, 0 = the machine's */
  int mailbox_batch; /* cross-node frees per mailbox batch */
  int max_heaps;     /* thread heaps before new threads share (shared.c); 0: no limit */
  bool abort_on_error;
  bool verbose;
} hak_options_t;

extern hak_options_t hak_opt;
void hak_options_read(void);
void hak_options_banner(void);
void hak_warn(const char *a, const char *b, const char *c); /* one stderr line */

/* ---- process state ------------------------------------------------------- */

void hak_init(void);
extern _Atomic int hak_init_state;           /* 0 none, 1 running, 2 done */
hak_heap_t *hak_heap_for_thread(void);       /* creates the calling thread's heap */
void hak_heap_abandon(hak_heap_t *heap);     /* hak_thread_done */
void hak_heap_thread_exit(hak_heap_t *heap); /* its key's destructor */
void hak_heap_trim(hak_heap_t *heap);        /* returns its empty pages */
void hak_heaps_fork_prepare(void);
void hak_heaps_fork_release(void);
void hak_heaps_fork_child(hak_heap_t *survivor);
void hak_heaps_stats(hak_heap_stats_t *sum);                   /* adds every heap's counters */
bool hak_heaps_stash_take(hak_heap_t *except, bool idle_only); /* true: blocks left */
void hak_heap_register(hak_heap_t *heap); /* a heap no thread owns (shared.c) */
bool hak_thread_heap_reserve(unsigned max);

/* ---- shared heaps (shared.c): threads past HAKMEM_MAX_HEAPS --------------- */

void hak_shared_init(void);
/* For a thread without a heap: a shared heap, locked and made the thread's
 * heap until hak_shared_leave; NULL when the thread is to get its own. */
hak_heap_t *hak_shared_enter(void);
void hak_shared_leave(hak_heap_t *heap);
#define SHARED_MAX 64
extern hak_heap_t hak_shared_heaps[SHARED_MAX];
static inline bool hak_heap_is_shared(const hak_heap_t *heap) {
  return (uintptr_t)heap - (uintptr_t)hak_shared_heaps < sizeof hak_shared_heaps;
}
/* A free of block b into shared heap's page, done as the owner's under its
 * lock; false when the lock is busy. */
bool hak_shared_free(hak_heap_t *heap, hak_page_t *page, void *b);
bool hak_shared_trim_idle(void); /* the background thread; true: a shared heap is in use */
void hak_shared_trim(void);      /* malloc_trim: every shared heap's empty pages back */
void hak_shared_fork_prepare(void);
void hak_shared_fork_release(void); /* parent and child */

/* ---- global counters ----------------------------------------------------- */

typedef struct hak_global_stats {
  _Atomic uint64_t regions_reserved, committed_bytes, peak_committed_bytes, invalid_frees,
      remote_frees, huge_allocs, huge_cache_hits, heaps_created, pages_abandoned, pages_adopted,
      remote_blocks_collected, node_fallbacks, mailbox_bytes, mailbox_drains, blocks_drained,
      remote_handoffs, shared_heap_threads, background_passes;
} hak_global_stats_t;
extern hak_global_stats_t hak_gstats;
void hak_committed_add(int64_t delta);
uint64_t hak_now_ms(void); /* coarse monotonic clock */

/* ---- node pools: regions, free spans, abandoned pages --------------------- */

hak_page_t *hak_span_alloc(const struct hak_heap *heap, int node, unsigned npages, unsigned room,
                           bool allow_page0, bool *zero);
void hak_span_free(hak_page_t *span); /* a span already free counts as an invalid free */
bool hak_span_grow(hak_page_t *span, unsigned npages, bool *zero); /* false: pages after it taken */
void hak_span_shrink(hak_page_t *span, unsigned npages);
size_t hak_pool_trim(void); /* purges every free page */
size_t hak_pool_purge(bool force, bool wait, bool *later);
void hak_pool_purge_maybe(void);
void hak_pool_populate_at(uintptr_t region, unsigned next); /* validated under the lock */
size_t hak_pool_collapse(bool *later); /* HAKMEM_THP=collapse: the background thread's pass */
bool hak_pool_has_region(uintptr_t start, uintptr_t end); /* a small region in [start, end) */

/* ---- the remote-free protocol (remote.c) --------------------------------- */

typedef enum { PARK_DONE, PARK_RETRY, PARK_LATER } park_result_t;
void hak_remote_free(hak_page_t *page, hak_block_t *b);
void hak_remote_stash_start(hak_heap_t *heap, hak_page_t *page, hak_block_t *b);
void hak_remote_stash_rotate(hak_heap_t *heap, unsigned cls);
void hak_remote_stash_flush(hak_heap_t *heap);
bool hak_remote_stash_take(hak_heap_t *heap, bool idle_only); /* true: blocks left */
size_t hak_page_collect_remote(hak_page_t *page);
park_result_t hak_remote_park(hak_heap_t *heap, hak_page_t *page);
void hak_remote_drain_delayed(hak_heap_t *heap);
void hak_remote_release(hak_page_t *page);
void hak_remote_fork_child(hak_page_t *page);
size_t hak_abandoned_push(hak_page_t *pages); /* a list linked by next */
hak_page_t *hak_abandoned_adopt(int node, unsigned cls, hak_heap_t *heap);
bool hak_abandoned_claim(hak_page_t *page, hak_heap_t *heap);
void hak_abandoned_trim(void);
void hak_abandoned_fork_prepare(void);
void hak_abandoned_fork_release(void);

/* ---- background thread --------------------------------------------------- */

void hak_background_want(void);
void hak_background_start_if_wanted(void);
uint64_t hak_background_period_ms(void);
void hak_background_ahead(hak_page_t *span);
void hak_background_fork_child(void);

/* A stash's top counts its pushes in the bits above the block address, as
 * the remote word counts its list; a chain holds far fewer than 2^16. */
#define STASH_PUSH_ONE REMOTE_COUNT_ONE
/* In top's low bits (blocks are 16-byte aligned): a take found the chain
 * there and took it whole; the freer's next push clears it. */
#define STASH_TAKEN ((uintptr_t)1)

/* Returns the pushes so far (mod 2^16) times STASH_PUSH_ONE, with the low
 * bits of the top the push found. */
static inline uintptr_t hak_stash_push(hak_stash_t *s, hak_block_t *b) {
  uintptr_t top = atomic_load_explicit(&s->top, memory_order_relaxed);
  hak_block_t *next = remote_list(top);
  /* the count bits, one more: the list bits all set, and 16 carries into
   * the count (a block's low 4 bits are clear); no 64-bit constant more.
   * top's low bits (STASH_TAKEN) stay in what is returned, not in the store */
  uintptr_t count = (top | REMOTE_LIST_MASK) + 16;
  b->next = next;
  atomic_store_explicit(&s->top, (count & ~(uintptr_t)15) | (uintptr_t)b, memory_order_release);
  return count;
}

/* After a push onto heap's entry for cls that returned count: at its limit
 * the chain goes over. A push onto a chain another thread took (the
 * background thread takes an idle freer's) starts one only a take hands
 * over while this thread stays idle: it wants the background thread, as the
 * entry's first push did, or a dozing one would leave it there for a second. */
static inline void hak_stash_pushed(hak_heap_t *heap, unsigned cls, uintptr_t count) {
  if (unlikely((uint16_t)(count / STASH_PUSH_ONE) == heap->stash[cls].limit))
    hak_remote_stash_rotate(heap, cls);
  else if (unlikely(count & STASH_TAKEN))
    hak_background_want();
}

/* stash (remote.c's protocol): b, freed by heap into another heap's page,
 * waits in heap's entry for the page's class. It stays counted in the
 * page's used blocks, so the page is neither retired nor reclaimed
 * meanwhile and its descriptor stays this page's. The push is two plain
 * stores, no CAS: a taker moves the cut, and writes top only to mark it
 * taken (a CAS; a push under way may store over the mark). Inline, so
 * that the remote free is one function (hak_free_other). cls is the page's,
 * read before the push: once pushed, a taker may hand b over and the page
 * be freed. */
static inline void hak_remote_stash(hak_heap_t *heap, hak_page_t *page, unsigned cls,
                                    hak_block_t *b) {
  hak_stash_t *s = &heap->stash[cls];
  if (unlikely(s->page != page)) {
    hak_remote_stash_start(heap, page, b);
    return;
  }
  hak_stash_pushed(heap, cls, hak_stash_push(s, b));
}

/* ---- node mailboxes (mailbox.c) ------------------------------------------ */

void hak_mailbox_send(hak_heap_t *heap, int node, void *p);
void hak_mailbox_flush(hak_heap_t *heap);
void hak_mailbox_drain(hak_heap_t *heap, int node, size_t max_blocks);
void hak_mailbox_drain_slow(hak_heap_t *heap); /* own node, bounded */
void hak_mailbox_drain_stale(hak_heap_t *heap);
void hak_mailbox_orphan(hak_heap_t *heap);
bool hak_mailbox_waiting(int node);
void hak_free_route(hak_heap_t *heap, hak_page_t *page, hak_block_t *b);
/* A free of p in small region r that is not batched (the mailbox drains
 * and the sender out of memory for a batch): checked, then routed. */
void hak_free_block(hak_heap_t *heap, hak_region_t *r, void *p);
void hak_heap_set_node(hak_heap_t *heap, int node);

void hak_pool_fork_prepare(void);
void hak_pool_fork_release(void);
void hak_pool_fork_child(void); /* purges whose completion cannot come */

/* ---- pages --------------------------------------------------------------- */

void hak_page_init(hak_page_t *page, unsigned cls, hak_heap_t *heap, bool zero);
void hak_page_extend(hak_page_t *page);
size_t hak_page_collect(hak_page_t *page); /* local_free + remote into free */
/* The block a free of p on small-class page `page` gives back, or NULL when
 * p is no block handed out (counted as an invalid free). */
void *hak_free_check(hak_page_t *page, void *p);

/* ---- allocation paths ---------------------------------------------------- */

void *hak_malloc_slow(hak_heap_t *heap, size_t size, bool zero);
void *hak_malloc_big(hak_heap_t *heap, size_t size); /* MIDCACHE_MAX < size */
void hak_free_slow(hak_region_t *r, void *p);
/* Arguments in the order of hak_remote_stash's, where the common case goes on. */
void hak_free_other(hak_heap_t *heap, hak_page_t *page, void *p, uintptr_t owner, hak_region_t *r);
void hak_free_local_slow(hak_heap_t *heap, hak_page_t *page, hak_block_t *b);
void hak_heap_retire(hak_heap_t *heap, hak_page_t *page);
/* 64 KiB aligned; when no mapping. cleared: for calloc, which reads fresh pages as zero;
 * growing: realloc's, with free pages after it to grow into */
void *hak_large_alloc(hak_heap_t *heap, size_t size, bool cleared, bool growing);
/* realloc of p in small region r to size (a large size) where it lies, when
 * p is a large block; false: not done */
bool hak_large_resize(hak_region_t *r, void *p, size_t size);
/* Whether the heap's probe (HAKMEM_PREFAULT=large) was written whole, judged
 * now: at the latest when it is freed, after which its bytes may be another
 * block's. */
void hak_large_probe_judge(hak_heap_t *heap);
void *hak_huge_alloc(size_t size, size_t align, bool *zero);
void hak_huge_free(hak_region_t *r);
void *hak_huge_grow(hak_region_t *r, size_t size);
void *hak_huge_shrink(hak_region_t *r, size_t size); /* NULL: not done */
void hak_huge_resized(hak_region_t *r, size_t size); /* realloc kept it in place */
size_t hak_huge_trim(void);                          /* unmaps every cached huge mapping */
bool hak_huge_expire(void); /* unmaps cached mappings past the purge delay; true: some left */
void hak_huge_fork_prepare(void);
void hak_huge_fork_release(void);
size_t hak_usable_size(const void *p);
void hak_invalid_free(const void *p);

/* ---- heap queues (owner only) -------------------------------------------- */

static inline void queue_remove(hak_queue_t *q, hak_page_t *p) {
  if (p->prev)
    p->prev->next = p->next;
  else
    q->first = p->next;
  if (p->next)
    p->next->prev = p->prev;
  else
    q->last = p->prev;
  p->next = p->prev = NULL;
  q->count--;
}

static inline void queue_push_front(hak_queue_t *q, hak_page_t *p) {
  p->prev = NULL;
  p->next = q->first;
  if (q->first)
    q->first->prev = p;
  else
    q->last = p;
  q->first = p;
  q->count++;
}

static inline void queue_push_back(hak_queue_t *q, hak_page_t *p) {
  p->next = NULL;
  p->prev = q->last;
  if (q->last)
    q->last->next = p;
  else
    q->first = p;
  q->last = p;
  q->count++;
}

static inline void heap_sync_direct(hak_heap_t *heap, unsigned cls) {
  heap->direct[cls] = heap->queues[cls].first ? heap->queues[cls].first : &hak_page_empty;
}

/* A block back on its page's local_free, by the page's owner: no checks,
 * no retiring (the callers decide that). */
static inline void page_push_local(hak_page_t *page, hak_block_t *b) {
  b->next = page->local_free;
  page->local_free = b;
  page->used--;
}

static inline void *page_pop(hak_page_t *page) {
  hak_block_t *b = page->free;
  if (likely(b != NULL)) {
    page->free = b->next;
    page->used++;
  }
  return b;
}

/* ---- mid-size block cache (midcache.c) ---------------------------------- */

extern uint8_t hak_midcache_max[MIDCACHE_CLASSES]; /* blocks per class */
void hak_midcache_init(void);
void hak_midcache_reset(hak_heap_t *heap); /* an empty cache, for a heap's new owner */
void hak_midcache_overflow(hak_heap_t *heap, hak_page_t *page, void *p);
void *hak_midcache_miss(hak_heap_t *heap, unsigned cls, size_t size); /* class cls's array empty */
void hak_midcache_flush(hak_heap_t *heap); /* every cached block back to its page */

/* A heap's mid slot at byte offset off, and back. */
static inline void **midcache_slot(hak_heap_t *heap, size_t off) {
  return (void **)((char *)heap + off);
}
static inline uint16_t midcache_off(hak_heap_t *heap, void **slot) {
  return (uint16_t)((char *)slot - (char *)heap);
}

/* The first of class i's slots that holds a block when any does. */
static inline void **midcache_base(hak_heap_t *heap, unsigned i) {
  return &heap->mid_slot[i][1];
}

/* The blocks class i caches. */
static inline unsigned midcache_count(hak_heap_t *heap, unsigned i) {
  return (unsigned)(midcache_slot(heap, heap->mid_top[i]) - midcache_base(heap, i));
}

/* The owner's free of a block of a PAGE_MID page: kept for the next malloc
 * of its class without writing into it. */
static inline void midcache_push(hak_heap_t *heap, hak_page_t *page, void *p) {
  size_t i = (size_t)page->cls - MIDCACHE_FIRST, top = heap->mid_top[i];
  ptrdiff_t room = heap->mid_room; /* the last block in may pass the cap */
  if (likely(top != heap->mid_end[i] && room > 0)) {
    *midcache_slot(heap, top) = p;
    heap->mid_top[i] = (uint16_t)(top + sizeof p);
    heap->mid_room = room - (ptrdiff_t)page->block_size;
    return;
  }
  hak_midcache_overflow(heap, page, p);
}

/* The fast path: pop from the current page of the size class, or for mid
 * sizes from the heap's array of the class. */
static inline void *hak_alloc_inline(size_t size) {
  hak_heap_t *heap = hak_tls_heap;
  if (likely(size <= DIRECT_MAX)) {
    void *b = page_pop(heap->direct[hak_class_direct[(size + MIN_ALIGN - 1) / MIN_ALIGN]]);
    if (likely(b != NULL)) return b;
    return hak_malloc_slow(heap, size, false);
  }
  if (likely(size <= MIDCACHE_MAX)) {
    /* wide: the class's offset folds into the loads */
    size_t cls = hak_class_of_large(size), i = cls - MIDCACHE_FIRST, top = heap->mid_top[i];
    void *b = midcache_slot(heap, top)[-1];
    if (likely(b != NULL)) {
      heap->mid_top[i] = (uint16_t)(top - sizeof b);
      heap->mid_room += hak_class_size[cls];
      return b;
    }
    return hak_midcache_miss(heap, (unsigned)cls, size);
  }
  return hak_malloc_big(heap, size);
}

/* The fast path of free: a block of a page this thread owns, no flags set. */
static inline void hak_free_inline(void *p) {
  hak_region_t *r = region_of(p);
  hak_heap_t *heap = hak_tls_heap;
  if (likely(region_tag(r) == heap->region_tag)) {
    hak_page_t *page = page_of(r, p);
    uintptr_t owner = page_owner(page), mine = owner ^ (uintptr_t)heap; /* 0: ours, no flags */
    if (likely(mine == 0)) {
#ifdef HAK_DEBUG
      if (!hak_free_check(page, p)) return; /* release builds check this only off the fast path */
#endif
      page_push_local(page, (hak_block_t *)p);
      if (unlikely(page->used == 0)) hak_heap_retire(heap, page);
      return;
    }
    /* a mid block of ours: its page may be parked as full, the cache keeps it anyway */
    if ((mine | PAGE_IN_FULL) == (PAGE_MID | PAGE_IN_FULL)) {
#ifdef HAK_DEBUG
      if (!hak_free_check(page, p)) return;
#endif
      midcache_push(heap, page, p);
      return;
    }
    /* another heap's page, or flags: on with what is known already */
    hak_free_other(heap, page, p, owner, r);
    return;
  }
  hak_free_slow(r, p);
}

#endif
