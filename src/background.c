/* The background thread: returns memory of an idle process (slow paths
 * only purge while the program allocates), drains node mailboxes no thread
 * of their node drained for a while, hands over the remote frees waiting
 * in the stashes of threads that stopped freeing, populates pages ahead of use
 * (HAKMEM_PREFAULT=ahead), and collapses dense long-lived regions into huge
 * pages (HAKMEM_THP=collapse), off the application's threads. Wanted from
 * anywhere, started only from a malloc slow path: creating a thread
 * allocates, so never from free, thread exit or under an allocator lock. */
#include "internal.h"

#include <time.h>

static _Atomic int state;   /* 0 not started, 1 starting or running */
static _Atomic bool wanted; /* something for it to do: start it */
static pthread_mutex_t wake_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t wake = PTHREAD_COND_INITIALIZER;
/* Where to populate: a region's address | the index of the first page after
 * the span, as an integer. The region may be unmapped by the time the thread
 * looks (an empty hugetlbfs region goes back whole), so it is validated under
 * its pool lock before its header is read. 0: nothing. */
static _Atomic uintptr_t ahead;

uint64_t hak_background_period_ms(void) {
  uint64_t p = hak_opt.purge_delay_ms / 2;
  return p < 1 ? 1 : p > 1000 ? 1000 : p;
}

static void *background_main(void *arg) {
  (void)arg;
  for (;;) {
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    uint64_t ns = (uint64_t)until.tv_nsec + hak_background_period_ms() * 1000000;
    until.tv_sec += (time_t)(ns / 1000000000);
    until.tv_nsec = (long)(ns % 1000000000);
    pthread_mutex_lock(&wake_lock);
    if (!atomic_load_explicit(&ahead, memory_order_relaxed))
      pthread_cond_timedwait(&wake, &wake_lock, &until);
    pthread_mutex_unlock(&wake_lock);
    uintptr_t at = atomic_exchange_explicit(&ahead, 0, memory_order_acquire);
    if (at)
      hak_pool_populate_at(at & ~(uintptr_t)(REGION_SIZE - 1), (unsigned)(at & (REGION_SIZE - 1)));
    hak_mailbox_drain_stale(&hak_heap_empty);    /* no heap: it owns no pages */
    hak_heaps_stash_take(&hak_heap_empty, true); /* stashes of threads that stopped freeing */
    hak_shared_trim_idle(); /* after the stashes: their blocks are in its pages then */
    hak_pool_purge(false, false);
    hak_huge_expire();
    if (hak_opt.thp == KMEM_THP_COLLAPSE) hak_pool_collapse();
  }
  return NULL;
}

void hak_background_want(void) {
  if (!atomic_load_explicit(&wanted, memory_order_relaxed))
    atomic_store_explicit(&wanted, true, memory_order_relaxed);
}

/* From the malloc slow path, with no lock held: pthread_create allocates. */
void hak_background_start_if_wanted(void) {
  if (!atomic_load_explicit(&wanted, memory_order_relaxed) || !hak_opt.background ||
      atomic_load_explicit(&state, memory_order_relaxed))
    return;
  int expected = 0;
  if (!atomic_compare_exchange_strong(&state, &expected, 1)) return;
  pthread_attr_t attr;
  pthread_t tid;
  pthread_attr_init(&attr);
  pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
  pthread_attr_setstacksize(&attr, 64 << 10);
  if (pthread_create(&tid, &attr, background_main, NULL) != 0) {
    hak_opt.background = false; /* slow paths keep purging */
    if (hak_opt.verbose) hak_warn("HAKMEM_BACKGROUND: ", "no thread could be started", "");
  }
  pthread_attr_destroy(&attr);
}

/* HAKMEM_PREFAULT=ahead: the thread populates the pages after this span. */
void hak_background_ahead(hak_page_t *span) {
  hak_region_t *r = region_of_page(span); /* the caller owns span: valid now */
  unsigned next = (unsigned)(span - r->pages) + span->span_pages;
  if (next >= PAGES_PER_REGION) return;
  hak_background_want();
  atomic_store_explicit(&ahead, (uintptr_t)r | next, memory_order_release);
  pthread_mutex_lock(&wake_lock);
  pthread_cond_signal(&wake);
  pthread_mutex_unlock(&wake_lock);
}

/* The child of a fork has no background thread. */
void hak_background_fork_child(void) {
  atomic_store(&state, 0);
  atomic_store(&ahead, 0);
  pthread_mutex_init(&wake_lock, NULL);
  pthread_cond_init(&wake, NULL);
}
