/* Threads past HAKMEM_MAX_HEAPS share heaps. With a limit of 2 (the test
 * runs itself again with it when it is not set), waves of 32 threads, up
 * to 64 alive, allocate 16 B - 100 KiB blocks (some aligned, some zeroed),
 * hand them to each other through shared slots and check each block's
 * pattern before freeing it; sharing threads exit while others still free
 * into their heaps, and some fork: the child checks and frees inherited
 * blocks and allocates through the shared heaps. Then the counters: the
 * threads shared (shared_heap_threads) and made no heaps of their own, and
 * once all is freed the shared heaps' pages go back (committed_bytes).
 * Modes (run as children): `unlimited` (HAKMEM_MAX_HEAPS=0) shares nothing;
 * `default` shares once more threads live than 4 per CPU; `trim`: malloc_trim
 * takes back the pages a shared heap keeps (one per class it served).
 *
 * Built against the TSan library by tests/run.sh with -DSTRESS_HAK.
 * Usage: shared_heaps [ops-per-thread] */
#define _GNU_SOURCE
#include <malloc.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <time.h>
#include "check.h"
#include "hakmem.h"
#include "spawn.h"
#include "t_alloc.h"

/* TSan does not let a fork child start threads (the child's allocations
 * start hakmem's background thread): its build does not fork. */
#ifdef STRESS_HAK
#define FORKS 0
#else
#define FORKS 1
#endif

#define SLOTS 2048
#define WAVES 4
#define WAVE 32
#define HDR 16
#define MAGIC 0x5A4EDFEEDC0FFEEull
#define COMMITTED_IDLE (16u << 20)
/* How long the pages may take to come back, in tenths of a second: under
 * TSan every step of the background thread's purge is instrumented, and on
 * a contended 2-CPU host the whole run took 116-150 s instead of 20 */
#ifdef STRESS_HAK
#define IDLE_WAIT_TENTHS 600
#else
#define IDLE_WAIT_TENTHS 100
#endif

static _Atomic(uintptr_t) slots[SLOTS];
static long ops = 4000;
static atomic_int forks;

static size_t random_size(struct rng *r) {
  uint64_t k = rng_next(r) % 100;
  if (k < 70) return HDR + rng_next(r) % 1024;
  if (k < 98) return 1024 + rng_next(r) % (64 << 10);
  return (64 << 10) + rng_next(r) % (36 << 10); /* the largest classes */
}

static void stamp(void *p, size_t n) {
  uint64_t *h = p;
  h[0] = n;
  h[1] = (uint64_t)(uintptr_t)p ^ MAGIC;
  fill_pattern((char *)p + HDR, n - HDR);
}

static void release(void *p) {
  if (!p) return;
  uint64_t *h = p;
  size_t n = (size_t)h[0];
  CHECK(h[1] == ((uint64_t)(uintptr_t)p ^ MAGIC), "header of %p overwritten", p);
  size_t bad = check_pattern((char *)p + HDR, n - HDR);
  CHECK(bad == SIZE_MAX, "block %p of %zu bytes overwritten at offset %zu", p, n, bad + HDR);
  T_FREE(p);
}

static void *new_block(struct rng *r) {
  size_t n = random_size(r);
  void *p = NULL;
  uint64_t k = rng_next(r) % 10;
  if (k == 0) {
    size_t align = (size_t)32 << (rng_next(r) % 8); /* 32 .. 4096 */
    CHECK(T_MEMALIGN(&p, align, n) == 0 && p, "posix_memalign(%zu, %zu) failed", align, n);
    CHECK((uintptr_t)p % align == 0, "posix_memalign(%zu) = %p misaligned", align, p);
  } else if (k == 1) {
    unsigned char *z = T_CALLOC(1, n);
    CHECK(z, "calloc(%zu) failed", n);
    for (size_t i = 0; i < n; i += 61)
      CHECK(z[i] == 0, "calloc(%zu): byte %zu not zero", n, i);
    p = z;
  } else {
    p = T_MALLOC(n);
    CHECK(p, "malloc(%zu) failed", n);
  }
  stamp(p, n);
  return p;
}

/* The child of a fork by a sharing thread: the shared heaps' locks were
 * held across fork, so it allocates and frees through them, and frees
 * inherited blocks of every heap. Exits 3 on a bad block (release fails). */
static void child_after_fork(struct rng *r) {
  for (int i = 0; i < 200; i++)
    release((void *)atomic_exchange(&slots[rng_next(r) % SLOTS], 0));
  void *mine[256];
  for (int i = 0; i < 256; i++)
    mine[i] = new_block(r);
  for (int i = 0; i < 256; i++)
    release(mine[i]);
  _exit(0);
}

static void fork_and_wait(struct rng *r) {
  pid_t pid = fork();
  CHECK(pid >= 0, "fork failed");
  if (pid == 0) child_after_fork(r);
  int status;
  for (int waited = 0; waitpid(pid, &status, WNOHANG) == 0; waited++) {
    CHECK(waited < 1000, "a fork child did not exit within 10 s: deadlocked");
    nanosleep(&(struct timespec){0, 10 * 1000 * 1000}, NULL);
  }
  CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0, "a fork child ended with status 0x%x",
        status);
  atomic_fetch_add(&forks, 1);
}

static void *worker(void *arg) {
  unsigned id = (unsigned)(uintptr_t)arg;
  struct rng r = {id * 0x9E3779B97F4A7C15ull + 7};
  void *local[16] = {0};
  for (long op = 0; op < ops; op++) {
    void *p = new_block(&r);
    if (rng_next(&r) % 4 == 0) { /* kept a while by this thread */
      size_t i = rng_next(&r) % 16;
      release(local[i]);
      local[i] = p;
    } else { /* usually freed by another thread */
      release((void *)atomic_exchange(&slots[rng_next(&r) % SLOTS], (uintptr_t)p));
    }
    if (FORKS && id % WAVE == 1 && op == ops / 2) fork_and_wait(&r);
  }
  for (size_t i = 0; i < 16; i++)
    release(local[i]);
  return NULL;
}

static void start_wave(pthread_t *t, unsigned wave) {
  for (unsigned i = 0; i < WAVE; i++)
    CHECK(pthread_create(&t[i], NULL, worker, (void *)(uintptr_t)(wave * WAVE + i)) == 0,
          "pthread_create failed");
}

static void join_wave(pthread_t *t) {
  for (unsigned i = 0; i < WAVE; i++)
    CHECK(pthread_join(t[i], NULL) == 0, "pthread_join failed");
}

/* Waves overlap: wave k+1 starts before wave k is joined, so threads exit
 * while others still free blocks of the heaps they used. */
static void run_waves(void) {
  pthread_t t[WAVES][WAVE];
  start_wave(t[0], 0);
  for (unsigned w = 1; w < WAVES; w++) {
    start_wave(t[w], w);
    join_wave(t[w - 1]);
  }
  join_wave(t[WAVES - 1]);
  for (size_t i = 0; i < SLOTS; i++)
    release((void *)atomic_exchange(&slots[i], 0));
}

/* `nthreads` threads alive at once, each allocating once, then the counters. */
static pthread_barrier_t all_alive;
static void *alloc_once(void *arg) {
  (void)arg;
  pthread_barrier_wait(&all_alive);
  void *p = T_MALLOC(100);
  CHECK(p, "malloc(100) failed");
  T_FREE(p);
  pthread_barrier_wait(&all_alive);
  return NULL;
}

static hak_stats_t with_threads_alive(unsigned nthreads) {
  pthread_t *t = T_MALLOC(nthreads * sizeof *t);
  CHECK(t, "malloc failed");
  pthread_barrier_init(&all_alive, NULL, nthreads);
  for (unsigned i = 0; i < nthreads; i++)
    CHECK(pthread_create(&t[i], NULL, alloc_once, NULL) == 0, "pthread_create failed");
  for (unsigned i = 0; i < nthreads; i++)
    pthread_join(t[i], NULL);
  T_FREE(t);
  hak_stats_t s;
  hak_stats_get(&s);
  return s;
}

static unsigned cpus(void) {
  cpu_set_t set;
  CHECK(sched_getaffinity(0, sizeof set, &set) == 0, "sched_getaffinity failed");
  return (unsigned)CPU_COUNT(&set);
}

/* A sharing thread allocates and frees a block of each class from 16 B to
 * 128 KiB: the shared heap keeps a page of each. */
static void *every_class(void *arg) {
  (void)arg;
  void *p[14];
  for (int i = 0; i < 14; i++) {
    p[i] = T_MALLOC((size_t)16 << i);
    CHECK(p[i], "malloc(%zu) failed", (size_t)16 << i);
    memset(p[i], 1, (size_t)16 << i);
  }
  for (int i = 0; i < 14; i++)
    T_FREE(p[i]);
  return NULL;
}

static void run_child(const char *mode, const char *env, const char *env2) {
  const char *vars[] = {env, env2, NULL};
  static struct child c;
  run_self_with(mode, env ? vars : NULL, &c, NULL, NULL);
  CHECK(WIFEXITED(c.status) && WEXITSTATUS(c.status) == 0, "mode %s failed (status 0x%x): %s", mode,
        c.status, c.err);
}

int main(int argc, char **argv) {
  if (argc > 1 && !strcmp(argv[1], "unlimited")) {
    hak_stats_t s = with_threads_alive(64);
    CHECK(s.shared_heap_threads == 0, "HAKMEM_MAX_HEAPS=0: %llu threads shared a heap",
          (unsigned long long)s.shared_heap_threads);
    CHECK(s.heaps_created >= 64, "HAKMEM_MAX_HEAPS=0: %llu heaps for 64 threads alive at once",
          (unsigned long long)s.heaps_created);
    return 0;
  }
  if (argc > 1 && !strcmp(argv[1], "default")) {
    /* the main thread owns one of the `limit` heaps */
    unsigned limit = 4 * cpus(), n = limit + 8;
    hak_stats_t s = with_threads_alive(n);
    CHECK(s.shared_heap_threads == n + 1 - limit, "%u threads alive, limit %u: %llu shared a heap",
          n, limit, (unsigned long long)s.shared_heap_threads);
    CHECK(s.heaps_created == limit, "limit %u: %llu heaps made", limit,
          (unsigned long long)s.heaps_created);
    return 0;
  }
  if (argc > 1 && !strcmp(argv[1], "trim")) {
    hak_stats_t s0, s1, s2;
    T_FREE(T_MALLOC(1)); /* the main thread's heap is the one allowed */
    T_TRIM(0);
    hak_stats_get(&s0);
    pthread_t t;
    CHECK(pthread_create(&t, NULL, every_class, NULL) == 0, "pthread_create failed");
    pthread_join(t, NULL);
    hak_stats_get(&s1);
    T_TRIM(0);
    hak_stats_get(&s2);
    CHECK(s1.shared_heap_threads == 1, "the thread did not share a heap");
    /* all but a region's first page, which holds its header */
    CHECK(s2.committed_bytes - s0.committed_bytes <= (s1.committed_bytes - s0.committed_bytes) / 8,
          "malloc_trim left %llu bytes committed, %llu before the sharing thread (%llu after it)",
          (unsigned long long)s2.committed_bytes, (unsigned long long)s0.committed_bytes,
          (unsigned long long)s1.committed_bytes);
    return 0;
  }
  if (!getenv("HAKMEM_MAX_HEAPS")) {
    run_child("unlimited", "HAKMEM_MAX_HEAPS=0", NULL);
    run_child("default", NULL, NULL);
    /* no background thread: only malloc_trim takes the pages back */
    run_child("trim", "HAKMEM_MAX_HEAPS=1", "HAKMEM_BACKGROUND=0");
    setenv("HAKMEM_MAX_HEAPS", "2", 1);
    execv("/proc/self/exe", argv);
    FAIL("exec of itself failed");
  }
  if (argc > 1) ops = atol(argv[1]);
  CHECK(ops > 0, "usage: %s [ops-per-thread]", argv[0]);
  void *p = T_MALLOC(1); /* the main thread's heap: 1 of the 2 */
  T_FREE(p);
  run_waves();
  hak_stats_t s;
  hak_stats_get(&s);
  /* Everything is freed and no thread allocates: the shared heaps give
   * their pages back, blocks freed into them remotely included, and the
   * emptied regions are purged (the background thread) */
  hak_stats_t idle;
  for (int waited = 0;; waited++) {
    hak_stats_get(&idle);
    if (idle.committed_bytes <= COMMITTED_IDLE) {
      printf("pages back %d.%d s after everything was freed\n", waited / 10, waited % 10);
      break;
    }
    CHECK(waited < IDLE_WAIT_TENTHS,
          "committed %llu bytes %d s after everything was freed (peak %llu)",
          (unsigned long long)idle.committed_bytes, IDLE_WAIT_TENTHS / 10,
          (unsigned long long)idle.peak_committed_bytes);
    nanosleep(&(struct timespec){0, 100 * 1000 * 1000}, NULL);
  }
  unsigned threads = WAVES * WAVE;
  /* the main thread and one worker at a time own a heap (a worker that
   * exits leaves its heap to the next); the others shared */
  CHECK(s.heaps_created == 2, "%llu heaps made with HAKMEM_MAX_HEAPS=2",
        (unsigned long long)s.heaps_created);
  CHECK(s.shared_heap_threads >= threads / 2, "%llu of %u threads shared a heap",
        (unsigned long long)s.shared_heap_threads, threads);
  CHECK(atomic_load(&forks) == FORKS * WAVES, "%d forks, not %d", atomic_load(&forks),
        FORKS * WAVES);
  CHECK(s.invalid_frees == 0, "%llu invalid frees", (unsigned long long)s.invalid_frees);
  printf("shared_heaps: %u threads, %llu shared a heap, %llu heaps made, %d forks\n", threads,
         (unsigned long long)s.shared_heap_threads, (unsigned long long)s.heaps_created,
         atomic_load(&forks));
  return 0;
}
