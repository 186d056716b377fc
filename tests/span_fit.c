/* A block longer than a page fits the free pages smaller classes leave:
 * 1 KiB blocks fill three regions' worth of 1-page spans, then the blocks of
 * three pages in every four are freed, which leaves runs of at most three
 * free, touched pages between the kept ones. 100 KB blocks allocated then
 * must take those pages (counted as reused), not fresh ones: with spans of
 * 8 pages (4 blocks of the 112 KiB class) none fits, and the process grows
 * by as much as it left free. */
#include "check.h"
#include "hakmem.h"

#define SMALL 1024
#define NSMALL (3 * 32 * 64) /* three regions of 64 KiB pages of 1 KiB blocks */
#define LARGE 100000
#define NLARGE 16
#define PAGE_SHIFT 16

static char *small[NSMALL];
static char *large[NLARGE];

static hak_stats_t stats(void) {
  hak_stats_t s;
  hak_stats_get(&s);
  return s;
}

/* Pages of every four by address, one of which keeps its blocks. */
static int kept(const void *p) {
  return ((uintptr_t)p >> PAGE_SHIFT) % 4 == 3;
}

int main(void) {
  for (int i = 0; i < NSMALL; i++) {
    small[i] = malloc(opaque_size(SMALL));
    CHECK(small[i], "malloc(%d) failed", SMALL);
    fill_pattern(small[i], SMALL);
  }
  for (int i = 0; i < NSMALL; i++)
    if (!kept(small[i])) {
      free(small[i]);
      small[i] = NULL;
    }
  hak_stats_t before = stats();
  for (int i = 0; i < NLARGE; i++) {
    large[i] = malloc(opaque_size(LARGE));
    CHECK(large[i], "malloc(%d) failed", LARGE);
    memset(large[i], 0x5a, LARGE);
  }
  hak_stats_t after = stats();
  uint64_t fresh = after.pages_fresh - before.pages_fresh;
  uint64_t reused = after.pages_reused - before.pages_reused;
  printf("%d blocks of %d B: %llu fresh pages, %llu reused\n", NLARGE, LARGE,
         (unsigned long long)fresh, (unsigned long long)reused);
  CHECK(fresh == 0, "%llu fresh pages taken while freed pages of 1 KiB blocks were free",
        (unsigned long long)fresh);
  CHECK(reused >= NLARGE * (LARGE >> PAGE_SHIFT), "only %llu pages reused",
        (unsigned long long)reused);
  for (int i = 0; i < NSMALL; i++)
    if (small[i]) {
      expect_pattern(small[i], SMALL);
      free(small[i]);
    }
  for (int i = 0; i < NLARGE; i++)
    free(large[i]);
  printf("span_fit: ok\n");
  return 0;
}
