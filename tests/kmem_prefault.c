/* HAKMEM_PREFAULT=page populates a fresh 64 KiB page when it is activated
 * (MADV_POPULATE_WRITE), so the program's first touches of its blocks take
 * no page fault; with off every 4 KiB faults on first touch.
 *
 * What getrusage shows: the kernel counts the faults that
 * MADV_POPULATE_WRITE resolves (one per 4 KiB, like any get_user_pages
 * fault) as minor faults of the calling thread. So populating moves the
 * faults into malloc rather than removing them: the test counts ru_minflt
 * separately around the mallocs and around the touching. With page, touching
 * takes (almost) no fault and malloc takes about 16 per activated page;
 * with off, malloc takes about one per block (it writes the free-list link
 * into each block it carves) and touching the rest. Both children run with
 * HAKMEM_THP=0: a huge page would fault 2 MiB at once and hide the
 * difference. HAKMEM_PREFAULT=ahead (a background thread populates the next
 * pages) races the program, so it is only run for correctness here.
 * Blocks of 80 KiB, each on a span of its own 2 pages, populate what the
 * block covers, not the span's tail. */
#include "kmem_util.h"

#define HEAP (64 * MIB)

static size_t block; /* 16 KiB; 12 KiB: blocks on colored spans, which start past their page */
static size_t nblk;
static void *blocks[HEAP / (12 * KIB)];

static int child_main(void) {
  hak_stats_t s0 = stats_now();
  long f0 = minor_faults();
  for (size_t i = 0; i < nblk; i++) {
    blocks[i] = malloc(block);
    CHECK(blocks[i], "malloc(%zu) failed", block);
  }
  long f1 = minor_faults();
  for (size_t i = 0; i < nblk; i++)
    touch(blocks[i], block);
  long f2 = minor_faults();
  hak_stats_t s1 = stats_now();
  /* where THP is "always" the kernel may use huge pages anyway (kmem_thp
   * checks HAKMEM_THP=0 itself); the counts below assume 4 KiB pages */
  if (s1.thp_bytes > 0)
    SKIP("%llu MiB of the heap is on transparent huge pages despite HAKMEM_THP=0: fault counts "
         "per 4 KiB cannot be measured",
         (unsigned long long)(s1.thp_bytes / MIB));
  /* the memory reads as zero where it was not written, and holds data */
  for (size_t i = 0; i < nblk; i++) {
    const char *b = blocks[i];
    CHECK(b[1] == 0 && b[4097] == 0 && b[block - 2] == 0, "block %zu is not zero", i);
    fill_pattern(blocks[i], block);
  }
  for (size_t i = 0; i < nblk; i++) {
    CHECK(check_pattern(blocks[i], block) == SIZE_MAX, "block %zu lost its data", i);
    free(blocks[i]);
  }
  fprintf(stderr, "RESULT malloc_faults=%ld touch_faults=%ld pages=%llu\n", f1 - f0, f2 - f1,
          (unsigned long long)(s1.pages_activated - s0.pages_activated));
  return 0;
}

struct result {
  long malloc_faults, touch_faults, pages;
};

static struct result measure(const char *prefault, size_t size) {
  char var[64], mode[32];
  snprintf(var, sizeof var, "HAKMEM_PREFAULT=%s", prefault);
  snprintf(mode, sizeof mode, "%zu", size);
  const char *env[] = {var, "HAKMEM_THP=0", NULL};
  static struct child c;
  child_ok(mode, env, &c);
  struct result r = {0};
  const char *line = strstr(c.err, "RESULT ");
  CHECK(line && sscanf(line, "RESULT malloc_faults=%ld touch_faults=%ld pages=%ld",
                       &r.malloc_faults, &r.touch_faults, &r.pages) == 3,
        "%s: no RESULT line from the child:\n%s", var, c.err);
  CHECK(r.pages >= (long)(HEAP / (64 * KIB)), "%s: only %ld pages activated for %zu MiB", var,
        r.pages, HEAP / MIB);
  printf("%-22s %2zu KiB: malloc faults %6ld, touch faults %6ld, pages activated %5ld: %.2f + "
         "%.2f per page\n",
         var, size / KIB, r.malloc_faults, r.touch_faults, r.pages,
         (double)r.malloc_faults / (double)r.pages, (double)r.touch_faults / (double)r.pages);
  return r;
}

int main(int argc, char **argv) {
  if (argc > 1) {
    block = strtoul(argv[1], NULL, 10);
    nblk = HEAP / block;
    return child_main();
  }
  struct result off = measure("off", 16 * KIB);
  struct result page = measure("page", 16 * KIB);
  struct result colored = measure("page", 12 * KIB);
  struct result own = measure("page", 80 * KIB);
  measure("ahead", 16 * KIB);
  double off_touch = (double)off.touch_faults / (double)off.pages;
  double page_touch = (double)page.touch_faults / (double)page.pages;
  double page_total = (double)(page.malloc_faults + page.touch_faults) / (double)page.pages;
  /* off: 16 faults per 64 KiB in all, most of them on touching */
  CHECK(off_touch >= 8,
        "HAKMEM_PREFAULT=off: only %.2f faults per 64 KiB page on touching, "
        "expected about 12-16 (one per 4 KiB)",
        off_touch);
  /* page: touching is free of faults; a few may come from the program's own
   * pages (stack, the blocks array) */
  CHECK(page_touch <= 0.25,
        "HAKMEM_PREFAULT=page: %.2f faults per 64 KiB page on touching (%ld in all), expected "
        "none: the pages should have been populated on activation",
        page_touch, page.touch_faults);
  /* the same where spans start their blocks past their first 4 KiB boundary */
  double colored_touch = (double)colored.touch_faults / (double)colored.pages;
  CHECK(colored_touch <= 0.25,
        "HAKMEM_PREFAULT=page, 12 KiB blocks: %.2f faults per 64 KiB page on touching, expected "
        "none: spans with colors should have been populated too",
        colored_touch);
  /* a block of 80 KiB has a span of its own 2 pages, 48 KiB of it past the
   * block: the 21 4 KiB pages the block (and its color) covers are
   * populated, not the 11 of the tail no block uses (16 per page) */
  double own_total = (double)(own.malloc_faults + own.touch_faults) / (double)own.pages;
  CHECK(own_total <= 12,
        "HAKMEM_PREFAULT=page, 80 KiB blocks: %.2f faults per 64 KiB page, expected about 10.5: "
        "the span's tail past its block was populated too",
        own_total);
  /* and the faults did not multiply: populating costs about what touching did */
  CHECK(page_total <= 20,
        "HAKMEM_PREFAULT=page: %.2f faults per 64 KiB page in all, expected "
        "at most about 16",
        page_total);
  printf("prefault: ok\n");
  return 0;
}
