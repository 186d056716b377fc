/* The hand-off of the paired workloads (prodcons, crossnode, pingpong):
 * batches of blocks passed between the two threads of a pair through rings
 * of QUEUE batches under one mutex + condvar per pair. The including file
 * may set QUEUE (batches per ring), MAX_BATCH (blocks per batch) and RINGS
 * (rings per pair) before including this. */
#ifndef HAK_BENCH_QUEUE_H
#define HAK_BENCH_QUEUE_H

#include "bench.h"

#include <sched.h>

#ifndef QUEUE
#define QUEUE 8
#endif
#ifndef MAX_BATCH
#define MAX_BATCH 1024
#endif
#ifndef RINGS
#define RINGS 1
#endif

struct item {
  void *p;
  size_t n;
};

struct ring {
  int head, count;
  struct item slot[QUEUE][MAX_BATCH];
};

struct pair {
  _Alignas(BENCH_LINE) pthread_mutex_t lock;
  pthread_cond_t cond; /* one waiter at most per side */
  int done;            /* the producer stopped (one-way pairs) */
  struct ring ring[RINGS];
};

/* A batch is handed over every few microseconds. Sleeping on the condvar
 * each time the ring is full or empty made the workloads measure futex
 * wake-ups (40% of crossnode's samples, in the kernel) instead of the
 * allocator, so a waiting side first polls without the lock, yielding the
 * CPU between looks: with a CPU of its own a yield returns at once, and a
 * pair sharing one CPU hands over without a sleep. After QUEUE_POLLS looks
 * it takes the lock and sleeps as before. `cond` is read racily (relaxed):
 * the locked re-check decides. Measured against pause-spinning first: as
 * fast with a CPU per thread, 2-4x faster when threads share CPUs. */
#define QUEUE_POLLS 32
#define QUEUE_POLL_WHILE(cond)                                                                     \
  for (int poll_ = 0; poll_ < QUEUE_POLLS && (cond); poll_++)                                      \
  sched_yield()

/* A field the other side writes under the lock, read without it. */
#define QUEUE_PEEK(field) __atomic_load_n(&(field), __ATOMIC_RELAXED)

/* The paired workloads' arguments "[seconds [pairs [min [max [batch]]]]]"
 * (batch only when nargs is 5, else MAX_BATCH); min, max: default sizes. */
struct queue_args {
  double seconds;
  int pairs;
  size_t min, max, batch;
};

static inline struct queue_args queue_args(int argc, char **argv, int nargs, double min,
                                           double max) {
  bench_args(argc, argv, nargs);
  struct queue_args a = {.batch = MAX_BATCH};
  a.seconds = bench_arg(argc, argv, 1, 1.5, 0.01, 1e6);
  a.pairs = (int)bench_arg(argc, argv, 2, 2, 1, 512);
  a.min = (size_t)bench_arg(argc, argv, 3, min, 1, 1 << 30);
  a.max = (size_t)bench_arg(argc, argv, 4, max, (double)a.min, 1 << 30);
  if (nargs > 4) a.batch = (size_t)bench_arg(argc, argv, 5, 64, 1, MAX_BATCH);
  return a;
}

/* n pairs, zeroed, their locks and condvars ready. */
static inline struct pair *pairs_new(size_t n) {
  struct pair *q = bench_workers(n, sizeof *q);
  for (size_t i = 0; i < n; i++) {
    pthread_mutex_init(&q[i].lock, NULL);
    pthread_cond_init(&q[i].cond, NULL);
  }
  return q;
}

/* Appends a batch of n items; the caller holds the lock and saw room. */
static inline void ring_put(struct ring *r, const struct item *b, size_t n) {
  memcpy(r->slot[(r->head + r->count) % QUEUE], b, n * sizeof *b);
  __atomic_store_n(&r->count, r->count + 1, __ATOMIC_RELAXED);
}

/* Takes the oldest batch of n items; the caller holds the lock, count > 0. */
static inline void ring_take(struct ring *r, struct item *b, size_t n) {
  memcpy(b, r->slot[r->head], n * sizeof *b);
  r->head = (r->head + 1) % QUEUE;
  __atomic_store_n(&r->count, r->count - 1, __ATOMIC_RELAXED);
}

/* n blocks of random sizes in [min, max], allocated and filled. */
static inline void batch_make(struct item *b, size_t n, uint64_t *rng, size_t min, size_t max) {
  for (size_t i = 0; i < n; i++) {
    b[i].n = rng_range(rng, min, max);
    b[i].p = bench_alloc(b[i].n);
    bench_fill(b[i].p, b[i].n);
  }
}

static inline void batch_free(const struct item *b, size_t n) {
  for (size_t i = 0; i < n; i++)
    bench_check_free(b[i].p, b[i].n);
}

/* One-way pairs, producer side: batches of n blocks into ring 0 until the
 * stop flag, then marks the pair done. */
static inline void queue_produce(struct pair *q, size_t n, uint64_t rng, size_t min, size_t max) {
  struct item local[MAX_BATCH];
  while (!bench_stopped()) {
    batch_make(local, n, &rng, min, max);
    QUEUE_POLL_WHILE(QUEUE_PEEK(q->ring[0].count) == QUEUE);
    pthread_mutex_lock(&q->lock);
    while (q->ring[0].count == QUEUE) /* the consumer always drains, so this ends */
      pthread_cond_wait(&q->cond, &q->lock);
    ring_put(&q->ring[0], local, n);
    pthread_cond_signal(&q->cond);
    pthread_mutex_unlock(&q->lock);
  }
  pthread_mutex_lock(&q->lock);
  __atomic_store_n(&q->done, 1, __ATOMIC_RELAXED);
  pthread_cond_signal(&q->cond);
  pthread_mutex_unlock(&q->lock);
}

/* One-way pairs, consumer side: checks and frees every batch of n blocks
 * until the producer is done and the ring empty. Returns the blocks freed. */
static inline uint64_t queue_consume(struct pair *q, size_t n) {
  struct item local[MAX_BATCH];
  uint64_t ops = 0;
  for (;;) {
    QUEUE_POLL_WHILE(QUEUE_PEEK(q->ring[0].count) == 0 && !QUEUE_PEEK(q->done));
    pthread_mutex_lock(&q->lock);
    while (q->ring[0].count == 0 && !q->done)
      pthread_cond_wait(&q->cond, &q->lock);
    if (q->ring[0].count == 0) {
      pthread_mutex_unlock(&q->lock);
      break;
    }
    ring_take(&q->ring[0], local, n);
    pthread_cond_signal(&q->cond);
    pthread_mutex_unlock(&q->lock);
    batch_free(local, n);
    ops += n;
  }
  return ops;
}

/* A thread of a one-way pair, once ready: produces until the stop (returns
 * 0) or consumes (returns the blocks freed). */
static inline uint64_t queue_side(struct pair *q, int producer, uint64_t rng,
                                  const struct queue_args *a) {
  bench_go();
  if (!producer) return queue_consume(q, a->batch);
  queue_produce(q, a->batch, rng, a->min, a->max);
  return 0;
}

#endif
