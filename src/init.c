/* Process start-up, thread exit and fork. Start-up runs on the first
 * allocation or from the constructor, whichever comes first, and calls
 * nothing that allocates (no stdio, getenv or dlsym). */
#include "internal.h"

#include <sched.h>

_Atomic int hak_init_state;
_Atomic(uint8_t) hak_region_map[REGION_MAP_ENTRIES];
extern pthread_key_t hak_thread_key;

static void thread_exit(void *arg) {
  hak_heap_abandon((hak_heap_t *)arg);
}

static void fork_prepare(void) {
  if (atomic_load_explicit(&hak_init_state, memory_order_acquire) != 2) return;
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
}

static void fork_child(void) {
  if (atomic_load_explicit(&hak_init_state, memory_order_acquire) != 2) return;
  kmem_fork_release();
  hak_pool_fork_release();
  hak_huge_fork_release();
  hak_abandoned_fork_release();
  hak_background_fork_child();
  kmem_uffd_fork_child();
  hak_heaps_fork_child(hak_tls_heap);
}

void hak_init(void) {
  int expected = 0;
  if (!atomic_compare_exchange_strong(&hak_init_state, &expected, 1)) {
    while (atomic_load_explicit(&hak_init_state, memory_order_acquire) != 2)
      sched_yield();
    return;
  }
  hak_options_read();
  hak_options_banner();
  hak_classes_init();
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
