/* pingpong: thread pairs that free only each other's blocks.
 *
 * usage: pingpong [seconds [threads [min [max [batch]]]]]
 *   seconds  run time (default 1.5)
 *   threads  thread pairs, so 2 x threads threads (default 2)
 *   min,max  block size range in bytes (default 16 512)
 *   batch    blocks per hand-off (default 64)
 *
 * Both threads of a pair allocate batches of small blocks and send them to
 * the other through a queue of up to 4 batches per direction, and free every
 * batch they receive: every block is freed by the thread that did not
 * allocate it, in both directions at once (remote frees, and memory that
 * must flow back to its owner). Both directions share one lock and condvar
 * so a thread can wait for "room to send or something to free".
 * One op = one block allocated by one thread and freed by the other.
 * Prints "pingpong: N ops/s". */
#include "bench.h"

#define QUEUE 4
#define MAX_BATCH 1024

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
  pthread_cond_t cond;
  struct ring ring[2]; /* ring[s] carries side s's blocks to the other side */
};

struct worker {
  _Alignas(BENCH_LINE) struct pair *pair;
  int side;
  uint64_t rng;
  uint64_t ops;
};

static size_t min_size, max_size, batch;

static void *side_main(void *arg) {
  struct worker *w = arg;
  struct pair *q = w->pair;
  struct ring *out = &q->ring[w->side], *in = &q->ring[!w->side];
  struct item mine[MAX_BATCH], theirs[MAX_BATCH];
  uint64_t rng = w->rng, ops = 0;
  int have = 0;
  bench_go();
  while (!bench_stopped()) {
    if (!have) {
      for (size_t i = 0; i < batch; i++) {
        mine[i].n = rng_range(&rng, min_size, max_size);
        mine[i].p = bench_alloc(mine[i].n);
        bench_fill(mine[i].p, mine[i].n);
      }
      have = 1;
    }
    int got = 0;
    pthread_mutex_lock(&q->lock);
    /* Both full-out and empty-in cannot hold for both sides at once. */
    while (out->count == QUEUE && in->count == 0 && !bench_stopped())
      pthread_cond_wait(&q->cond, &q->lock);
    if (in->count > 0) {
      memcpy(theirs, in->slot[in->head], batch * sizeof *theirs);
      in->head = (in->head + 1) % QUEUE;
      in->count--;
      got = 1;
    }
    if (out->count < QUEUE) {
      memcpy(out->slot[(out->head + out->count) % QUEUE], mine, batch * sizeof *mine);
      out->count++;
      have = 0;
    }
    pthread_cond_signal(&q->cond);
    pthread_mutex_unlock(&q->lock);
    if (got) {
      for (size_t i = 0; i < batch; i++)
        bench_check_free(theirs[i].p, theirs[i].n);
      ops += batch;
    }
  }
  /* Wake the partner, which may be waiting for us, so it sees the stop. */
  pthread_mutex_lock(&q->lock);
  pthread_cond_signal(&q->cond);
  pthread_mutex_unlock(&q->lock);
  if (have)
    for (size_t i = 0; i < batch; i++)
      bench_check_free(mine[i].p, mine[i].n);
  w->ops = ops;
  return NULL;
}

int main(int argc, char **argv) {
  bench_name = "pingpong";
  bench_usage_text = "usage: pingpong [seconds [threads [min [max [batch]]]]]\n"
                     "  threads = thread pairs; defaults: 1.5 2 16 512 64\n";
  bench_args(argc, argv, 5);
  double seconds = bench_arg(argc, argv, 1, 1.5, 0.01, 1e6);
  int pairs = (int)bench_arg(argc, argv, 2, 2, 1, 512);
  min_size = (size_t)bench_arg(argc, argv, 3, 16, 1, 1 << 30);
  max_size = (size_t)bench_arg(argc, argv, 4, 512, (double)min_size, 1 << 30);
  batch = (size_t)bench_arg(argc, argv, 5, 64, 1, MAX_BATCH);

  struct pair *q = aligned_alloc(BENCH_LINE, sizeof *q * (size_t)pairs);
  struct worker *w = aligned_alloc(BENCH_LINE, sizeof *w * 2 * (size_t)pairs);
  if (!q || !w) bench_fail(3, "out of memory", NULL, sizeof *q * (size_t)pairs);
  for (int i = 0; i < pairs; i++) {
    memset(&q[i], 0, sizeof q[i]);
    pthread_mutex_init(&q[i].lock, NULL);
    pthread_cond_init(&q[i].cond, NULL);
    for (int s = 0; s < 2; s++)
      w[2 * i + s] =
          (struct worker){.pair = &q[i], .side = s, .rng = rng_seed((uint64_t)(2 * i + s))};
  }
  double el = bench_run(2 * (unsigned)pairs, seconds, side_main, w, sizeof *w, NULL);
  uint64_t ops = 0;
  for (int i = 0; i < 2 * pairs; i++)
    ops += w[i].ops;
  /* Batches still queued at the stop: freed here, not counted. */
  for (int i = 0; i < pairs; i++)
    for (int s = 0; s < 2; s++) {
      struct ring *r = &q[i].ring[s];
      for (; r->count > 0; r->count--, r->head = (r->head + 1) % QUEUE)
        for (size_t k = 0; k < batch; k++)
          bench_check_free(r->slot[r->head][k].p, r->slot[r->head][k].n);
    }
  free(q);
  free(w);
  bench_result(ops, el, NULL);
  return 0;
}
