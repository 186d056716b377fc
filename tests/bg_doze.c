/* Work made while the background thread dozes (sleeps past its period,
 * after passes that found nothing to do) must wake it: what an idle
 * process leaves then is done within its period, not a second later.
 *
 * A thread frees one block of the main thread's page (its stash
 * entry for the page's class starts: the background thread is wanted)
 * and sleeps; the background thread hands the block over, finds nothing
 * more and backs off to its longest sleep. Right after one of its passes
 * the sleeping thread wakes, frees a second block of the same page (a
 * push onto the entry it still has) and sleeps again: that block must be
 * handed over within a few periods (remote_handoffs), as the first was.
 * shared (HAKMEM_MAX_HEAPS=1 HAKMEM_PURGE=page): once it dozes, a thread
 * past the limit of heaps allocates and frees a page's worth of small
 * blocks in a shared heap and exits. The heap keeps the page (a class's
 * only page stays): no span is freed, nothing wants the thread. The page
 * must still go back within a few periods and the purge delay (the
 * background thread trims a shared heap no malloc entered since its
 * previous pass). Once it dozes again, such a thread's blocks, freed by
 * another sharing thread (into the shared heap, which it does not enter),
 * empty that page: it must go back as fast. Then, with nothing left in
 * sight, the thread must back off again (at most SHARED_PASSES passes in
 * a second): a shared heap once used is no work for good.
 * Usage: bg_doze [shared] (HAKMEM_PURGE_DELAY_MS=100, the default: a 50 ms
 * period) */
#define _GNU_SOURCE
#include <pthread.h>
#include "kmem_util.h"

#define PERIOD_MS 50 /* HAKMEM_PURGE_DELAY_MS=100 */
#define DOZE_MS 900  /* a sleep this long between passes: backed off */
#define TAKE_MS (4 * PERIOD_MS + 100)
#define RETURN_MS 600 /* a few periods and twice the purge delay */
#define SHARED_PASSES 5

static int node0;
static void *page_blocks[64];
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cond = PTHREAD_COND_INITIALIZER;
static int to_free, freed; /* blocks the freer is told to free, and did */

static void *freer(void *arg) {
  (void)arg;
  CHECK(hakmem_thread_set_node(node0) == 0, "hakmem_thread_set_node");
  void *volatile own = malloc(256); /* a heap of its own: its remote frees are stashed */
  free(own);
  pthread_mutex_lock(&lock);
  for (;;) {
    while (freed == to_free)
      pthread_cond_wait(&cond, &lock);
    if (to_free < 0) break;
    free(page_blocks[freed++]);
    pthread_cond_broadcast(&cond);
  }
  pthread_mutex_unlock(&lock);
  return NULL;
}

/* Tells the freer to free the next block and waits until it did. */
static void free_next(void) {
  pthread_mutex_lock(&lock);
  to_free++;
  pthread_cond_broadcast(&cond);
  while (freed != to_free)
    pthread_cond_wait(&cond, &lock);
  pthread_mutex_unlock(&lock);
}

/* Waits until remote_handoffs passes `before`; the milliseconds it took. */
static long handed_over(uint64_t before, long limit) {
  long t0 = now_ms();
  while (stats_now().remote_handoffs == before && now_ms() - t0 < limit)
    sleep_ms(1);
  return now_ms() - t0;
}

/* Returns right after a background pass that followed a sleep of at least
 * DOZE_MS: from then on it sleeps long, unless woken. */
static void after_doze(void) {
  uint64_t passes = stats_now().background_passes;
  long last = now_ms(), until = last + 6000;
  for (;;) {
    CHECK(now_ms() < until, "the background thread never slept %d ms between passes in 6 s",
          DOZE_MS);
    sleep_ms(1);
    uint64_t p = stats_now().background_passes;
    if (p == passes) continue;
    long now = now_ms();
    bool dozed = now - last >= DOZE_MS;
    passes = p;
    last = now;
    if (dozed) break;
  }
  sleep_ms(10); /* the pass is over */
}

static int stash(void) {
  for (int i = 0; i < 64; i++)
    page_blocks[i] = malloc(256);
  pthread_t t;
  CHECK(pthread_create(&t, NULL, freer, NULL) == 0, "pthread_create");
  uint64_t before = stats_now().remote_handoffs;
  free_next();
  void *volatile big = malloc(4 << 20); /* a slow path: the background thread starts */
  free(big);
  long took = handed_over(before, 3000);
  CHECK(stats_now().remote_handoffs > before, "the first stashed block was not handed over in 3 s");
  fprintf(stderr, "stash: the first block was handed over after %ld ms\n", took);

  after_doze();
  before = stats_now().remote_handoffs;
  free_next();
  took = handed_over(before, 3000);
  fprintf(stderr, "stash: the second block, freed while it dozed, after %ld ms\n", took);
  CHECK(took <= TAKE_MS,
        "a block stashed onto the same entry while the background thread dozed was handed over "
        "after %ld ms, expected within %d ms",
        took, TAKE_MS);

  pthread_mutex_lock(&lock);
  to_free = -1;
  pthread_cond_broadcast(&cond);
  pthread_mutex_unlock(&lock);
  pthread_join(t, NULL);
  for (int i = 2; i < 64; i++)
    free(page_blocks[i]);
  return 0;
}

static void *shared_blocks[100];

static void *sharer_malloc(void *arg) {
  (void)arg;
  for (int i = 0; i < 100; i++) {
    shared_blocks[i] = malloc(200);
    CHECK(shared_blocks[i], "malloc failed");
    touch(shared_blocks[i], 200);
  }
  return NULL;
}

static void *sharer_free(void *arg) {
  (void)arg;
  for (int i = 0; i < 100; i++)
    free(shared_blocks[i]);
  return NULL;
}

/* Runs fn on a thread of its own, then waits until committed_bytes drops by
 * a 64 KiB page (its page back): fails past RETURN_MS. */
static void page_back(void *(*fn)(void *), const char *what) {
  pthread_t t;
  CHECK(pthread_create(&t, NULL, fn, NULL) == 0, "pthread_create");
  pthread_join(t, NULL);
  uint64_t before = stats_now().committed_bytes, now = before;
  long t0 = now_ms();
  while (before - now < 64 * KIB && now_ms() - t0 < 3000) {
    sleep_ms(2);
    now = stats_now().committed_bytes;
  }
  long took = now_ms() - t0;
  fprintf(stderr, "shared: %s: committed %llu -> %llu KiB after %ld ms\n", what,
          (unsigned long long)(before / KIB), (unsigned long long)(now / KIB), took);
  CHECK(before - now >= 64 * KIB && took <= RETURN_MS,
        "%s while the background thread dozed: committed %llu -> %llu KiB after %ld ms, "
        "expected its page back within %d ms",
        what, (unsigned long long)(before / KIB), (unsigned long long)(now / KIB), took, RETURN_MS);
}

static void *sharer(void *arg) {
  sharer_malloc(arg);
  return sharer_free(arg);
}

static int shared(void) {
  void *volatile big = malloc(4 << 20); /* wants the background thread */
  free(big);
  void *volatile first = malloc(100); /* a slow path: it starts */
  free(first);
  after_doze();
  page_back(sharer, "a thread used a shared heap");
  CHECK(stats_now().shared_heap_threads >= 1, "HAKMEM_MAX_HEAPS=1: no thread shared a heap");
  pthread_t t;
  CHECK(pthread_create(&t, NULL, sharer_malloc, NULL) == 0, "pthread_create");
  pthread_join(t, NULL);
  after_doze();
  page_back(sharer_free, "another thread freed a shared heap's blocks");
  sleep_ms(2000);
  uint64_t p0 = stats_now().background_passes;
  sleep_ms(1000);
  uint64_t passes = stats_now().background_passes - p0;
  fprintf(stderr, "shared: %llu background passes in a second, idle\n", (unsigned long long)passes);
  CHECK(passes <= SHARED_PASSES,
        "idle after a shared heap was used: %llu background passes in a second, expected at "
        "most %d",
        (unsigned long long)passes, SHARED_PASSES);
  return 0;
}

int main(int argc, char **argv) {
  node0 = hakmem_thread_node();
  if (argc > 1 && strcmp(argv[1], "shared") == 0) return shared();
  return stash();
}
