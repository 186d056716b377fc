/* Frees of pointers that are not a live block's start: interior pointers
 * (large, small from another thread, small on an aligned page), double frees
 * of large and huge blocks, HAKMEM_ABORT_ON_ERROR=1 on an interior free, and
 * realloc of a zero-size block with a 1 MiB alignment, a pointer at a small
 * region's end. Each bad free counts
 * one invalid_frees, is ignored, and leaves the block and the heap intact.
 *
 * Built twice: linked with the release archive (build/tests/bad_pointers),
 * and without hakmem (build/tests/bad_pointers_preload, -DTEST_PRELOAD)
 * to run under LD_PRELOAD=build/debug/libhakmem.so with the argument
 * "debug": the debug build also checks the owner's fast path (an interior
 * pointer, a block freed twice). */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <malloc.h>
#include <pthread.h>
#include <signal.h>
#include "check.h"
#include "hakmem.h"
#include "spawn.h"

/* The counters, from hakmem whether it is linked in or preloaded. */
static void stats(hak_stats_t *s) {
#ifdef TEST_PRELOAD
  void (*get)(hak_stats_t *) = (void (*)(hak_stats_t *))dlsym(RTLD_DEFAULT, "hak_stats_get");
  CHECK(get, "hak_stats_get not found: run with LD_PRELOAD=build/debug/libhakmem.so");
  get(s);
#else
  hak_stats_get(s);
#endif
}

static uint64_t invalid_now(void) {
  hak_stats_t s;
  stats(&s);
  return s.invalid_frees;
}

/* free(p) must count exactly one invalid free. */
static void bad_free(void *p, const char *what) {
  uint64_t before = invalid_now();
  free(opaque_ptr(p));
  uint64_t got = invalid_now() - before;
  CHECK(got == 1, "%s: invalid_frees went up by %llu, not 1", what, (unsigned long long)got);
}

/* free(p) must count nothing. */
static void good_free(void *p, const char *what) {
  uint64_t before = invalid_now();
  free(opaque_ptr(p));
  uint64_t got = invalid_now() - before;
  CHECK(got == 0, "%s: a valid free counted %llu invalid frees", what, (unsigned long long)got);
}

/* (a) An interior pointer of a large block (a run of 64 KiB pages). */
static bool checked_lib; /* "debug": the checked library, which sizes interior pointers */

static void large_interior(void) {
  const size_t n = 300000;
  char *p = malloc(opaque_size(n));
  CHECK(p, "malloc(%zu) failed", n);
  fill_pattern(p, n);
  if (checked_lib) { /* the block's bytes from the pointer on, as for small blocks */
    size_t bs = malloc_usable_size(p);
    CHECK(bs >= n && bs < n + 65536, "malloc_usable_size of a %zu B block: %zu", n, bs);
    for (size_t k = 16; k < bs; k += 32752) {
      size_t got = malloc_usable_size(opaque_ptr(p + k));
      CHECK(got == bs - k, "malloc_usable_size(p + %zu) of a %zu B large block: %zu, not %zu", k,
            bs, got, bs - k);
    }
  }
  bad_free(p + 70000, "free(p + 70000) of a 300000 B block");
  CHECK(check_pattern(p, n) == SIZE_MAX, "the block changed after an interior free");
  char *q = malloc(opaque_size(n));
  CHECK(q && q != p, "malloc(%zu) returned the still-live block %p", n, (void *)p);
  fill_pattern(q, n);
  CHECK(check_pattern(p, n) == SIZE_MAX, "the block changed after the next malloc");
  bad_free(p + 65536, "free(p + 65536) of a 300000 B block"); /* a page start inside */
  bad_free(p + 299999, "free(p + 299999) of a 300000 B block");
  good_free(q, "free of the second large block");
  good_free(p, "free of the large block itself");
}

struct remote_job {
  char *ptr;
  uint64_t counted;
};

/* On another thread: the free takes the slow path, which checks. */
static void *remote_free(void *arg) {
  struct remote_job *job = arg;
  uint64_t before = invalid_now();
  free(opaque_ptr(job->ptr));
  job->counted = invalid_now() - before;
  return NULL;
}

static uint64_t free_from_thread(void *p) {
  struct remote_job job = {p, 0};
  pthread_t t;
  CHECK(pthread_create(&t, NULL, remote_free, &job) == 0, "pthread_create failed");
  pthread_join(t, NULL);
  return job.counted;
}

static int cmp_ptr(const void *a, const void *b) {
  uintptr_t x = *(const uintptr_t *)a, y = *(const uintptr_t *)b;
  return (x > y) - (x < y);
}

/* Mallocs of size until the page's free blocks have cycled: none may be bad
 * (a pointer that must not be handed out), none handed out twice. */
static void no_block_at(size_t size, const char *bad, const char *what) {
  enum { N = 2048 };
  static void *blocks[N], *sorted[N];
  for (int i = 0; i < N; i++) {
    blocks[i] = malloc(opaque_size(size));
    CHECK(blocks[i] && (char *)blocks[i] != bad, "%s: malloc(%zu) handed out %p", what, size,
          (void *)bad);
  }
  memcpy(sorted, blocks, sizeof sorted);
  qsort(sorted, N, sizeof sorted[0], cmp_ptr);
  for (int i = 1; i < N; i++)
    CHECK(sorted[i] != sorted[i - 1], "%s: malloc(%zu) handed out %p twice", what, size, sorted[i]);
  for (int i = 0; i < N; i++)
    free(blocks[i]);
}

/* (b) Interior pointers of small blocks, freed by another thread. */
static void small_interior_remote(void) {
  char *a = malloc(opaque_size(64));
  CHECK(a, "malloc(64) failed");
  fill_pattern(a, 64);
  uint64_t got = free_from_thread(a + 16);
  CHECK(got == 1, "free(a + 16) from another thread: invalid_frees went up by %llu, not 1",
        (unsigned long long)got);
  CHECK(check_pattern(a, 64) == SIZE_MAX, "the block changed after an interior free");
  no_block_at(64, a + 16, "after free(a + 16)");
  CHECK(check_pattern(a, 64) == SIZE_MAX, "the block changed after the mallocs");
  got = free_from_thread(a);
  CHECK(got == 0, "free(a) from another thread counted %llu invalid frees",
        (unsigned long long)got);

  /* A page with aligned blocks: only the aligned address is a block. 100 B
   * aligned to 256 and 200 B aligned to 128 both take 384 B blocks (over-
   * allocated), so blocks not aligned already are handed out further in. */
  enum { NQ = 96 };
  void *q[NQ];
  for (int i = 0; i < NQ; i++) {
    size_t align = i % 3 ? 256 : 128, size = i % 3 ? 100 : 200;
    CHECK(posix_memalign(&q[i], align, opaque_size(size)) == 0, "posix_memalign(%zu) failed",
          align);
    CHECK(((uintptr_t)q[i] & (align - 1)) == 0, "posix_memalign(%zu) gave %p", align, q[i]);
    memset(q[i], 0x5A, 100);
  }
  for (int i = 0; i < NQ; i++) {
    char *p = q[i];
    for (size_t off = 16; off < 256; off += 16 + 32 * (off >= 64)) {
      got = free_from_thread(p + off);
      CHECK(got == 1, "free(q + %zu) of an aligned block from another thread: %llu invalid frees",
            off, (unsigned long long)got);
    }
    for (int k = 0; k < 100; k++)
      CHECK(p[k] == 0x5A, "an aligned block changed after interior frees");
  }
  for (int i = 0; i < NQ; i++) {
    got = free_from_thread(q[i]);
    CHECK(got == 0, "free of an aligned block from another thread counted %llu invalid frees",
          (unsigned long long)got);
  }
}

/* (c) A block of size freed twice: counted once, and the block is not given
 * out twice. */
static void double_free(size_t size, const char *what) {
  char *p = malloc(opaque_size(size));
  CHECK(p, "%s: malloc(%zu) failed", what, size);
  good_free(p, what);
  bad_free(p, what);
  char *a = malloc(opaque_size(size)), *b = malloc(opaque_size(size));
  CHECK(a && b, "%s: malloc(%zu) failed after the double free", what, size);
  CHECK(a != b, "%s: two mallocs(%zu) after a double free both returned %p", what, size, (void *)a);
  free(a);
  free(b);
}

/* (e) A zero-size block with an alignment past 64 KiB (a huge mapping). */
static void realloc_aligned_zero(size_t align) {
  void *p = NULL;
  CHECK(posix_memalign(&p, align, 0) == 0 && p, "posix_memalign(%zu, 0) failed", align);
  CHECK(((uintptr_t)p & (align - 1)) == 0, "posix_memalign(%zu, 0) gave %p", align, p);
  CHECK(malloc_usable_size(p) >= 1, "malloc_usable_size of posix_memalign(%zu, 0) is 0", align);
  uint64_t before = invalid_now();
  char *q = realloc(p, opaque_size(100));
  CHECK(q, "realloc(posix_memalign(%zu, 0), 100) returned NULL (errno %d)", align, errno);
  CHECK(invalid_now() == before, "realloc of posix_memalign(%zu, 0) counted an invalid free",
        align);
  memset(q, 0x33, 100);
  CHECK(malloc_usable_size(q) >= 100, "realloc'd block too small");
  good_free(q, "free of the realloc'd block");
  CHECK(posix_memalign(&p, align, 0) == 0 && p, "posix_memalign(%zu, 0) failed", align);
  good_free(p, "free of a zero-size aligned block");
}

/* (g) A pointer at a small region's end, the next 2 MiB unit's base: free
 * maps it to the region (a huge block may start at a unit's base, its
 * header in the unit before), past the last page descriptor, onto header
 * fields that are not a descriptor (pages out for purging, purge times).
 * Pages of the region purged first, so those fields are not zero. */
static void region_end(void) {
  enum { N = 1024 };
  static void *b[N];
  for (int i = 0; i < N; i++)
    b[i] = malloc(opaque_size(1024)); /* 1 MiB: 16 pages of one region */
  char *end = (char *)(((uintptr_t)b[0] | ((2u << 20) - 1)) + 1);
  for (int i = 1; i < N; i++)
    free(b[i]);
  malloc_trim(0);
  bad_free(end, "free of a small region's end from its owner");
  CHECK(free_from_thread(end) == 1, "free of a small region's end from another thread: not one "
                                    "invalid free");
  free(b[0]);
}

/* (f) Debug build only: the owner's fast path checks too. */
static void debug_owner_checks(void) {
  const size_t n = 70000; /* a small class in a multi-page span */
  char *p = malloc(opaque_size(n));
  CHECK(p, "malloc(%zu) failed", n);
  good_free(p, "first free of a 70000 B block");
  bad_free(p, "second free of a 70000 B block");
  void *got[64];
  int same = 0;
  for (int i = 0; i < 64; i++) {
    got[i] = malloc(opaque_size(n));
    CHECK(got[i], "malloc(%zu) failed", n);
    same += got[i] == got[0];
  }
  CHECK(same < 64, "after a double free the next 64 malloc(%zu) all returned %p", n, got[0]);
  for (int i = 0; i < 64; i++)
    for (int k = i + 1; k < 64; k++)
      CHECK(got[i] != got[k], "after a double free malloc(%zu) returned %p twice", n, got[i]);
  for (int i = 0; i < 64; i++)
    free(got[i]);

  char *a = malloc(opaque_size(64));
  CHECK(a, "malloc(64) failed");
  fill_pattern(a, 64);
  bad_free(a + 16, "free(a + 16) by the owner");
  CHECK(check_pattern(a, 64) == SIZE_MAX, "the block changed after an interior free");
  no_block_at(64, a + 16, "after the owner's free(a + 16)");
  good_free(a, "free(a) by the owner");
  bad_free(a, "second free(a) by the owner");
  no_block_at(64, NULL, "after the owner's double free");
}

/* argv[1]: "debug" runs every case and the debug build's; a case's name
 * (large, small, double, realloc, abort, owner: the debug build's) runs that
 * case alone. */
int main(int argc, char **argv) {
  const char *only = argc > 1 && strcmp(argv[1], "debug") ? argv[1] : NULL;
  if (only && !strcmp(only, "abort-child")) { /* (d), in a child */
    char *p = malloc(opaque_size(300000));
    free(opaque_ptr(p + 70000));
    printf("still running after an interior free\n");
    return 0;
  }
#define RUN(name) if (!only || !strcmp(only, name))
  free(malloc(opaque_size(32))); /* initialised, like any program */
  checked_lib = argc > 1 && !strcmp(argv[1], "debug");

  RUN("large") large_interior();
  RUN("small") small_interior_remote();
  RUN("double") {
    double_free(500000, "500000 B freed twice");
    double_free(8u << 20, "8 MiB freed twice");
  }
  RUN("realloc") {
    realloc_aligned_zero(1u << 20);
    realloc_aligned_zero(4u << 20);
  }
  RUN("end") region_end();
  RUN("abort") {
    static struct child c;
    const char *abort_env[] = {"HAKMEM_ABORT_ON_ERROR=1", NULL};
    run_self("abort-child", abort_env, &c);
    CHECK(WIFSIGNALED(c.status) && WTERMSIG(c.status) == SIGABRT,
          "HAKMEM_ABORT_ON_ERROR=1: an interior free did not abort (status 0x%x): %s", c.status,
          c.err);
  }
  if (argc > 1 && (!strcmp(argv[1], "debug") || !strcmp(argv[1], "owner"))) debug_owner_checks();
  return 0;
}
