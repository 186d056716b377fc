/* fork from a multi-threaded process while the other threads are busy
 * allocating and freeing. The child must not deadlock on a lock a vanished
 * thread held: it frees blocks those threads allocated, allocates and frees a
 * lot (also from new threads, which get heaps of their own: the vanished
 * threads' heaps stay unused), and exits 0. The parent carries on. */
#define _GNU_SOURCE
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <sys/wait.h>
#include "check.h"
#include "hakmem.h"

#define WORKERS 3
#define SHARED 512
#define FORKS 20

static pthread_mutex_t shared_lock = PTHREAD_MUTEX_INITIALIZER;
static void *shared[SHARED];
static size_t shared_n[SHARED];
static atomic_int stop;

static uint64_t next(uint64_t *s) {
  *s ^= *s << 13, *s ^= *s >> 7, *s ^= *s << 17;
  return *s;
}

static size_t random_size(uint64_t *s) {
  uint64_t k = next(s) % 1000;
  if (k < 850) return 1 + next(s) % 1024;
  if (k < 995) return 1024 + next(s) % (31 * 1024);
  return 32 * 1024 + next(s) % (2 << 20); /* large and a few huge */
}

static void *fresh(size_t n) {
  void *p = malloc(n);
  CHECK(p, "malloc(%zu) failed", n);
  fill_pattern(p, n);
  return p;
}

static void drop(void *p, size_t n) {
  if (!p) return;
  size_t bad = check_pattern(p, n);
  CHECK(bad == SIZE_MAX, "block %p (%zu bytes) overwritten at %zu", p, n, bad);
  free(p);
}

/* Random allocate/free traffic with a window of live blocks. */
static void churn(uint64_t seed, long ops) {
  void *live[128] = {0};
  size_t len[128] = {0};
  for (long i = 0; i < ops; i++) {
    int k = (int)(next(&seed) % 128);
    drop(live[k], len[k]);
    len[k] = random_size(&seed);
    live[k] = fresh(len[k]);
  }
  for (int k = 0; k < 128; k++)
    drop(live[k], len[k]);
}

static void *worker(void *arg) {
  uint64_t s = (uint64_t)(uintptr_t)arg * 0x9E3779B97F4A7C15ull;
  while (!atomic_load(&stop)) {
    churn(next(&s), 200);
    size_t n = random_size(&s);
    void *p = fresh(n);
    int k = (int)(next(&s) % SHARED);
    pthread_mutex_lock(&shared_lock);
    void *old = shared[k];
    size_t oldn = shared_n[k];
    shared[k] = p;
    shared_n[k] = n;
    pthread_mutex_unlock(&shared_lock);
    drop(old, oldn);
  }
  return NULL;
}

/* Large and huge blocks in a tight loop without filling them: the
 * allocator's locks (region pool, huge-mapping cache, address space) are
 * then held often, so a fork that does not take one of them in its prepare
 * hook leaves the child a lock nobody will release. */
static void *tight_worker(void *arg) {
  uint64_t s = (uint64_t)(uintptr_t)arg;
  while (!atomic_load(&stop)) {
    size_t n = 64 * 1024 + next(&s) % (3 << 20);
    char *p = malloc(n);
    CHECK(p, "malloc(%zu) failed", n);
    p[0] = 1;
    p[n - 1] = 2;
    free(p);
  }
  return NULL;
}

#define CHILD_THREADS 2
static pthread_barrier_t child_barrier;

static void *child_thread(void *arg) {
  void *p = malloc(64); /* this thread's heap exists from here */
  CHECK(p, "malloc failed");
  pthread_barrier_wait(&child_barrier); /* all of them hold one at once */
  churn((uint64_t)(uintptr_t)arg, 3000);
  free(p);
  return NULL;
}

static void child(int round) {
  alarm(20); /* a deadlock shows as SIGALRM instead of a hung suite */
  /* Blocks the parent's workers allocated: their heaps do not exist here. */
  for (int k = 0; k < SHARED; k++) {
    drop(shared[k], shared_n[k]);
    shared[k] = NULL;
  }
  pthread_mutex_unlock(&shared_lock);
  churn((uint64_t)round * 7919 + 1, 10000);
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
  /* No heap was free at the fork (no parent thread had exited): each new
   * thread made one. Taking over a dead worker's heap would trust lists it
   * may have been changing when the fork came. */
  CHECK(after.heaps_created - before.heaps_created >= CHILD_THREADS,
        "round %d: %d threads in the child made %llu heaps: they took over dead threads' heaps",
        round, CHILD_THREADS, (unsigned long long)(after.heaps_created - before.heaps_created));
  exit(0);
}

int main(void) {
  pthread_t w[WORKERS];
  for (int i = 0; i < WORKERS; i++)
    CHECK(pthread_create(&w[i], NULL, i == 0 ? tight_worker : worker, (void *)(uintptr_t)(i + 1)) ==
              0,
          "pthread_create failed");
  for (int round = 0; round < FORKS; round++) {
    churn((uint64_t)round + 99, 2000); /* the workers run meanwhile */
    pthread_mutex_lock(&shared_lock);  /* a consistent shared[] for the child */
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
  churn(12345, 10000);
  return 0;
}
