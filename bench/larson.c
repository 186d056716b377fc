/* larson: server simulation after Larson & Krishnan's benchmark.
 *
 * usage: larson [seconds [min [max [blocks [rounds [seed [threads]]]]]]]
 *   seconds  run time (default 1.5)
 *   min,max  block size range in bytes (default 8 1000)
 *   blocks   blocks each thread owns (default 1000)
 *   rounds   replacements a thread does before handing its blocks on (default 10000)
 *   seed     PRNG seed (default 4141)
 *   threads  threads alive at any time (default 2)
 *
 * Each thread repeatedly frees a random one of its blocks and allocates a new
 * random-size block in its place. After `rounds` replacements it starts a new
 * thread, hands it the whole array and exits, so most blocks are freed by a
 * thread other than the one that allocated them, and thread start/exit is
 * part of the load, as in a server that spawns a thread per connection.
 * One op = one free + one malloc. Prints "larson: N ops/s". */
#include "bench.h"

static size_t min_size, max_size, nblocks;
static long rounds;

/* One chain of successive threads sharing one array. */
struct chain {
  _Alignas(BENCH_LINE) void **blk;
  size_t *size;
  uint64_t rng;
  uint64_t ops;
};

static pthread_mutex_t live_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t live_cond = PTHREAD_COND_INITIALIZER;
static int live;

static void *larson_thread(void *arg);

/* Detached: nobody joins a thread that handed its work on. */
static int spawn(struct chain *c) {
  pthread_attr_t attr;
  pthread_t tid;
  pthread_attr_init(&attr);
  pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
  int err = pthread_create(&tid, &attr, larson_thread, c);
  pthread_attr_destroy(&attr);
  return err;
}

static void *larson_thread(void *arg) {
  struct chain *c = arg;
  uint64_t rng = c->rng;
  for (;;) {
    long r;
    for (r = 0; r < rounds && !bench_stopped(); r++) {
      size_t i = (size_t)(rng_next(&rng) % nblocks);
      bench_check_free(c->blk[i], c->size[i]);
      size_t n = rng_range(&rng, min_size, max_size);
      c->blk[i] = bench_alloc(n);
      c->size[i] = n;
      bench_fill(c->blk[i], n);
    }
    c->ops += (uint64_t)r;
    c->rng = rng;
    if (bench_stopped()) break;
    if (spawn(c) == 0) return NULL;
    /* No thread could be started (limits): keep going in this one. */
  }
  for (size_t i = 0; i < nblocks; i++)
    bench_check_free(c->blk[i], c->size[i]);
  pthread_mutex_lock(&live_lock);
  live--;
  pthread_cond_signal(&live_cond);
  pthread_mutex_unlock(&live_lock);
  return NULL;
}

int main(int argc, char **argv) {
  bench_name = "larson";
  bench_usage_text = "usage: larson [seconds [min [max [blocks [rounds [seed [threads]]]]]]]\n"
                     "  defaults: 1.5 8 1000 1000 10000 4141 2\n";
  bench_args(argc, argv, 7);
  double seconds = bench_arg(argc, argv, 1, 1.5, 0.01, 1e6);
  min_size = (size_t)bench_arg(argc, argv, 2, 8, 1, 1 << 30);
  max_size = (size_t)bench_arg(argc, argv, 3, 1000, (double)min_size, 1 << 30);
  nblocks = (size_t)bench_arg(argc, argv, 4, 1000, 1, 1 << 24);
  rounds = (long)bench_arg(argc, argv, 5, 10000, 1, 1e12);
  uint64_t seed = (uint64_t)bench_arg(argc, argv, 6, 4141, 0, 1e18);
  int threads = (int)bench_arg(argc, argv, 7, 2, 1, 1024);

  /* The arrays are filled by main, so even the first frees are remote. */
  struct chain *c = bench_workers((size_t)threads, sizeof *c);
  for (int t = 0; t < threads; t++) {
    c[t] = (struct chain){.rng = rng_seed(seed + (uint64_t)t)};
    c[t].blk = bench_alloc(nblocks * sizeof *c[t].blk);
    c[t].size = bench_alloc(nblocks * sizeof *c[t].size);
    for (size_t i = 0; i < nblocks; i++) {
      c[t].size[i] = rng_range(&c[t].rng, min_size, max_size);
      c[t].blk[i] = bench_alloc(c[t].size[i]);
      bench_fill(c[t].blk[i], c[t].size[i]);
    }
  }

  live = threads;
  double start = bench_now();
  for (int t = 0; t < threads; t++)
    if (spawn(&c[t])) {
      fprintf(stderr, "larson: pthread_create failed\n");
      return 4;
    }
  struct timespec ts = {(time_t)seconds, (long)((seconds - (double)(time_t)seconds) * 1e9)};
  while (nanosleep(&ts, &ts) && errno == EINTR)
    ;
  atomic_store(&bench_stop_flag, 1);
  double el = bench_now() - start;
  pthread_mutex_lock(&live_lock);
  while (live > 0)
    pthread_cond_wait(&live_cond, &live_lock);
  pthread_mutex_unlock(&live_lock);

  uint64_t ops = 0;
  for (int t = 0; t < threads; t++) {
    ops += c[t].ops;
    free(c[t].blk);
    free(c[t].size);
  }
  free(c);
  bench_result(ops, el, NULL);
  return 0;
}
