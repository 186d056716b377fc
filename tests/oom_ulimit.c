/* Out of address space (tests/run.sh runs this under `ulimit -v`): malloc
 * returns NULL with ENOMEM instead of crashing, realloc and calloc fail
 * cleanly, and once everything is freed the memory can be had again. */
#define _GNU_SOURCE
#include <errno.h>
#include <sys/resource.h>
#include "check.h"
#include "hakmem.h"

#define MAXPTRS (1 << 21)

static void *ptrs[MAXPTRS];
static int nptrs;

/* Allocates blocks of each size, biggest first, until malloc says no.
 * Returns the bytes obtained. */
static size_t fill_up(void) {
  static const size_t sizes[] = {1 << 20, 64 << 10, 4 << 10, 256};
  size_t total = 0;
  for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++) {
    for (;;) {
      CHECK(nptrs < MAXPTRS, "malloc never returned NULL under the limit");
      errno = 0;
      char *p = malloc(sizes[s]);
      if (!p) {
        CHECK(errno == ENOMEM, "malloc(%zu) returned NULL with errno %d, not ENOMEM", sizes[s],
              errno);
        break;
      }
      p[0] = 1; /* the memory must be real */
      p[sizes[s] - 1] = 2;
      ptrs[nptrs++] = p;
      total += sizes[s];
    }
  }
  return total;
}

static void free_all(void) {
  while (nptrs)
    free(ptrs[--nptrs]);
}

int main(void) {
  struct rlimit rl;
  CHECK(getrlimit(RLIMIT_AS, &rl) == 0, "getrlimit failed");
  CHECK(rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur <= (4ull << 30),
        "run this under ulimit -v (tests/run.sh does): no address-space limit is set");

  size_t first = fill_up();
  CHECK(first >= 64u << 20, "only %zu bytes before NULL under a %llu-byte limit", first,
        (unsigned long long)rl.rlim_cur);

  /* Everything is taken: growing a block and calloc fail cleanly, or work. */
  char *keep = ptrs[0];
  errno = 0;
  char *grown = realloc(keep, 256 << 20);
  if (grown) {
    CHECK(grown[0] == 1, "realloc under memory pressure lost the contents");
    ptrs[0] = grown;
  } else {
    CHECK(errno == ENOMEM, "failed realloc: errno %d, not ENOMEM", errno);
    CHECK(keep[0] == 1 && keep[(1 << 20) - 1] == 2, "failed realloc changed the old block");
  }
  errno = 0;
  unsigned char *z = calloc(1, 64 << 20);
  if (z) {
    for (size_t i = 0; i < (64u << 20); i += 4096)
      CHECK(z[i] == 0, "calloc not zero");
    free(z);
  } else {
    CHECK(errno == ENOMEM, "failed calloc: errno %d, not ENOMEM", errno);
  }

  free_all();
  size_t second = fill_up();
  printf("limit %llu bytes: got %zu bytes, then %zu bytes after freeing everything\n",
         (unsigned long long)rl.rlim_cur, first, second);
  CHECK(second >= first / 4 * 3, "after freeing everything only %zu of %zu bytes came back", second,
        first);
  free_all();
  void *p = malloc(100);
  CHECK(p, "malloc(100) failed after freeing everything");
  free(p);
  return 0;
}
