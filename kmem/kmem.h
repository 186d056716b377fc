/* kmem: the only part of hakmem that asks the kernel for memory or policy.
 * Nothing here knows about size classes or heaps. */
#ifndef HAK_KMEM_H
#define HAK_KMEM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define KMEM_REGION_SHIFT 21
#define KMEM_REGION_SIZE ((size_t)1 << KMEM_REGION_SHIFT)

enum kmem_purge_engine { KMEM_PURGE_URING, KMEM_PURGE_VECTOR, KMEM_PURGE_SYNC };
enum kmem_numa_mode { KMEM_NUMA_LOCAL, KMEM_NUMA_STRICT, KMEM_NUMA_INTERLEAVE, KMEM_NUMA_OFF };
/* HAKMEM_THP: never; MADV_HUGEPAGE on regions past the first 16 (advise);
 * 4 KiB pages, dense long-lived regions collapsed later (collapse) */
enum kmem_thp { KMEM_THP_NEVER, KMEM_THP_ADVISE, KMEM_THP_COLLAPSE };
#define KMEM_MAX_NODES 64

typedef struct kmem_config {
  int thp;                 /* enum kmem_thp */
  bool hugetlb;            /* regions from hugetlbfs pages, THP when the pool is empty */
  bool uffd;               /* regions registered with userfaultfd */
  int purge_engine;        /* enum kmem_purge_engine: the first one tried */
  bool purge_engine_asked; /* set by the user: a fallback is reported */
  bool verbose;            /* report every fallback */
  int numa_mode;           /* enum kmem_numa_mode */
  bool numa_asked;         /* HAKMEM_NUMA set by the user: a fallback is reported */
} kmem_config_t;

void kmem_init(const kmem_config_t *cfg);

/* Counters kept by kmem. */
typedef struct kmem_stats {
  uint64_t purges, purged_bytes, purges_uring, purges_vector;
  uint64_t uffd_faults;
  uint64_t hugetlb_bytes; /* regions backed by hugetlbfs pages now */
  uint64_t thp_collapses; /* regions collapsed into a huge page (MADV_COLLAPSE) */
} kmem_stats_t;
void kmem_stats_get(kmem_stats_t *out);

/* One 2 MiB-aligned region of 2 MiB for a node, carved from a larger
 * reservation (or one hugetlbfs page, never purged in parts), with
 * the node's memory policy set. Its memory reads as zero. NULL when address
 * space or memory runs out. */
enum { KMEM_REGION_HUGETLB = 1, KMEM_REGION_THP = 2 /* advised: a touch commits 2 MiB */ };
void *kmem_region_alloc(int node, unsigned *flags);
void kmem_region_free_hugetlb(void *r); /* an empty hugetlbfs region, whole */

/* HAKMEM_THP=collapse: how many 4 KiB pages of a region are resident now
 * (mincore), and backing a region of 4 KiB pages with one huge page
 * (MADV_COLLAPSE: the kernel copies its pages into a huge page; the missing
 * ones read as zero, as before). Regions keep MADV_NOHUGEPAGE, which the
 * kernel honours for MADV_COLLAPSE too, so the advice is lifted for the call
 * and set again: no fault of the region ever takes a huge page by itself,
 * and khugepaged leaves it alone. Returns 0, or the errno; a refusal for good
 * (EINVAL: no MADV_COLLAPSE before Linux 6.1, or THP unusable; EPERM) is
 * said once under HAKMEM_VERBOSE=1 and kmem_collapse_usable() turns false. */
unsigned kmem_region_resident_pages(void *r);
/* Whether every 4 KiB page of [p, p + len) is resident (mincore); len at
 * most a region. */
bool kmem_resident_all(void *p, size_t len);
int kmem_region_collapse(void *r);
bool kmem_collapse_usable(void);

/* ---- NUMA (kmem/numa.c) ----
 * Topology read once at start (virtual_nodes > 0: HAKMEM_NODES). */
void kmem_numa_init(int virtual_nodes);
int kmem_node_count(void);                     /* nodes the allocator sees (virtual or real) */
int kmem_current_node(void);                   /* of the calling thread's CPU; slow paths only */
void kmem_bind(void *p, size_t len, int node); /* policy by kmem_cfg.numa_mode */

/* Zero-filled, never-touched mapping of len bytes whose start is aligned to
 * align (a power of two >= 4 KiB). NULL on failure. */
void *kmem_map_aligned(size_t len, size_t align);
void kmem_unmap(void *p, size_t len);
/* Grows a mapping from old_len to new_len without moving it. */
bool kmem_resize_inplace(void *p, size_t old_len, size_t new_len);
/* Moves a mapping's pages (no copy, no new faults) to a new align-aligned
 * place of new_len bytes; returns it, or NULL with the old mapping intact. */
void *kmem_move(void *p, size_t old_len, size_t new_len, size_t align);
/* Pages of [src, src+len) moved to dst (a range of the caller's mapping). */
bool kmem_move_fixed(void *src, size_t len, void *dst);
void kmem_discard(void *p, size_t len);       /* MADV_DONTNEED now: reads zero after */
void kmem_advise_nohuge(void *p, size_t len); /* never transparent huge pages there */

/* ---- purge (kmem/purge.c) ----
 * Memory given back with MADV_DONTNEED reads as zero afterwards. Purges are
 * queued, then sent in batches by the engine in use: io_uring
 * (IORING_OP_MADVISE, asynchronous), process_madvise on the own process (up
 * to 128 ranges a call), or one madvise per range. A queued range must not be
 * touched until done(cookie, ok) has been called for it; done is called with
 * no kmem lock held, from kmem_purge_reap, and any reaper may complete any
 * purge, so every caller passes the same done. The engine is picked at the
 * first reap that has work (until then kmem_purge_engine() returns the one
 * configured). wait=false never blocks (with io_uring it returns 0 when
 * another thread is reaping); wait=true returns once every purge submitted
 * before the call has finished. */
typedef void (*kmem_purge_done_fn)(void *cookie, bool ok);
/* false when the queue is full: reap, then submit again */
bool kmem_purge_submit(void *p, size_t len, void *cookie);
/* Sends what is queued and calls done for every purge finished by now;
 * with wait, blocks until every submitted purge has finished. Returns the
 * number of purges it completed. */
size_t kmem_purge_reap(kmem_purge_done_fn done, bool wait);
/* Purges at once on the calling thread (madvise). */
bool kmem_purge_now(void *p, size_t len);
int kmem_purge_engine(void); /* the engine in use after fallbacks */

/* ---- faults ---- */
/* Populates [p, p+len) writable now (MADV_POPULATE_WRITE), so first touches
 * take no fault; false if the kernel cannot. */
bool kmem_populate(void *p, size_t len);

/* ---- userfaultfd (kmem/uffd.c) ---- */
/* Starts the handler thread; false (after the fallback message) if the
 * kernel refuses, and regions then use plain demand paging. Tried once per
 * process: later calls return the first answer. */
bool kmem_uffd_start(void);
/* Registers a region in missing mode: each fault is served by populating the
 * whole 64 KiB page around it. No-op unless started. */
void kmem_uffd_register(void *p, size_t len);
void kmem_uffd_fork_child(void); /* the child has no handler: demand paging */

/* Small, permanent, zeroed metadata (heap structs). Never freed. */
void *kmem_meta_alloc(size_t size);

size_t kmem_os_page_size(void);

/* fork: take every kmem lock before, release both in parent and child. */
void kmem_fork_prepare(void);
void kmem_fork_release(void);

/* Bytes of [regions] backed by transparent huge pages now (AnonHugePages of
 * /proc/self/smaps, read without allocating); is_ours tells which mappings. */
uint64_t kmem_thp_bytes(bool (*is_ours)(uintptr_t start, uintptr_t end));

#endif
