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
 * its consumer through a queue of 8 batches (queue.h); the consumer
 * checks and frees every block. One op = one block produced and freed.
 *
 * Threads are placed with hakmem_thread_set_node, looked up with
 * dlsym(RTLD_DEFAULT) so the program links no allocator and runs under the
 * peers too (they see plain producer-consumer pairs there). Prints
 * "crossnode: N ops/s nodes=N", plus hakmem's cross_node_frees, batches,
 * drains and blocks_drained when hak_stats_json is there. */
#define _GNU_SOURCE
#include <dlfcn.h>
#define MAX_BATCH 64 /* every batch is full; 8 per ring */
#include "queue.h"

struct worker {
  _Alignas(BENCH_LINE) struct pair *pair;
  int producer, node;
  uint64_t rng;
  uint64_t ops;
};

static struct queue_args args;
static int (*set_node)(int);

static void *worker_main(void *arg) {
  struct worker *w = arg;
  /* before this thread's first malloc: its heap starts on that node */
  if (set_node && set_node(w->node) != 0) bench_fail(64, "hakmem_thread_set_node failed", NULL, 0);
  w->ops = queue_side(w->pair, w->producer, w->rng, &args);
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
  args = queue_args(argc, argv, 4, 16, 1024);
  int pairs = args.pairs;

  set_node = (int (*)(int))dlsym(RTLD_DEFAULT, "hakmem_thread_set_node");
  int (*node_count)(void) = (int (*)(void))dlsym(RTLD_DEFAULT, "hak_node_count");
  size_t (*stats_json)(char *, size_t) =
      (size_t(*)(char *, size_t))dlsym(RTLD_DEFAULT, "hak_stats_json");
  int nodes = set_node && node_count ? node_count() : 1;

  struct pair *q = pairs_new((size_t)pairs);
  struct worker *w = bench_workers(2 * (size_t)pairs, sizeof *w);
  for (int i = 0; i < pairs; i++) {
    w[2 * i] = (struct worker){
        .pair = &q[i], .producer = 1, .node = i % nodes, .rng = rng_seed((uint64_t)i)};
    w[2 * i + 1] = (struct worker){.pair = &q[i], .node = (i + 1) % nodes};
  }
  double el = bench_run(2 * (unsigned)pairs, args.seconds, worker_main, w, sizeof *w, NULL);
  uint64_t ops = BENCH_OPS(w, 2 * pairs);
  free(q);
  free(w);

  char extra[256];
  int len = snprintf(extra, sizeof extra, "nodes=%d", nodes);
  static char json[1 << 16];
  if (stats_json && stats_json(json, sizeof json) < sizeof json)
    snprintf(extra + len, sizeof extra - (size_t)len,
             " cross_node_frees=%lld batches=%lld drains=%lld blocks_drained=%lld",
             json_field(json, "remote_frees_cross_node"), json_field(json, "batches_sent"),
             json_field(json, "mailbox_drains"), json_field(json, "blocks_drained"));
  bench_result(ops, el, extra);
  return 0;
}
