/* The background thread: returns memory of an idle process (slow paths
 * only purge while the program allocates), drains node mailboxes no thread
 * of their node drained for a while, hands over the remote frees waiting
 * in the stashes of threads that stopped freeing, populates pages ahead of use
 * (HAKMEM_PREFAULT=ahead), and collapses dense long-lived regions into huge
 * pages (HAKMEM_THP=collapse), off the application's threads. Wanted from
 * anywhere, started only from a malloc slow path: creating a thread
 * allocates, so never from free, thread exit or under an allocator lock.
 *
 * Where a program keeps every CPU busy, each wake-up preempts one of its
 * threads: a pass that finds nothing to do and nothing waiting doubles the
 * sleep (up to SLEEP_MAX_MS), and whatever makes work for it (hak_background_want,
 * from slow paths: a region emptied, a stash or mailbox started, a huge
 * mapping cached) brings it back to its period, waking it when it sleeps
 * longer. */
#define _GNU_SOURCE /* sched_getaffinity */
#include "internal.h"

#include <sched.h>
#include <signal.h>
#include <time.h>

#define SLEEP_MAX_MS 1000

static _Atomic int state; /* 0 not started, 1 starting or running */
/* Set by whatever makes work (and so starts the thread), cleared by each
 * pass: written once a pass at most, read by slow paths otherwise. */
static _Atomic bool work;
/* Asleep past its period: the first hak_background_want wakes it. */
static _Atomic bool dozing;
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

static uint64_t clock_ns(clockid_t clock) {
  struct timespec t;
  clock_gettime(clock, &t);
  return (uint64_t)t.tv_sec * 1000000000 + (uint64_t)t.tv_nsec;
}

/* ---- collapses within a CPU budget ------------------------------------------
 * MADV_COLLAPSE copies 2 MiB: 0.5-3.4 ms of CPU, 6-17 ms on a loaded 2-CPU
 * machine. While the program's threads keep the CPUs it may run on busy,
 * that time is taken from them (churn_mid, 2 threads on 2 CPUs: 3-4
 * collapses and 16 ms of the background thread's CPU in 0.4 s, 4% of its
 * throughput): then collapses get at most 1/COLLAPSE_SHARE of the CPU time
 * the program used, and only once it has used COLLAPSE_CREDIT_NS *
 * COLLAPSE_SHARE (1.25 s: a run of 0.4 s on 2 CPUs gets none), so a
 * long-running busy program still gets its huge pages, slowly. With half a
 * CPU to spare they cost it nothing and go on as they come (a program
 * between phases, a server waiting for requests). */
#define COLLAPSE_SHARE 50
#define COLLAPSE_CREDIT_NS 25000000 /* a slow collapse and then some */

static struct {
  unsigned cpus;      /* the process may run on */
  uint64_t wall, app; /* at the last look: monotonic and the program's CPU ns */
  int64_t credit;     /* CPU ns collapses may take from a busy program */
} budget;

static void budget_init(void) {
  cpu_set_t set;
  budget.cpus = sched_getaffinity(0, sizeof set, &set) == 0 && CPU_COUNT(&set) > 0
                    ? (unsigned)CPU_COUNT(&set)
                    : 1;
  budget.wall = clock_ns(CLOCK_MONOTONIC);
  budget.app = clock_ns(CLOCK_PROCESS_CPUTIME_ID) - clock_ns(CLOCK_THREAD_CPUTIME_ID);
}

/* One collapse pass, unless the program is busy and its credit holds no
 * slow collapse. Returns whether dense regions wait for the next. */
static bool collapse_pass(void) {
  uint64_t wall = clock_ns(CLOCK_MONOTONIC), own = clock_ns(CLOCK_THREAD_CPUTIME_ID);
  uint64_t app = clock_ns(CLOCK_PROCESS_CPUTIME_ID) - own;
  uint64_t dwall = wall - budget.wall, dapp = app - budget.app;
  budget.wall = wall;
  budget.app = app;
  /* busy: less than half a CPU left over since the last look */
  bool busy = 2 * dapp + dwall >= 2 * (uint64_t)budget.cpus * dwall;
  budget.credit += (int64_t)(dapp / COLLAPSE_SHARE);
  if (budget.credit > COLLAPSE_CREDIT_NS) budget.credit = COLLAPSE_CREDIT_NS;
  if (busy && budget.credit < COLLAPSE_CREDIT_NS) return false;
  bool later;
  hak_pool_collapse(&later);
  if (busy) budget.credit -= (int64_t)(clock_ns(CLOCK_THREAD_CPUTIME_ID) - own);
  return later;
}

/* ---- the thread ---------------------------------------------------------- */

/* One pass; true when it left work for the next one. */
static bool background_pass(void) {
  atomic_fetch_add_explicit(&hak_gstats.background_passes, 1, memory_order_relaxed);
  uintptr_t at = atomic_exchange_explicit(&ahead, 0, memory_order_acquire);
  if (at)
    hak_pool_populate_at(at & ~(uintptr_t)(REGION_SIZE - 1), (unsigned)(at & (REGION_SIZE - 1)));
  bool later = false;
  hak_mailbox_drain_stale(&hak_heap_empty); /* no heap: it owns no pages */
  for (int node = 0; node < kmem_node_count(); node++)
    later |= hak_mailbox_waiting(node);
  /* stashes of threads that stopped freeing */
  later |= hak_heaps_stash_take(&hak_heap_empty, true);
  later |= hak_shared_trim_idle(); /* after the stashes: their blocks are in its pages then */
  bool purge_later;
  hak_pool_purge(false, false, &purge_later);
  later |= purge_later;
  later |= hak_huge_expire();
  if (hak_opt.thp == KMEM_THP_COLLAPSE) later |= collapse_pass();
  return later;
}

/* Sleeps ms, or until woken when that is past the period. */
static void background_sleep(uint64_t ms) {
  bool doze = ms > hak_background_period_ms();
  if (doze) {
    atomic_store(&dozing, true);
    /* made after the pass looked, before dozing was seen: no doze */
    if (atomic_load(&work)) {
      atomic_store(&dozing, false);
      doze = false;
      ms = hak_background_period_ms();
    }
  }
  struct timespec until;
  clock_gettime(CLOCK_REALTIME, &until);
  uint64_t ns = (uint64_t)until.tv_nsec + ms * 1000000;
  until.tv_sec += (time_t)(ns / 1000000000);
  until.tv_nsec = (long)(ns % 1000000000);
  pthread_mutex_lock(&wake_lock);
  /* a doze ended by hak_background_want before the lock: its signal came
   * before the wait */
  if (!atomic_load_explicit(&ahead, memory_order_relaxed) && (!doze || atomic_load(&dozing)))
    pthread_cond_timedwait(&wake, &wake_lock, &until);
  pthread_mutex_unlock(&wake_lock);
  atomic_store_explicit(&dozing, false, memory_order_relaxed);
}

static void *background_main(void *arg) {
  (void)arg;
  budget_init();
  uint64_t sleep_ms = hak_background_period_ms();
  for (;;) {
    background_sleep(sleep_ms);
    bool later = background_pass();
    /* what was made during the pass may not have been seen by it */
    later |= atomic_exchange_explicit(&work, false, memory_order_relaxed);
    sleep_ms = later ? hak_background_period_ms() : sleep_ms * 2;
    if (sleep_ms > SLEEP_MAX_MS) sleep_ms = SLEEP_MAX_MS;
  }
  return NULL;
}

/* Something for the thread to do: starts it (from the next malloc slow
 * path), keeps it at its period and wakes it from a longer sleep. A store
 * only when the thread took the last one; the wake-up only once a doze. */
void hak_background_want(void) {
  if (atomic_load_explicit(&work, memory_order_relaxed)) return;
  atomic_store(&work, true); /* before dozing is read: background_sleep reads them the other way */
  if (atomic_load(&dozing) && atomic_exchange(&dozing, false)) {
    pthread_mutex_lock(&wake_lock);
    pthread_cond_signal(&wake);
    pthread_mutex_unlock(&wake_lock);
  }
}

/* From the malloc slow path, with no lock held: pthread_create allocates. */
void hak_background_start_if_wanted(void) {
  if (!atomic_load_explicit(&work, memory_order_relaxed) || !hak_opt.background ||
      atomic_load_explicit(&state, memory_order_relaxed))
    return;
  int expected = 0;
  if (!atomic_compare_exchange_strong(&state, &expected, 1)) return;
  pthread_attr_t attr;
  pthread_t tid;
  pthread_attr_init(&attr);
  pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
  pthread_attr_setstacksize(&attr, 64 << 10);
  /* The thread inherits this mask: every signal blocked, so none of the
   * program's handlers runs on it (postgres's postmaster, which blocks its
   * signals outside select(), ran its SIGCHLD reaper here and on its own
   * thread at once, and spun in a list that corrupted). */
  sigset_t all, old;
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &old);
  int err = pthread_create(&tid, &attr, background_main, NULL);
  pthread_sigmask(SIG_SETMASK, &old, NULL);
  if (err) {
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

/* The child of a fork has no background thread: the next slow path starts
 * one if the parent had one (what it would look at is the child's too). */
void hak_background_fork_child(void) {
  if (atomic_load(&state)) atomic_store(&work, true);
  atomic_store(&state, 0);
  atomic_store(&ahead, 0);
  atomic_store(&dozing, false);
  pthread_mutex_init(&wake_lock, NULL);
  pthread_cond_init(&wake, NULL);
}
