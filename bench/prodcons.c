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
 * checks and frees every block. Hand-off is a mutex + condvar per batch:
 * cheap enough for the allocator to dominate, and it sleeps instead of
 * spinning when both threads of a pair share one CPU.
 * One op = one block produced and freed. Prints "prodcons: N ops/s". */
#include "bench.h"

#define QUEUE 8
#define MAX_BATCH 1024

struct item {
  void *p;
  size_t n;
};

struct pair {
  _Alignas(BENCH_LINE) pthread_mutex_t lock;
  pthread_cond_t cond; /* one waiter at most: producer on full or consumer on empty */
  int head, count, done;
  struct item slot[QUEUE][MAX_BATCH];
};

struct worker {
  _Alignas(BENCH_LINE) struct pair *pair;
  int producer;
  uint64_t rng;
  uint64_t ops;
};

static size_t min_size, max_size, batch;

static void produce(struct worker *w) {
  struct pair *q = w->pair;
  struct item local[MAX_BATCH];
  uint64_t rng = w->rng;
  while (!bench_stopped()) {
    for (size_t i = 0; i < batch; i++) {
      local[i].n = rng_range(&rng, min_size, max_size);
      local[i].p = bench_alloc(local[i].n);
      bench_fill(local[i].p, local[i].n);
    }
    pthread_mutex_lock(&q->lock);
    while (q->count == QUEUE) /* the consumer always drains, so this ends */
      pthread_cond_wait(&q->cond, &q->lock);
    memcpy(q->slot[(q->head + q->count) % QUEUE], local, batch * sizeof *local);
    q->count++;
    pthread_cond_signal(&q->cond);
    pthread_mutex_unlock(&q->lock);
  }
  pthread_mutex_lock(&q->lock);
  q->done = 1;
  pthread_cond_signal(&q->cond);
  pthread_mutex_unlock(&q->lock);
}

static void consume(struct worker *w) {
  struct pair *q = w->pair;
  struct item local[MAX_BATCH];
  uint64_t ops = 0;
  for (;;) {
    pthread_mutex_lock(&q->lock);
    while (q->count == 0 && !q->done)
      pthread_cond_wait(&q->cond, &q->lock);
    if (q->count == 0) {
      pthread_mutex_unlock(&q->lock);
      break;
    }
    memcpy(local, q->slot[q->head], batch * sizeof *local);
    q->head = (q->head + 1) % QUEUE;
    q->count--;
    pthread_cond_signal(&q->cond);
    pthread_mutex_unlock(&q->lock);
    for (size_t i = 0; i < batch; i++)
      bench_check_free(local[i].p, local[i].n);
    ops += batch;
  }
  w->ops = ops;
}

static void *worker_main(void *arg) {
  struct worker *w = arg;
  bench_go();
  if (w->producer)
    produce(w);
  else
    consume(w);
  return NULL;
}

int main(int argc, char **argv) {
  bench_name = "prodcons";
  bench_usage_text = "usage: prodcons [seconds [threads [min [max [batch]]]]]\n"
                     "  threads = producer/consumer pairs; defaults: 1.5 2 2048 32768 64\n";
  bench_args(argc, argv, 5);
  double seconds = bench_arg(argc, argv, 1, 1.5, 0.01, 1e6);
  int pairs = (int)bench_arg(argc, argv, 2, 2, 1, 512);
  min_size = (size_t)bench_arg(argc, argv, 3, 2048, 1, 1 << 30);
  max_size = (size_t)bench_arg(argc, argv, 4, 32768, (double)min_size, 1 << 30);
  batch = (size_t)bench_arg(argc, argv, 5, 64, 1, MAX_BATCH);

  struct pair *q = aligned_alloc(BENCH_LINE, sizeof *q * (size_t)pairs);
  struct worker *w = aligned_alloc(BENCH_LINE, sizeof *w * 2 * (size_t)pairs);
  if (!q || !w) bench_fail(3, "out of memory", NULL, sizeof *q * (size_t)pairs);
  for (int i = 0; i < pairs; i++) {
    memset(&q[i], 0, sizeof q[i]);
    pthread_mutex_init(&q[i].lock, NULL);
    pthread_cond_init(&q[i].cond, NULL);
    w[2 * i] = (struct worker){.pair = &q[i], .producer = 1, .rng = rng_seed((uint64_t)i)};
    w[2 * i + 1] = (struct worker){.pair = &q[i]};
  }
  double el = bench_run(2 * (unsigned)pairs, seconds, worker_main, w, sizeof *w, NULL);
  uint64_t ops = 0;
  for (int i = 0; i < 2 * pairs; i++)
    ops += w[i].ops;
  free(q);
  free(w);
  bench_result(ops, el, NULL);
  return 0;
}
