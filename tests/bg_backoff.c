/* The background thread costs a busy program nothing it does not need.
 *
 * quiet (HAKMEM_THP=0): a 16 MiB live heap (so the thread is started), then two threads
 *   replace small blocks in working sets of their own for 1.2 s, freeing
 *   no region, stashing no remote free: nothing for the thread to do. In
 *   the last second it wakes at most QUIET_PASSES times (background_passes,
 *   and the thread's voluntary context switches, each a return from its
 *   sleep); at its 50 ms period it woke 20 times a second, preempting a
 *   worker each time. Then, right after one of its passes (it sleeps up to
 *   1 s now), the main thread frees the 16 MiB: the regions that empty wake
 *   it, and the memory goes back within RETURN_MS (two purge delays and
 *   some), not a second later.
 * collapse: the process on one CPU, a dense heap of 1-8 KiB blocks touched
 *   whole (what HAKMEM_THP=collapse collapses within a few periods), then
 *   the main thread keeps that CPU busy for 0.8 s: no region is collapsed
 *   meanwhile (a collapse copies 2 MiB on the background thread, taken from
 *   the program's own CPU; while it keeps its CPUs busy collapses get 2% of
 *   its CPU time, none before 1.25 s of it). Once the program
 *   sleeps, they come. Where the main thread had less than 70% of the CPU (a loaded
 *   machine), or the kernel collapses nothing, the check is skipped.
 * Usage: bg_backoff [quiet|collapse] (default: both, quiet with HAKMEM_THP=0) */
#define _GNU_SOURCE
#include <dirent.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <sys/syscall.h>
#include "kmem_util.h"

#define QUIET_PASSES 10
#define RETURN_MS 600
#define LIVE (16 * MIB)
#define NLIVE (LIVE / KIB)

static void *live[NLIVE];
static atomic_bool stop;
static atomic_int started;
static pid_t tids[3]; /* main, workers */

static pid_t gettid_(void) {
  return (pid_t)syscall(SYS_gettid);
}

static void *worker(void *arg) {
  void *set[256] = {0};
  struct rng r = {(uintptr_t)arg * 2654435761u + 1};
  tids[(uintptr_t)arg] = gettid_();
  atomic_fetch_add(&started, 1);
  while (!atomic_load_explicit(&stop, memory_order_relaxed)) {
    uint64_t x = rng_next(&r);
    size_t i = x % 256;
    free(set[i]);
    set[i] = malloc(64 + (x >> 32) % 449);
    CHECK(set[i], "malloc failed");
  }
  for (size_t i = 0; i < 256; i++)
    free(set[i]);
  return NULL;
}

/* The thread that is neither main nor a worker: hakmem's background thread. */
static pid_t background_tid(void) {
  pid_t found = 0;
  DIR *d = opendir("/proc/self/task");
  CHECK(d, "opendir /proc/self/task: %s", strerror(errno));
  for (struct dirent *e; (e = readdir(d)) != NULL;) {
    pid_t t = (pid_t)atoi(e->d_name);
    if (t && t != tids[0] && t != tids[1] && t != tids[2]) found = t;
  }
  closedir(d);
  CHECK(found, "no background thread");
  return found;
}

static long wakeups(pid_t tid) {
  char path[64], buf[4096];
  snprintf(path, sizeof path, "/proc/self/task/%d/status", (int)tid);
  FILE *f = fopen(path, "r");
  CHECK(f, "fopen %s: %s", path, strerror(errno));
  long n = -1;
  while (fgets(buf, sizeof buf, f))
    if (sscanf(buf, "voluntary_ctxt_switches: %ld", &n) == 1) break;
  fclose(f);
  return n;
}

static int quiet(void) {
  tids[0] = gettid_();
  for (size_t i = 0; i < NLIVE; i++) {
    live[i] = malloc(KIB);
    CHECK(live[i], "malloc failed");
    touch(live[i], KIB);
  }
  pthread_t t[2];
  for (uintptr_t i = 1; i <= 2; i++)
    CHECK(pthread_create(&t[i - 1], NULL, worker, (void *)i) == 0, "pthread_create");
  while (atomic_load(&started) < 2)
    sleep_ms(1);
  sleep_ms(200);
  pid_t bg = background_tid();
  uint64_t p0 = stats_now().background_passes;
  long w0 = wakeups(bg);
  sleep_ms(1000);
  uint64_t passes = stats_now().background_passes - p0;
  long woke = wakeups(bg) - w0;
  fprintf(stderr, "quiet: %llu background passes, %ld wake-ups in a second\n",
          (unsigned long long)passes, woke);
  CHECK(passes <= QUIET_PASSES && woke <= QUIET_PASSES,
        "two busy threads that free no region: the background thread passed %llu times and woke "
        "%ld times in a second, expected at most %d",
        (unsigned long long)passes, woke, QUIET_PASSES);

  /* right after a pass: from here it sleeps long, unless woken */
  for (long w = wakeups(bg), until = now_ms() + 3000; wakeups(bg) == w && now_ms() < until;)
    sleep_ms(1);
  sleep_ms(5);
  uint64_t before = stats_now().committed_bytes;
  long t0 = now_ms();
  for (size_t i = 0; i < NLIVE; i++)
    free(live[i]);
  uint64_t now = before;
  while (before - now < LIVE / 2 && now_ms() - t0 < 3000) {
    sleep_ms(10);
    now = stats_now().committed_bytes;
  }
  long took = now_ms() - t0;
  fprintf(stderr, "quiet: %zu MiB freed, committed %llu -> %llu MiB after %ld ms\n", LIVE / MIB,
          (unsigned long long)(before / MIB), (unsigned long long)(now / MIB), took);
  CHECK(before - now >= LIVE / 2 && took <= RETURN_MS,
        "freed %zu MiB while the background thread slept: committed %llu -> %llu MiB after %ld "
        "ms, expected half of it back within %d ms",
        LIVE / MIB, (unsigned long long)(before / MIB), (unsigned long long)(now / MIB), took,
        RETURN_MS);
  atomic_store(&stop, true);
  for (int i = 0; i < 2; i++)
    pthread_join(t[i], NULL);
  return 0;
}

static uint64_t cpu_ns(void) {
  struct timespec t;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
  return (uint64_t)t.tv_sec * 1000000000 + (uint64_t)t.tv_nsec;
}

static int collapse(void) {
  cpu_set_t one;
  CPU_ZERO(&one);
  CPU_SET(sched_getcpu() < 0 ? 0 : sched_getcpu(), &one);
  if (sched_setaffinity(0, sizeof one, &one) != 0) SKIP("sched_setaffinity: %s", strerror(errno));
  /* 24 MiB of 1-8 KiB blocks, each touched whole: dense and resident */
  static void *blocks[24 * MIB / KIB];
  size_t n = 0;
  struct rng r = {7};
  for (size_t bytes = 0; bytes < 24 * MIB; n++) {
    size_t sz = KIB + rng_next(&r) % (7 * KIB);
    blocks[n] = malloc(sz);
    CHECK(blocks[n], "malloc failed");
    touch(blocks[n], sz);
    bytes += sz;
  }
  uint64_t c0 = stats_now().thp_collapses, cpu0 = cpu_ns();
  long t0 = now_ms();
  void *set[64] = {0};
  while (now_ms() - t0 < 800) { /* busy: small blocks, no new region */
    uint64_t x = rng_next(&r);
    free(set[x % 64]);
    set[x % 64] = malloc(16 + (x >> 40) % 256);
  }
  double share = (double)(cpu_ns() - cpu0) / 1e6 / (double)(now_ms() - t0);
  uint64_t busy = stats_now().thp_collapses - c0;
  hak_stats_t s = stats_now();
  for (long until = now_ms() + 3000; s.thp_collapses == c0 + busy && now_ms() < until;) {
    sleep_ms(50);
    s = stats_now();
  }
  uint64_t idle = s.thp_collapses - c0 - busy;
  fprintf(stderr,
          "collapse: %llu collapses in 0.8 s busy (the program had %.0f%% of its CPU), %llu once "
          "it slept\n",
          (unsigned long long)busy, share * 100, (unsigned long long)idle);
  if (idle == 0 && busy == 0) SKIP("no region was collapsed even while the program slept");
  if (share < 0.7) SKIP("the program had only %.0f%% of its CPU: cannot tell busy", share * 100);
  CHECK(busy == 0,
        "%llu regions collapsed while the program kept its only CPU busy for 0.8 s, expected none",
        (unsigned long long)busy);
  CHECK(idle > 0, "no region collapsed once the program slept");
  for (size_t i = 0; i < n; i++)
    free(blocks[i]);
  return 0;
}

int main(int argc, char **argv) {
  if (argc > 1 && strcmp(argv[1], "quiet") == 0) return quiet();
  if (argc > 1 && strcmp(argv[1], "collapse") == 0) return collapse();
  static struct child c;
  const char *no_collapse[] = {"HAKMEM_THP=0", NULL}; /* collapses are work: the other mode's */
  child_ok("quiet", no_collapse, &c);
  fputs(c.err, stderr);
  child_ok("collapse", NULL, &c);
  fputs(c.err, stderr);
  return 0;
}
