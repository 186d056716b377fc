/* A remote free that waits in an idle thread's stash pins its page.
 *
 * The main thread allocates 16 pages' worth of blocks in each of 7 classes
 * (64 B-4 KiB). 16 workers (each with a heap of its own) free one block of
 * one page per class each, then go idle (blocked on a condition variable,
 * as a thread-pool worker waiting for work does). The main thread frees
 * every other block and calls malloc_trim(0): every page it owns is empty
 * but for the one block per page that some worker freed. Those blocks are
 * free: the pages must go back (committed_bytes back near where it was).
 *
 * Before the stash (4e3fd0f) the workers' frees were on the pages' remote
 * lists, and the owner's malloc_trim collected them and returned the pages.
 * With the stash, the frees stay in the idle workers' stashes (no slow
 * path, no flush, no exit comes), the blocks stay counted as used, and
 * 16 x 7 pages of 64 KiB (7 MiB) stay committed for as long as the
 * workers sleep: neither the owner's malloc_trim nor the background purger
 * can get them. After the workers exit, the memory comes back (checked too,
 * to tell "pinned while idle" from "lost").
 * large: the same with workers that do not sleep but keep allocating and
 *   freeing blocks of 256 KiB while the owner frees and trims: the stash is
 *   flushed on every 64th small-class slow path, which such a thread never
 *   takes (a busy thread of small blocks does take it: its local frees
 *   empty its free list every few hundred mallocs).
 * Usage: stash_idle [large] */
#define _GNU_SOURCE
#include <malloc.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdbool.h>
#include "check.h"
#include "hakmem.h"

#define W 16
#define NCLS 7
#define PAGE_OF(p) ((uintptr_t)(p) & ~(uintptr_t)0xFFFF)
#define MIB (1024.0 * 1024.0)

static const size_t sizes[NCLS] = {64, 128, 256, 512, 1024, 2048, 4096};
static void **blocks[NCLS];
static size_t nblocks[NCLS];
static void *given[W][NCLS]; /* the block worker w frees in class c */

static int node0; /* the main thread's: a free from another node takes the mailbox */
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cond = PTHREAD_COND_INITIALIZER;
static int freed_count;
static _Atomic int go_exit;
static int mode;                 /* 0 idle, 1 busy with blocks of 256 KiB */
static _Atomic long busy_ops[W]; /* large: mallocs each worker did after its frees */

static uint64_t committed(void) {
  hak_stats_t s;
  hak_stats_get(&s);
  return s.committed_bytes;
}

static void *worker(void *arg) {
  int w = (int)(intptr_t)arg;
  CHECK(hakmem_thread_set_node(node0) == 0, "hakmem_thread_set_node");
  void *volatile own = malloc(3000); /* a heap of its own: its remote frees are stashed */
  free(own);
  for (int c = 0; c < NCLS; c++)
    free(given[w][c]);
  pthread_mutex_lock(&lock);
  freed_count++;
  pthread_cond_broadcast(&cond);
  while (!mode && !go_exit) /* idle: a pool worker waiting for work */
    pthread_cond_wait(&cond, &lock);
  pthread_mutex_unlock(&lock);
  while (!go_exit) { /* busy with blocks of its own */
    void *volatile x = malloc(256 * 1024);
    free(x);
    atomic_fetch_add(&busy_ops[w], 1);
  }
  return NULL;
}

int main(int argc, char **argv) {
  if (argc > 1) mode = !strcmp(argv[1], "large") ? 1 : -1;
  CHECK(mode >= 0, "usage: stash_idle [large]");
  node0 = hakmem_thread_node();
  malloc_trim(0);
  uint64_t base = committed();
  for (int c = 0; c < NCLS; c++) {
    size_t per_page = 65536 / sizes[c];
    size_t n = (W + 2) * per_page;
    blocks[c] = calloc(n, sizeof(void *));
    CHECK(blocks[c], "calloc");
    for (size_t i = 0; i < n; i++) {
      blocks[c][i] = malloc(sizes[c]);
      CHECK(blocks[c][i], "malloc");
    }
    nblocks[c] = n;
    /* one block of each of W distinct pages */
    int w = 0;
    uintptr_t last = 0;
    for (size_t i = 0; i < n && w < W; i++) {
      if (PAGE_OF(blocks[c][i]) == last) continue;
      last = PAGE_OF(blocks[c][i]);
      given[w++][c] = blocks[c][i];
      blocks[c][i] = NULL;
    }
    CHECK(w == W, "only %d pages of %zu B blocks", w, sizes[c]);
  }
  uint64_t full = committed();
  pthread_t t[W];
  for (int w = 0; w < W; w++)
    CHECK(pthread_create(&t[w], NULL, worker, (void *)(intptr_t)w) == 0, "pthread_create");
  pthread_mutex_lock(&lock);
  while (freed_count < W)
    pthread_cond_wait(&cond, &lock);
  pthread_mutex_unlock(&lock);
  /* large: every worker has been busy for a while (128 large mallocs) */
  for (int w = 0; mode && w < W; w++)
    while (atomic_load(&busy_ops[w]) < 128)
      sched_yield();
  /* every block is free now */
  for (int c = 0; c < NCLS; c++)
    for (size_t i = 0; i < nblocks[c]; i++)
      free(blocks[c][i]);
  malloc_trim(0);
  uint64_t idle = committed();
  pthread_mutex_lock(&lock);
  atomic_store(&go_exit, 1);
  pthread_cond_broadcast(&cond);
  pthread_mutex_unlock(&lock);
  for (int w = 0; w < W; w++)
    pthread_join(t[w], NULL);
  malloc_trim(0);
  uint64_t after = committed();
  fprintf(stderr,
          "committed: %.1f MiB at start, %.1f MiB with the blocks, %.1f MiB after everything was "
          "freed and malloc_trim (workers %s), %.1f MiB once they exited\n",
          base / MIB, full / MIB, idle / MIB, mode == 0 ? "idle" : "busy with 256 KiB blocks",
          after / MIB);
  CHECK(after < base + 2 * 1048576, "memory not back even after the workers exited");
  /* the workers' own heaps keep a page each (1 MiB), busy ones a 256 KiB
   * block each in flight: allowed for */
  uint64_t slack = 3 * 1048576 + (mode ? W * 256 * 1024 : 0);
  CHECK(idle < after + slack,
        "every block was free and malloc_trim ran, but %.1f MiB more stay committed while the "
        "threads that freed one block per page sleep (or allocate only large blocks) than after "
        "they exit (their stashes pin "
        "%d pages of 64 KiB)",
        (idle - after) / MIB, W * NCLS);
  return 0;
}
