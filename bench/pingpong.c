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
 * so a thread can wait for "room to send or something to free" (polled
 * briefly before sleeping, as in queue.h).
 * One op = one block allocated by one thread and freed by the other.
 * Prints "pingpong: N ops/s".
 *
 * PINGPONG_PIN=pair|split pins the threads to CPUs 0 and 1 (at 2 pairs on
 * 2 CPUs the scheduler's placement decides the result, measured 2026-12):
 * pair puts both threads of pair i on CPU i mod 2 (they take turns on it,
 * every block stays in that CPU's cache: hakmem as fast as tcmalloc),
 * split puts side s of every pair on CPU s (both sides run at once, every
 * block crosses CPUs twice per round trip: hakmem's owner misses on each
 * block freed back to it, tcmalloc's freer reuses it, about 2x). */
#define _GNU_SOURCE /* pthread_setaffinity_np */
#define QUEUE 4
#define RINGS 2 /* ring[s] carries side s's blocks to the other side */
#include "queue.h"

struct worker {
  _Alignas(BENCH_LINE) struct pair *pair;
  int side;
  uint64_t rng;
  uint64_t ops;
};

static struct queue_args args;
static struct pair *pairs_base;

/* PINGPONG_PIN (above): the calling thread, side `side` of pair `pair`. */
static void pin_placement(long pair, int side) {
  const char *how = getenv("PINGPONG_PIN");
  if (!how) return;
  int cpu;
  if (!strcmp(how, "pair"))
    cpu = (int)(pair % 2);
  else if (!strcmp(how, "split"))
    cpu = side;
  else
    cpu = -1;
  cpu_set_t set;
  CPU_ZERO(&set);
  if (cpu >= 0) CPU_SET(cpu, &set);
  if (cpu < 0 || pthread_setaffinity_np(pthread_self(), sizeof set, &set)) {
    fprintf(stderr, "pingpong: PINGPONG_PIN=%s: pair or split, on CPUs 0 and 1\n", how);
    _exit(64);
  }
}

static void *side_main(void *arg) {
  struct worker *w = arg;
  struct pair *q = w->pair;
  struct ring *out = &q->ring[w->side], *in = &q->ring[!w->side];
  struct item mine[MAX_BATCH], theirs[MAX_BATCH];
  uint64_t rng = w->rng, ops = 0;
  int have = 0;
  pin_placement(q - pairs_base, w->side);
  bench_go();
  while (!bench_stopped()) {
    if (!have) {
      batch_make(mine, args.batch, &rng, args.min, args.max);
      have = 1;
    }
    int got = 0;
    QUEUE_POLL_WHILE(QUEUE_PEEK(out->count) == QUEUE && QUEUE_PEEK(in->count) == 0 &&
                     !bench_stopped());
    pthread_mutex_lock(&q->lock);
    /* Both full-out and empty-in cannot hold for both sides at once. */
    while (out->count == QUEUE && in->count == 0 && !bench_stopped())
      pthread_cond_wait(&q->cond, &q->lock);
    if (in->count > 0) {
      ring_take(in, theirs, args.batch);
      got = 1;
    }
    if (out->count < QUEUE) {
      ring_put(out, mine, args.batch);
      have = 0;
    }
    pthread_cond_signal(&q->cond);
    pthread_mutex_unlock(&q->lock);
    if (got) {
      batch_free(theirs, args.batch);
      ops += args.batch;
    }
  }
  /* Wake the partner, which may be waiting for us, so it sees the stop. */
  pthread_mutex_lock(&q->lock);
  pthread_cond_signal(&q->cond);
  pthread_mutex_unlock(&q->lock);
  if (have) batch_free(mine, args.batch);
  w->ops = ops;
  return NULL;
}

int main(int argc, char **argv) {
  bench_name = "pingpong";
  bench_usage_text = "usage: pingpong [seconds [threads [min [max [batch]]]]]\n"
                     "  threads = thread pairs; defaults: 1.5 2 16 512 64\n";
  args = queue_args(argc, argv, 5, 16, 512);
  int pairs = args.pairs;

  struct pair *q = pairs_new((size_t)pairs);
  pairs_base = q;
  struct worker *w = bench_workers(2 * (size_t)pairs, sizeof *w);
  for (int i = 0; i < pairs; i++)
    for (int s = 0; s < 2; s++)
      w[2 * i + s] =
          (struct worker){.pair = &q[i], .side = s, .rng = rng_seed((uint64_t)(2 * i + s))};
  double el = bench_run(2 * (unsigned)pairs, args.seconds, side_main, w, sizeof *w, NULL);
  uint64_t ops = BENCH_OPS(w, 2 * pairs);
  /* Batches still queued at the stop: freed here, not counted. */
  for (int i = 0; i < pairs; i++)
    for (int s = 0; s < 2; s++) {
      struct ring *r = &q[i].ring[s];
      for (; r->count > 0; r->count--, r->head = (r->head + 1) % QUEUE)
        batch_free(r->slot[r->head], args.batch);
    }
  free(q);
  free(w);
  bench_result(ops, el, NULL);
  return 0;
}
