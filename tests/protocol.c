/* The remote-free protocol's promises between threads, each in a child with
 * its own HAKMEM_* variables:
 *
 * owners: with two virtual nodes, a thread of node 0 fills pages, moves to
 *   node 1 and exits; its pages must go to node 0's abandoned pool (their
 *   region's). A node-0 thread then frees half of the blocks (claiming the
 *   pages) and a node-1 thread allocates the same size: it must never get
 *   a block on those pages (two heaps owning one page), and every block
 *   keeps its pattern.
 * stale: a node-1 thread allocates and exits; node-0 threads free all of
 *   it. No thread of node 1 allocates again, yet the mailbox must be
 *   drained (by the background thread, or with HAKMEM_BACKGROUND=0 by
 *   node 0's slow paths) and node 1's memory must go back. A second round
 *   makes no new batches: drained ones come back to their sender.
 * exit: a thread whose exit gives back empty pages (HAKMEM_PURGE=page wants
 *   the background thread then) must not start a thread while it exits:
 *   the process has one thread after the join, until it allocates again. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <malloc.h>
#include <pthread.h>
#include <stdatomic.h>

#include "numa_util.h"

#define BS 64
#define NBLOCKS 20000

static void set_node(int node) {
  CHECK(hakmem_thread_set_node(node) == 0, "hakmem_thread_set_node(%d) failed", node);
}

/* ---- owners ---- */

static void *blocks[NBLOCKS];

static void *node0_then_1(void *arg) {
  (void)arg;
  set_node(0);
  for (int i = 0; i < NBLOCKS; i++) {
    blocks[i] = malloc(BS);
    fill_pattern(blocks[i], BS);
  }
  set_node(1); /* its pages stay node 0's: the heap is foreign now */
  return NULL;
}

static void *node0_frees_half(void *arg) {
  set_node(0);
  for (int i = (int)(uintptr_t)arg; i < NBLOCKS; i += 2) {
    expect_pattern(blocks[i], BS);
    free(blocks[i]);
    blocks[i] = NULL;
  }
  return NULL; /* exits: the claimed pages are abandoned again, to node 0 */
}

static int cmp_ptr(const void *a, const void *b) {
  uintptr_t x = *(const uintptr_t *)a, y = *(const uintptr_t *)b;
  return x < y ? -1 : x > y;
}

static void *node1_allocates(void *arg) {
  uintptr_t *pages = arg; /* sorted 64 KiB page addresses of the live blocks */
  set_node(1);
  static void *mine[NBLOCKS];
  for (int i = 0; i < NBLOCKS; i++) {
    mine[i] = malloc(BS);
    uintptr_t pg = (uintptr_t)mine[i] & ~(uintptr_t)0xFFFF;
    CHECK(!bsearch(&pg, pages, NBLOCKS / 2, sizeof pg, cmp_ptr),
          "a node-1 thread got %p, on a page of node 0 that another heap claimed", mine[i]);
    fill_pattern(mine[i], BS);
  }
  for (int i = 0; i < NBLOCKS; i++) {
    expect_pattern(mine[i], BS);
    free(mine[i]);
  }
  return NULL;
}

static int owners(void) {
  on_thread(node0_then_1, NULL);
  on_thread(node0_frees_half, (void *)0);
  static uintptr_t pages[NBLOCKS / 2];
  for (int i = 1; i < NBLOCKS; i += 2)
    pages[i / 2] = (uintptr_t)blocks[i] & ~(uintptr_t)0xFFFF;
  qsort(pages, NBLOCKS / 2, sizeof pages[0], cmp_ptr);
  on_thread(node1_allocates, pages);
  on_thread(node0_frees_half, (void *)1); /* the rest, through pages abandoned twice */
  malloc_trim(0);
  printf("owners: %d blocks of a node-0 heap moved to node 1, freed and reused, no page shared\n",
         NBLOCKS);
  return 0;
}

/* ---- stale ---- */

#define STALE_BLOCKS 200000

static void **stale_blocks;

static void *node1_allocates_and_exits(void *arg) {
  (void)arg;
  set_node(1);
  for (int i = 0; i < STALE_BLOCKS; i++)
    stale_blocks[i] = malloc(BS);
  return NULL;
}

/* Returns the bytes of batches the round made. */
static unsigned long long stale_round(int round, unsigned long long made_before) {
  on_thread(node1_allocates_and_exits, NULL);
  uint64_t node1_full = node_stats(1).committed_bytes;
  hak_stats_t s0 = stats();
  for (int i = 0; i < STALE_BLOCKS; i++)
    free(stale_blocks[i]);
  hakmem_flush(); /* the partial batch leaves too */
  uint64_t node1 = 0;
  hak_stats_t s1;
  for (int ms = 0; ms < 3000; ms += 10) {
    usleep(10000);
    static void *more[8192]; /* node 0 keeps allocating: slow paths now and then */
    for (int i = 0; i < 8192; i++)
      more[i] = malloc(BS);
    for (int i = 0; i < 8192; i++)
      free(more[i]);
    s1 = stats();
    node1 = node_stats(1).committed_bytes;
    if (s1.blocks_drained - s0.blocks_drained >= STALE_BLOCKS && node1 < node1_full / 4) break;
  }
  unsigned long long drained = s1.blocks_drained - s0.blocks_drained,
                     batches = s1.batches_sent - s0.batches_sent,
                     made = s1.mailbox_bytes - s0.mailbox_bytes;
  printf("stale round %d: %llu of %d cross-node frees drained in %llu batches (%llu bytes of new "
         "batches); node 1 committed %llu -> %llu KiB\n",
         round, drained, STALE_BLOCKS, batches, made, (unsigned long long)node1_full / 1024,
         (unsigned long long)node1 / 1024);
  CHECK(drained >= STALE_BLOCKS,
        "round %d: only %llu of %d frees for node 1 drained within 3 s though no thread of node "
        "1 allocates",
        round, drained, STALE_BLOCKS);
  CHECK(node1 < node1_full / 4,
        "round %d: node 1 keeps %llu of %llu KiB committed after every block was freed", round,
        (unsigned long long)node1 / 1024, (unsigned long long)node1_full / 1024);
  /* Batches come back to the heap that filled them once drained, so the
   * rounds together make no more of them than one round sends: round 0
   * may reuse some it sent already (drained while it still freed), then
   * round 1 makes the rest. A batch is its 64 pointers and a header. */
  unsigned long long one_round = batches * (64 * sizeof(void *) + 64);
  if (round > 0)
    CHECK(made_before + made <= one_round,
          "round %d: %llu + %llu bytes of new batches, more than one round's %llu: none reused",
          round, made_before, made, one_round);
  return made;
}

static int stale(void) {
  hak_thread_done(); /* start-up's heap may hold pages of the other node */
  set_node(0);       /* a fresh heap, empty: not foreign */
  stale_blocks = malloc(sizeof(void *) * STALE_BLOCKS);
  stale_round(1, stale_round(0, 0));
  return 0;
}

/* ---- exit ---- */

/* Threads of this process, read without allocating. */
static int thread_count(void) {
  char buf[4096];
  int fd = open("/proc/self/status", O_RDONLY);
  CHECK(fd >= 0, "open /proc/self/status");
  ssize_t n = read(fd, buf, sizeof buf - 1);
  close(fd);
  CHECK(n > 0, "read /proc/self/status");
  buf[n] = 0;
  const char *t = strstr(buf, "\nThreads:");
  CHECK(t, "no Threads: line");
  return atoi(t + 9);
}

/* 512 KiB of blocks: with what the process holds already, well below the
 * 2 MiB committed at which a malloc starts the background thread anyway
 * (4096 blocks came within 8 KiB of it) */
static void *frees_everything(void *arg) {
  (void)arg;
  enum { N = 2048 };
  static void *b[N];
  for (int i = 0; i < N; i++)
    b[i] = malloc(256);
  for (int i = 0; i < N; i++)
    free(b[i]);
  return NULL; /* the last page of the class goes back at exit */
}

static int exit_starts_no_thread(void) {
  int before = thread_count();
  pthread_t t;
  CHECK(pthread_create(&t, NULL, frees_everything, NULL) == 0, "pthread_create");
  pthread_join(t, NULL);
  int after = thread_count();
  CHECK(after == before, "%d threads before, %d after a thread exited: its exit started one",
        before, after);
  printf("exit: %d thread(s) before and after; the background thread waits for a malloc\n", after);
  return 0;
}

int main(int argc, char **argv) {
  if (argc > 1) {
    if (!strcmp(argv[1], "owners")) return owners();
    if (!strcmp(argv[1], "stale")) return stale();
    if (!strcmp(argv[1], "exit")) return exit_starts_no_thread();
    FAIL("unknown mode %s", argv[1]);
  }
  static struct child c;
  const char *nodes2[] = {"HAKMEM_NODES=2", NULL};
  const char *nodes2_nobg[] = {"HAKMEM_NODES=2", "HAKMEM_BACKGROUND=0", NULL};
  const char *page[] = {"HAKMEM_PURGE=page", "HAKMEM_PURGE_DELAY_MS=0", NULL};
  child_must_pass("owners", nodes2, &c);
  fputs(c.err, stderr);
  child_must_pass("stale", nodes2, &c);
  fputs(c.err, stderr);
  child_must_pass("stale", nodes2_nobg, &c);
  fputs(c.err, stderr);
  child_must_pass("exit", page, &c);
  fputs(c.err, stderr);
  printf("protocol: ok\n");
  return 0;
}
