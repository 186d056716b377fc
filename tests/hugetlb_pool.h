/* Tests that change the machine's 2 MiB hugetlbfs pool: a guardian process
 * checks it may (root, writable /sys), saves nr_hugepages and
 * nr_overcommit_hugepages, and puts them back however the test ends
 * (failure, signal, timeout). Needs read_long/write_long (kmem_util.h). */
#ifndef HAK_TESTS_HUGETLB_POOL_H
#define HAK_TESTS_HUGETLB_POOL_H

#include <signal.h>
#include <sys/types.h>

#define SYS_HP "/sys/kernel/mm/hugepages/hugepages-2048kB/"
#define NR SYS_HP "nr_hugepages"
#define OVERCOMMIT SYS_HP "nr_overcommit_hugepages"
#define FREE SYS_HP "free_hugepages"

static long old_nr = -1, old_overcommit = -1;
static pid_t worker; /* killed first on a signal, when set */

static void restore(void) {
  if (old_overcommit >= 0) write_long(OVERCOMMIT, old_overcommit);
  if (old_nr >= 0) write_long(NR, old_nr);
}

static void on_signal(int sig) {
  if (worker > 0) kill(worker, SIGKILL);
  restore();
  signal(sig, SIG_DFL);
  raise(sig);
}

/* SKIPs where the pool cannot be changed; else saves it and arms restore. */
static void pool_guard(void) {
  if (access(SYS_HP, F_OK) != 0) SKIP("no 2 MiB huge page size here (%s missing)", SYS_HP);
  if (geteuid() != 0) SKIP("needs root to change the hugetlbfs pool (%s)", NR);
  if (access(NR, W_OK) != 0 || access(OVERCOMMIT, W_OK) != 0)
    SKIP("%s is not writable here (read-only /sys?)", NR);
  old_nr = read_long(NR);
  old_overcommit = read_long(OVERCOMMIT);
  CHECK(old_nr >= 0 && old_overcommit >= 0, "cannot read %s", NR);
  int sigs[] = {SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGALRM};
  for (size_t i = 0; i < sizeof sigs / sizeof sigs[0]; i++)
    signal(sigs[i], on_signal);
}

/* Adds n pages to the pool (no overcommit); SKIPs, the pool put back, when
 * the kernel could not find at least `need` free ones. */
static inline void pool_raise(long n, long need) {
  write_long(OVERCOMMIT, 0);
  write_long(NR, old_nr + n);
  long free_pages = read_long(FREE);
  if (free_pages < need) {
    restore();
    SKIP("the kernel put only %ld free huge pages in the pool (%ld asked for)", free_pages,
         old_nr + n);
  }
}

/* Puts the pool back and says so if it did not take. */
static void pool_restore(void) {
  restore();
  long now = read_long(NR);
  if (now != old_nr) fprintf(stderr, "WARNING: nr_hugepages is %ld, was %ld before\n", now, old_nr);
}

#endif
