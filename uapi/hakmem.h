/* hakmem public API: hak_* entry points (usable without interposing malloc),
 * statistics, and version. */
#ifndef HAKMEM_H
#define HAKMEM_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define HAKMEM_VERSION "0.1.0"

/* The malloc family under its own names. Same contracts as the C/POSIX/glibc
 * functions of the same name without the prefix. */
void *hak_malloc(size_t size);
void hak_free(void *p);
void *hak_calloc(size_t n, size_t size);
void *hak_realloc(void *p, size_t size);
void *hak_reallocarray(void *p, size_t n, size_t size);
int hak_posix_memalign(void **out, size_t alignment, size_t size);
void *hak_aligned_alloc(size_t alignment, size_t size);
void *hak_memalign(size_t alignment, size_t size);
void *hak_valloc(size_t size);
void *hak_pvalloc(size_t size);
size_t hak_malloc_usable_size(const void *p);
void hak_free_sized(void *p, size_t size);
void hak_free_aligned_sized(void *p, size_t alignment, size_t size);
int hak_malloc_trim(size_t pad);

/* Nonzero when p lies in memory hakmem manages (a region or huge mapping). */
int hak_owns(const void *p);

/* Counters. Every field is a running total except committed_bytes (current). */
typedef struct hak_stats {
  uint64_t regions_reserved;
  uint64_t pages_fresh;
  uint64_t pages_reused;
  uint64_t pages_activated;
  uint64_t remote_frees;
  uint64_t remote_frees_cross_node;
  uint64_t remote_blocks_collected;
  uint64_t batches_sent;
  uint64_t mailbox_drains;
  uint64_t blocks_drained;
  uint64_t pages_abandoned;
  uint64_t pages_adopted;
  uint64_t purges;
  uint64_t purged_bytes;
  uint64_t purges_uring;
  uint64_t uffd_faults;
  uint64_t committed_bytes;
  uint64_t peak_committed_bytes;
  uint64_t invalid_frees;
  uint64_t huge_allocs;
  uint64_t heaps_created;
  uint64_t purges_vector;
  uint64_t thp_bytes;           /* region memory backed by transparent huge pages now */
  uint64_t hugetlb_bytes;       /* region memory from hugetlbfs pages now */
  uint64_t node_fallbacks;      /* regions taken from another node than the heap's */
  uint64_t mailbox_bytes;       /* batches of cross-node frees ever made (each reused) */
  uint64_t thp_collapses;       /* regions collapsed into a huge page (HAKMEM_THP=collapse) */
  uint64_t huge_cache_hits;     /* huge_allocs served by a cached mapping (resized to fit) */
  uint64_t remote_handoffs;     /* chains of remote frees handed to their page at once */
  uint64_t midcache_filled;     /* mid blocks (1-32 KiB) taken from pages into heaps' caches */
  uint64_t midcache_flushed;    /* mid blocks given back from heaps' caches to their pages */
  uint64_t shared_heap_threads; /* threads past HAKMEM_MAX_HEAPS that shared a heap */
  uint64_t background_passes;   /* times the background thread woke and looked for work */
} hak_stats_t;

/* Per node (HAKMEM_NODES virtual nodes, or the machine's). */
typedef struct hak_node_stats {
  uint64_t regions;         /* regions of this node now */
  uint64_t committed_bytes; /* their memory in use or not yet purged */
} hak_node_stats_t;
int hak_node_count(void);
int hak_node_stats_get(int node, hak_node_stats_t *out); /* -1 for a bad node */

void hak_stats_get(hak_stats_t *out);
/* Writes the counters as one JSON object (NUL-terminated, truncated to len).
 * Returns the length it needed, like snprintf. */
size_t hak_stats_json(char *buf, size_t len);
/* Prints the human table to stderr (or HAKMEM_STATS_FILE). */
void hak_stats_print(void);

/* NUMA. Binds the calling thread's heap to a node: its new memory comes
 * from that node's regions (per-node worker pools; tests place threads with
 * it). Returns 0, or -1 with errno EINVAL for a node that does not exist. */
int hakmem_thread_set_node(int node);
/* Sends the calling thread's partial batches of cross-node frees to their
 * nodes' mailboxes, hands the frees it keeps for other threads' pages to
 * those pages, and drains the mailbox of its own node. */
void hakmem_flush(void);
/* The node of the calling thread's heap. */
int hakmem_thread_node(void);

/* Releases the calling thread's heap now, as thread exit would. The thread can
 * keep allocating afterwards (it gets a fresh heap). */
void hak_thread_done(void);

/* Checked builds only (build/debug/libhakmem.so, HAK_DEBUG): tests stop a
 * thread at a named point of the remote-free protocol by installing a hook
 * that the allocator calls there, and run other threads through the window.
 * hak_debug_check() verifies the calling thread's heap and every abandoned
 * list (it aborts with a message when an invariant does not hold). */
enum hak_debug_point {
  HAK_HOOK_FREEING = 1, /* a freer delivered to the owner's delayed list, state not reset */
  HAK_HOOK_ABANDON = 2, /* thread exit: an empty page went back, mid-dismantle */
  HAK_HOOK_ROTATE = 3,  /* a freer's full stash chain, its cut read, before it is moved */
};
void hak_debug_set_hook(void (*hook)(int point));
void hak_debug_check(void);

#ifdef __cplusplus
}
#endif
#endif
