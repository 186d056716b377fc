/* crossnode: producer-consumer pairs whose two threads sit on different
 * NUMA nodes, so every free is a cross-node free.
 *
 * usage: crossnode [seconds [pairs [min [max]]]]
 *   seconds  run time (default 1.5)
 *   pairs    producer/consumer pairs, so 2 x pairs threads (default 2)
 *   min,max  block size range in bytes (default 16 1024)
 *
 * Pair i's producer is on node i mod N and its consumer on node (i+1) mod N
 * (N nodes as the allocator counts them; with hakmem run it with
 * HAKMEM_NODES=2 on a one-node machine). The producer allocates batches of
 * 64 random-size blocks, writes a pattern into them and hands each batch to
 * its consumer through a queue of 8 batches (mutex + condvar); the consumer
 * checks and frees every block. One op = one block produced and freed.
 *
 * Threads are placed with hakmem_thread_set_node, looked up with
 * dlsym(RTLD_DEFAULT) so the program links no allocator and runs under the
 * peers too (they see plain producer-consumer pairs there). Prints
 * "crossnode: N ops/s nodes=N", plus hakmem's cross_node_frees, batches and
 * blocks_drained when hak_stats_json is there. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include "bench.h"

#define QUEUE 8
#define BATCH 64

struct item {
  void *p;
  size_t n;
};

struct pair {
  _Alignas(BENCH_LINE) pthread_mutex_t lock;
  pthread_cond_t cond; /* one waiter at most: producer on full or consumer on empty */
  int head, count, done;
  struct item slot[QUEUE][BATCH];
};

struct worker {
  _Alignas(BENCH_LINE) struct pair *pair;
  int producer, node;
  uint64_t rng;
  uint64_t ops;
};

static size_t min_size, max_size;
static int (*set_node)(int);

static void produce(struct worker *w) {
  struct pair *q = w->pair;
  struct item local[BATCH];
  uint64_t rng = w->rng;
  while (!bench_stopped()) {
    for (size_t i = 0; i < BATCH; i++) {
      local[i].n = rng_range(&rng, min_size, max_size);
      local[i].p = bench_alloc(local[i].n);
      bench_fill(local[i].p, local[i].n);
    }
    pthread_mutex_lock(&q->lock);
    while (q->count == QUEUE) /* the consumer always drains, so this ends */
      pthread_cond_wait(&q->cond, &q->lock);
    memcpy(q->slot[(q->head + q->count) % QUEUE], local, sizeof local);
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
  struct item local[BATCH];
  uint64_t ops = 0;
  for (;;) {
    pthread_mutex_lock(&q->lock);
    while (q->count == 0 && !q->done)
      pthread_cond_wait(&q->cond, &q->lock);
    if (q->count == 0) {
      pthread_mutex_unlock(&q->lock);
      break;
    }
    memcpy(local, q->slot[q->head], sizeof local);
    q->head = (q->head + 1) % QUEUE;
    q->count--;
    pthread_cond_signal(&q->cond);
    pthread_mutex_unlock(&q->lock);
    for (size_t i = 0; i < BATCH; i++)
      bench_check_free(local[i].p, local[i].n);
    ops += BATCH;
  }
  w->ops = ops;
}

static void *worker_main(void *arg) {
  struct worker *w = arg;
  /* before this thread's first malloc: its heap starts on that node */
  if (set_node && set_node(w->node) != 0) bench_fail(64, "hakmem_thread_set_node failed", NULL, 0);
  bench_go();
  if (w->producer)
    produce(w);
  else
    consume(w);
  return NULL;
}

/* The value of "key": in hakmem's JSON statistics, or -1. */
static long long json_field(const char *json, const char *key) {
  char pat[64];
  snprintf(pat, sizeof pat, "\"%s\":", key);
  const char *p = strstr(json, pat);
  return p ? strtoll(p + strlen(pat), NULL, 10) : -1;
}

int main(int argc, char **argv) {
  bench_name = "crossnode";
  bench_usage_text =
      "usage: crossnode [seconds [pairs [min [max]]]]\n"
      "  pairs = producer/consumer pairs on different nodes; defaults: 1.5 2 16 1024\n";
  bench_args(argc, argv, 4);
  double seconds = bench_arg(argc, argv, 1, 1.5, 0.01, 1e6);
  int pairs = (int)bench_arg(argc, argv, 2, 2, 1, 512);
  min_size = (size_t)bench_arg(argc, argv, 3, 16, 1, 1 << 30);
  max_size = (size_t)bench_arg(argc, argv, 4, 1024, (double)min_size, 1 << 30);

  set_node = (int (*)(int))dlsym(RTLD_DEFAULT, "hakmem_thread_set_node");
  int (*node_count)(void) = (int (*)(void))dlsym(RTLD_DEFAULT, "hak_node_count");
  size_t (*stats_json)(char *, size_t) =
      (size_t(*)(char *, size_t))dlsym(RTLD_DEFAULT, "hak_stats_json");
  int nodes = set_node && node_count ? node_count() : 1;

  struct pair *q = aligned_alloc(BENCH_LINE, sizeof *q * (size_t)pairs);
  struct worker *w = aligned_alloc(BENCH_LINE, sizeof *w * 2 * (size_t)pairs);
  if (!q || !w) bench_fail(3, "out of memory", NULL, sizeof *q * (size_t)pairs);
  for (int i = 0; i < pairs; i++) {
    memset(&q[i], 0, sizeof q[i]);
    pthread_mutex_init(&q[i].lock, NULL);
    pthread_cond_init(&q[i].cond, NULL);
    w[2 * i] = (struct worker){
        .pair = &q[i], .producer = 1, .node = i % nodes, .rng = rng_seed((uint64_t)i)};
    w[2 * i + 1] = (struct worker){.pair = &q[i], .node = (i + 1) % nodes};
  }
  double el = bench_run(2 * (unsigned)pairs, seconds, worker_main, w, sizeof *w, NULL);
  uint64_t ops = 0;
  for (int i = 0; i < 2 * pairs; i++)
    ops += w[i].ops;
  free(q);
  free(w);

  char extra[256];
  int len = snprintf(extra, sizeof extra, "nodes=%d", nodes);
  static char json[1 << 16];
  if (stats_json && stats_json(json, sizeof json) < sizeof json)
    snprintf(extra + len, sizeof extra - (size_t)len,
             " cross_node_frees=%lld batches=%lld blocks_drained=%lld",
             json_field(json, "remote_frees_cross_node"), json_field(json, "batches_sent"),
             json_field(json, "blocks_drained"));
  bench_result(ops, el, extra);
  return 0;
}
