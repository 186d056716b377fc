/* Impossible sizes and bad alignments: NULL (or an error code) with the
 * documented errno, no crash, and for realloc the old block untouched and
 * still usable. Sizes near SIZE_MAX also catch overflow in rounding. */
#define _GNU_SOURCE
#include <errno.h>
#include <malloc.h>
#include "check.h"
#include "hakmem.h"

#define MAXSZ ((size_t)-1)
#define HALF ((size_t)1 << 63)
#define VA_ALL ((size_t)1 << 47) /* the whole user address space */

static const size_t impossible[] = {MAXSZ,        MAXSZ - 1,         MAXSZ - 15,
                                    MAXSZ - 4095, MAXSZ - (1 << 20), HALF + 1,
                                    HALF,         HALF - 16,         VA_ALL};
#define NIMPOSSIBLE (sizeof impossible / sizeof impossible[0])

#define EXPECT_NULL_ENOMEM(call, what, n)                                                          \
  do {                                                                                             \
    errno = 0;                                                                                     \
    void *r_ = (call);                                                                             \
    CHECK(r_ == NULL, "%s(%zu) returned %p, expected NULL", what, (size_t)(n), r_);                \
    CHECK(errno == ENOMEM, "%s(%zu): errno %d, expected ENOMEM", what, (size_t)(n), errno);        \
  } while (0)

static void sizes(void) {
  for (size_t i = 0; i < NIMPOSSIBLE; i++) {
    size_t n = opaque_size(impossible[i]);
    EXPECT_NULL_ENOMEM(malloc(n), "malloc", n);
    EXPECT_NULL_ENOMEM(hak_malloc(n), "hak_malloc", n);
    EXPECT_NULL_ENOMEM(calloc(1, n), "calloc(1, n)", n);
    EXPECT_NULL_ENOMEM(valloc(n), "valloc", n);
    EXPECT_NULL_ENOMEM(pvalloc(n), "pvalloc", n);
    EXPECT_NULL_ENOMEM(memalign(64, n), "memalign(64)", n);
    EXPECT_NULL_ENOMEM(memalign(1 << 20, n), "memalign(1 MiB)", n);
    EXPECT_NULL_ENOMEM(aligned_alloc(4096, n), "aligned_alloc(4096)", n);
    EXPECT_NULL_ENOMEM(realloc(NULL, n), "realloc(NULL)", n);
    void *p = (void *)1;
    int rc = posix_memalign(&p, 1 << 16, n);
    CHECK(rc == ENOMEM, "posix_memalign(64 KiB, %zu) returned %d, expected ENOMEM", n, rc);
    CHECK(p == (void *)1 || p == NULL, "posix_memalign failure changed *out to %p", p);
  }
  /* A valid power of two alignment that no address space can satisfy. */
  void *p = (void *)1;
  int rc = posix_memalign(&p, opaque_size(HALF), 16);
  CHECK(rc == ENOMEM, "posix_memalign(2^63, 16) returned %d, expected ENOMEM", rc);
  EXPECT_NULL_ENOMEM(aligned_alloc(opaque_size(HALF), 16), "aligned_alloc(2^63, 16)", 16);
}

static void overflowing_products(void) {
  size_t pairs[][2] = {{HALF, 2},        {2, HALF},          {(size_t)1 << 32, (size_t)1 << 32},
                       {MAXSZ, MAXSZ},   {MAXSZ / 3 + 1, 3}, {65537, MAXSZ / 65536},
                       {MAXSZ, 1 << 20}, {1 << 20, MAXSZ}};
  void *old = malloc(100);
  CHECK(old, "malloc(100) failed");
  fill_pattern(old, 100);
  for (size_t i = 0; i < sizeof pairs / sizeof pairs[0]; i++) {
    size_t a = opaque_size(pairs[i][0]), b = opaque_size(pairs[i][1]);
    errno = 0;
    void *r = calloc(a, b);
    CHECK(r == NULL && errno == ENOMEM, "calloc(%zu, %zu) = %p errno %d, expected NULL/ENOMEM", a,
          b, r, errno);
    errno = 0;
    r = hak_calloc(a, b);
    CHECK(r == NULL && errno == ENOMEM, "hak_calloc(%zu, %zu) = %p errno %d", a, b, r, errno);
    errno = 0;
    r = reallocarray(NULL, a, b);
    CHECK(r == NULL && errno == ENOMEM, "reallocarray(NULL, %zu, %zu) = %p errno %d", a, b, r,
          errno);
    errno = 0;
    r = reallocarray(old, a, b);
    CHECK(r == NULL && errno == ENOMEM, "reallocarray(p, %zu, %zu) = %p errno %d", a, b, r, errno);
    CHECK(check_pattern(old, 100) == SIZE_MAX, "failed reallocarray changed the old block");
  }
  free(old);
}

/* realloc to an impossible size from each kind of block: small, mid, large,
 * huge. The old block must keep its contents and stay fully usable. */
static void impossible_realloc(void) {
  size_t from[] = {1, 100, 20 * 1024, 300 * 1024, 8 << 20};
  for (size_t i = 0; i < sizeof from / sizeof from[0]; i++) {
    size_t n = from[i];
    char *p = malloc(n);
    CHECK(p, "malloc(%zu) failed", n);
    fill_pattern(p, n);
    size_t usable = malloc_usable_size(p);
    for (size_t j = 0; j < NIMPOSSIBLE; j++) {
      size_t big = opaque_size(impossible[j]);
      errno = 0;
      void *r = realloc(p, big);
      CHECK(r == NULL, "realloc(%zu-byte block, %zu) returned %p", n, big, r);
      CHECK(errno == ENOMEM, "realloc(%zu-byte block, %zu): errno %d", n, big, errno);
      errno = 0;
      r = hak_realloc(p, big);
      CHECK(r == NULL && errno == ENOMEM, "hak_realloc(%zu-byte block, %zu) = %p errno %d", n, big,
            r, errno);
      CHECK(check_pattern(p, n) == SIZE_MAX, "failed realloc changed the %zu-byte block", n);
      CHECK(malloc_usable_size(p) == usable, "failed realloc changed the usable size");
    }
    /* Still a valid block: it can grow, keeps its bytes, and be freed. */
    const void *origin = opaque_ptr(p); /* the pattern's base, after p moves */
    char *q = realloc(p, 2 * n);
    CHECK(q, "realloc(%zu -> %zu) after a failed realloc returned NULL", n, 2 * n);
    CHECK(check_pattern_as(q, origin, n) == SIZE_MAX, "realloc after a failed realloc lost bytes");
    free(q);
  }
}

static void bad_alignment(void) {
  size_t bad[] = {0, 1, 2, 4, 3, 5, 12, 24, 48, 72, 100, 4097, HALF + 8, MAXSZ};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    size_t a = opaque_size(bad[i]);
    void *p = (void *)1;
    int rc = posix_memalign(&p, a, 64);
    CHECK(rc == EINVAL, "posix_memalign(align %zu) returned %d, expected EINVAL", a, rc);
    CHECK(p == (void *)1 || p == NULL, "posix_memalign failure changed *out to %p", p);
    p = (void *)1;
    rc = hak_posix_memalign(&p, a, 64);
    CHECK(rc == EINVAL, "hak_posix_memalign(align %zu) returned %d, expected EINVAL", a, rc);
    /* aligned_alloc takes any power of two, so only the others are bad. */
    if (a != 1 && a != 2 && a != 4 && a != 0) {
      void *r = aligned_alloc(a, 64);
      CHECK(r == NULL, "aligned_alloc(align %zu, 64) returned %p, expected NULL", a, r);
      r = hak_aligned_alloc(a, 64);
      CHECK(r == NULL, "hak_aligned_alloc(align %zu, 64) returned %p, expected NULL", a, r);
    }
  }
}

int main(void) {
  sizes();
  overflowing_products();
  impossible_realloc();
  bad_alignment();
  void *p = malloc(64); /* the allocator still works after all that */
  CHECK(p, "malloc(64) failed after the bad inputs");
  free(p);
  return 0;
}
