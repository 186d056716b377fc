/* falseshare: does the allocator put different threads' blocks in one cache line?
 *
 * usage: falseshare [seconds [threads [min [max [writes]]]]]
 *   seconds  run time (default 1.5)
 *   threads  worker threads (default 2)
 *   min,max  block size range in bytes (default 8 64)
 *   writes   increments per block between its malloc and free (default 1000)
 *
 * Before the run, the main thread allocates 64 small blocks per worker, back
 * to back, and deals neighbouring blocks to different workers. Each worker
 * increments a counter in each of its dealt blocks, all in turn, then frees
 * them; for the rest of the run it allocates 64 blocks of the same sizes,
 * increments their counters the same way and frees them, over and over.
 * The dealt blocks share cache lines whatever the allocator does (a short
 * warm-up); what the allocator decides is where the workers' own blocks go.
 * One that hands a thread back the blocks it just freed (the other workers'
 * neighbours), or packs blocks of several threads into one line, makes the
 * cores fight over the lines and the increments slow (passive false sharing).
 * One op = one increment. Prints "falseshare: N ops/s" (increments/s). */
#include "bench.h"

#define DEALT 64

struct worker {
  _Alignas(BENCH_LINE) uint64_t ops;
  void *blk[DEALT];
  size_t size[DEALT];
};

static size_t min_size, max_size;
static long writes;

/* Increments a counter at the start of each of the worker's blocks, one
 * block after the other, `writes` times over, so all its blocks stay hot at
 * once, like per-object counters. A load and a store per increment: plain
 * stores to one address merge in the store buffer and hide a line bouncing
 * between cores. volatile keeps every access. */
static uint64_t hammer(struct worker *w) {
  volatile uint32_t *v[DEALT];
  for (int i = 0; i < DEALT; i++) {
    v[i] = w->blk[i];
    *v[i] = 0;
  }
  for (long j = 0; j < writes; j++)
    for (int i = 0; i < DEALT; i++)
      *v[i] = *v[i] + 1;
  for (int i = 0; i < DEALT; i++) {
    if (*v[i] != (uint32_t)writes) bench_fail(2, "block written by another thread", w->blk[i], 4);
    bench_fill(w->blk[i], w->size[i]);
  }
  return (uint64_t)writes * DEALT;
}

static void *worker_main(void *arg) {
  struct worker *w = arg;
  uint64_t ops = 0;
  bench_go();
  ops += hammer(w); /* the dealt blocks: shared lines whatever the allocator */
  for (int i = 0; i < DEALT; i++)
    bench_check_free(w->blk[i], w->size[i]);
  /* Same sizes again: a cache that hands back what this thread just freed
   * returns the dealt blocks, the other workers' neighbours. */
  while (!bench_stopped()) {
    for (int i = 0; i < DEALT; i++)
      w->blk[i] = bench_alloc(w->size[i]);
    ops += hammer(w);
    for (int i = 0; i < DEALT; i++)
      bench_check_free(w->blk[i], w->size[i]);
  }
  w->ops = ops;
  return NULL;
}

int main(int argc, char **argv) {
  bench_name = "falseshare";
  bench_usage_text = "usage: falseshare [seconds [threads [min [max [writes]]]]]\n"
                     "  defaults: 1.5 2 8 64 1000\n";
  bench_args(argc, argv, 5);
  double seconds = bench_arg(argc, argv, 1, 1.5, 0.01, 1e6);
  int threads = (int)bench_arg(argc, argv, 2, 2, 1, 1024);
  min_size = (size_t)bench_arg(argc, argv, 3, 8, 4, 1 << 20);
  max_size = (size_t)bench_arg(argc, argv, 4, 64, (double)min_size, 1 << 20);
  writes = (long)bench_arg(argc, argv, 5, 1000, 1, 1e9);

  struct worker *w = bench_workers((size_t)threads, sizeof *w);
  /* Block k goes to worker k % threads: neighbours belong to different workers. */
  uint64_t rng = rng_seed(12345);
  for (int k = 0; k < DEALT * threads; k++) {
    struct worker *o = &w[k % threads];
    size_t n = rng_range(&rng, min_size, max_size);
    o->blk[k / threads] = bench_alloc(n);
    o->size[k / threads] = n;
    bench_fill(o->blk[k / threads], n);
  }
  double el = bench_run((unsigned)threads, seconds, worker_main, w, sizeof *w, NULL);
  uint64_t ops = BENCH_OPS(w, threads);
  free(w);
  bench_result(ops, el, NULL);
  return 0;
}
