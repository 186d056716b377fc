/* Span colors: spans of one size class start their blocks at different
 * offsets within the bytes the blocks leave over.
 *  - blocks of 12 KiB and 5 KiB (sizes that are multiples of 4 KiB, or of
 *    1 KiB, leaving a spare 4 KiB per span) begin at many offsets modulo
 *    4 KiB, not all at one: a program touching their first lines would
 *    otherwise use a few of the cache's sets;
 *  - blocks of a power-of-two size stay aligned to 4 KiB;
 *  - aligned_alloc and posix_memalign of 4 KiB for such sizes are aligned;
 *  - colored blocks do not overlap: each filled whole, all intact after. */
#define _GNU_SOURCE
#include <malloc.h>
#include <stdbool.h>
#include "check.h"

#define BLOCKS 640 /* 30 spans of 12 KiB blocks (4 pages), 25 of 5 KiB */

static void *blk[BLOCKS];

/* Distinct offsets modulo 4 KiB of BLOCKS blocks of size n, each filled
 * whole and checked after all were filled. */
static unsigned offsets(size_t n) {
  bool seen[4096 / 64] = {false};
  unsigned distinct = 0;
  for (int i = 0; i < BLOCKS; i++) {
    blk[i] = malloc(opaque_size(n));
    CHECK(blk[i], "malloc(%zu) failed", n);
    CHECK(((uintptr_t)blk[i] & 63) == 0, "block %p of %zu bytes not on a line", blk[i], n);
    CHECK(malloc_usable_size(blk[i]) >= n, "block %p: usable %zu < %zu", blk[i],
          malloc_usable_size(blk[i]), n);
    fill_pattern(blk[i], n);
    unsigned off = (unsigned)((uintptr_t)blk[i] & 4095) / 64;
    if (!seen[off]) distinct++;
    seen[off] = true;
  }
  for (int i = 0; i < BLOCKS; i++) {
    size_t at = check_pattern(blk[i], n);
    CHECK(at == SIZE_MAX, "block %p of %zu bytes overwritten at byte %zu", blk[i], n, at);
    free(blk[i]);
  }
  return distinct;
}

static void aligned(size_t align, size_t n, bool memalign) {
  for (int i = 0; i < BLOCKS; i++) {
    void *p = NULL;
    if (memalign)
      CHECK(posix_memalign(&p, align, n) == 0, "posix_memalign(%zu, %zu) failed", align, n);
    else
      p = aligned_alloc(align, n);
    CHECK(p, "aligned block of %zu failed", n);
    CHECK(((uintptr_t)p & (align - 1)) == 0, "%p of %zu bytes not aligned to %zu", p, n, align);
    CHECK(malloc_usable_size(p) >= n, "aligned %p: usable %zu < %zu", p, malloc_usable_size(p), n);
    fill_pattern(p, n);
    blk[i] = p;
  }
  for (int i = 0; i < BLOCKS; i++) {
    CHECK(check_pattern(blk[i], n) == SIZE_MAX, "aligned block %p overwritten", blk[i]);
    free(blk[i]);
  }
}

int main(void) {
  unsigned d12 = offsets(12288), d5 = offsets(5120);
  CHECK(d12 >= 16, "12 KiB blocks begin at %u offsets modulo 4 KiB", d12);
  CHECK(d5 >= 16, "5 KiB blocks begin at %u offsets modulo 4 KiB", d5);
  /* power-of-two sizes past page 0: one offset, 0 */
  for (int i = 0; i < BLOCKS; i++) {
    blk[i] = malloc(opaque_size(16384));
    CHECK(blk[i] && ((uintptr_t)blk[i] & 4095) == 0, "16 KiB block %p not on 4 KiB", blk[i]);
  }
  for (int i = 0; i < BLOCKS; i++)
    free(blk[i]);
  aligned(4096, 12288, true);
  aligned(4096, 12288, false);
  aligned(1024, 3072, true);
  aligned(4096, 16384, false);
  printf("span_color: 12 KiB blocks at %u offsets, 5 KiB at %u\n", d12, d5);
  return 0;
}
