/* What an emptied region keeps: after a program freed everything and called
 * malloc_trim(0), each region it made holds one 4 KiB page of bookkeeping
 * (its header), not two: the page of its span descriptors goes back with
 * its pages when the region is purged whole. 512 MiB of 16-64 KiB blocks
 * (about 290 regions) are allocated, written, freed and trimmed twice; the
 * committed bytes may exceed those after a first trim by 4 KiB per region
 * made and 256 KiB. Regions touched only in part count too: a span of
 * several pages never starts on page 0. */
#include "kmem_util.h"

#define LIVE (512 * MIB)

static void *blocks[LIVE / (16 * KIB)];

int main(void) {
  hak_stats_t s0 = stats_trimmed();
  for (int round = 1; round <= 2; round++) {
    size_t live = 0, n = 0;
    struct rng r = {(uint64_t)round};
    while (live < LIVE) {
      size_t sz = 16 * KIB + rng_next(&r) % (48 * KIB);
      blocks[n] = malloc(opaque_size(sz));
      CHECK(blocks[n], "malloc(%zu) failed", sz);
      memset(blocks[n++], 0x5a, sz);
      live += sz;
    }
    for (size_t i = 0; i < n; i++)
      free(blocks[i]);
    hak_stats_t s = stats_trimmed();
    uint64_t made = s.regions_reserved - s0.regions_reserved;
    uint64_t allowed = s0.committed_bytes + made * 4 * KIB + 256 * KIB;
    printf("round %d: %zu blocks; %llu regions made, committed %llu KiB after the trim (%llu "
           "before, at most %llu)\n",
           round, n, (unsigned long long)made, (unsigned long long)(s.committed_bytes / KIB),
           (unsigned long long)(s0.committed_bytes / KIB), (unsigned long long)(allowed / KIB));
    CHECK(made > 100, "only %llu regions made", (unsigned long long)made);
    CHECK(s.committed_bytes <= allowed,
          "round %d: %llu KiB committed after freeing everything and malloc_trim(0), more than "
          "%llu before and 4 KiB for each of the %llu regions made",
          round, (unsigned long long)(s.committed_bytes / KIB),
          (unsigned long long)(s0.committed_bytes / KIB), (unsigned long long)made);
  }
  return 0;
}
