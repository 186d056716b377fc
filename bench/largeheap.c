/* largeheap: a large heap of 16-64 KiB blocks allocated, touched, freed and
 * allocated again; what it costs in time, page faults, CPU (the program's
 * threads vs the allocator's helper threads) and memory, during and after.
 *
 * usage: largeheap [heap_mib [threads [rounds [min_kb [max_kb]]]]]
 *   heap_mib  heap size in MiB, split evenly between the threads (default 1024)
 *   threads   worker threads (default 1)
 *   rounds    times each worker builds its share of the heap (default 4)
 *   min_kb    smallest block in KiB (default 16)
 *   max_kb    largest block in KiB (default 64)
 *
 * Round 1 allocates blocks of random size until the worker's share is
 * reached and writes one byte in every 4 KiB of each (fresh memory: faults);
 * every later round first frees the previous round's blocks (checking them),
 * then builds the share again (memory the allocator kept, or gave back and
 * must fault in again). After the last round the whole heap is live: the
 * program samples RSS and transparent huge pages there, untimed, then the
 * workers free everything. Last, the process stays idle for twice
 * HAKMEM_PURGE_DELAY_MS (default 100) and reads its RSS again: what the
 * allocator returns to the kernel when the program stops allocating.
 *
 * Result line, one op = one malloc + one free:
 *   largeheap: N ops/s s_per_round=S minflt=F app_cpu_s=A helper_cpu_s=H
 *              peak_rss_kb=P live_rss_kb=L thp_kb=T freed_rss_kb=R heap_kb=B
 *              [hugetlb_kb=G purges=N uffd_faults=N]
 * S is the timed seconds over the rounds; F the minor faults (getrusage) of
 * the timed part; A the CPU time of the workers and the main thread
 * (CLOCK_THREAD_CPUTIME_ID), H the process's CPU time (RUSAGE_SELF, counted
 * after the idle wait) minus A: threads the allocator runs by itself, such as
 * a background purger or a userfaultfd handler; P the peak RSS (ru_maxrss);
 * L and T the RSS and AnonHugePages with the heap live; R the RSS after the
 * idle wait; B the bytes requested. The last three appear under hakmem only
 * (its hak_stats_json, looked up at run time): G its hugetlbfs memory with
 * the heap live, then its purges and userfaultfd faults over the run. */
#define _GNU_SOURCE /* RTLD_DEFAULT */
#include "bench.h"

#include <dlfcn.h>
#include <sys/resource.h>

struct worker {
  _Alignas(BENCH_LINE) uint64_t rng;
  size_t share; /* bytes this worker allocates per round */
  void **blk;   /* this round's blocks */
  size_t *size;
  size_t nblk, cap;
  uint64_t ops;
  double cpu_s; /* the thread's own CPU time, read as it ends */
};

static size_t min_blk, max_blk;
static unsigned rounds;
/* all workers hold their whole share (the main thread samples), then free */
static pthread_barrier_t live_barrier, free_barrier;

static double thread_cpu_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static double tv_s(struct timeval tv) {
  return (double)tv.tv_sec + (double)tv.tv_usec * 1e-6;
}

/* AnonHugePages of the whole process: transparent huge pages under any
 * allocator. -1 where smaps_rollup does not exist. */
static long thp_kb(void) {
  FILE *f = fopen("/proc/self/smaps_rollup", "r");
  if (!f) return -1;
  char line[256];
  long kb = -1;
  while (fgets(line, sizeof line, f))
    if (sscanf(line, "AnonHugePages: %ld kB", &kb) == 1) break;
  fclose(f);
  return kb;
}

static void free_all(struct worker *w) {
  for (size_t i = 0; i < w->nblk; i++)
    bench_check_free(w->blk[i], w->size[i]);
  w->ops += w->nblk;
  w->nblk = 0;
}

static void *worker_main(void *arg) {
  struct worker *w = arg;
  bench_go();
  for (unsigned r = 0; r < rounds; r++) {
    free_all(w);
    for (size_t got = 0; got < w->share && w->nblk < w->cap; w->nblk++) {
      size_t n = rng_range(&w->rng, min_blk, max_blk);
      void *p = bench_alloc(n);
      bench_fill(p, n);
      w->blk[w->nblk] = p;
      w->size[w->nblk] = n;
      got += n;
    }
  }
  pthread_barrier_wait(&live_barrier);
  pthread_barrier_wait(&free_barrier);
  free_all(w);
  w->cpu_s = thread_cpu_s();
  return NULL;
}

/* hakmem's counter `key` from its JSON, or -1 (another allocator). */
static long long hak_counter(const char *json, const char *key) {
  char pat[64];
  snprintf(pat, sizeof pat, "\"%s\":", key);
  const char *s = json ? strstr(json, pat) : NULL;
  return s ? strtoll(s + strlen(pat), NULL, 10) : -1;
}

static void sleep_ms(long ms) {
  struct timespec ts = {ms / 1000, (ms % 1000) * 1000000};
  while (nanosleep(&ts, &ts) && errno == EINTR) {
  }
}

int main(int argc, char **argv) {
  bench_name = "largeheap";
  bench_usage_text = "usage: largeheap [heap_mib [threads [rounds [min_kb [max_kb]]]]]\n"
                     "  defaults: 1024 1 4 16 64\n";
  bench_args(argc, argv, 5);
  size_t heap = (size_t)bench_arg(argc, argv, 1, 1024, 1, 1 << 20) << 20;
  unsigned threads = (unsigned)bench_arg(argc, argv, 2, 1, 1, 1024);
  rounds = (unsigned)bench_arg(argc, argv, 3, 4, 1, 1000);
  min_blk = (size_t)bench_arg(argc, argv, 4, 16, 1, 1 << 20) << 10;
  max_blk = (size_t)bench_arg(argc, argv, 5, 64, 1, 1 << 20) << 10;
  if (max_blk < min_blk) {
    fprintf(stderr, "largeheap: max_kb below min_kb\n");
    bench_usage(64);
  }
  /* The idle wait lets an allocator that purges after HAKMEM_PURGE_DELAY_MS
   * do so; a bad value gets the allocator's default here too. */
  long delay_ms = 100;
  const char *d = getenv("HAKMEM_PURGE_DELAY_MS");
  if (d && *d) {
    char *end;
    long v = strtol(d, &end, 10);
    if (!*end && v >= 0 && v <= 100000) delay_ms = v;
  }

  struct worker *w = bench_workers(threads, sizeof *w);
  for (unsigned t = 0; t < threads; t++) {
    w[t] = (struct worker){.rng = rng_seed(t), .share = heap / threads};
    w[t].cap = w[t].share / min_blk + 1;
    w[t].blk = bench_alloc(w[t].cap * sizeof *w[t].blk);
    w[t].size = bench_alloc(w[t].cap * sizeof *w[t].size);
  }
  pthread_t *tid = bench_alloc(threads * sizeof *tid);
  pthread_barrier_init(&bench_barrier, NULL, threads + 1);
  pthread_barrier_init(&live_barrier, NULL, threads + 1);
  pthread_barrier_init(&free_barrier, NULL, threads + 1);
  for (unsigned t = 0; t < threads; t++)
    bench_start(&tid[t], worker_main, &w[t]);

  /* hakmem's counters, when hakmem is the allocator */
  size_t (*stats_json)(char *, size_t) =
      (size_t(*)(char *, size_t))dlsym(RTLD_DEFAULT, "hak_stats_json");
  struct rusage ru0, ru1, ru1b, ru2;
  bench_go();
  getrusage(RUSAGE_SELF, &ru0);
  double t0 = bench_now();
  pthread_barrier_wait(&live_barrier);
  double t1 = bench_now();
  getrusage(RUSAGE_SELF, &ru1);
  long live_rss = bench_rss_kb(), live_thp = thp_kb();
  char json[4096];
  long long hugetlb = -1;
  if (stats_json) {
    stats_json(json, sizeof json);
    hugetlb = hak_counter(json, "hugetlb_bytes");
  }
  getrusage(RUSAGE_SELF, &ru1b);
  double t2 = bench_now();
  pthread_barrier_wait(&free_barrier);
  for (unsigned t = 0; t < threads; t++)
    pthread_join(tid[t], NULL);
  double t3 = bench_now();
  getrusage(RUSAGE_SELF, &ru2);
  /* the sampling pause is neither timed nor counted */
  double secs = (t1 - t0) + (t3 - t2);
  long minflt = (ru1.ru_minflt - ru0.ru_minflt) + (ru2.ru_minflt - ru1b.ru_minflt);

  uint64_t ops = 0;
  double app_cpu = 0;
  for (unsigned t = 0; t < threads; t++) {
    ops += w[t].ops;
    app_cpu += w[t].cpu_s;
    free(w[t].blk);
    free(w[t].size);
  }
  free(w);
  free(tid);

  sleep_ms(2 * delay_ms);
  long freed_rss = bench_rss_kb();
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  app_cpu += thread_cpu_s(); /* the main thread's own (sampling, joins) */
  double helper_cpu = tv_s(ru.ru_utime) + tv_s(ru.ru_stime) - app_cpu;
  if (helper_cpu < 0) helper_cpu = 0; /* rounding between the two clocks */

  char extra[512];
  int n = snprintf(extra, sizeof extra,
                   "s_per_round=%.4f minflt=%ld app_cpu_s=%.3f helper_cpu_s=%.3f peak_rss_kb=%ld "
                   "live_rss_kb=%ld thp_kb=%ld freed_rss_kb=%ld heap_kb=%zu",
                   secs / rounds, minflt, app_cpu, helper_cpu, ru.ru_maxrss, live_rss, live_thp,
                   freed_rss, heap >> 10);
  if (stats_json) {
    stats_json(json, sizeof json);
    snprintf(extra + n, sizeof extra - (size_t)n, " hugetlb_kb=%lld purges=%lld uffd_faults=%lld",
             hugetlb >> 10, hak_counter(json, "purges"), hak_counter(json, "uffd_faults"));
  }
  bench_result(ops, secs, extra);
  return 0;
}
