/* manythreads: many more threads than CPUs handing blocks to each other.
 *
 * usage: manythreads [seconds [threads [min_size [max_size [inbox]]]]]
 *   seconds   run time (default 1)
 *   threads   threads (default 256)
 *   min_size  smallest block in bytes (default 16)
 *   max_size  largest block in bytes (default 65536)
 *   inbox     blocks a thread's inbox holds (default 64)
 *
 * Each thread loops: it frees what others put in its inbox (checking each
 * block), then allocates up to 16 blocks of random size, fills them and puts
 * each in the inbox of a random other thread (freeing it itself when that
 * inbox is full). So nearly every free is remote, each thread's heap is
 * touched by all the others, and on a 2-CPU machine the threads are mostly
 * preempted: an allocator that keeps memory per thread (caches, heaps,
 * huge pages) multiplies it by 256 here.
 *
 * Result line, one op = one malloc + one free:
 *   manythreads: N ops/s threads=T end_rss_kb=R
 * R is the RSS after all blocks are freed and the threads joined. */
#include "bench.h"

struct inbox {
  _Alignas(BENCH_LINE) pthread_mutex_t lock;
  unsigned n;
  void **blk;
  size_t *size;
};

struct worker {
  _Alignas(BENCH_LINE) uint64_t rng;
  uint64_t ops;
  unsigned id;
};

static struct inbox *box;
static unsigned nthreads, cap;
static size_t min_sz, max_sz;

static void drain(struct inbox *b, struct worker *w) {
  void *blk[64];
  size_t size[64];
  for (;;) {
    unsigned k = 0;
    pthread_mutex_lock(&b->lock);
    while (b->n && k < 64) {
      b->n--;
      blk[k] = b->blk[b->n];
      size[k++] = b->size[b->n];
    }
    pthread_mutex_unlock(&b->lock);
    if (!k) return;
    for (unsigned i = 0; i < k; i++)
      bench_check_free(blk[i], size[i]);
    w->ops += k;
  }
}

static void *worker_main(void *arg) {
  struct worker *w = arg;
  bench_go();
  while (!bench_stopped()) {
    drain(&box[w->id], w);
    for (int k = 0; k < 16; k++) {
      size_t n = rng_range(&w->rng, min_sz, max_sz);
      void *p = bench_alloc(n);
      bench_fill(p, n);
      unsigned to = (unsigned)rng_range(&w->rng, 0, nthreads - 2);
      if (to >= w->id) to++;
      struct inbox *b = &box[to];
      pthread_mutex_lock(&b->lock);
      int put = b->n < cap;
      if (put) {
        b->blk[b->n] = p;
        b->size[b->n++] = n;
      }
      pthread_mutex_unlock(&b->lock);
      if (!put) {
        bench_check_free(p, n);
        w->ops++;
      }
    }
  }
  return NULL;
}

int main(int argc, char **argv) {
  bench_name = "manythreads";
  bench_usage_text = "usage: manythreads [seconds [threads [min_size [max_size [inbox]]]]]\n"
                     "  defaults: 1 256 16 65536 64\n";
  bench_args(argc, argv, 5);
  double secs = bench_arg(argc, argv, 1, 1, 0.01, 3600);
  nthreads = (unsigned)bench_arg(argc, argv, 2, 256, 2, 4096);
  min_sz = (size_t)bench_arg(argc, argv, 3, 16, 1, 1 << 30);
  max_sz = (size_t)bench_arg(argc, argv, 4, 65536, 1, 1 << 30);
  cap = (unsigned)bench_arg(argc, argv, 5, 64, 1, 1 << 20);
  if (max_sz < min_sz) {
    fprintf(stderr, "manythreads: max_size below min_size\n");
    bench_usage(64);
  }
  box = bench_workers(nthreads, sizeof *box);
  for (unsigned i = 0; i < nthreads; i++) {
    pthread_mutex_init(&box[i].lock, NULL);
    box[i].blk = bench_alloc(cap * sizeof *box[i].blk);
    box[i].size = bench_alloc(cap * sizeof *box[i].size);
  }
  struct worker *w = bench_workers(nthreads, sizeof *w);
  for (unsigned i = 0; i < nthreads; i++)
    w[i] = (struct worker){.rng = rng_seed(i), .id = i};
  double el = bench_run(nthreads, secs, worker_main, w, sizeof *w, NULL);
  uint64_t ops = BENCH_OPS(w, nthreads);
  /* what is still in the inboxes: freed by the main thread, not counted */
  for (unsigned i = 0; i < nthreads; i++) {
    for (unsigned k = 0; k < box[i].n; k++)
      bench_check_free(box[i].blk[k], box[i].size[k]);
    free(box[i].blk);
    free(box[i].size);
  }
  free(box);
  free(w);
  char extra[96];
  snprintf(extra, sizeof extra, "threads=%u end_rss_kb=%ld", nthreads, bench_rss_kb());
  /* a block allocated and freed is one op; each counted once, at its free */
  bench_result(ops, el, extra);
  return 0;
}
