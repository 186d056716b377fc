/* Stashes taken by other threads (remote.c): malloc_trim and hakmem_flush
 * take every heap's stashed chains, the background thread those of threads
 * that stopped freeing, while their freers may be pushing onto them.
 *
 * race: T threads in pairs free each other's 16-512 B blocks in batches
 *   while a third thread calls malloc_trim(0) and hakmem_flush() in a
 *   loop, taking the freers' chains under them. Every block carries a tag
 *   of its own (a block handed out twice, or a chain handed over twice,
 *   shows as a foreign tag), remote_frees counts no block twice, and once
 *   the threads are gone every page goes back: committed memory
 *   returns to what the same run left the first time (a block lost in a
 *   chain would keep its page). Also built against the TSan build
 *   (-DSTRESS_HAK).
 * idle: a thread stashes 4 blocks of the main thread's page and sleeps;
 *   with nobody trimming or flushing, the background thread hands them
 *   over within a few of its periods.
 * fork: the same idle thread's stash holds 4 blocks of a page the main
 *   thread fills and frees the rest of; then it forks. The child (only the
 *   forking thread, which owns the page) must get all the page's blocks
 *   back: the freer's stash lives in a heap of a thread the child does not
 *   have (without the fork child's take those 4 blocks stay used for good).
 * idle and fork with a mid size (stash_steal idle 3000, fork 3000): the
 *   freer allocated a block of that size itself, so it may keep the blocks
 *   it frees for its own next mallocs; it sleeps, and they must still come
 *   back to the page's owner (handed over, or taken by the fork's child).
 * Usage: stash_steal [threads [rounds]] (default 8 2000: idle and race)
 *        stash_steal idle|fork [block size] (default 1024) */
#define _GNU_SOURCE
#include <ctype.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <sys/wait.h>
#include <time.h>
#include "check.h"
#include "hakmem.h"
#include "t_alloc.h"

#define BATCH 64
#define QUEUE 4

/* every thread on the main thread's node: frees across nodes go through
 * the mailboxes, not the stash */
static int node0;

static hak_stats_t stats(void) {
  hak_stats_t s;
  hak_stats_get(&s);
  return s;
}

struct item {
  uint64_t *p;
  size_t words;
  uint64_t tag;
};

static void tag_fill(const struct item *it) {
  for (size_t i = 0; i < it->words; i++)
    it->p[i] = it->tag * 0x9E3779B97F4A7C15ull + i;
}

static void tag_expect(const struct item *it) {
  for (size_t i = 0; i < it->words; i++)
    CHECK(it->p[i] == it->tag * 0x9E3779B97F4A7C15ull + i,
          "block %p (tag %llu) changed at word %zu: another holder wrote it", (void *)it->p,
          (unsigned long long)it->tag, i);
}

#include "pair_ring.h"

struct side {
  struct pair *pair;
  int side, rounds;
  uint64_t seed;
};

static _Atomic int sides_done;

static void *side_main(void *arg) {
  struct side *w = arg;
  struct pair *q = w->pair;
  int me = w->side;
  struct rng r = {w->seed};
  struct item mine[BATCH], theirs[BATCH];
  int sent = 0, received = 0;
  uint64_t serial = w->seed << 32;
  CHECK(hakmem_thread_set_node(node0) == 0, "hakmem_thread_set_node");
  bool have = false;
  while (sent < w->rounds || received < w->rounds) {
    if (!have && sent < w->rounds) {
      for (int i = 0; i < BATCH; i++) {
        mine[i].words = (16 + rng_next(&r) % 497) / 8;
        mine[i].p = T_MALLOC(mine[i].words * 8);
        CHECK(mine[i].p, "malloc failed");
        mine[i].tag = ++serial;
        tag_fill(&mine[i]);
      }
      have = true;
    }
    bool had = have, got = pair_exchange(q, me, mine, &have, theirs);
    if (had && !have) sent++;
    if (got) {
      for (int i = 0; i < BATCH; i++) {
        tag_expect(&theirs[i]);
        T_FREE(theirs[i].p);
      }
      received++;
    }
  }
  atomic_fetch_add(&sides_done, 1);
  return NULL;
}

static void *taker_main(void *arg) {
  int sides = *(int *)arg;
  long takes = 0;
  CHECK(hakmem_thread_set_node(node0) == 0, "hakmem_thread_set_node");
  while (atomic_load(&sides_done) < sides) {
    if (takes++ & 1)
      hakmem_flush();
    else
      hak_malloc_trim(0);
  }
  return (void *)takes;
}

/* One run of the pairs and the taker; returns the taker's calls. */
static long race_once(int threads, int rounds) {
  int npairs = threads / 2, sides = 2 * npairs;
  struct pair *q = calloc((size_t)npairs, sizeof *q);
  struct side *w = calloc((size_t)sides, sizeof *w);
  pthread_t *t = calloc((size_t)sides, sizeof *t), taker;
  CHECK(q && w && t, "calloc");
  atomic_store(&sides_done, 0);
  for (int i = 0; i < npairs; i++) {
    pthread_mutex_init(&q[i].lock, NULL);
    pthread_cond_init(&q[i].cond, NULL);
    for (int s = 0; s < 2; s++) {
      w[2 * i + s] = (struct side){&q[i], s, rounds, (uint64_t)(2 * i + s + 1)};
      CHECK(pthread_create(&t[2 * i + s], NULL, side_main, &w[2 * i + s]) == 0, "pthread_create");
    }
  }
  CHECK(pthread_create(&taker, NULL, taker_main, &sides) == 0, "pthread_create");
  void *takes;
  for (int i = 0; i < sides; i++)
    pthread_join(t[i], NULL);
  pthread_join(taker, &takes);
  free(q);
  free(w);
  free(t);
  return (long)takes;
}

static int race(int threads, int rounds) {
  race_once(threads, rounds); /* heaps, regions and batches made once */
  hak_malloc_trim(0);
  hak_stats_t s0 = stats();
  long takes = race_once(threads, rounds);
  hak_malloc_trim(0);
  hak_stats_t s1 = stats();
  uint64_t blocks = (uint64_t)(threads / 2) * 2 * rounds * BATCH,
           frees = s1.remote_frees - s0.remote_frees;
  printf("%d threads, %d batches each way, %ld trims and flushes racing: remote_frees %llu in "
         "%llu hand-overs; committed %llu KiB before, %llu KiB after\n",
         threads, rounds, takes, (unsigned long long)frees,
         (unsigned long long)(s1.remote_handoffs - s0.remote_handoffs),
         (unsigned long long)(s0.committed_bytes >> 10),
         (unsigned long long)(s1.committed_bytes >> 10));
  /* a side that outlives its partner claims the partner's abandoned pages:
   * its last frees into them are its own */
  CHECK(frees <= blocks && frees >= blocks - blocks / 8,
        "remote_frees grew by %llu for %llu blocks", (unsigned long long)frees,
        (unsigned long long)blocks);
  CHECK(takes > 2, "the taker ran only %ld times", takes);
  CHECK(s1.committed_bytes < s0.committed_bytes + 65536,
        "%llu KiB more committed than after the same run before: blocks lost in chains",
        (unsigned long long)((s1.committed_bytes - s0.committed_bytes) >> 10));
  return 0;
}

/* ---- idle and fork: a freer whose stash holds 4 blocks and who sleeps ---- */

#define PAGE_OF(p) ((uintptr_t)(p) & ~(uintptr_t)0xFFFF)

static void *page_blocks[64];
static int npage;
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cond = PTHREAD_COND_INITIALIZER;
static int freed, go_exit;

static size_t block_size;

static void *idle_freer(void *arg) {
  (void)arg;
  CHECK(hakmem_thread_set_node(node0) == 0, "hakmem_thread_set_node");
  /* a heap of its own, its remote frees are stashed; a block of the class
   * it frees too: a freer that allocates mid blocks itself keeps the mid
   * blocks it frees for its next mallocs */
  void *volatile own = T_MALLOC(block_size);
  T_FREE(own);
  for (int i = 0; i < 4; i++)
    T_FREE(page_blocks[i]);
  pthread_mutex_lock(&lock);
  freed = 1;
  pthread_cond_broadcast(&cond);
  while (!go_exit)
    pthread_cond_wait(&cond, &lock);
  pthread_mutex_unlock(&lock);
  return NULL;
}

/* Starts the freer of page_blocks[0..3] and returns once it freed them. */
static pthread_t idle_freer_start(void) {
  pthread_t t;
  CHECK(pthread_create(&t, NULL, idle_freer, NULL) == 0, "pthread_create");
  pthread_mutex_lock(&lock);
  while (!freed)
    pthread_cond_wait(&cond, &lock);
  pthread_mutex_unlock(&lock);
  return t;
}

static void idle_freer_stop(pthread_t t) {
  pthread_mutex_lock(&lock);
  go_exit = 1;
  pthread_cond_broadcast(&cond);
  pthread_mutex_unlock(&lock);
  pthread_join(t, NULL);
}

static int idle(size_t bs) {
  for (int i = 0; i < 64; i++)
    page_blocks[i] = T_MALLOC(bs);
  uint64_t before = stats().remote_handoffs;
  pthread_t t = idle_freer_start();
  void *volatile big = T_MALLOC(4 << 20); /* a slow path: the background thread starts */
  T_FREE(big);
  struct timespec ms10 = {0, 10000000};
  int waited = 0;
  while (stats().remote_handoffs == before && waited < 1000) {
    nanosleep(&ms10, NULL);
    waited++;
  }
  printf("idle: the stashed chain was handed over after %d ms\n", waited * 10);
  CHECK(stats().remote_handoffs > before,
        "a sleeping thread's stash was not handed over in 10 s (background thread)");
  idle_freer_stop(t);
  for (int i = 4; i < 64; i++)
    T_FREE(page_blocks[i]);
  return 0;
}

static int fork_child_takes(size_t bs) {
  enum { N = 64 * 3 };
  static void *b[N];
  for (int i = 0; i < N; i++)
    b[i] = T_MALLOC(bs);
  uintptr_t p = PAGE_OF(b[N / 2]); /* a page in the middle: full, not page 0 of a region */
  for (int i = 0; i < N; i++)
    if (PAGE_OF(b[i]) == p) {
      page_blocks[npage++] = b[i];
      b[i] = NULL;
    }
  CHECK(npage >= 16, "only %d blocks of %zu B on one page", npage, bs);
  pthread_t t = idle_freer_start();
  for (int i = 4; i < npage; i++)
    T_FREE(page_blocks[i]);
  pid_t pid = fork();
  CHECK(pid >= 0, "fork");
  if (pid == 0) {
    int back = 0;
    static void *again[4096];
    for (int i = 0; i < 4096; i++) {
      again[i] = T_MALLOC(bs);
      if (PAGE_OF(again[i]) == p) back++;
    }
    if (back < npage) {
      fprintf(stderr,
              "FAIL: child: %d of the %d blocks of its page came back in 4096 mallocs; the "
              "other %d were freed before the fork by a thread whose stash held them\n",
              back, npage, npage - back);
      _exit(1);
    }
    fprintf(stderr, "child: all %d blocks of the page came back\n", back);
    _exit(0);
  }
  int status;
  CHECK(waitpid(pid, &status, 0) == pid, "waitpid");
  idle_freer_stop(t);
  CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0, "the child failed (status %d)", status);
  for (int i = 0; i < N; i++)
    T_FREE(b[i]);
  return 0;
}

int main(int argc, char **argv) {
  node0 = hakmem_thread_node();
  block_size = argc > 2 && !isdigit((unsigned char)argv[1][0]) ? (size_t)atol(argv[2]) : 1024;
  if (argc > 1 && strcmp(argv[1], "fork") == 0) return fork_child_takes(block_size);
  if (argc > 1 && strcmp(argv[1], "idle") == 0) return idle(block_size);
  return idle(block_size) || race(argc > 1 ? atoi(argv[1]) : 8, argc > 2 ? atoi(argv[2]) : 2000);
}
