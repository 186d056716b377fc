/* The spans of every size class from 4 KiB to 64 KiB leave little of their
 * pages to no block: 32 MiB of blocks of a class's exact size, all live and
 * never written, must commit at most 5% more than their bytes. All of a
 * span's pages are committed, and once the span is freed they serve other
 * classes, which touch them: a tail no block covers becomes resident (a heap
 * of 16-64 KiB blocks, built four times over, grew by a tenth when spans
 * left up to 1/8 of their pages unused). The classes are found through
 * malloc_usable_size; the blocks of each class stay live, so every class
 * takes pages nobody had before. */
#include "check.h"
#include "hakmem.h"

#include <malloc.h>

#define CLASS_BYTES ((size_t)32 << 20)

static uint64_t committed(void) {
  hak_stats_t s;
  hak_stats_get(&s);
  return s.committed_bytes;
}

int main(void) {
  static void *p[CLASS_BYTES / 4096];
  int classes = 0;
  for (size_t size = 4096; size <= 65536; classes++) {
    void *probe = malloc(opaque_size(size));
    CHECK(probe, "malloc(%zu)", size);
    size_t bs = malloc_usable_size(probe);
    free(probe);
    CHECK(bs >= size, "usable size %zu below %zu", bs, size);
    size_t n = CLASS_BYTES / bs;
    uint64_t before = committed();
    for (size_t i = 0; i < n; i++) {
      p[i] = malloc(opaque_size(bs));
      CHECK(p[i], "malloc(%zu) #%zu", bs, i);
    }
    double ratio = (double)(committed() - before) / (double)(n * bs);
    printf("%zu B: committed / live %.3f\n", bs, ratio);
    CHECK(ratio <= 1.05, "class of %zu B: %.3f of its bytes committed (> 1.05)", bs, ratio);
    size = bs + 1;
  }
  CHECK(classes >= 16, "only %d classes from 4 to 64 KiB", classes);
  printf("%d classes\n", classes);
  return 0;
}
