/* The mid-size cache (1-32 KiB blocks kept per heap as pointers):
 *  - a malloc/free loop of one mid size is served from the cache: the
 *    blocks taken from pages (midcache_filled) stay a handful for 100000
 *    pairs, and the block freed last comes back first;
 *  - the owner's free does not write into the block (no free-list link);
 *  - hakmem_flush and malloc_trim give the calling thread's cached blocks
 *    back (midcache_flushed);
 *  - a thread that exits gives back every block it cached, and after
 *    malloc_trim the memory its pages took is no longer committed;
 *  - an overflowing class gives back half and keeps working;
 *  - the heap caches up to 1 MiB (and one block past it) whatever the
 *    classes, and its mallocs give the room back. */
#define _GNU_SOURCE
#include <malloc.h>
#include <pthread.h>
#include "check.h"
#include "hakmem.h"

#define PAIRS 100000
#define LIVE 2000

static hak_stats_t stats(void) {
  hak_stats_t s;
  hak_stats_get(&s);
  return s;
}

static void served_from_cache(void) {
  free(malloc(opaque_size(4096))); /* the heap and the class's page exist */
  hak_stats_t s0 = stats();
  void *last = NULL;
  for (int i = 0; i < PAIRS; i++) {
    void *p = malloc(opaque_size(4096));
    CHECK(p, "malloc(4096) failed");
    CHECK(!last || p == last, "pair %d: block %p, not the one freed last (%p)", i, p, last);
    memset(p, i & 0xff, 64);
    free(p);
    last = p;
  }
  hak_stats_t s1 = stats();
  uint64_t filled = s1.midcache_filled - s0.midcache_filled;
  CHECK(filled <= 64, "%d malloc/free pairs of 4 KiB took %llu blocks from pages", PAIRS,
        (unsigned long long)filled);
}

static void free_writes_nothing(void) {
  size_t n = opaque_size(8000);
  unsigned char *p = malloc(n);
  CHECK(p, "malloc(8000) failed");
  fill_pattern(p, n);
  /* read after the free on purpose: the owner's cache holds the block */
  uintptr_t addr = (uintptr_t)p;
  __asm__ volatile("" : "+r"(addr));
  free(p);
  unsigned char *freed = (unsigned char *)addr;
  size_t at = check_pattern(freed, n);
  CHECK(at == SIZE_MAX, "free wrote into the mid block at byte %zu", at);
  unsigned char *q = malloc(n);
  CHECK(q == freed, "the block freed last (%p) was not handed out again (%p)", (void *)freed,
        (void *)q);
  CHECK(check_pattern(q, n) == SIZE_MAX, "the cache changed the block");
  free(q);
}

/* Blocks of several classes, freed: they wait in the cache until flushed. */
static void fill_and_free(void **blk, int n) {
  for (int i = 0; i < n; i++) {
    blk[i] = malloc(opaque_size(1100 + (size_t)i * 997 % 30000));
    CHECK(blk[i], "malloc failed");
    memset(blk[i], 0x5a, 16);
  }
  for (int i = 0; i < n; i++)
    free(blk[i]);
}

/* 30 blocks of 4 KiB freed wait in the cache (it holds 64 of them, and a
 * refill leaves at most 32) until the flush gives them back. */
static void flush_gives_back(const char *how, void (*flush)(void)) {
  void *blk[30];
  for (int i = 0; i < 30; i++)
    CHECK((blk[i] = malloc(opaque_size(4096))), "malloc(4096) failed");
  hak_stats_t s0 = stats();
  for (int i = 0; i < 30; i++)
    free(blk[i]);
  hak_stats_t s1 = stats();
  CHECK(s1.midcache_flushed == s0.midcache_flushed, "30 frees of 4 KiB overflowed the cache");
  flush();
  hak_stats_t s2 = stats();
  CHECK(s2.midcache_flushed >= s1.midcache_flushed + 30, "%s gave %llu cached blocks back, not 30",
        how, (unsigned long long)(s2.midcache_flushed - s1.midcache_flushed));
}

static void do_hakmem_flush(void) {
  hakmem_flush();
}

static void do_malloc_trim(void) {
  malloc_trim(0);
}

static void *exiting_thread(void *arg) {
  static void *blk[LIVE];
  (void)arg;
  fill_and_free(blk, LIVE);
  for (int i = 0; i < LIVE; i++) /* keep every class's cache full */
    free(malloc(opaque_size(1100 + (size_t)i * 997 % 30000)));
  return NULL;
}

static void thread_exit_gives_back(void) {
  malloc_trim(0);
  hak_stats_t s0 = stats();
  pthread_t t;
  CHECK(pthread_create(&t, NULL, exiting_thread, NULL) == 0, "pthread_create failed");
  pthread_join(t, NULL);
  malloc_trim(0);
  hak_stats_t s1 = stats();
  uint64_t filled = s1.midcache_filled - s0.midcache_filled,
           flushed = s1.midcache_flushed - s0.midcache_flushed;
  CHECK(filled > 0, "the thread's mid blocks did not go through the cache");
  /* every block the thread cached was handed out or given back, and it freed
   * all it was handed: what it did not take again went back to the pages */
  CHECK(flushed > 0, "the exited thread's cached blocks were not given back");
  CHECK(s1.committed_bytes <= s0.committed_bytes + (256u << 10),
        "committed %llu bytes before the thread, %llu after it exited and malloc_trim",
        (unsigned long long)s0.committed_bytes, (unsigned long long)s1.committed_bytes);
}

/* More frees of one class than the cache holds: half goes back at a time. */
static void overflow_gives_half(void) {
  enum { N = 300 };
  void *blk[N];
  hakmem_flush();
  for (int i = 0; i < N; i++) {
    blk[i] = malloc(opaque_size(2048));
    CHECK(blk[i], "malloc(2048) failed");
    fill_pattern(blk[i], 2048);
  }
  hak_stats_t s0 = stats();
  for (int i = 0; i < N; i++) {
    CHECK(check_pattern(blk[i], 2048) == SIZE_MAX, "block %d overwritten", i);
    free(blk[i]);
  }
  hak_stats_t s1 = stats();
  uint64_t flushed = s1.midcache_flushed - s0.midcache_flushed;
  CHECK(flushed >= N - 64 && flushed <= N + 64, "%d frees of 2 KiB gave %llu blocks back to pages",
        N, (unsigned long long)flushed);
  for (int i = 0; i < N; i++) { /* the cached ones and the given back ones serve again */
    blk[i] = malloc(opaque_size(2048));
    fill_pattern(blk[i], 2048);
  }
  for (int i = 0; i < N; i++) {
    CHECK(check_pattern(blk[i], 2048) == SIZE_MAX, "block %d handed out twice", i);
    free(blk[i]);
  }
}

/* The four largest classes filled to their limits (256 KiB each at most):
 * 988 KiB, all cached, twice (the mallocs in between take them back out
 * of the cache, which must count their bytes free again). Then 16 KiB
 * blocks: the cache holds 1 MiB and one block past it, so at most 3 of 16
 * stay; the rest go back to pages. */
static void heap_cap(void) {
  static const size_t size[] = {20480, 24576, 28672, 32768, 16384};
  static const int count[] = {12, 10, 9, 8, 16};
  enum { CLASSES = 5, BIG = 4, MAX = 16 };
  void *blk[CLASSES][MAX];
  for (int c = 0; c < CLASSES; c++)
    for (int k = 0; k < count[c]; k++)
      CHECK((blk[c][k] = malloc(opaque_size(size[c]))), "malloc(%zu) failed", size[c]);
  hakmem_flush(); /* what the mallocs' refills cached ahead */
  for (int round = 0; round < 2; round++) {
    if (round)
      for (int c = 0; c < BIG; c++)
        for (int k = 0; k < count[c]; k++)
          blk[c][k] = malloc(opaque_size(size[c]));
    hak_stats_t s0 = stats();
    for (int c = 0; c < BIG; c++)
      for (int k = 0; k < count[c]; k++)
        free(blk[c][k]);
    hak_stats_t s1 = stats();
    CHECK(s1.midcache_flushed == s0.midcache_flushed,
          "round %d: 988 KiB of 20-32 KiB blocks overflowed the cache (%llu given back)", round,
          (unsigned long long)(s1.midcache_flushed - s0.midcache_flushed));
  }
  hak_stats_t s1 = stats();
  for (int k = 0; k < count[BIG]; k++)
    free(blk[BIG][k]);
  uint64_t flushed = stats().midcache_flushed - s1.midcache_flushed;
  CHECK(flushed >= 13 && flushed <= 16,
        "16 frees of 16 KiB past 988 KiB cached gave %llu back, not 13-16",
        (unsigned long long)flushed);
}

int main(void) {
  served_from_cache();
  free_writes_nothing();
  flush_gives_back("hakmem_flush", do_hakmem_flush);
  flush_gives_back("malloc_trim", do_malloc_trim);
  overflow_gives_half();
  heap_cap();
  thread_exit_gives_back();
  printf("midcache: ok\n");
  return 0;
}
