/* The churn workload shared by churn_small.c and churn_mid.c, which differ
 * only in their default sizes and working-set length.
 *
 * Every thread owns its own working set of `slots` blocks (nothing is shared,
 * so this measures the thread-local fast paths). It replaces random blocks
 * with new random-size ones, and every 1024 replacements also allocates a
 * burst of 32 short-lived temporaries and frees them in reverse order, the
 * stack-like pattern of scratch buffers. Blocks are checked before each free.
 * One op = one malloc + one free. */
#ifndef HAK_BENCH_CHURN_H
#define HAK_BENCH_CHURN_H

#include "bench.h"

#define CHURN_BURST 32

static size_t churn_min, churn_max, churn_slots;

static void *churn_thread(void *arg) {
  struct bench_worker *w = arg;
  uint64_t rng = w->rng, ops = 0;
  void **blk = bench_alloc(churn_slots * sizeof *blk);
  size_t *size = bench_alloc(churn_slots * sizeof *size);
  void *tmp[CHURN_BURST];
  size_t tmp_size[CHURN_BURST];
  for (size_t i = 0; i < churn_slots; i++) {
    size[i] = rng_range(&rng, churn_min, churn_max);
    blk[i] = bench_alloc(size[i]);
    bench_fill(blk[i], size[i]);
  }
  bench_go();
  while (!bench_stopped()) {
    for (int k = 0; k < 1024; k++) {
      size_t i = (size_t)(rng_next(&rng) % churn_slots);
      bench_check_free(blk[i], size[i]);
      size[i] = rng_range(&rng, churn_min, churn_max);
      blk[i] = bench_alloc(size[i]);
      bench_fill(blk[i], size[i]);
    }
    for (int k = 0; k < CHURN_BURST; k++) {
      tmp_size[k] = rng_range(&rng, churn_min, churn_max);
      tmp[k] = bench_alloc(tmp_size[k]);
      bench_fill(tmp[k], tmp_size[k]);
    }
    for (int k = CHURN_BURST - 1; k >= 0; k--)
      bench_check_free(tmp[k], tmp_size[k]);
    ops += 1024 + CHURN_BURST;
  }
  for (size_t i = 0; i < churn_slots; i++)
    bench_check_free(blk[i], size[i]);
  free(blk);
  free(size);
  w->ops = ops;
  return NULL;
}

/* Parses "[seconds [threads [min [max [slots]]]]]" and runs the churn. */
static int churn_main(int argc, char **argv, double min, double max, double slots) {
  bench_args(argc, argv, 5);
  double seconds = bench_arg(argc, argv, 1, 1.5, 0.01, 1e6);
  int threads = (int)bench_arg(argc, argv, 2, 2, 1, 1024);
  churn_min = (size_t)bench_arg(argc, argv, 3, min, 1, 1 << 30);
  churn_max = (size_t)bench_arg(argc, argv, 4, max, (double)churn_min, 1 << 30);
  churn_slots = (size_t)bench_arg(argc, argv, 5, slots, 1, 1 << 26);

  bench_run_plain(threads, seconds, churn_thread);
  return 0;
}

#endif
