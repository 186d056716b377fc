/* calloc returns zeroed memory on every path where hakmem may skip the
 * memset because it believes the memory is zero already, and on those where
 * it must not:
 *  - fresh memory (never touched: known zero),
 *  - dirty reuse: blocks and pages freed after being written, taken again
 *    before any purge (must be cleared),
 *  - purged memory: freed, given back with malloc_trim(0) (MADV_DONTNEED,
 *    zero again), taken again,
 *  - blocks freed by another thread, taken again by their owner.
 * Sizes run from 16 B to huge mappings. Each phase fills every block over
 * its whole usable size with a non-zero byte, so stale data anywhere shows.
 * The same child runs under the purge, prefault and page-size modes, which
 * change which memory is known zero: immediate purging (delay 0), page
 * purging, each purge engine, prefaulting, userfaultfd, no THP. */
#include <pthread.h>
#include <malloc.h>
#include "kmem_util.h"

static const size_t sizes[] = {
    16,         48,        200,       1000,      4096,    16 * KIB,           40000,
    64 * KIB,   100 * KIB, 128 * KIB, 200 * KIB, 1 * MIB, (size_t)1900 * KIB, 2500 * KIB,
    3 * MIB + 5};
#define NSIZES (sizeof sizes / sizeof sizes[0])
#define PER_SIZE_BYTES (6 * MIB)
#define MAX_PER_SIZE 512

static void *blk[NSIZES][MAX_PER_SIZE];
static void *old[NSIZES][MAX_PER_SIZE]; /* addresses of the previous phase */

static size_t count_of(size_t s) {
  size_t n = PER_SIZE_BYTES / sizes[s];
  return n < 4 ? 4 : n > MAX_PER_SIZE ? MAX_PER_SIZE : n;
}

/* Offset of the first non-zero byte of p[0..n), or SIZE_MAX. */
static size_t nonzero_at(const void *p, size_t n) {
  const unsigned char *b = p;
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    uint64_t w;
    memcpy(&w, b + i, 8);
    if (w) break;
  }
  for (; i < n; i++)
    if (b[i]) return i;
  return SIZE_MAX;
}

/* Allocates every slot of the phase that is empty (keep == NULL) or all. */
static void calloc_all(const char *phase, bool all, size_t *reused) {
  for (size_t s = 0; s < NSIZES; s++) {
    size_t n = sizes[s], cnt = count_of(s);
    for (size_t i = 0; i < cnt; i++) {
      if (!all && blk[s][i]) continue;
      void *p = calloc(1, n);
      CHECK(p, "%s: calloc(1, %zu) failed", phase, n);
      size_t at = nonzero_at(p, n);
      CHECK(at == SIZE_MAX, "%s: calloc(1, %zu) = %p has byte %zu = 0x%02x, not zero", phase, n, p,
            at, ((unsigned char *)p)[at]);
      for (size_t t = 0; t < NSIZES && reused; t++)
        for (size_t j = 0; j < count_of(t); j++)
          if (old[t][j] == p) ++*reused;
      /* dirty the whole usable block, so any later reuse sees non-zero */
      memset(p, 0xA5, malloc_usable_size(p));
      blk[s][i] = p;
    }
  }
}

/* Frees the blocks (all, or all but every fourth, which keeps partly used
 * pages around) and remembers where they were. */
static void free_some(bool all) {
  for (size_t s = 0; s < NSIZES; s++) {
    for (size_t i = 0; i < count_of(s); i++) {
      old[s][i] = NULL;
      if (!blk[s][i] || (!all && i % 4 == 0)) continue;
      old[s][i] = blk[s][i];
      free(blk[s][i]);
      blk[s][i] = NULL;
    }
  }
}

/* ---- blocks freed by another thread ---- */

#define REMOTE_N 2000
static void *remote_blk[REMOTE_N];

static void *remote_free_all(void *arg) {
  (void)arg;
  for (size_t i = 0; i < REMOTE_N; i++)
    free(remote_blk[i]);
  return NULL;
}

static void remote_phase(void) {
  for (int round = 0; round < 3; round++) {
    for (size_t i = 0; i < REMOTE_N; i++) {
      size_t n = sizes[i % 7] + i % 5;
      remote_blk[i] = calloc(1, n);
      CHECK(remote_blk[i], "remote: calloc(1, %zu) failed", n);
      size_t at = nonzero_at(remote_blk[i], n);
      CHECK(at == SIZE_MAX, "remote round %d: calloc(1, %zu) has byte %zu non-zero", round, n, at);
      memset(remote_blk[i], 0x5A, malloc_usable_size(remote_blk[i]));
    }
    pthread_t t;
    CHECK(pthread_create(&t, NULL, remote_free_all, NULL) == 0, "pthread_create failed");
    pthread_join(t, NULL);
  }
}

static int child_main(void) {
  size_t reused = 0;
  calloc_all("fresh", true, NULL);

  free_some(false);
  calloc_all("dirty reuse", false, &reused);
  CHECK(reused > 0, "dirty reuse: no freed block was handed out again: the phase tested nothing");

  /* purged by the frees themselves (delay 0) or by the trim */
  hak_stats_t before = stats_now();
  free_some(true);
  malloc_trim(0);
  hak_stats_t after = stats_now();
  CHECK(after.purges > before.purges && after.purged_bytes > before.purged_bytes,
        "freeing everything and malloc_trim(0) purged nothing (purges %llu -> %llu)",
        (unsigned long long)before.purges, (unsigned long long)after.purges);
  reused = 0;
  calloc_all("purged", true, &reused);
  CHECK(reused > 0, "purged: no purged block was handed out again: the phase tested nothing");

  /* once more without a trim, memory now both purged and dirty */
  free_some(false);
  calloc_all("mixed reuse", false, NULL);
  free_some(true);

  remote_phase();
  printf("calloc zero: fresh, dirty reuse, purged, mixed and remote phases ok\n");
  return 0;
}

int main(int argc, char **argv) {
  (void)argv;
  if (argc > 1) return child_main();
  static const char *const modes[][3] = {
      {NULL},
      {"HAKMEM_PURGE_DELAY_MS=0", NULL},
      {"HAKMEM_PURGE=page", "HAKMEM_PURGE_DELAY_MS=0", NULL},
      {"HAKMEM_PURGE_ENGINE=uring", "HAKMEM_PURGE_DELAY_MS=0", NULL},
      {"HAKMEM_PURGE_ENGINE=vector", "HAKMEM_PURGE_DELAY_MS=0", NULL},
      {"HAKMEM_PURGE_ENGINE=sync", "HAKMEM_PURGE_DELAY_MS=0", NULL},
      {"HAKMEM_PREFAULT=page", NULL},
      {"HAKMEM_PREFAULT=ahead", "HAKMEM_PURGE_DELAY_MS=0", NULL},
      {"HAKMEM_UFFD=1", NULL},
      {"HAKMEM_THP=0", "HAKMEM_PURGE=page", NULL},
  };
  static struct child c;
  for (size_t m = 0; m < sizeof modes / sizeof modes[0]; m++) {
    child_ok("child", modes[m], &c);
    printf("ok: %s %s\n", modes[m][0] ? modes[m][0] : "defaults", modes[m][1] ? modes[m][1] : "");
  }
  return 0;
}
