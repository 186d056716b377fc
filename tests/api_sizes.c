/* malloc of every size 0..64 KiB and of a sweep of larger sizes up to
 * hundreds of MiB: non-NULL, aligned, malloc_usable_size >= request, memory
 * hakmem owns, and the whole usable size writable without touching another
 * live block (a window of recent blocks stays live and is checked late). */
#define _GNU_SOURCE
#include <malloc.h>
#include "check.h"
#include "hakmem.h"

#define WINDOW 8

/* Alignment C requires for an object of n bytes: the largest power of two
 * not above n, capped at 16 (alignof(max_align_t)). */
static size_t required_align(size_t n) {
  size_t a = 16;
  while (a > 1 && a > n)
    a >>= 1;
  return a;
}

static void *check_new(size_t n) {
  void *p = malloc(opaque_size(n));
  CHECK(p != NULL, "malloc(%zu) returned NULL", n);
  size_t a = required_align(n);
  CHECK((uintptr_t)p % a == 0, "malloc(%zu) = %p not %zu-byte aligned", n, p, a);
  CHECK(malloc_usable_size(p) >= n, "malloc_usable_size(malloc(%zu)) = %zu", n,
        malloc_usable_size(p));
  CHECK(hak_owns(p), "malloc(%zu) = %p is not hakmem memory", n, p);
  return p;
}

static void small_sizes(void) {
  void *win[WINDOW] = {0};
  size_t use[WINDOW] = {0};
  for (size_t n = 0; n <= 65536 + WINDOW; n++) {
    size_t slot = n % WINDOW;
    if (win[slot]) {
      size_t bad = check_pattern(win[slot], use[slot]);
      CHECK(bad == SIZE_MAX, "block of %zu bytes at %p overwritten at offset %zu", n - WINDOW,
            win[slot], bad);
      CHECK(malloc_usable_size(win[slot]) == use[slot], "usable size of %p changed", win[slot]);
      free(win[slot]);
      win[slot] = NULL;
    }
    if (n > 65536) continue;
    win[slot] = check_new(n);
    use[slot] = malloc_usable_size(win[slot]);
    fill_pattern(win[slot], use[slot]);
  }
}

/* Sizes around and between the powers of two from 64 KiB to 256 MiB. Two
 * blocks stay live at a time; the fill is sparse so the run stays short. */
static void large_sizes(void) {
  void *prev = NULL;
  size_t prev_use = 0;
  const size_t stride = 64 * 1024;
  for (int k = 16; k <= 28; k++) {
    size_t base = (size_t)1 << k;
    size_t sizes[] = {
        base - 1, base, base + 1, base + 16, base + base / 4, base + base / 2, base + 3 * base / 4};
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
      void *p = check_new(sizes[i]);
      size_t use = malloc_usable_size(p);
      fill_sparse(p, use, stride);
      if (prev) {
        size_t bad = check_sparse(prev, prev_use, stride);
        CHECK(bad == SIZE_MAX, "block %p (usable %zu) overwritten at offset %zu", prev, prev_use,
              bad);
        free(prev);
      }
      prev = p;
      prev_use = use;
    }
  }
  CHECK(check_sparse(prev, prev_use, stride) == SIZE_MAX, "last large block overwritten");
  free(prev);
}

int main(void) {
  small_sizes();
  large_sizes();
  return 0;
}
