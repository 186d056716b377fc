/* The heaps of threads that did not survive a fork stay theirs in the
 * child: those threads may have been halfway through a queue change or a
 * remote-free hand-off, so the child's new threads get heaps of their own
 * (hak_stats heaps_created grows by one per new thread), and blocks the dead
 * threads allocated are still safe to free (remote frees nobody collects).
 *
 * The parent's workers allocate, free their own blocks and each other's
 * (remote frees into pages parked as full), while the main thread forks. Each
 * child frees the shared blocks, starts threads that all hold a heap at once
 * (a barrier) and churn with checked fill patterns, lets them exit, and
 * exits 0. */
#define _GNU_SOURCE
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <sys/wait.h>
#include "check.h"
#include "hakmem.h"

#define WORKERS 4
#define SHARED 1024
#define FORKS 30
#define CHILD_THREADS 4

static pthread_mutex_t shared_lock = PTHREAD_MUTEX_INITIALIZER;
static void *shared[SHARED];
static size_t shared_n[SHARED];
static atomic_int stop;
static pthread_barrier_t child_barrier;

static uint64_t next(uint64_t *s) {
  *s ^= *s << 13, *s ^= *s >> 7, *s ^= *s << 17;
  return *s;
}

static size_t random_size(uint64_t *s) {
  uint64_t k = next(s) % 100;
  return k < 90 ? 1 + next(s) % 512 : 512 + next(s) % (64 << 10);
}

static void drop(void *p, size_t n) {
  if (!p) return;
  size_t bad = check_pattern(p, n);
  CHECK(bad == SIZE_MAX, "block %p (%zu bytes) overwritten at %zu", p, n, bad);
  free(p);
}

static void churn(uint64_t seed, long ops) {
  void *live[256] = {0};
  size_t len[256] = {0};
  for (long i = 0; i < ops; i++) {
    int k = (int)(next(&seed) % 256);
    drop(live[k], len[k]);
    len[k] = random_size(&seed);
    live[k] = malloc(len[k]);
    CHECK(live[k], "malloc(%zu) failed", len[k]);
    fill_pattern(live[k], len[k]);
  }
  for (int k = 0; k < 256; k++)
    drop(live[k], len[k]);
}

/* Swaps its fresh blocks with the shared ones: most frees are remote. */
static void *worker(void *arg) {
  uint64_t s = (uint64_t)(uintptr_t)arg * 0x9E3779B97F4A7C15ull;
  while (!atomic_load(&stop)) {
    churn(next(&s), 50);
    for (int i = 0; i < 32; i++) {
      size_t n = random_size(&s);
      void *p = malloc(n);
      CHECK(p, "malloc failed");
      fill_pattern(p, n);
      int k = (int)(next(&s) % SHARED);
      pthread_mutex_lock(&shared_lock);
      void *old = shared[k];
      size_t oldn = shared_n[k];
      shared[k] = p;
      shared_n[k] = n;
      pthread_mutex_unlock(&shared_lock);
      drop(old, oldn);
    }
  }
  return NULL;
}

static void *child_thread(void *arg) {
  void *p = malloc(64); /* this thread's heap exists from here */
  CHECK(p, "malloc failed");
  pthread_barrier_wait(&child_barrier);
  churn((uint64_t)(uintptr_t)arg, 20000);
  free(p);
  return NULL;
}

static void child(int round) {
  alarm(20);
  for (int k = 0; k < SHARED; k++) { /* the dead workers' blocks */
    drop(shared[k], shared_n[k]);
    shared[k] = NULL;
  }
  pthread_mutex_unlock(&shared_lock);
  hak_stats_t before, after;
  hak_stats_get(&before);
  pthread_barrier_init(&child_barrier, NULL, CHILD_THREADS);
  pthread_t t[CHILD_THREADS];
  for (int i = 0; i < CHILD_THREADS; i++)
    CHECK(pthread_create(&t[i], NULL, child_thread,
                         (void *)(uintptr_t)(round * CHILD_THREADS + i + 1)) == 0,
          "pthread_create in the child failed");
  for (int i = 0; i < CHILD_THREADS; i++)
    pthread_join(t[i], NULL);
  hak_stats_get(&after);
  /* No heap was free at the fork (no thread had exited): every new thread
   * made one, unless it took over a dead worker's. */
  CHECK(after.heaps_created - before.heaps_created >= CHILD_THREADS,
        "round %d: %d threads in the child made %llu heaps: they took over dead threads' heaps",
        round, CHILD_THREADS, (unsigned long long)(after.heaps_created - before.heaps_created));
  churn((uint64_t)round + 5, 5000);
  _exit(0);
}

int main(void) {
  pthread_t w[WORKERS];
  for (int i = 0; i < WORKERS; i++)
    CHECK(pthread_create(&w[i], NULL, worker, (void *)(uintptr_t)(i + 1)) == 0,
          "pthread_create failed");
  for (int round = 0; round < FORKS; round++) {
    churn((uint64_t)round + 99, 3000);
    pthread_mutex_lock(&shared_lock);
    pid_t pid = fork();
    CHECK(pid >= 0, "fork failed");
    if (pid == 0) child(round);
    pthread_mutex_unlock(&shared_lock);
    int status;
    CHECK(waitpid(pid, &status, 0) == pid, "waitpid failed");
    CHECK(!WIFSIGNALED(status), "child %d killed by signal %d (%s)", round, WTERMSIG(status),
          WTERMSIG(status) == SIGALRM ? "deadlocked" : strsignal(WTERMSIG(status)));
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0, "child %d exited with %d", round,
          WEXITSTATUS(status));
  }
  atomic_store(&stop, 1);
  for (int i = 0; i < WORKERS; i++)
    pthread_join(w[i], NULL);
  for (int k = 0; k < SHARED; k++)
    drop(shared[k], shared_n[k]);
  printf("%d forks, %d threads in each child\n", FORKS, CHILD_THREADS);
  return 0;
}
