/* prodcons: producer threads allocate blocks, consumer threads free them.
 *
 * usage: prodcons [seconds [threads [min [max [batch]]]]]
 *   seconds  run time (default 1.5)
 *   threads  producer/consumer pairs, so 2 x threads threads (default 2)
 *   min,max  block size range in bytes (default 2048 32768)
 *   batch    blocks per hand-off (default 64)
 *
 * The producer of each pair allocates a batch of random-size blocks, writes a
 * pattern into them (one byte per page, so fresh pages fault) and hands the
 * batch to its consumer through a bounded queue of 8 batches; the consumer
 * checks and frees every block. Hand-off is a mutex + condvar per batch,
 * polled briefly before sleeping (queue.h), so the allocator dominates and
 * pairs that share one CPU still take turns.
 * One op = one block produced and freed. Prints "prodcons: N ops/s". */
#include "queue.h" /* QUEUE 8, MAX_BATCH 1024 */

struct worker {
  _Alignas(BENCH_LINE) struct pair *pair;
  int producer;
  uint64_t rng;
  uint64_t ops;
};

static struct queue_args args;

static void *worker_main(void *arg) {
  struct worker *w = arg;
  w->ops = queue_side(w->pair, w->producer, w->rng, &args);
  return NULL;
}

int main(int argc, char **argv) {
  bench_name = "prodcons";
  bench_usage_text = "usage: prodcons [seconds [threads [min [max [batch]]]]]\n"
                     "  threads = producer/consumer pairs; defaults: 1.5 2 2048 32768 64\n";
  args = queue_args(argc, argv, 5, 2048, 32768);
  int pairs = args.pairs;

  struct pair *q = pairs_new((size_t)pairs);
  struct worker *w = bench_workers(2 * (size_t)pairs, sizeof *w);
  for (int i = 0; i < pairs; i++) {
    w[2 * i] = (struct worker){.pair = &q[i], .producer = 1, .rng = rng_seed((uint64_t)i)};
    w[2 * i + 1] = (struct worker){.pair = &q[i]};
  }
  double el = bench_run(2 * (unsigned)pairs, args.seconds, worker_main, w, sizeof *w, NULL);
  uint64_t ops = BENCH_OPS(w, 2 * pairs);
  free(q);
  free(w);
  bench_result(ops, el, NULL);
  return 0;
}
