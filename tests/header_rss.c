/* Power-of-two buffers plus a small header (redis stores a 16 KiB value as a
 * 16390-byte sds, its reply blocks as 16 KiB plus 16): from 4 KiB to 64 KiB,
 * such a block's usable size is at most 1/32 past the power of two, and N
 * of them, each written whole, cost at most 5% more resident memory than
 * their bytes. Each case starts from a trimmed heap, so its blocks take
 * pages nobody touched yet. */
#include "kmem_util.h"

#include <malloc.h>

#define LIVE_BYTES ((size_t)16 << 20)

int main(void) {
  static void *p[LIVE_BYTES / 4096];
  static const size_t headers[] = {6, 16, 64};
  int failed = 0;
  for (size_t pow = 4096; pow <= 65536; pow *= 2) {
    for (size_t h = 0; h < sizeof headers / sizeof *headers; h++) {
      size_t size = pow + headers[h], n = LIVE_BYTES / size;
      malloc_trim(0);
      long before = (long)(rss_bytes() >> 10);
      for (size_t i = 0; i < n; i++) {
        p[i] = malloc(opaque_size(size));
        CHECK(p[i], "malloc(%zu) failed", size);
        memset(p[i], 0x5a, size);
      }
      long after = (long)(rss_bytes() >> 10);
      size_t usable = malloc_usable_size(p[0]);
      double ratio = (double)(after - before) * 1024 / ((double)size * (double)n);
      printf("%zu x %zu: usable %zu, RSS/live %.3f\n", size, n, usable, ratio);
      if (usable > pow + pow / 32 || ratio > 1.05) {
        printf("FAIL: %zu bytes: usable %zu (at most %zu), RSS/live %.3f (at most 1.05)\n", size,
               usable, pow + pow / 32, ratio);
        failed++;
      }
      for (size_t i = 0; i < n; i++)
        free(p[i]);
    }
  }
  fflush(stdout);
  CHECK(failed == 0, "%d cases over their bound", failed);
  printf("PASS header_rss\n");
  return 0;
}
