/* HAKMEM_HUGETLB=1: regions from the 2 MiB hugetlbfs pool, falling back to
 * ordinary (THP) regions when the pool is empty.
 *  - pool of 64 pages: a child's heap has hugetlb_bytes > 0, its data
 *    survives (written, checked, freed, reused through calloc, trimmed), and
 *    nothing is printed;
 *  - pool of 8 pages, a 64 MiB heap: the pool runs out midway; hugetlb_bytes
 *    is at most the pool, exactly one warning line, everything still works;
 *  - empty pool: one warning line naming HAKMEM_HUGETLB, hugetlb_bytes 0,
 *    everything works.
 * The test changes the machine's pool (nr_hugepages and
 * nr_overcommit_hugepages of the 2 MiB size), so it needs root; a guardian
 * process puts the old values back however the checks end (failure, signal
 * or timeout). */
#include <malloc.h>
#include <signal.h>
#include "kmem_util.h"
#include "hugetlb_pool.h"

/* ---- the child: a heap under HAKMEM_HUGETLB=1 ---- */

#define MAXBLK 8192
static void *blocks[MAXBLK];
static size_t sizes[MAXBLK];

static size_t build(size_t heap, uint64_t seed) {
  size_t n = 0;
  for (size_t live = 0; live < heap && n < MAXBLK; n++) {
    seed = seed * 6364136223846793005ull + 1442695040888963407ull;
    /* mostly 16-64 KiB blocks, some small, one in 32 a large one */
    size_t r = (size_t)(seed >> 33);
    sizes[n] = r % 32 == 0  ? 256 * KIB + r % MIB
               : r % 4 == 0 ? 16 + r % 4000
                            : 16 * KIB + r % (48 * KIB);
    blocks[n] = malloc(sizes[n]);
    CHECK(blocks[n], "malloc(%zu) failed", sizes[n]);
    fill_pattern(blocks[n], sizes[n]);
    live += sizes[n];
  }
  return n;
}

static void verify_and_free(size_t n, const char *when) {
  for (size_t i = 0; i < n; i++) {
    size_t at = check_pattern(blocks[i], sizes[i]);
    CHECK(at == SIZE_MAX, "%s: block %zu (%zu bytes) differs at byte %zu", when, i, sizes[i], at);
    free(blocks[i]);
  }
}

static int child_main(const char *mode) {
  size_t heap = !strcmp(mode, "partial") ? 64 * MIB : 32 * MIB;
  size_t n = build(heap, 1);
  hak_stats_t s = stats_now();
  fprintf(stderr, "%s: %zu blocks, hugetlb_bytes %llu MiB, committed %llu MiB\n", mode, n,
          (unsigned long long)(s.hugetlb_bytes / MIB),
          (unsigned long long)(s.committed_bytes / MIB));
  if (!strcmp(mode, "pool"))
    CHECK(s.hugetlb_bytes > 0, "pool of 64 pages: hugetlb_bytes is 0 with %zu MiB live",
          heap / MIB);
  if (!strcmp(mode, "partial"))
    CHECK(s.hugetlb_bytes > 0 && s.hugetlb_bytes <= 8 * 2 * MIB,
          "pool of 8 pages: hugetlb_bytes is %llu MiB, expected more than 0 and at most 16",
          (unsigned long long)(s.hugetlb_bytes / MIB));
  if (!strcmp(mode, "empty"))
    CHECK(s.hugetlb_bytes == 0, "empty pool: hugetlb_bytes is %llu MiB, expected 0",
          (unsigned long long)(s.hugetlb_bytes / MIB));
  verify_and_free(n, "first heap");

  /* the freed memory comes back dirty (hugetlbfs pages are not purged in
   * parts): calloc must clear it */
  for (size_t i = 0; i < n; i++) {
    blocks[i] = calloc(1, sizes[i]);
    CHECK(blocks[i], "calloc(1, %zu) failed", sizes[i]);
    for (size_t o = 0; o < sizes[i]; o++)
      CHECK(((char *)blocks[i])[o] == 0, "calloc(1, %zu): byte %zu is not zero", sizes[i], o);
    fill_pattern(blocks[i], sizes[i]);
  }
  verify_and_free(n, "calloc heap");
  malloc_trim(0);
  n = build(heap, 2);
  verify_and_free(n, "heap after malloc_trim");
  return 0;
}

/* ---- the checks, in a worker process ---- */

static long pool_set(long pages) {
  CHECK(write_long(NR, pages), "cannot write %s", NR);
  return read_long(NR);
}

static void run_checks(void) {
  static struct child c;
  const char *env[] = {"HAKMEM_HUGETLB=1", NULL};
  CHECK(write_long(OVERCOMMIT, 0), "cannot write %s", OVERCOMMIT);

  long got = pool_set(64);
  long free_pages = read_long(FREE);
  if (got < 24 || free_pages < 24)
    SKIP("the kernel put only %ld huge pages (%ld free) in the pool of 64 asked for", got,
         free_pages);
  printf("pool of %ld pages (%ld free)\n", got, free_pages);
  child_ok("pool", env, &c);
  fputs(c.err, stdout);
  CHECK(hakmem_lines(c.err) == 0, "pool with room: hakmem printed something:\n%s", c.err);

  got = pool_set(8);
  free_pages = read_long(FREE);
  if (free_pages == 8) {
    child_ok("partial", env, &c);
    fputs(c.err, stdout);
    CHECK(hakmem_lines(c.err) == 1 && strstr(c.err, "HAKMEM_HUGETLB"),
          "pool running out: expected one warning line naming HAKMEM_HUGETLB, got:\n%s", c.err);
  } else {
    printf("pool of 8 asked for, %ld free: the running-out case is not checked\n", free_pages);
  }

  got = pool_set(0);
  free_pages = read_long(FREE);
  if (free_pages != 0) SKIP("the pool keeps %ld free pages after setting it to 0", free_pages);
  child_ok("empty", env, &c);
  fputs(c.err, stdout);
  CHECK(hakmem_lines(c.err) == 1 && count_lines(c.err) == 2 && strstr(c.err, "HAKMEM_HUGETLB"),
        "empty pool: expected one warning line naming HAKMEM_HUGETLB (and the child's own "
        "line), got:\n%s",
        c.err);
  printf("hugetlb: ok\n");
}

/* ---- the guardian: saves and restores the pool ---- */

int main(int argc, char **argv) {
  if (argc > 1) return child_main(argv[1]);
  pool_guard();

  fflush(NULL);
  worker = fork();
  if (worker < 0) {
    restore();
    FAIL("fork failed");
  }
  if (worker == 0) {
    run_checks();
    fflush(NULL);
    _exit(0);
  }
  int st;
  while (waitpid(worker, &st, 0) < 0)
    if (errno != EINTR) break;
  worker = 0;
  pool_restore();
  if (WIFEXITED(st)) return WEXITSTATUS(st);
  FAIL("the worker was killed by signal %d", WIFSIGNALED(st) ? WTERMSIG(st) : -1);
}
