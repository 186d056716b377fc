/* Process start-up, thread exit and fork. Start-up runs on the first
 * allocation or from the constructor, whichever comes first, and calls
 * nothing that allocates (no stdio, getenv or dlsym). */
#include "internal.h"

#include <sched.h>
#include <signal.h>

_Atomic int hak_init_state;
_Atomic(uint8_t) hak_region_map[REGION_MAP_ENTRIES];
extern pthread_key_t hak_thread_key;

static void thread_exit(void *arg) {
  hak_heap_thread_exit((hak_heap_t *)arg);
}

/* glibc's stdio list lock. glibc's fork takes it after the prepare handlers
 * and before its own malloc locks (2.36: nss, _IO_list_lock, malloc, _Fork):
 * a thread holding it in fflush(NULL) may wait for a FILE whose holder waits
 * in realloc for our locks (glibc bug 19431). Taking it before ours gives
 * glibc's order. It is recursive, so fork taking it again is fine. Weak: a
 * libc without them links, and the calls are skipped. */
extern void _IO_list_lock(void) __attribute__((weak));
extern void _IO_list_unlock(void) __attribute__((weak));
extern void _IO_list_resetlock(void) __attribute__((weak));

/* The mask before fork_prepare blocked every signal: a handler that forks
 * must not run while this thread holds the allocator's locks. */
static __thread sigset_t fork_saved_mask;

static void fork_prepare(void) {
  if (atomic_load_explicit(&hak_init_state, memory_order_acquire) != 2) return;
  sigset_t all;
  sigfillset(&all);
  pthread_sigmask(SIG_BLOCK, &all, &fork_saved_mask);
  if (_IO_list_lock) _IO_list_lock();
  hak_shared_fork_prepare();
  hak_heaps_fork_prepare();
  hak_abandoned_fork_prepare();
  hak_huge_fork_prepare();
  hak_pool_fork_prepare();
  kmem_fork_prepare();
}

static void fork_parent(void) {
  if (atomic_load_explicit(&hak_init_state, memory_order_acquire) != 2) return;
  kmem_fork_release();
  hak_pool_fork_release();
  hak_huge_fork_release();
  hak_abandoned_fork_release();
  hak_heaps_fork_release();
  hak_shared_fork_release();
  if (_IO_list_unlock) _IO_list_unlock();
  pthread_sigmask(SIG_SETMASK, &fork_saved_mask, NULL);
}

static void fork_child(void) {
  if (atomic_load_explicit(&hak_init_state, memory_order_acquire) != 2) return;
  kmem_fork_release();
  hak_pool_fork_release();
  hak_pool_fork_child();
  hak_huge_fork_release();
  hak_abandoned_fork_release();
  hak_background_fork_child();
  kmem_uffd_fork_child();
  hak_heaps_fork_child(hak_tls_heap);
  hak_shared_fork_release();
  /* A multi-threaded parent's fork has reset it already; a single-threaded
   * one's never took it, so our hold is still there. Resetting is right
   * both ways (unlocking after glibc's reset would not be). */
  if (_IO_list_resetlock) _IO_list_resetlock();
  pthread_sigmask(SIG_SETMASK, &fork_saved_mask, NULL);
}

void hak_init(void) {
  int expected = 0;
  if (!atomic_compare_exchange_strong(&hak_init_state, &expected, 1)) {
    while (atomic_load_explicit(&hak_init_state, memory_order_acquire) != 2)
      sched_yield();
    return;
  }
  hak_options_read();
  hak_shared_init();
  hak_options_banner();
  hak_classes_init();
  hak_midcache_init();
  kmem_config_t cfg = {
      .thp = hak_opt.thp,
      .hugetlb = hak_opt.hugetlb,
      .uffd = hak_opt.uffd,
      .purge_engine = hak_opt.purge_engine,
      .purge_engine_asked = hak_opt.purge_engine_asked,
      .verbose = hak_opt.verbose,
      .numa_mode = hak_opt.numa,
      .numa_asked = hak_opt.numa_asked,
  };
  kmem_init(&cfg);
  kmem_numa_init(hak_opt.nodes);
  pthread_key_create(&hak_thread_key, thread_exit);
  pthread_atfork(fork_prepare, fork_parent, fork_child);
  atomic_store_explicit(&hak_init_state, 2, memory_order_release);
  /* after start-up is done: creating the handler thread allocates */
  if (hak_opt.uffd) kmem_uffd_start();
}

/* Early, so a fork cannot find start-up half done. */
__attribute__((constructor(101))) static void init_at_load(void) {
  hak_init();
}
