/* Bad pointers given to free and realloc, each case in a child process of
 * its own (so one broken case cannot hide the next) with no HAKMEM_*
 * variables unless the case needs one:
 *  a  free of a pointer 70,000 B into a 300,000 B block: counted in
 *     invalid_frees, the block untouched and not handed out again;
 *  b  free of a pointer 16 B into a 64 B block: counted, the block usable
 *     and not handed out again;
 *  c  double free of a 70,000 B block: counted, and the next 64 mallocs
 *     of that size all distinct;
 *  d  double free of a 500 KB block and of an 8 MB block: the next two
 *     mallocs of that size are distinct and do not overlap;
 *  e  with HAKMEM_ABORT_ON_ERROR=1 an interior free (large and small
 *     block) aborts with SIGABRT;
 *  f  realloc of a block from posix_memalign(&p, 1 MiB, 0) succeeds.
 * A double free of a small (64 B) block is only required to be caught by
 * the debug build, so it is not tested here.
 * Usage: interior_free [case] (a case runs in this process). */
#define _GNU_SOURCE
#include <errno.h>
#include <malloc.h>
#include <signal.h>
#include "check.h"
#include "hakmem.h"
#include "spawn.h"

static uint64_t invalid_frees(void) {
  hak_stats_t s;
  hak_stats_get(&s);
  return s.invalid_frees;
}

static int overlaps(const void *a, size_t an, const void *b, size_t bn) {
  uintptr_t x = (uintptr_t)a, y = (uintptr_t)b;
  return x < y + bn && y < x + an;
}

/* a: interior free of a large (page run) block. */
static void case_large_interior(void) {
  const size_t n = 300000;
  char *p = malloc(opaque_size(n));
  CHECK(p, "malloc(%zu) failed", n);
  fill_pattern(p, n);
  uint64_t before = invalid_frees();
  free(opaque_ptr(p + 70000));
  uint64_t after = invalid_frees();
  size_t bad = check_pattern(p, n);
  CHECK(bad == SIZE_MAX, "free(p + 70000) of a %zu B block changed its byte %zu", n, bad);
  void *q[4];
  for (int i = 0; i < 4; i++) {
    q[i] = malloc(opaque_size(n));
    CHECK(q[i], "malloc(%zu) failed", n);
    CHECK(!overlaps(q[i], n, p, n),
          "after free(p + 70000), malloc(%zu) returned %p, inside the still live block %p", n, q[i],
          (void *)p);
    memset(q[i], 0xA5, n);
  }
  bad = check_pattern(p, n);
  CHECK(bad == SIZE_MAX, "after free(p + 70000) and new mallocs, block %p byte %zu overwritten",
        (void *)p, bad);
  CHECK(after == before + 1,
        "free(p + 70000) of a %zu B block: invalid_frees went up by %llu, "
        "expected 1",
        n, (unsigned long long)(after - before));
  for (int i = 0; i < 4; i++)
    free(q[i]);
  free(p);
}

/* b: interior free of a small block. */
static void case_small_interior(void) {
  char *a = malloc(opaque_size(64));
  CHECK(a, "malloc(64) failed");
  fill_pattern(a, 64);
  uint64_t before = invalid_frees();
  free(opaque_ptr(a + 16));
  uint64_t after = invalid_frees();
  size_t bad = check_pattern(a, 64);
  CHECK(bad == SIZE_MAX, "free(a + 16) changed byte %zu of the block", bad);
  enum { N = 4096 };
  static void *q[N];
  for (int i = 0; i < N; i++) {
    q[i] = malloc(opaque_size(64));
    CHECK(q[i], "malloc(64) failed");
    CHECK(!overlaps(q[i], 64, a, 64),
          "after free(a + 16), malloc(64) number %d returned %p, inside the live block %p", i, q[i],
          (void *)a);
    memset(q[i], 0x5A, 64);
  }
  bad = check_pattern(a, 64);
  CHECK(bad == SIZE_MAX, "after free(a + 16) and 4096 mallocs, byte %zu of a overwritten", bad);
  CHECK(after == before + 1,
        "free(a + 16) of a 64 B block: invalid_frees went up by %llu, "
        "expected 1",
        (unsigned long long)(after - before));
  for (int i = 0; i < N; i++)
    free(q[i]);
  fill_pattern(a, 64);
  free(a);
}

/* c: double free of a 70,000 B block. */
static void case_double_mid(void) {
  const size_t n = 70000;
  void *p = malloc(opaque_size(n));
  CHECK(p, "malloc(%zu) failed", n);
  uint64_t before = invalid_frees();
  void *volatile twice = p; /* hides the double free from gcc's use-after-free warning */
  free(twice);
  free(twice);
  uint64_t after = invalid_frees();
  enum { N = 64 };
  void *q[N];
  for (int i = 0; i < N; i++) {
    q[i] = malloc(opaque_size(n));
    CHECK(q[i], "malloc(%zu) failed", n);
    for (int j = 0; j < i; j++)
      CHECK(!overlaps(q[i], n, q[j], n),
            "after a double free of a %zu B block, mallocs %d and %d returned %p and %p "
            "(handed out twice)",
            n, j, i, q[j], q[i]);
    fill_pattern(q[i], n);
  }
  for (int i = 0; i < N; i++) {
    size_t bad = check_pattern(q[i], n);
    CHECK(bad == SIZE_MAX, "block %d (%p) overwritten at %zu", i, q[i], bad);
  }
  CHECK(after > before, "a double free of a %zu B block was not counted in invalid_frees", n);
  for (int i = 0; i < N; i++)
    free(q[i]);
}

/* d: double free of a large and of a huge block. */
static void case_double_big(void) {
  const size_t sizes[] = {500000, 8u << 20};
  for (int s = 0; s < 2; s++) {
    size_t n = sizes[s];
    void *p = malloc(opaque_size(n));
    CHECK(p, "malloc(%zu) failed", n);
    memset(p, 1, n);
    void *volatile twice = p;
    free(twice);
    free(twice);
    void *x = malloc(opaque_size(n)), *y = malloc(opaque_size(n));
    CHECK(x && y, "malloc(%zu) failed", n);
    CHECK(!overlaps(x, n, y, n),
          "after a double free of a %zu B block, two mallocs of that size returned %p and %p "
          "(handed out twice)",
          n, x, y);
    fill_sparse(x, n, 4096);
    fill_sparse(y, n, 4096);
    CHECK(check_sparse(x, n, 4096) == SIZE_MAX && check_sparse(y, n, 4096) == SIZE_MAX,
          "after a double free of a %zu B block, two live blocks overwrite each other", n);
    free(x);
    free(y);
  }
}

/* e (in a child with HAKMEM_ABORT_ON_ERROR=1): returns only if no abort. */
static void case_abort(const char *which) {
  if (!strcmp(which, "abort_large")) {
    char *p = malloc(opaque_size(300000));
    CHECK(p, "malloc failed");
    free(opaque_ptr(p + 70000));
  } else {
    char *a = malloc(opaque_size(64));
    CHECK(a, "malloc failed");
    free(opaque_ptr(a + 16));
  }
}

/* f: realloc of a zero-byte block with 1 MiB alignment. */
static void case_realloc_aligned0(void) {
  void *p = (void *)1;
  int rc = posix_memalign(&p, (size_t)1 << 20, opaque_size(0));
  CHECK(rc == 0, "posix_memalign(&p, 1 MiB, 0) failed: %d", rc);
  CHECK(p == NULL || (uintptr_t)p % (1u << 20) == 0, "posix_memalign(1 MiB, 0) = %p misaligned", p);
  const size_t sizes[] = {1, 100, 5000, 300000, 3u << 20};
  for (int i = 0; i < 5; i++) {
    errno = 0;
    void *q = realloc(p, opaque_size(sizes[i]));
    CHECK(q, "realloc(%p from posix_memalign(1 MiB, %s), %zu) returned NULL (errno %d)", p,
          i ? "then realloc" : "0", sizes[i], errno);
    CHECK(malloc_usable_size(q) >= sizes[i], "realloc(..., %zu): usable size %zu", sizes[i],
          malloc_usable_size(q));
    memset(q, 0x77, sizes[i]);
    p = q;
  }
  free(p);
}

static int child_main(const char *c) {
  if (!strcmp(c, "a"))
    case_large_interior();
  else if (!strcmp(c, "b"))
    case_small_interior();
  else if (!strcmp(c, "c"))
    case_double_mid();
  else if (!strcmp(c, "d"))
    case_double_big();
  else if (!strncmp(c, "abort_", 6))
    case_abort(c);
  else if (!strcmp(c, "f"))
    case_realloc_aligned0();
  else
    FAIL("unknown case %s", c);
  return 0;
}

static const char *const cases[][2] = {
    {"a", "interior free of a 300,000 B block"},
    {"b", "interior free of a 64 B block"},
    {"c", "double free of a 70,000 B block"},
    {"d", "double free of 500 KB and 8 MB blocks"},
    {"abort_large", "HAKMEM_ABORT_ON_ERROR=1, interior free of a 300,000 B block"},
    {"abort_small", "HAKMEM_ABORT_ON_ERROR=1, interior free of a 64 B block"},
    {"f", "realloc of posix_memalign(1 MiB, 0)"},
};

int main(int argc, char **argv) {
  if (argc > 1) return child_main(argv[1]);
  static struct child c;
  const char *abort_env[] = {"HAKMEM_ABORT_ON_ERROR=1", NULL};
  int bad = 0;
  char first[512] = "";
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    const char *name = cases[i][0], *what = cases[i][1];
    int want_abort = !strncmp(name, "abort_", 6);
    run_self(name, want_abort ? abort_env : NULL, &c);
    char why[400] = "";
    if (want_abort) {
      if (!(WIFSIGNALED(c.status) && WTERMSIG(c.status) == SIGABRT))
        snprintf(why, sizeof why, "did not abort (status 0x%x) %.200s", c.status, c.err);
    } else if (!exited_ok(&c)) {
      char line[300];
      if (line_with(c.err, "FAIL:", line, sizeof line))
        snprintf(why, sizeof why, "%s", line + 6);
      else if (WIFSIGNALED(c.status))
        snprintf(why, sizeof why, "killed by signal %d: %.200s", WTERMSIG(c.status), c.err);
      else
        snprintf(why, sizeof why, "exit status %d: %.200s", WEXITSTATUS(c.status), c.err);
    }
    if (*why) {
      printf("case %s (%s): FAILED: %s\n", name, what, why);
      if (!bad++) snprintf(first, sizeof first, "case %s (%s): %s", name, what, why);
    } else {
      printf("case %s (%s): ok\n", name, what);
    }
  }
  fflush(stdout);
  CHECK(!bad, "%d of %zu cases failed; first: %s", bad, sizeof cases / sizeof cases[0], first);
  return 0;
}
