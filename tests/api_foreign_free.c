/* free of pointers hakmem never handed out (stack, static array, mmap'd
 * memory, including 2 MiB-aligned mappings that look like a region start and
 * unreadable ones) must not crash and must each count one invalid_frees.
 * free(NULL) is fine and counts nothing. */
#define _GNU_SOURCE
#include <sys/mman.h>
#include "check.h"
#include "hakmem.h"

#define REGION (2u << 20)

static char static_array[4096] __attribute__((aligned(64)));

static int frees;

static void foreign_free(void *p) {
  CHECK(!hak_owns(p), "hak_owns(%p) claims a foreign pointer", p);
  free(opaque_ptr(p));
  frees++;
}

/* A 2 MiB-aligned address inside a fresh mapping of 4 MiB. */
static char *aligned_mapping(int prot) {
  char *m = mmap(NULL, 2 * REGION, prot, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  CHECK(m != MAP_FAILED, "mmap failed");
  return (char *)(((uintptr_t)m + REGION - 1) & ~(uintptr_t)(REGION - 1));
}

int main(void) {
  hak_stats_t before, after;
  /* One malloc first so the allocator is initialised, like any program. */
  void *mine = malloc(32);
  CHECK(mine, "malloc(32) failed");
  hak_stats_get(&before);

  char stack_buf[256];
  foreign_free(stack_buf);
  foreign_free(stack_buf + 16);

  foreign_free(static_array);
  foreign_free(static_array + 16);
  foreign_free(static_array + 1000);

  char *m = mmap(NULL, 65536, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  CHECK(m != MAP_FAILED, "mmap failed");
  memset(m, 0xFF, 65536);
  foreign_free(m);
  foreign_free(m + 16);
  foreign_free(m + 4096);

  /* Looks like a region: aligned like one and full of plausible pointers. */
  char *r = aligned_mapping(PROT_READ | PROT_WRITE);
  for (size_t i = 0; i < 65536 / sizeof(void *); i++)
    ((void **)r)[i] = r + 64 * i;
  foreign_free(r);
  foreign_free(r + 64);
  foreign_free(r + 65536 + 128);

  /* Reading a header here would fault: the allocator must not read it. */
  char *none = aligned_mapping(PROT_NONE);
  foreign_free(none);
  foreign_free(none + 16);
  foreign_free(none + 65536);

  free(NULL);
  free(NULL);
  hak_free(NULL);

  hak_stats_get(&after);
  uint64_t counted = after.invalid_frees - before.invalid_frees;
  CHECK(counted == (uint64_t)frees, "invalid_frees went up by %llu for %d foreign frees",
        (unsigned long long)counted, frees);

  /* The allocator is still fine, and own frees count nothing. */
  free(mine);
  for (int i = 0; i < 1000; i++)
    free(malloc((size_t)i * 37));
  hak_stats_get(&before);
  CHECK(before.invalid_frees == after.invalid_frees, "valid frees counted as invalid");
  return 0;
}
