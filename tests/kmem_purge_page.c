/* HAKMEM_PURGE=page gives back the free pages of a region that is still in
 * use after the purge delay; region mode (the default) gives back whole
 * empty regions after the delay, and the free pages of regions in use only
 * once the process took or freed no span for 16 delays (settled).
 *
 * A child allocates 128 MiB in 16 KiB blocks and touches them, then frees
 * every block except one per 2 MiB region, so no region is empty but almost
 * all their pages are free. After twice HAKMEM_PURGE_DELAY_MS (50 ms) idle:
 *  - page: RSS has dropped by at least 85% of what was freed, and the
 *    purge counters account for it;
 *  - region: RSS has not dropped (less than 10% of it), no purge happened;
 *    then, past 16 delays, it drops as in page mode (a region keeping one
 *    block kept its 2 MiB resident for good before).
 * As in kmem_rss_return, a drop later than expected is noted, and accepted
 * up to GRACE_MS after the expected time. */
#include "kmem_util.h"

#define DELAY_MS 50
#define HEAP (128 * MIB)
#define BLOCK (16 * KIB)
#define NBLK (HEAP / BLOCK)
#define REGION (2 * MIB)
#define GRACE_MS 3000
/* the pool settles after 16 delays without span traffic; the background
 * thread looks at least once a second */
#define SETTLED_MS (16 * DELAY_MS + 1000)

static void *blocks[NBLK];

static int child_main(const char *mode) {
  size_t base = rss_bytes();
  for (size_t i = 0; i < NBLK; i++) {
    blocks[i] = malloc(BLOCK);
    CHECK(blocks[i], "malloc(%zu) failed", (size_t)BLOCK);
    touch(blocks[i], BLOCK);
  }
  size_t peak = rss_bytes();
  CHECK(peak >= base + HEAP / 10 * 9, "%s: touching 128 MiB raised RSS only by %zu MiB", mode,
        (peak - base) / MIB);
  /* keep the first block seen in each region, free the others */
  static uintptr_t kept_region[NBLK];
  size_t nkept = 0, freed = 0;
  for (size_t i = 0; i < NBLK; i++) {
    uintptr_t r = (uintptr_t)blocks[i] & ~(uintptr_t)(REGION - 1);
    bool seen = false;
    for (size_t k = 0; k < nkept && !seen; k++)
      seen = kept_region[k] == r;
    if (!seen) {
      kept_region[nkept++] = r;
      fill_pattern(blocks[i], BLOCK);
      continue;
    }
    free(blocks[i]);
    blocks[i] = NULL;
    freed += BLOCK;
  }
  hak_stats_t s0 = stats_now();
  long idle = now_ms();
  sleep_ms(2 * DELAY_MS);
  size_t at_2x = rss_bytes(), rss = at_2x;
  hak_stats_t s_2x = stats_now();
  size_t target = peak - freed / 100 * 85;
  bool page = !strcmp(mode, "page");
  long expected = page ? 2 * DELAY_MS : SETTLED_MS + 2 * DELAY_MS;
  while (rss > target && now_ms() - idle < expected + GRACE_MS) {
    sleep_ms(20);
    rss = rss_bytes();
  }
  hak_stats_t s1 = stats_purged(&s0, freed / 100 * 85, 1000);
  fprintf(stderr,
          "%s: %zu regions keep one block; rss %zu MiB touched, %zu MiB freed, %zu MiB after 2x "
          "delay, %zu MiB at the end (%ld ms); purges %llu, purged %llu MiB\n",
          mode, nkept, peak / MIB, freed / MIB, at_2x / MIB, rss / MIB, now_ms() - idle,
          (unsigned long long)(s1.purges - s0.purges),
          (unsigned long long)((s1.purged_bytes - s0.purged_bytes) / MIB));
  CHECK(nkept >= HEAP / REGION / 2, "%s: 128 MiB of blocks fell into only %zu regions", mode,
        nkept);
  if (!page) {
    CHECK(at_2x + freed / 10 >= peak,
          "HAKMEM_PURGE=region: RSS dropped from %zu to %zu MiB within 2x the delay although no "
          "region was empty",
          peak / MIB, at_2x / MIB);
    CHECK(s_2x.purges == s0.purges,
          "HAKMEM_PURGE=region: %llu purges within 2x the delay with no region empty",
          (unsigned long long)(s_2x.purges - s0.purges));
  }
  if (rss > target) {
    /* tell an idle purger that never ran from purging that does not work */
    for (int i = 0; i < 200; i++)
      free(opaque_ptr(malloc((size_t)16 << (i % 15))));
    sleep_ms(2 * DELAY_MS);
    size_t after = rss_bytes();
    FAIL("%s: RSS still %zu MiB %ld ms after freeing %zu MiB of %zu MiB touched "
         "(expected at most %zu MiB within %ld ms): the free pages "
         "of regions in use were not given back while idle; after some malloc/free RSS is "
         "%zu MiB (%s)",
         mode, rss / MIB, now_ms() - idle, freed / MIB, peak / MIB, target / MIB, expected,
         after / MIB,
         after <= target ? "purging works, but only from allocation calls: the background "
                           "purger did not do it"
                         : "not even then");
  }
  if (now_ms() - idle > expected + 100)
    fprintf(stderr, "NOTE: RSS came back only after %ld ms, not within %ld ms\n", now_ms() - idle,
            expected);
  CHECK(s1.purged_bytes - s0.purged_bytes >= freed / 100 * 85,
        "%s: only %llu MiB purged of %zu MiB freed", mode,
        (unsigned long long)((s1.purged_bytes - s0.purged_bytes) / MIB), freed / MIB);
  for (size_t i = 0; i < NBLK; i++) {
    if (!blocks[i]) continue;
    CHECK(check_pattern(blocks[i], BLOCK) == SIZE_MAX, "%s: a kept block lost its data", mode);
    free(blocks[i]);
  }
  return 0;
}

int main(int argc, char **argv) {
  if (argc > 1) return child_main(argv[1]);
  static struct child c;
  const char *page[] = {"HAKMEM_PURGE_DELAY_MS=50", "HAKMEM_PURGE=page", NULL};
  const char *region[] = {"HAKMEM_PURGE_DELAY_MS=50", "HAKMEM_PURGE=region", NULL};
  child_ok("region", region, &c);
  fputs(c.err, stdout);
  child_ok("page", page, &c);
  fputs(c.err, stdout);
  printf("purge page: ok\n");
  return 0;
}
