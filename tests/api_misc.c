/* The rest of the malloc family, called through the real symbol names in a
 * program linked with the archive: free(NULL), realloc(NULL, n) as malloc,
 * malloc_usable_size(NULL), free_sized, free_aligned_sized, malloc_trim,
 * mallinfo2, mallopt, malloc_stats. None may crash or count as invalid. */
#define _GNU_SOURCE
#include <malloc.h>
#include "check.h"
#include "hakmem.h"

/* C23 names glibc 2.36 does not declare; weak so a missing export is a
 * test failure rather than a build failure. */
extern void free_sized(void *p, size_t size) __attribute__((weak));
extern void free_aligned_sized(void *p, size_t alignment, size_t size) __attribute__((weak));

static const size_t sizes[] = {1, 16, 100, 1000, 20000, 65536, 300000, 3 << 20};
#define NSIZES (sizeof sizes / sizeof sizes[0])

static void *fresh(size_t n) {
  void *p = malloc(opaque_size(n));
  CHECK(p, "malloc(%zu) failed", n);
  memset(p, 1, n);
  return p;
}

int main(void) {
  hak_stats_t before, after;
  hak_stats_get(&before);

  free(NULL);
  hak_free(NULL);
  CHECK(malloc_usable_size(NULL) == 0, "malloc_usable_size(NULL) != 0");

  for (size_t i = 0; i < NSIZES; i++) {
    size_t n = sizes[i];
    void *p = realloc(NULL, opaque_size(n));
    CHECK(p && malloc_usable_size(p) >= n && hak_owns(p), "realloc(NULL, %zu) is not malloc", n);
    memset(p, 2, n);
    free(p);
    p = hak_realloc(NULL, opaque_size(n));
    CHECK(p && hak_malloc_usable_size(p) >= n, "hak_realloc(NULL, %zu) is not malloc", n);
    hak_free(p);
  }

  CHECK(free_sized != NULL, "free_sized is not exported");
  CHECK(free_aligned_sized != NULL, "free_aligned_sized is not exported");
  for (size_t i = 0; i < NSIZES; i++) {
    size_t n = sizes[i];
    free_sized(fresh(n), n);
    hak_free_sized(fresh(n), n);
    for (size_t a = 16; a <= 65536; a *= 16) {
      void *p = aligned_alloc(a, n);
      CHECK(p, "aligned_alloc(%zu, %zu) failed", a, n);
      free_aligned_sized(p, a, n);
      p = aligned_alloc(a, n);
      CHECK(p, "aligned_alloc(%zu, %zu) failed", a, n);
      hak_free_aligned_sized(p, a, n);
    }
  }

  /* Leave some free memory around so trim has something to consider. */
  void *keep = fresh(100);
  for (size_t i = 0; i < NSIZES; i++)
    free(fresh(sizes[i]));
  int t = malloc_trim(0);
  CHECK(t == 0 || t == 1, "malloc_trim(0) returned %d", t);
  t = hak_malloc_trim(1 << 20);
  CHECK(t == 0 || t == 1, "hak_malloc_trim returned %d", t);

  struct mallinfo2 mi = mallinfo2();
  (void)mi;
  /* mallopt may decline a parameter (returns 0), but must not crash. */
  int r = mallopt(M_TRIM_THRESHOLD, 1 << 20);
  r |= mallopt(M_MMAP_THRESHOLD, 1 << 20);
  r |= mallopt(M_ARENA_MAX, 2);
  CHECK(r == 0 || r == 1, "mallopt returned %d", r);
  malloc_stats();
  free(keep);

  /* Everything still works afterwards and nothing counted as invalid. */
  for (size_t i = 0; i < NSIZES; i++)
    free(fresh(sizes[i]));
  hak_stats_get(&after);
  CHECK(after.invalid_frees == before.invalid_frees, "%llu valid frees counted as invalid",
        (unsigned long long)(after.invalid_frees - before.invalid_frees));
  return 0;
}
