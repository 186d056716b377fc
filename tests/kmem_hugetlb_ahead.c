/* HAKMEM_PREFAULT=ahead with HAKMEM_HUGETLB=1: the background thread is told
 * to populate after a span of a hugetlbfs region, and the region goes back
 * whole (munmap) before it looks. It must not read the unmapped header (it
 * once kept a raw span pointer and dereferenced it: SIGSEGV).
 *
 * The child (HAKMEM_HUGETLB=1 HAKMEM_PREFAULT=ahead HAKMEM_PURGE_DELAY_MS=0)
 * runs on one CPU with the background thread SCHED_IDLE (tests/bg_idle.h),
 * so the background thread cannot run between the malloc that names the
 * region and the free + malloc_trim(0) that unmap it; then the main thread
 * sleeps and the background thread takes the stale target. Each round checks
 * that the last block's region really was unmapped (regions and
 * hugetlb_bytes down). A guardian process raises the 2 MiB pool
 * (nr_hugepages) and puts the old values back however the child ends; no
 * root, no pool: SKIP. */
#define _GNU_SOURCE
#include <malloc.h>
#include <signal.h>
#include "bg_idle.h"
#include "hugetlb_pool.h"

#define ROUNDS 300
#define NBLK 4
/* 24 of a region's 32 pages: one such block per region, and the pages after
 * it (25..31) are what the background thread is asked to populate */
#define BLK (24 * 64 * KIB)

static void poke(void) {
  void *p = malloc(BLK), *q = malloc(100);
  free(p);
  free(q);
}

static uint64_t regions_now(void) {
  uint64_t n = 0;
  hak_node_stats_t ns;
  for (int i = 0; hak_node_stats_get(i, &ns) == 0; i++)
    n += ns.regions;
  return n;
}

static int child_main(void) {
  pin_to_one_cpu();
  background_idle(poke);
  void *blk[NBLK];
  unsigned unmapped = 0;
  for (int round = 0; round < ROUNDS; round++) {
    for (int i = 0; i < NBLK; i++) {
      blk[i] = malloc(BLK);
      CHECK(blk[i], "malloc(%zu) failed", BLK);
      ((volatile char *)blk[i])[0] = 1;
    }
    hak_stats_t s = stats_now();
    if (round == 0 && s.hugetlb_bytes < NBLK * 2 * MIB)
      SKIP("hugetlb_bytes %llu with %d blocks live: the pool gave too few pages",
           (unsigned long long)s.hugetlb_bytes, NBLK);
    uint64_t before = regions_now();
    /* the background thread was named the last block's region; it cannot
     * run before the region is gone */
    for (int i = 0; i < NBLK; i++)
      free(blk[i]);
    malloc_trim(0);
    uint64_t after = regions_now();
    if (after < before) unmapped++;
    sleep_ms(2); /* now it runs, with the stale target */
  }
  hak_stats_t s = stats_now();
  fprintf(stderr,
          "%d rounds, %u with regions unmapped under the background thread's target; "
          "hugetlb_bytes at the end %llu KiB\n",
          ROUNDS, unmapped, (unsigned long long)(s.hugetlb_bytes / KIB));
  CHECK(unmapped >= ROUNDS / 2,
        "only %u of %d rounds unmapped a region: the window was not exercised", unmapped, ROUNDS);
  return 0;
}

/* ---- the guardian: raises the pool, runs the child, restores the pool ---- */

int main(int argc, char **argv) {
  (void)argv;
  if (argc > 1) return child_main();
  pool_guard();

  pool_raise(16, NBLK + 4);
  static struct child c;
  const char *env[] = {"HAKMEM_HUGETLB=1", "HAKMEM_PREFAULT=ahead", "HAKMEM_PURGE_DELAY_MS=0",
                       NULL};
  run_self("child", env, &c);
  pool_restore();
  fputs(c.err, stdout);
  if (WIFSIGNALED(c.status))
    FAIL("the child (HAKMEM_HUGETLB=1 HAKMEM_PREFAULT=ahead HAKMEM_PURGE_DELAY_MS=0) was killed "
         "by signal %d (%s): the background thread read a region unmapped under it",
         WTERMSIG(c.status), strsignal(WTERMSIG(c.status)));
  if (WIFEXITED(c.status) && WEXITSTATUS(c.status) == 77) return 77;
  CHECK(WIFEXITED(c.status) && WEXITSTATUS(c.status) == 0, "the child exited %d",
        WIFEXITED(c.status) ? WEXITSTATUS(c.status) : -1);
  printf("hugetlb_ahead: ok\n");
  return 0;
}
