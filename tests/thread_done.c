/* hak_thread_done releases the calling thread's heap as thread exit would:
 * pages with live blocks are abandoned (the counter moves), those blocks stay
 * valid and freeable, the thread keeps allocating, calling it twice or in a
 * thread that never allocated is harmless, and repeating allocate/free/done
 * many times does not keep taking fresh pages. */
#define _GNU_SOURCE
#include <pthread.h>
#include "check.h"
#include "hakmem.h"

#define BLOCKS 2000
#define CYCLES 50

static void *blocks[2][BLOCKS];

static void alloc_all(void **b) {
  for (int i = 0; i < BLOCKS; i++) {
    size_t n = 16 + (size_t)(i * 97) % 3000;
    b[i] = malloc(n);
    CHECK(b[i], "malloc(%zu) failed", n);
    fill_pattern(b[i], n);
  }
}

static void free_all(void **b) {
  for (int i = 0; i < BLOCKS; i++) {
    size_t n = 16 + (size_t)(i * 97) % 3000;
    CHECK(check_pattern(b[i], n) == SIZE_MAX, "block %d overwritten after hak_thread_done", i);
    free(b[i]);
  }
}

static void *live_blocks_at_done(void *arg) {
  (void)arg;
  hak_stats_t s0, s1;
  alloc_all(blocks[0]);
  hak_stats_get(&s0);
  hak_thread_done();
  hak_stats_get(&s1);
  CHECK(s1.pages_abandoned > s0.pages_abandoned,
        "hak_thread_done with %d live blocks abandoned no page", BLOCKS);
  hak_thread_done();    /* twice in a row */
  alloc_all(blocks[1]); /* a fresh heap */
  free_all(blocks[0]);  /* frees into the abandoned pages */
  free_all(blocks[1]);
  return NULL; /* and the real thread exit after all that */
}

static void *never_allocated(void *arg) {
  (void)arg;
  hak_thread_done();
  hak_thread_done();
  return NULL;
}

/* allocate, free, done, over and over: pages_fresh must level off. */
static void *cycles(void *arg) {
  uint64_t *fresh = arg;
  hak_stats_t s;
  for (int c = 0; c < CYCLES; c++) {
    alloc_all(blocks[0]);
    free_all(blocks[0]);
    hak_thread_done();
    hak_stats_get(&s);
    fresh[c] = s.pages_fresh;
  }
  return NULL;
}

static void run(void *(*fn)(void *), void *arg) {
  pthread_t t;
  CHECK(pthread_create(&t, NULL, fn, arg) == 0, "pthread_create failed");
  pthread_join(t, NULL);
}

int main(void) {
  hak_stats_t start;
  hak_stats_get(&start);
  run(live_blocks_at_done, NULL);
  run(never_allocated, NULL);

  static uint64_t fresh[CYCLES];
  run(cycles, fresh);
  uint64_t early = fresh[2] - start.pages_fresh, late = fresh[CYCLES - 1] - fresh[9];
  /* early: everything up to the third cycle, the warm-up. */
  printf("pages_fresh: warm-up %llu, last 40 cycles %llu\n", (unsigned long long)early,
         (unsigned long long)late);
  CHECK(late <= early, "pages_fresh keeps growing across hak_thread_done cycles: %llu vs %llu",
        (unsigned long long)late, (unsigned long long)early);

  /* The main thread too. */
  void *p = malloc(100);
  hak_thread_done();
  free(p);
  p = malloc(100);
  CHECK(p, "malloc after hak_thread_done in main failed");
  free(p);
  return 0;
}
