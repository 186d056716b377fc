/* Shared helpers for the bench/ workloads: timing, a per-thread PRNG,
 * argument parsing, block patterns that detect corruption, RSS, and a driver
 * that runs N worker threads for a fixed time. Header-only on purpose: the
 * Makefile builds each bench/NAME.c alone into build/bench/NAME, linking only
 * -lpthread.
 *
 * Exit codes shared by all workloads: 0 ok, 2 corruption detected,
 * 3 out of memory, 4 thread start failed, 64 bad arguments. */
#ifndef HAK_BENCH_H
#define HAK_BENCH_H

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define BENCH_PAGE 4096
#define BENCH_LINE 64

/* Set by each main() before anything else: used in messages. */
static const char *bench_name = "bench";
static const char *bench_usage_text = "";

static inline double bench_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* xorshift64*: a handful of cycles per number and no shared state, so the
 * PRNG never shows up next to the allocator in a profile (rand() locks). */
static inline uint64_t rng_next(uint64_t *s) {
  uint64_t x = *s;
  x ^= x >> 12;
  x ^= x << 25;
  x ^= x >> 27;
  *s = x;
  return x * 0x2545F4914F6CDD1Dull;
}

/* Spreads small seeds over the state; the state must never be zero. */
static inline uint64_t rng_seed(uint64_t seed) {
  return (seed + 1) * 0x9E3779B97F4A7C15ull | 1;
}

/* Uniform in [lo, hi]; the modulo bias is irrelevant for a workload. */
static inline size_t rng_range(uint64_t *s, size_t lo, size_t hi) {
  return lo + (size_t)(rng_next(s) % (hi - lo + 1));
}

static inline void bench_usage(int code) {
  fputs(bench_usage_text, code ? stderr : stdout);
  exit(code);
}

/* Checks the argument count and answers -h/--help. */
static inline void bench_args(int argc, char **argv, int max_args) {
  if (argc > 1 && (!strcmp(argv[1], "-h") || !strcmp(argv[1], "--help"))) bench_usage(0);
  if (argc - 1 > max_args) {
    fprintf(stderr, "%s: too many arguments\n", bench_name);
    bench_usage(64);
  }
}

/* Positional argument i (1-based) as a number in [lo, hi], or def if absent. */
static inline double bench_arg(int argc, char **argv, int i, double def, double lo, double hi) {
  if (i >= argc) return def;
  char *end;
  errno = 0;
  double v = strtod(argv[i], &end);
  if (errno || end == argv[i] || *end || v < lo || v > hi) {
    fprintf(stderr, "%s: argument %d '%s' must be a number in [%g, %g]\n", bench_name, i, argv[i],
            lo, hi);
    bench_usage(64);
  }
  return v;
}

/* _exit: other threads may still be inside a broken allocator. */
static inline void bench_fail(int code, const char *what, const void *p, size_t n) {
  fprintf(stderr, "%s: %s (block %p, %zu bytes)\n", bench_name, what, p, n);
  _exit(code);
}

static inline void *bench_alloc(size_t n) {
  void *p = malloc(n);
  if (!p) bench_fail(3, "out of memory", NULL, n);
  return p;
}

/* Pattern tied to address and size, so a block handed out twice, or
 * overwritten by a neighbour, fails the check before it is freed. */
static inline uint64_t bench_tag(const void *p, size_t n) {
  return ((uint64_t)(uintptr_t)p ^ ((uint64_t)n << 44)) * 0x9E3779B97F4A7C15ull;
}

/* Writes the first 8 bytes, one byte per page and the last byte: touching
 * every page makes page faults (memory the allocator gave back) count. */
static inline void bench_fill(void *p, size_t n) {
  unsigned char *b = p;
  uint64_t t = bench_tag(p, n);
  memcpy(b, &t, n < 8 ? n : 8);
  for (size_t o = BENCH_PAGE; o + 1 < n; o += BENCH_PAGE)
    b[o] = (unsigned char)((t >> 8) ^ (o >> 12));
  if (n > 8) b[n - 1] = (unsigned char)((t >> 16) ^ 0xa5);
}

static inline void bench_check(const void *p, size_t n) {
  const unsigned char *b = p;
  uint64_t t = bench_tag(p, n), got = t;
  memcpy(&got, b, n < 8 ? n : 8);
  int bad = got != t;
  for (size_t o = BENCH_PAGE; o + 1 < n; o += BENCH_PAGE)
    bad |= b[o] != (unsigned char)((t >> 8) ^ (o >> 12));
  if (n > 8) bad |= b[n - 1] != (unsigned char)((t >> 16) ^ 0xa5);
  if (bad) bench_fail(2, "corruption detected", p, n);
}

static inline void bench_check_free(void *p, size_t n) {
  bench_check(p, n);
  free(p);
}

/* Resident set size of this process in KiB, from /proc/self/statm (0 if
 * unreadable). */
static inline long bench_rss_kb(void) {
  long pages = 0, rss = 0;
  FILE *f = fopen("/proc/self/statm", "r");
  if (f) {
    if (fscanf(f, "%ld %ld", &pages, &rss) != 2) rss = 0;
    fclose(f);
  }
  return rss * (sysconf(_SC_PAGESIZE) / 1024);
}

/* n zeroed worker structs of size bytes (a multiple of BENCH_LINE), each on
 * its own cache lines. */
static inline void *bench_workers(size_t n, size_t size) {
  void *w = aligned_alloc(BENCH_LINE, size * n);
  if (!w) bench_fail(3, "out of memory", NULL, size * n);
  return memset(w, 0, size * n);
}

/* The sum of the ops fields of workers w[0] .. w[n-1]. */
#define BENCH_OPS(w, n)                                                                            \
  ({                                                                                               \
    uint64_t ops_ = 0;                                                                             \
    for (size_t i_ = 0; i_ < (size_t)(n); i_++)                                                    \
      ops_ += (w)[i_].ops;                                                                         \
    ops_;                                                                                          \
  })

/* Worker threads poll this; relaxed is enough for a stop flag. */
static atomic_int bench_stop_flag;
static inline int bench_stopped(void) {
  return atomic_load_explicit(&bench_stop_flag, memory_order_relaxed);
}

/* Workers call bench_go() once, after their own setup, so that setup (say,
 * filling a working set) is not timed: the clock starts when all are ready. */
static pthread_barrier_t bench_barrier;
static inline void bench_go(void) {
  pthread_barrier_wait(&bench_barrier);
}

static inline void bench_start(pthread_t *tid, void *(*fn)(void *), void *arg) {
  if (pthread_create(tid, NULL, fn, arg)) {
    fprintf(stderr, "%s: pthread_create failed\n", bench_name);
    _exit(4);
  }
}

/* Runs fn(args + i * size) on n threads, each of which calls bench_go()
 * when ready, for `seconds`; calls poll (if any) about every 50 ms with the
 * elapsed time. Returns the measured seconds, from the moment all threads
 * were ready until the stop flag was raised. */
static inline double bench_run(unsigned n, double seconds, void *(*fn)(void *), void *args,
                               size_t size, void (*poll)(double)) {
  pthread_t *tid = calloc(n, sizeof *tid);
  if (!tid) bench_fail(3, "out of memory", NULL, n * sizeof *tid);
  pthread_barrier_init(&bench_barrier, NULL, n + 1);
  for (unsigned i = 0; i < n; i++)
    bench_start(&tid[i], fn, (char *)args + (size_t)i * size);
  bench_go();
  double start = bench_now(), el;
  while ((el = bench_now() - start) < seconds) {
    double left = seconds - el < 0.05 ? seconds - el : 0.05;
    struct timespec ts = {(time_t)left, (long)((left - (double)(time_t)left) * 1e9)};
    nanosleep(&ts, NULL);
    if (poll) poll(bench_now() - start);
  }
  atomic_store(&bench_stop_flag, 1);
  el = bench_now() - start;
  for (unsigned i = 0; i < n; i++)
    pthread_join(tid[i], NULL);
  pthread_barrier_destroy(&bench_barrier);
  free(tid);
  return el;
}

/* The one result line the runner parses: "NAME: <ops/s> ops/s [key=value...]". */
static inline void bench_result(uint64_t ops, double seconds, const char *extra) {
  printf("%s: %.0f ops/s%s%s\n", bench_name, seconds > 0 ? (double)ops / seconds : 0.0,
         extra && *extra ? " " : "", extra ? extra : "");
  fflush(stdout);
}

/* A worker with nothing but its own PRNG and op count. */
struct bench_worker {
  _Alignas(BENCH_LINE) uint64_t rng;
  uint64_t ops;
};

/* Runs fn on `threads` struct bench_workers (PRNG seeded with the index) for
 * `seconds` and prints the result line. */
static inline void bench_run_plain(int threads, double seconds, void *(*fn)(void *)) {
  struct bench_worker *w = bench_workers((size_t)threads, sizeof *w);
  for (int t = 0; t < threads; t++)
    w[t].rng = rng_seed((uint64_t)t);
  double el = bench_run((unsigned)threads, seconds, fn, w, sizeof *w, NULL);
  uint64_t ops = BENCH_OPS(w, threads);
  free(w);
  bench_result(ops, el, NULL);
}

#endif
