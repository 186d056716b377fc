/* fragment: waves of mixed sizes with long-lived survivors; watches RSS.
 *
 * usage: fragment [seconds [threads [wave [survivors [maxbig]]]]]
 *   seconds    run time (default 1.5)
 *   threads    worker threads (default 2)
 *   wave       blocks allocated per wave (default 2000)
 *   survivors  long-lived blocks kept per thread (default 2000)
 *   maxbig     largest "big" block in bytes (default 1048576)
 *
 * Each thread allocates a wave of blocks: 99% log-uniform between 16 B and
 * 64 KiB, 1% uniform between 64 KiB and maxbig. It frees a random 90% of the
 * wave and keeps the rest as survivors; once its survivor set is full, each
 * new survivor evicts (frees) a random old one. Live memory stays bounded
 * while the holes left behind are of every size, so RSS above the live bytes
 * is the allocator's fragmentation and retention.
 *
 * Every 100 ms "fragment: t=<s> rss_kb=<kB>" goes to stderr (RSS over time).
 * Result line, one op = one malloc + one free:
 *   fragment: N ops/s final_rss_kb=R live_kb=L freed_rss_kb=F
 * R is the RSS at the end with the survivors still live, L their bytes, and
 * F the RSS after freeing them all (what the allocator keeps when idle). */
#include "bench.h"

struct worker {
  _Alignas(BENCH_LINE) uint64_t rng;
  uint64_t ops;
  void **surv;
  size_t *size;
  size_t nsurv;
};

static size_t wave, survivors, max_big;

static size_t pick_size(uint64_t *rng) {
  if (rng_next(rng) % 100 == 0) return rng_range(rng, 65536, max_big);
  size_t base = (size_t)16 << (rng_next(rng) % 12); /* 16 B .. 32 KiB */
  return base + (size_t)(rng_next(rng) % base);
}

static void *worker_main(void *arg) {
  struct worker *w = arg;
  uint64_t rng = w->rng, ops = 0;
  void **blk = bench_alloc(wave * sizeof *blk);
  size_t *size = bench_alloc(wave * sizeof *size);
  bench_go();
  while (!bench_stopped()) {
    for (size_t i = 0; i < wave; i++) {
      size[i] = pick_size(&rng);
      blk[i] = bench_alloc(size[i]);
      bench_fill(blk[i], size[i]);
    }
    for (size_t i = 0; i < wave; i++) {
      if (rng_next(&rng) % 10) {
        bench_check_free(blk[i], size[i]);
        continue;
      }
      size_t s;
      if (w->nsurv < survivors) {
        s = w->nsurv++;
      } else { /* full: the new survivor evicts a random old one */
        s = (size_t)(rng_next(&rng) % survivors);
        bench_check_free(w->surv[s], w->size[s]);
      }
      w->surv[s] = blk[i];
      w->size[s] = size[i];
    }
    ops += wave;
  }
  free(blk);
  free(size);
  w->ops = ops;
  return NULL;
}

static void report_rss(double t) {
  static double next = 0.1;
  if (t >= next) {
    fprintf(stderr, "fragment: t=%.1f rss_kb=%ld\n", t, bench_rss_kb());
    next += 0.1;
  }
}

int main(int argc, char **argv) {
  bench_name = "fragment";
  bench_usage_text = "usage: fragment [seconds [threads [wave [survivors [maxbig]]]]]\n"
                     "  defaults: 1.5 2 2000 2000 1048576\n";
  bench_args(argc, argv, 5);
  double seconds = bench_arg(argc, argv, 1, 1.5, 0.01, 1e6);
  int threads = (int)bench_arg(argc, argv, 2, 2, 1, 1024);
  wave = (size_t)bench_arg(argc, argv, 3, 2000, 1, 1 << 24);
  survivors = (size_t)bench_arg(argc, argv, 4, 2000, 1, 1 << 24);
  max_big = (size_t)bench_arg(argc, argv, 5, 1 << 20, 65536, 1 << 30);

  struct worker *w = bench_workers((size_t)threads, sizeof *w);
  for (int t = 0; t < threads; t++) {
    w[t] = (struct worker){.rng = rng_seed((uint64_t)t)};
    w[t].surv = bench_alloc(survivors * sizeof *w[t].surv);
    w[t].size = bench_alloc(survivors * sizeof *w[t].size);
  }
  double el = bench_run((unsigned)threads, seconds, worker_main, w, sizeof *w, report_rss);

  long final_rss = bench_rss_kb();
  uint64_t ops = 0, live = 0;
  for (int t = 0; t < threads; t++) {
    ops += w[t].ops;
    for (size_t s = 0; s < w[t].nsurv; s++)
      live += w[t].size[s];
  }
  for (int t = 0; t < threads; t++) {
    for (size_t s = 0; s < w[t].nsurv; s++)
      bench_check_free(w[t].surv[s], w[t].size[s]);
    free(w[t].surv);
    free(w[t].size);
  }
  free(w);
  char extra[128];
  snprintf(extra, sizeof extra, "final_rss_kb=%ld live_kb=%llu freed_rss_kb=%ld", final_rss,
           (unsigned long long)(live / 1024), bench_rss_kb());
  bench_result(ops, el, extra);
  return 0;
}
