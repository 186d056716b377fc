/* Each thread's spans come from regions of its own (pool.c's pool_find),
 * so two threads' page descriptors never share a region header:
 *   own      (no argument) two threads take a fresh span each in turns, six times; no
 *            region holds spans of both (on the shortest-fit choice alone
 *            both filled the same region, page by page)
 *   touched  (argument touched) a thread's freed pages, touched and still in its region, go
 *            to another thread before any untouched page does: keeping
 *            regions apart costs no memory
 *   huge     (argument huge) the free pages of a hugetlbfs region are resident,
 *            touched or not: threads' first spans come from the first thread's
 *            region, not from a 2 MiB huge page each (in regions of their own,
 *            four threads held five huge pages for 5 KiB). As root it raises the
 *            hugetlbfs pool by a few pages, runs a child under HAKMEM_HUGETLB=1
 *            and puts the pool back. */
#include "kmem_util.h"
#include "hugetlb_pool.h"

#include <pthread.h>

#define BLOCK 1024    /* 1-page spans */
#define PER_PAGE 64   /* blocks of BLOCK in a 64 KiB page, at most */
#define ROUNDS 6      /* spans each thread takes in `own` */
#define FREED_PAGES 8 /* pages the first thread gives back in `touched` */
#define TAKEN_PAGES 3 /* pages the second thread takes then */
#define REGION_SHIFT 21

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cond = PTHREAD_COND_INITIALIZER;
static int turn; /* own: whose round it is (0, 1); touched: the step */
static pthread_barrier_t done;

static void wait_turn(int t) {
  pthread_mutex_lock(&lock);
  while (turn != t)
    pthread_cond_wait(&cond, &lock);
  pthread_mutex_unlock(&lock);
}

static void set_turn(int t) {
  pthread_mutex_lock(&lock);
  turn = t;
  pthread_cond_broadcast(&cond);
  pthread_mutex_unlock(&lock);
}

static void run_pair(void *(*fn)(void *)) {
  pthread_t t[2];
  for (intptr_t i = 0; i < 2; i++)
    CHECK(pthread_create(&t[i], NULL, fn, (void *)i) == 0, "pthread_create failed");
  for (int i = 0; i < 2; i++)
    pthread_join(t[i], NULL);
}

static uintptr_t region(const void *p) {
  return (uintptr_t)p >> REGION_SHIFT;
}

/* ---- own ----------------------------------------------------------------- */

static char *own_blocks[2][ROUNDS * PER_PAGE];

static void *own_thread(void *arg) {
  int me = (int)(intptr_t)arg;
  for (int round = 0; round < ROUNDS; round++) {
    wait_turn(me);
    for (int i = 0; i < PER_PAGE; i++) {
      char *p = malloc(opaque_size(BLOCK));
      CHECK(p, "malloc(%d) failed", BLOCK);
      fill_pattern(p, BLOCK);
      own_blocks[me][round * PER_PAGE + i] = p;
    }
    set_turn(!me);
  }
  /* alive until both are done: a thread's exit leaves its pages for the
   * other to adopt */
  pthread_barrier_wait(&done);
  return NULL;
}

static void test_own(void) {
  turn = 0;
  pthread_barrier_init(&done, NULL, 2);
  run_pair(own_thread);
  pthread_barrier_destroy(&done);
  for (int a = 0; a < ROUNDS * PER_PAGE; a++)
    for (int b = 0; b < ROUNDS * PER_PAGE; b++)
      CHECK(region(own_blocks[0][a]) != region(own_blocks[1][b]),
            "blocks %p and %p of two threads' spans in one region", (void *)own_blocks[0][a],
            (void *)own_blocks[1][b]);
  for (int t = 0; t < 2; t++)
    for (int i = 0; i < ROUNDS * PER_PAGE; i++) {
      expect_pattern(own_blocks[t][i], BLOCK);
      free(own_blocks[t][i]);
    }
  printf("own: %d spans each of two threads, in regions apart\n", ROUNDS);
}

/* ---- touched --------------------------------------------------------------- */

static char *first[(FREED_PAGES + 1) * PER_PAGE];
static char *second[TAKEN_PAGES * PER_PAGE];
static uint64_t fresh, reused;

static void *touched_thread(void *arg) {
  if (arg == 0) { /* fills pages, keeps the first (its region stays its own), frees the rest */
    for (int i = 0; i < (FREED_PAGES + 1) * PER_PAGE; i++) {
      first[i] = malloc(opaque_size(BLOCK));
      CHECK(first[i], "malloc(%d) failed", BLOCK);
    }
    for (int i = PER_PAGE; i < (FREED_PAGES + 1) * PER_PAGE; i++)
      free(first[i]);
    set_turn(1);
    wait_turn(2); /* alive while the other takes pages: its region is still its own */
    for (int i = 0; i < PER_PAGE; i++)
      free(first[i]);
    return NULL;
  }
  wait_turn(1);
  free(malloc(opaque_size(16))); /* its heap, and a page of another class */
  hak_stats_t before, after;
  hak_stats_get(&before);
  for (int i = 0; i < TAKEN_PAGES * PER_PAGE; i++) {
    second[i] = malloc(opaque_size(BLOCK));
    CHECK(second[i], "malloc(%d) failed", BLOCK);
  }
  hak_stats_get(&after);
  fresh = after.pages_fresh - before.pages_fresh;
  reused = after.pages_reused - before.pages_reused;
  for (int i = 0; i < TAKEN_PAGES * PER_PAGE; i++)
    free(second[i]);
  set_turn(2);
  return NULL;
}

static void test_touched(void) {
  turn = 0;
  run_pair(touched_thread);
  printf("touched: the second thread took %llu fresh pages, %llu reused\n",
         (unsigned long long)fresh, (unsigned long long)reused);
  CHECK(fresh == 0, "%llu untouched pages taken while another thread's freed pages were free",
        (unsigned long long)fresh);
  CHECK(reused >= TAKEN_PAGES, "only %llu pages reused", (unsigned long long)reused);
}

/* ---- huge ---------------------------------------------------------------- */

#define HUGE_THREADS 4

static char *huge_blocks[HUGE_THREADS];

static void *huge_thread(void *arg) {
  int me = (int)(intptr_t)arg;
  wait_turn(me);
  huge_blocks[me] = malloc(opaque_size(BLOCK));
  CHECK(huge_blocks[me], "malloc(%d) failed", BLOCK);
  fill_pattern(huge_blocks[me], BLOCK);
  set_turn(me + 1);
  pthread_barrier_wait(&done); /* alive, its heap its own, until all have taken theirs */
  return NULL;
}

static void test_huge(void) {
  char *mine = malloc(opaque_size(BLOCK));
  CHECK(mine, "malloc(%d) failed", BLOCK);
  hak_stats_t s;
  hak_stats_get(&s);
  if (s.hugetlb_bytes == 0) SKIP("no hugetlbfs region (HAKMEM_HUGETLB=1 and a free 2 MiB page)");
  uint64_t huge = s.hugetlb_bytes;
  turn = 0;
  pthread_barrier_init(&done, NULL, HUGE_THREADS);
  pthread_t t[HUGE_THREADS];
  for (intptr_t i = 0; i < HUGE_THREADS; i++)
    CHECK(pthread_create(&t[i], NULL, huge_thread, (void *)i) == 0, "pthread_create failed");
  for (int i = 0; i < HUGE_THREADS; i++)
    pthread_join(t[i], NULL);
  pthread_barrier_destroy(&done);
  hak_stats_get(&s);
  printf("huge: %d threads' first spans, hugetlb_bytes %llu KiB (was %llu KiB)\n", HUGE_THREADS,
         (unsigned long long)(s.hugetlb_bytes >> 10), (unsigned long long)(huge >> 10));
  CHECK(s.hugetlb_bytes == huge, "hugetlb_bytes grew from %llu to %llu for %d small blocks",
        (unsigned long long)huge, (unsigned long long)s.hugetlb_bytes, HUGE_THREADS);
  for (int i = 0; i < HUGE_THREADS; i++) {
    CHECK(region(huge_blocks[i]) == region(mine),
          "thread %d's block %p not in the first region %p, whose free pages are resident", i,
          (void *)huge_blocks[i], (void *)(region(mine) << REGION_SHIFT));
    expect_pattern(huge_blocks[i], BLOCK);
    free(huge_blocks[i]);
  }
  free(mine);
}

static int huge_guardian(void) {
  pool_guard();
  pool_raise(4, 2);
  static struct child c;
  const char *env[] = {"HAKMEM_HUGETLB=1", NULL};
  run_self("huge-child", env, &c);
  pool_restore();
  fputs(c.err, stdout);
  if (WIFEXITED(c.status) && WEXITSTATUS(c.status) == 77) return 77;
  CHECK(WIFEXITED(c.status) && WEXITSTATUS(c.status) == 0,
        "the child (HAKMEM_HUGETLB=1) ended with status 0x%x", c.status);
  return 0;
}

int main(int argc, char **argv) {
  /* each in a process of its own: a region the other left empty is free for any heap */
  if (argc > 1 && !strcmp(argv[1], "touched"))
    test_touched();
  else if (argc > 1 && !strcmp(argv[1], "huge-child"))
    test_huge();
  else if (argc > 1 && !strcmp(argv[1], "huge"))
    return huge_guardian();
  else
    test_own();
  printf("region_own: ok\n");
  return 0;
}
