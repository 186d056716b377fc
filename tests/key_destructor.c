/* Threads whose pthread key destructor allocates and sets its key again, so
 * glibc calls it in each of its 4 destructor rounds, after hakmem's own key
 * destructor gave the thread's heap up in the first. A heap taken in a later
 * round must not be kept for good: one a destructor made in the last round
 * was never given back (a heap and its pages per exited thread; with the
 * default limit of heaps, every thread after the first few then shared).
 * Each round hands a block (small, mid-size or large, with a pattern) to
 * main, which checks and frees it; hakmem_thread_set_node, hakmem_thread_node
 * and hakmem_flush work there too. Over 400 threads, one at a time, the
 * heaps made and the memory committed after malloc_trim must stay where
 * they were after the first 40. Run with HAKMEM_MAX_HEAPS=0 (no limit) and
 * with the default limit. */
#define _GNU_SOURCE
#include <pthread.h>
#include "kmem_util.h"

#define THREADS 400
#define WARMUP 40
#define ROUNDS 4 /* glibc's PTHREAD_DESTRUCTOR_ITERATIONS */

static pthread_key_t key;
static const size_t sizes[ROUNDS] = {48, 20000, 3000, 200000};
static void *handed[ROUNDS];
static size_t handed_size[ROUNDS];
static int rounds_run;

static void destructor(void *value) {
  (void)value;
  int r = rounds_run++;
  CHECK(r < ROUNDS, "destructor called %d times", r + 1);
  /* the calls that need a heap of its own work without one */
  errno = 0;
  CHECK(hakmem_thread_set_node(0) == 0,
        "hakmem_thread_set_node(0) in destructor round %d: errno %d", r + 1, errno);
  CHECK(hakmem_thread_node() == 0, "hakmem_thread_node() in destructor round %d", r + 1);
  hakmem_flush();
  void *tmp = malloc(opaque_size(sizes[(r + 1) % ROUNDS]));
  CHECK(tmp, "malloc in destructor round %d failed", r + 1);
  fill_pattern(tmp, sizes[(r + 1) % ROUNDS]);
  free(tmp);
  handed[r] = malloc(opaque_size(sizes[r]));
  CHECK(handed[r], "malloc in destructor round %d failed", r + 1);
  handed_size[r] = sizes[r];
  fill_pattern(handed[r], sizes[r]);
  CHECK(pthread_setspecific(key, (void *)1) == 0, "pthread_setspecific");
}

/* Its own mallocs take a heap of its own: the only thread running (its
 * destructors, past its heap's, may share one). */
static void *thread_main(void *arg) {
  (void)arg;
  CHECK(pthread_setspecific(key, (void *)1) == 0, "pthread_setspecific");
  uint64_t before = stats_now().shared_heap_threads;
  void *p = malloc(opaque_size(1000));
  CHECK(p, "malloc failed");
  fill_pattern(p, 1000);
  free(p);
  CHECK(stats_now().shared_heap_threads == before,
        "a thread alone took a shared heap: heaps kept by exited threads");
  return NULL;
}

static void one_thread(void) {
  rounds_run = 0;
  pthread_t t;
  CHECK(pthread_create(&t, NULL, thread_main, NULL) == 0, "pthread_create");
  CHECK(pthread_join(t, NULL) == 0, "pthread_join");
  CHECK(rounds_run == ROUNDS, "destructor ran %d rounds, not %d", rounds_run, ROUNDS);
  for (int r = 0; r < ROUNDS; r++) {
    expect_pattern(handed[r], handed_size[r]);
    free(handed[r]);
  }
}

int main(void) {
  CHECK(pthread_key_create(&key, destructor) == 0, "pthread_key_create");
  for (int i = 0; i < WARMUP; i++)
    one_thread();
  hak_stats_t s0 = stats_trimmed();
  for (int i = WARMUP; i < THREADS; i++)
    one_thread();
  hak_stats_t s1 = stats_trimmed();
  unsigned long long heaps = s1.heaps_created - s0.heaps_created;
  long long grew = (long long)s1.committed_bytes - (long long)s0.committed_bytes;
  printf("%d threads: %llu heaps made after the first %d (%llu in all), committed %+lld KiB, "
         "%llu threads on shared heaps\n",
         THREADS, heaps, WARMUP, (unsigned long long)s1.heaps_created, grew / 1024,
         (unsigned long long)s1.shared_heap_threads);
  CHECK(heaps <= 1, "%llu more heaps made by %d threads that ran one at a time", heaps,
        THREADS - WARMUP);
  CHECK(grew <= 512 << 10, "committed bytes grew by %lld KiB over %d threads", grew / 1024,
        THREADS - WARMUP);
  return 0;
}
