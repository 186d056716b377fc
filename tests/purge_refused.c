/* Purges the kernel refuses leave the counters as they were: pages of
 * mlock'ed memory cannot be purged (MADV_DONTNEED on locked pages fails),
 * so an empty region there is collected whole by every malloc_trim and
 * comes back unpurged. committed_bytes must stay where the first trim left
 * it: each refused purge once took the region's descriptors page off again,
 * and after a few hundred trims the counter wrapped below zero (a program
 * that calls mlockall got there from the background thread alone). */
#define _GNU_SOURCE
#include <sys/mman.h>
#include "kmem_util.h"

#define BLOCKS 64
#define BLOCK 32768
#define TRIMS 300
#define REGION ((uintptr_t)2 << 20)

int main(void) {
  void *b[BLOCKS];
  for (int i = 0; i < BLOCKS; i++) {
    b[i] = malloc(opaque_size(BLOCK));
    CHECK(b[i], "malloc failed");
    memset(b[i], 1, BLOCK);
  }
  for (int i = 0; i < BLOCKS; i++) {
    uintptr_t r = (uintptr_t)b[i] & ~(REGION - 1);
    if (mlock((void *)r, REGION) != 0) SKIP("mlock of a 2 MiB region refused (RLIMIT_MEMLOCK)");
  }
  for (int i = 0; i < BLOCKS; i++)
    free(b[i]);
  uint64_t first = stats_trimmed().committed_bytes;
  for (int i = 1; i <= TRIMS; i++) {
    uint64_t now = stats_trimmed().committed_bytes;
    CHECK(now == first, "trim %d of locked empty regions: committed %llu, %llu after the first", i,
          (unsigned long long)now, (unsigned long long)first);
  }
  printf("%d trims of locked empty regions: committed stays %llu bytes\n", TRIMS,
         (unsigned long long)first);
  return 0;
}
