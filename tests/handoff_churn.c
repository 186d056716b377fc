/* Memory growth under hand-offs between short-lived threads. T threads (the
 * main thread, which never exits, and T-1 workers started afresh every
 * round) each allocate a few thousand blocks a round (mostly 8 B-4 KiB, a
 * few up to 64 KiB) and write them; a quarter go through a shared array of
 * pointers with atomic_exchange (so another thread frees them, often rounds
 * later), some are freed at once, the rest kept for a while. At the end of
 * a round a worker frees half of what it kept and passes the other half
 * through the shared array, then exits. The live data is bounded (shared
 * array, main's kept blocks, one round's worth per worker), so the peak
 * RSS after 2R rounds must stay within 10% (plus 4 MiB) of the peak after
 * R rounds: an allocator that strands the pages of exited threads grows
 * without bound. Each thread count runs in a child process of its own.
 * Prints the peak RSS and hakmem's committed_bytes at R and 2R.
 * Usage: handoff_churn [rounds R [threads...]] (default 250, threads 2 and
 * 4; HAKMEM_SOAK=1: R 1000). */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdatomic.h>
#include <sys/wait.h>
#include "check.h"
#include "hakmem.h"
#include "watchdog.h"

#ifdef TEST_PRELOAD /* built without hakmem, to measure other allocators with LD_PRELOAD */
void hak_stats_get(hak_stats_t *out) {
  memset(out, 0, sizeof *out);
}
#endif

#define SHARED 4096
#define KEEP 1000
#define PER_ROUND 3000

static _Atomic(uintptr_t) shared[SHARED];

static size_t random_size(struct rng *r) {
  if (rng_next(r) % 100 < 95) return 8 + rng_next(r) % (4096 - 8 + 1);
  return 4096 + rng_next(r) % (60 * 1024 + 1);
}

static void *new_block(struct rng *r) {
  size_t n = random_size(r);
  char *p = malloc(n);
  CHECK(p, "malloc(%zu) failed", n);
  memset(p, (int)(n & 0xff), n);
  return p;
}

static void hand_off(struct rng *r, void *p) {
  free((void *)atomic_exchange(&shared[rng_next(r) % SHARED], (uintptr_t)p));
}

/* One thread's share of a round; keep: KEEP slots that live on (main) or
 * end with the round (workers). */
static void round_work(struct rng *r, void **keep) {
  for (int i = 0; i < PER_ROUND; i++) {
    void *p = new_block(r);
    uint64_t k = rng_next(r) % 100;
    if (k < 25) {
      hand_off(r, p);
    } else if (k < 60) {
      free(p);
    } else {
      size_t j = rng_next(r) % KEEP;
      free(keep[j]);
      keep[j] = p;
    }
  }
}

struct worker_arg {
  uint64_t seed;
};

static void *worker(void *arg) {
  struct rng r = {((struct worker_arg *)arg)->seed};
  void **keep = calloc(KEEP, sizeof *keep);
  CHECK(keep, "calloc failed");
  round_work(&r, keep);
  for (int j = 0; j < KEEP; j++) {
    if (j & 1)
      hand_off(&r, keep[j]);
    else
      free(keep[j]);
  }
  free(keep);
  return NULL;
}

/* Peak resident set in KiB (VmHWM). */
static long peak_rss_kib(void) {
  FILE *f = fopen("/proc/self/status", "r");
  CHECK(f, "cannot open /proc/self/status");
  char line[256];
  long kib = -1;
  while (fgets(line, sizeof line, f))
    if (sscanf(line, "VmHWM: %ld kB", &kib) == 1) break;
  fclose(f);
  CHECK(kib > 0, "no VmHWM in /proc/self/status");
  return kib;
}

static int run(int threads, int rounds) {
  static void *keep[KEEP];
  static struct worker_arg args[64];
  static pthread_t tid[64];
  struct rng r = {0x1234567ull + (uint64_t)threads};
  long hwm_r = 0;
  hak_stats_t st_r = {0}, st;
  double t0 = watchdog_now() / 1e9;
  int round;
  for (round = 1; round <= 2 * rounds; round++) {
    for (int t = 1; t < threads; t++) {
      args[t].seed = (uint64_t)round * 1000003u + (uint64_t)t * 7919u + 1;
      CHECK(pthread_create(&tid[t], NULL, worker, &args[t]) == 0, "pthread_create failed");
    }
    round_work(&r, keep);
    for (int t = 1; t < threads; t++)
      pthread_join(tid[t], NULL);
    if (round == rounds) {
      hwm_r = peak_rss_kib();
      hak_stats_get(&st_r);
    }
    /* Past the limit already: stop here rather than grow further. */
    if (round > rounds && round % 10 == 0 && peak_rss_kib() > hwm_r + hwm_r / 10 + 4096) break;
  }
  int done = round > 2 * rounds ? 2 * rounds : round;
  long hwm_2r = peak_rss_kib();
  hak_stats_get(&st);
  printf("T=%d: peak RSS %.1f MiB after %d rounds, %.1f MiB after %d; committed %.1f MiB, "
         "then %.1f MiB; %.1f s\n",
         threads, hwm_r / 1024.0, rounds, hwm_2r / 1024.0, done, st_r.committed_bytes / 1048576.0,
         st.committed_bytes / 1048576.0, watchdog_now() / 1e9 - t0);
  fflush(stdout);
  long limit = hwm_r + hwm_r / 10 + 4096;
  CHECK(hwm_2r <= limit,
        "T=%d: peak RSS grew from %.1f MiB after %d rounds to %.1f MiB after %d (allowed %.1f "
        "after %d): memory of exited threads is not reused (committed_bytes %.1f -> %.1f MiB)",
        threads, hwm_r / 1024.0, rounds, hwm_2r / 1024.0, done, limit / 1024.0, 2 * rounds,
        st_r.committed_bytes / 1048576.0, st.committed_bytes / 1048576.0);
  for (int j = 0; j < KEEP; j++)
    free(keep[j]);
  for (int j = 0; j < SHARED; j++)
    free((void *)atomic_exchange(&shared[j], 0));
  return 0;
}

int main(int argc, char **argv) {
  int rounds = argc > 1 ? atoi(argv[1]) : soak_mode() ? 1000 : 250;
  int counts[16] = {2, 4}, n = 2;
  if (argc > 2)
    for (n = 0; n < argc - 2 && n < 16; n++)
      counts[n] = atoi(argv[n + 2]);
  CHECK(rounds > 0, "usage: %s [rounds [threads...]]", argv[0]);
  int bad = 0;
  for (int i = 0; i < n; i++) {
    CHECK(counts[i] >= 1 && counts[i] <= 64, "threads must be 1-64");
    fflush(NULL);
    pid_t pid = fork();
    CHECK(pid >= 0, "fork failed");
    if (pid == 0) _exit(run(counts[i], rounds));
    int st;
    CHECK(waitpid(pid, &st, 0) == pid, "waitpid failed");
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
      bad++;
      if (WIFSIGNALED(st)) printf("T=%d: killed by signal %d\n", counts[i], WTERMSIG(st));
    }
  }
  CHECK(!bad, "%d of %d thread counts failed (see above)", bad, n);
  return 0;
}
