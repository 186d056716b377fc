/* HAKMEM_PREFAULT=large (the default): a large block (a run of 64 KiB pages,
 * past 128 KiB) that malloc hands out on fresh pages is populated at once
 * (MADV_POPULATE_WRITE), the 4 KiB pages of the bytes asked for and not the
 * span's tail past them; calloc's fresh blocks are not (their zero pages may
 * stay untouched), nor blocks under HAKMEM_PREFAULT=off.
 *
 * Each child takes one 1 MiB block (memcached's slab page), then one of
 * 200000 B (49 4 KiB pages of a 4-page span: 15 of tail), from fresh pages and
 * counts with mincore which of their 4 KiB pages are resident before it
 * touches them. Children run with HAKMEM_THP=0: a huge page would make the
 * tail resident with the block. */
#include <sys/mman.h>
#include "kmem_util.h"

#define SPAN_4K(size) (((size) + 64 * KIB - 1) / (64 * KIB) * 16) /* 4 KiB pages of its span */

static const size_t sizes[] = {1 * MIB, 200000};

/* Resident 4 KiB pages of [p, p + n4k * 4 KiB). */
static size_t resident(void *p, size_t n4k) {
  unsigned char vec[SPAN_4K(1 * MIB)];
  CHECK(n4k <= sizeof vec && mincore(p, n4k * 4096, vec) == 0, "mincore(%p, %zu pages): %s", p, n4k,
        strerror(errno));
  size_t n = 0;
  for (size_t i = 0; i < n4k; i++)
    n += vec[i] & 1;
  return n;
}

static int child_main(const char *mode) {
  bool clear = !strcmp(mode, "calloc");
  char *blocks[2];
  for (size_t k = 0; k < sizeof sizes / sizeof sizes[0]; k++) {
    size_t size = sizes[k], block = (size + 4095) / 4096, span = SPAN_4K(size);
    hak_stats_t s0 = stats_now();
    char *p = clear ? calloc(1, size) : malloc(size);
    hak_stats_t s1 = stats_now();
    CHECK(p && ((uintptr_t)p & (64 * KIB - 1)) == 0,
          "%s(%zu) = %p, expected a 64 KiB aligned block", mode, size, (void *)p);
    CHECK(s1.pages_fresh - s0.pages_fresh == span / 16,
          "%s(%zu): %llu fresh 64 KiB pages taken, expected %zu", mode, size,
          (unsigned long long)(s1.pages_fresh - s0.pages_fresh), span / 16);
    if (s1.thp_bytes > 0) SKIP("the heap is on transparent huge pages despite HAKMEM_THP=0");
    size_t in_block = resident(p, block), in_tail = resident(p + block * 4096, span - block);
    fprintf(stderr, "RESULT %zu %zu %zu\n", size, in_block, in_tail);
    /* populated or not, it reads zero and holds what is written */
    for (size_t o = 0; o < size; o += 4096)
      CHECK(p[o] == 0 && p[size - 1] == 0, "%s(%zu): byte %zu is not zero", mode, size, o);
    memset(p, 0x5a, size);
    CHECK(p[size / 2] == 0x5a && p[size - 1] == 0x5a, "%s(%zu): lost its data", mode, size);
    blocks[k] = p; /* kept: the next block takes fresh pages too */
  }
  free(blocks[0]);
  free(blocks[1]);
  return 0;
}

/* Resident pages of the block and of its tail, per size, as the child saw them. */
static void measure(const char *mode, const char *prefault, size_t in_block[2], size_t in_tail[2]) {
  const char *env[] = {"HAKMEM_THP=0", prefault, NULL}; /* prefault NULL: the default */
  static struct child c;
  child_ok(mode, env, &c);
  const char *line = c.err;
  for (size_t k = 0; k < 2; k++) {
    size_t size = 0;
    line = strstr(line, "RESULT ");
    CHECK(line && sscanf(line, "RESULT %zu %zu %zu", &size, &in_block[k], &in_tail[k]) == 3 &&
              size == sizes[k],
          "%s with %s: no RESULT line for %zu B from the child:\n%s", mode,
          prefault ? prefault : "defaults", sizes[k], c.err);
    line++;
    printf("%-6s %-21s %7zu B: %3zu of %3zu block pages resident, %2zu of %2zu tail pages\n", mode,
           prefault ? prefault : "(default)", sizes[k], in_block[k], (sizes[k] + 4095) / 4096,
           in_tail[k], SPAN_4K(sizes[k]) - (sizes[k] + 4095) / 4096);
  }
}

int main(int argc, char **argv) {
  if (argc > 1) return child_main(argv[1]);
  size_t blk[2], tail[2];
  measure("malloc", NULL, blk, tail);
  for (size_t k = 0; k < 2; k++) {
    size_t want = (sizes[k] + 4095) / 4096;
    CHECK(blk[k] == want,
          "malloc(%zu): %zu of its %zu 4 KiB pages resident before any touch, expected all: "
          "a fresh large block should be populated",
          sizes[k], blk[k], want);
    CHECK(tail[k] == 0, "malloc(%zu): %zu pages of the span's tail past the block resident",
          sizes[k], tail[k]);
  }
  measure("malloc", "HAKMEM_PREFAULT=large", blk, tail);
  CHECK(blk[0] == 256 && blk[1] == 49, "HAKMEM_PREFAULT=large: %zu and %zu pages resident", blk[0],
        blk[1]);
  /* at most a page the allocator itself writes */
  measure("calloc", NULL, blk, tail);
  CHECK(blk[0] <= 1 && blk[1] <= 1,
        "calloc: %zu and %zu pages of fresh large blocks resident before any touch, "
        "expected none: calloc's zero pages are not populated",
        blk[0], blk[1]);
  measure("malloc", "HAKMEM_PREFAULT=off", blk, tail);
  CHECK(blk[0] <= 1 && blk[1] <= 1,
        "HAKMEM_PREFAULT=off: %zu and %zu pages of fresh large blocks resident before any touch, "
        "expected none",
        blk[0], blk[1]);
  printf("populate_large: ok\n");
  return 0;
}
