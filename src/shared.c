/* Shared heaps. Past HAKMEM_MAX_HEAPS thread heaps, a new thread gets no
 * heap of its own: it allocates from one of a fixed set of heaps, one per
 * CPU the process may run on, each behind a lock (glibc's arenas). A heap
 * keeps a span per size class and only its owner reuses the blocks others
 * free into it; with 256 threads on 2 CPUs each owner runs 1/128 of the
 * time, so 256 heaps held 2 GB where glibc's arenas held 1.2. A sharing
 * thread's TLS heap stays the empty heap, so each of its mallocs and frees
 * takes the slow path, which enters a shared heap: takes its lock and makes
 * it the thread's heap until it leaves, so the ordinary heap code runs.
 * To every other thread a shared heap is a heap like any. */
#define _GNU_SOURCE /* sched_getcpu, sched_getaffinity */
#include "internal.h"

#include <sched.h>

/* Static, so that whether a page's owner is one of them is address arithmetic. */
hak_heap_t hak_shared_heaps[SHARED_MAX];
static pthread_mutex_t locks[SHARED_MAX] = {[0 ... SHARED_MAX - 1] = PTHREAD_MUTEX_INITIALIZER};
static unsigned nshared = 1;
static uint64_t entries[SHARED_MAX]; /* mallocs that entered each (its lock) */

#ifdef HAK_TLS_DLOPEN
static __thread bool sharing;
static __thread unsigned last; /* the shared heap it entered last */
#else
static __thread bool sharing __attribute__((tls_model("initial-exec")));
static __thread unsigned last __attribute__((tls_model("initial-exec")));
#endif

void hak_shared_init(void) {
  cpu_set_t cpus;
  unsigned n = 1;
  if (sched_getaffinity(0, sizeof cpus, &cpus) == 0 && CPU_COUNT(&cpus) > 0)
    n = (unsigned)CPU_COUNT(&cpus);
  /* one per CPU: each heap keeps partly used spans of every class it
   * serves (manythreads: 1 or 4 per CPU ran alike, 4 held more) */
  nshared = n < SHARED_MAX ? n : SHARED_MAX;
  /* every heap of its own costs as much: 8 per CPU held about 1.1x what 4
   * did in manythreads, and 4 keep the 2-5 threads of common programs
   * lock-free */
  if (hak_opt.max_heaps < 0) hak_opt.max_heaps = (int)(4 * n);
}

/* Locked: made the calling thread's heap, first set up if never used. */
static hak_heap_t *shared_held(unsigned i) {
  last = i;
  entries[i]++;
  /* what its threads leave (a class's last page, blocks freed into it
   * remotely, batches) only the background thread's trim gives back */
  hak_background_want();
  if (!hak_shared_heaps[i].in_use) hak_heap_register(&hak_shared_heaps[i]);
  hak_tls_heap = &hak_shared_heaps[i];
  return &hak_shared_heaps[i];
}

hak_heap_t *hak_shared_enter(void) {
  if (!sharing) {
    if (atomic_load_explicit(&hak_init_state, memory_order_acquire) != 2) hak_init();
    if (hak_thread_heap_reserve((unsigned)hak_opt.max_heaps)) return NULL;
    sharing = true;
    atomic_fetch_add_explicit(&hak_gstats.shared_heap_threads, 1, memory_order_relaxed);
  }
  /* the heap it used last while it is free, as glibc's threads keep their
   * arena; else its CPU's, or when a preempted thread holds that one the
   * next free one; all held: wait for its CPU's */
  if (pthread_mutex_trylock(&locks[last]) == 0) return shared_held(last);
  int cpu = sched_getcpu();
  unsigned first = (unsigned)(cpu < 0 ? 0 : cpu) % nshared;
  for (unsigned k = 0; k < nshared; k++) {
    unsigned i = (first + k) % nshared;
    if (pthread_mutex_trylock(&locks[i]) == 0) return shared_held(i);
  }
  pthread_mutex_lock(&locks[first]);
  return shared_held(first);
}

void hak_shared_leave(hak_heap_t *heap) {
  hak_tls_heap = &hak_heap_empty;
  pthread_mutex_unlock(&locks[heap - hak_shared_heaps]);
}

bool hak_shared_free(hak_heap_t *heap, hak_page_t *page, void *b) {
  if (pthread_mutex_trylock(&locks[heap - hak_shared_heaps]) != 0)
    return false; /* the remote list takes it */
  hak_heap_t *caller = hak_tls_heap;
  hak_tls_heap = heap;
#ifdef HAK_DEBUG
  /* checked again as the owner: the checked build finds double frees */
  if (hak_free_check(page, b))
#endif
    hak_free_route(heap, page, b);
  hak_tls_heap = caller;
  pthread_mutex_unlock(&locks[heap - hak_shared_heaps]);
  hak_background_want(); /* it may have emptied a page the heap keeps */
  return true;
}

/* Shared heap i (locked) sends its batches of cross-node frees, takes the
 * blocks freed into it remotely and gives its empty pages back. */
static void shared_trim(unsigned i) {
  hak_heap_t *heap = &hak_shared_heaps[i], *caller = hak_tls_heap;
  if (!heap->in_use) return;
  hak_tls_heap = heap;
  hak_mailbox_flush(heap);
  if (atomic_load_explicit(&heap->delayed, memory_order_relaxed)) hak_remote_drain_delayed(heap);
  hak_heap_trim(heap);
  HAK_CHECK_HEAP(heap, -1);
  hak_tls_heap = caller;
}

/* The background thread's pass: a shared heap no malloc entered since the
 * last pass is trimmed. Its threads may be gone, and nobody else collects
 * the blocks freed into it: after a program freed everything, they kept
 * regions from being purged. True while a shared heap is in use (held,
 * or entered since the last pass): it is trimmed at a later one. An idle
 * one is no work: entering it or freeing into it wants the thread. */
bool hak_shared_trim_idle(void) {
  static uint64_t seen[SHARED_MAX]; /* entries at the last pass */
  bool in_use = false;
  for (unsigned i = 0; i < nshared; i++) {
    if (pthread_mutex_trylock(&locks[i]) != 0) { /* in use: not idle */
      in_use = true;
      continue;
    }
    if (entries[i] == seen[i])
      shared_trim(i);
    else
      in_use = true;
    seen[i] = entries[i];
    pthread_mutex_unlock(&locks[i]);
  }
  return in_use;
}

void hak_shared_trim(void) {
  for (unsigned i = 0; i < nshared; i++) {
    pthread_mutex_lock(&locks[i]);
    shared_trim(i);
    pthread_mutex_unlock(&locks[i]);
  }
}

/* fork: before every other allocator lock, as a shared heap's holder takes
 * those; the child finds the shared heaps whole and keeps them. */
void hak_shared_fork_prepare(void) {
  for (unsigned i = 0; i < nshared; i++)
    pthread_mutex_lock(&locks[i]);
}

void hak_shared_fork_release(void) {
  for (unsigned i = nshared; i-- > 0;)
    pthread_mutex_unlock(&locks[i]);
}
