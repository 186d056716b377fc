/* calloc returns zeroed memory also when it reuses blocks that were dirty:
 * fill blocks of a size, free them, calloc the same size (and neighbouring
 * sizes of the same class) again and check every byte. A "known zero" bit
 * that is not cleared on reuse fails here. */
#define _GNU_SOURCE
#include <malloc.h>
#include "check.h"
#include "hakmem.h"

#define BATCH 64

static void check_zero(const unsigned char *p, size_t n, const char *what, size_t req) {
  for (size_t i = 0; i < n; i++)
    CHECK(p[i] == 0, "%s(%zu): byte %zu of %zu is 0x%02x, not zero", what, req, i, n, p[i]);
}

/* A batch of dirty blocks freed at once, then a batch of calloc'd blocks:
 * the allocator hands the same memory back in some order. */
static void dirty_then_calloc(size_t n, int batch) {
  void *blocks[BATCH];
  for (int i = 0; i < batch; i++) {
    blocks[i] = malloc(opaque_size(n));
    CHECK(blocks[i], "malloc(%zu) failed", n);
    memset(blocks[i], 0xAB, malloc_usable_size(blocks[i]));
  }
  for (int i = 0; i < batch; i++)
    free(blocks[i]);
  for (int i = 0; i < batch; i++) {
    /* Alternate the two factor orders and the hak_ entry point. */
    unsigned char *p = i % 3 == 0   ? calloc(1, opaque_size(n))
                       : i % 3 == 1 ? calloc(opaque_size(n), 1)
                                    : hak_calloc(1, opaque_size(n));
    CHECK(p, "calloc(%zu) failed", n);
    check_zero(p, n, "calloc", n);
    blocks[i] = p;
  }
  for (int i = 0; i < batch; i++) {
    memset(blocks[i], 0xCD, n);
    free(blocks[i]);
  }
}

/* Dirty one size, calloc a slightly different one that likely shares the
 * size class (and so the same freed block). */
static void neighbour_sizes(size_t n) {
  for (size_t d = 1; d <= 24 && d < n; d += 7) {
    void *p = malloc(opaque_size(n));
    CHECK(p, "malloc(%zu) failed", n);
    memset(p, 0xEE, malloc_usable_size(p));
    free(p);
    unsigned char *q = calloc(opaque_size(n - d), 1);
    CHECK(q, "calloc(%zu) failed", n - d);
    check_zero(q, n - d, "calloc", n - d);
    free(q);
  }
}

/* Huge blocks dirtied, shrunk in place by realloc and freed, then calloc'd
 * smaller, equal and larger: a cached mapping that is reused (or grown in
 * place) must not come back with the old bytes. */
static void huge_reuse(void) {
  size_t sizes[] = {4 << 20, 5 << 20, 20 << 20, 24 << 20};
  for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
    char *p = malloc(opaque_size(20 << 20));
    CHECK(p, "malloc(20 MiB) failed");
    memset(p, 0xAB, 20 << 20);
    char *q = realloc(p, 5 << 20);
    CHECK(q, "realloc(20 MiB -> 5 MiB) failed");
    free(q);
    unsigned char *z = calloc(1, opaque_size(sizes[i]));
    CHECK(z, "calloc(%zu) failed", sizes[i]);
    check_zero(z, sizes[i], "calloc after a huge realloc", sizes[i]);
    memset(z, 0xCD, sizes[i]);
    free(z);
  }
}

int main(void) {
  huge_reuse();
  for (size_t n = 1; n <= 1024; n++)
    dirty_then_calloc(n, 8);
  for (size_t n = 1024; n <= 65536; n += n / 16) {
    dirty_then_calloc(n, 16);
    neighbour_sizes(n);
  }
  /* Large and huge blocks: reuse of page runs and cached mappings. */
  size_t big[] = {100 * 1024, 300 * 1024, 1 << 20, (1 << 20) + 1, 3 << 20, 8 << 20, 50 << 20};
  for (size_t i = 0; i < sizeof big / sizeof big[0]; i++) {
    dirty_then_calloc(big[i], 4);
    neighbour_sizes(big[i]);
  }
  /* calloc with a real element count. */
  for (size_t count = 1; count <= 4096; count *= 4) {
    size_t n = count * 24;
    void *p = malloc(n);
    CHECK(p, "malloc(%zu) failed", n);
    memset(p, 0x11, n);
    free(p);
    unsigned char *q = calloc(opaque_size(count), 24);
    CHECK(q, "calloc(%zu, 24) failed", count);
    check_zero(q, n, "calloc(count*24)", n);
    free(q);
  }
  return 0;
}
