/* Huge blocks are reused: 20 live blocks of 5-25 MiB, one replaced at random
 * 300 times, each new block written whole. Freed mappings must be reused
 * (huge_cache_hits for at least 90% of the replacements), the writes must
 * mostly land on pages already resident (minor faults at most 40% of the
 * pages written: a fresh mapping faults every page), committed memory must
 * stay within the live bytes plus the cache's budget (half of them, 64 MiB
 * at least) plus one block being assembled, and malloc_trim must give the cache back.
 * Then 64 live blocks of 128 KiB-2 MiB replaced 3000 times: at least 90%
 * from the cache, faults at most 20% of the pages written. Then a block
 * made of several cached pieces (moved into one mapping, whole 2 MiB units
 * of each, so that writing it faults nothing) is grown and shrunk by
 * realloc with its contents intact, and its bad frees are still recognised.
 * Last, blocks just past 2 MiB made of two cached ones keep at most a
 * quarter of their size past their end, and the cache still serves blocks
 * freed afterwards. */
#include "check.h"
#include "hakmem.h"

#include <malloc.h>
#include <sys/resource.h>

#define LIVE 20
#define ROUNDS 300
#define MIB ((size_t)1 << 20)

static long minflt(void) {
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  return ru.ru_minflt;
}

static void check_moved(const void *p, size_t n, const void *base) {
  const uint8_t *b = p;
  for (size_t i = 0; i < n; i += 4093)
    CHECK(b[i] == pattern_byte(base, i), "byte %zu of a realloc'd block changed", i);
}

int main(void) {
  struct rng r = {0x9E3779B97F4A7C15ull};
  void *p[LIVE];
  size_t sz[LIVE], live = 0, peak_live = 0;
  for (int i = 0; i < LIVE; i++) {
    sz[i] = 5 * MIB + rng_next(&r) % (20 * MIB);
    p[i] = malloc(sz[i]);
    CHECK(p[i], "malloc");
    memset(p[i], 1, sz[i]);
    live += sz[i];
  }
  peak_live = live;
  hak_stats_t s0 = {0}, s1 = {0};
  hak_stats_get(&s0);
  long f0 = minflt();
  size_t written = 0;
  for (int k = 0; k < ROUNDS; k++) {
    int i = (int)(rng_next(&r) % LIVE);
    free(p[i]);
    live -= sz[i];
    sz[i] = 5 * MIB + rng_next(&r) % (20 * MIB);
    p[i] = malloc(sz[i]);
    CHECK(p[i], "malloc");
    memset(p[i], (k & 0x7f) | 1, sz[i]);
    written += sz[i];
    live += sz[i];
    if (live > peak_live) peak_live = live;
  }
  long faults = minflt() - f0;
  hak_stats_get(&s1);
  uint64_t allocs = s1.huge_allocs - s0.huge_allocs, hits = s1.huge_cache_hits - s0.huge_cache_hits;
  size_t pages = written / 4096;
  printf("%llu huge allocations, %llu from the cache; %ld faults for %zu pages written; peak "
         "committed %.1f MiB, peak live %.1f MiB\n",
         (unsigned long long)allocs, (unsigned long long)hits, faults, pages,
         s1.peak_committed_bytes / (double)MIB, peak_live / (double)MIB);
  CHECK(allocs == ROUNDS, "%llu huge allocations for %d replacements", (unsigned long long)allocs,
        ROUNDS);
  CHECK(hits * 10 >= allocs * 9, "only %llu of %llu huge allocations reused a cached mapping",
        (unsigned long long)hits, (unsigned long long)allocs);
  CHECK((size_t)faults * 10 <= pages * 4,
        "%ld minor faults for %zu pages written: mappings not reused", faults, pages);
  /* the cache's budget: half the live bytes, 64 MiB at least; one block
   * being assembled counts twice for a moment; regions and headers */
  size_t spare = peak_live / 2 > 64 * MIB ? peak_live / 2 : 64 * MIB;
  size_t bound = peak_live + spare + 25 * MIB + 8 * MIB;
  CHECK(s1.peak_committed_bytes <= bound, "peak committed %.1f MiB past %.1f MiB (peak live %.1f)",
        s1.peak_committed_bytes / (double)MIB, bound / (double)MIB, peak_live / (double)MIB);
  for (int i = 0; i < LIVE; i++)
    free(p[i]);
  malloc_trim(0);
  hak_stats_get(&s1);
  CHECK(s1.committed_bytes < 16 * MIB, "%.1f MiB committed after freeing all and malloc_trim",
        s1.committed_bytes / (double)MIB);

  /* blocks of mixed sizes below 2 MiB: any freed one serves any request */
  void *m[64];
  for (int i = 0; i < 64; i++) {
    m[i] = malloc(128 * 1024 + rng_next(&r) % (1900 * 1024));
    CHECK(m[i], "malloc");
  }
  hak_stats_get(&s0);
  f0 = minflt();
  written = 0;
  for (int k = 0; k < 3000; k++) {
    int i = (int)(rng_next(&r) % 64);
    free(m[i]);
    size_t n = 128 * 1024 + 1 + rng_next(&r) % (1900 * 1024);
    m[i] = malloc(n);
    CHECK(m[i], "malloc");
    memset(m[i], 7, n);
    written += n;
  }
  faults = minflt() - f0;
  hak_stats_get(&s1);
  allocs = s1.huge_allocs - s0.huge_allocs;
  hits = s1.huge_cache_hits - s0.huge_cache_hits;
  printf("128 KiB-2 MiB: %llu allocations, %llu from the cache; %ld faults for %zu pages written\n",
         (unsigned long long)allocs, (unsigned long long)hits, faults, written / 4096);
  CHECK(hits * 10 >= allocs * 9, "128 KiB-2 MiB: only %llu of %llu reused a cached mapping",
        (unsigned long long)hits, (unsigned long long)allocs);
  CHECK((size_t)faults * 5 <= written / 4096, "128 KiB-2 MiB: %ld faults for %zu pages written",
        faults, written / 4096);
  for (int i = 0; i < 64; i++)
    free(m[i]);
  malloc_trim(0);

  /* two cached pieces, then a block longer than either: made of both */
  void *a = malloc(6 * MIB), *b = malloc(6 * MIB);
  CHECK(a && b, "malloc");
  memset(a, 2, 6 * MIB);
  memset(b, 3, 6 * MIB);
  free(opaque_ptr(a)); /* the writes stay: the compiler cannot see the free */
  free(opaque_ptr(b));
  hak_stats_get(&s0);
  char *c = malloc(11 * MIB);
  CHECK(c, "malloc");
  hak_stats_get(&s1);
  CHECK(s1.huge_cache_hits == s0.huge_cache_hits + 1, "11 MiB not made of the cached 6 MiB blocks");
  uintptr_t c0 = (uintptr_t)c;
  long f1 = minflt();
  fill_pattern(c, 11 * MIB);
  /* whole 2 MiB units of both, the last past the block's end: all resident */
  CHECK(minflt() - f1 <= 16, "%ld faults writing 11 MiB made of cached 6 MiB blocks",
        minflt() - f1);
  c = realloc(opaque_ptr(c), 30 * MIB); /* several kernel mappings: moved by a copy */
  CHECK(c, "realloc grow");
  check_moved(c, 11 * MIB, (void *)c0);
  memset(c + 11 * MIB, 4, 19 * MIB);
  uintptr_t c1 = (uintptr_t)c;
  char *d = realloc(opaque_ptr(c), 12 * MIB); /* shrunk where it lies */
  CHECK((uintptr_t)d == c1, "realloc from 30 to 12 MiB moved the block");
  check_moved(d, 11 * MIB, (void *)c0);
  CHECK(d[12 * MIB - 1] == 4, "realloc shrink lost the block's end");
  hak_stats_get(&s0);
  free(opaque_ptr(d + 4096)); /* interior */
  free(opaque_ptr(d));
  free(opaque_ptr(d)); /* twice */
  hak_stats_get(&s1);
  CHECK(s1.invalid_frees == s0.invalid_frees + 2, "%llu of 2 bad frees of a huge block counted",
        (unsigned long long)(s1.invalid_frees - s0.invalid_frees));
  malloc_trim(0);

  /* blocks just past 2 MiB, each made of two cached ones: the second's
   * last 2 MiB unit would pass the block's end by nearly its size; kept,
   * such tails outgrow the cache's budget and every later free is unmapped */
  enum { PAIRS = 50 };
  void *u[2 * PAIRS], *g[PAIRS];
  for (int i = 0; i < 2 * PAIRS; i++) {
    u[i] = malloc(2 * MIB - 4096);
    CHECK(u[i], "malloc");
    memset(u[i], 5, 2 * MIB - 4096);
  }
  for (int i = 0; i < PAIRS; i++) {
    free(opaque_ptr(u[2 * i]));
    free(opaque_ptr(u[2 * i + 1]));
    g[i] = malloc(2 * MIB + 4096);
    CHECK(g[i], "malloc");
    memset(g[i], 6, 2 * MIB + 4096);
  }
  size_t usable = malloc_usable_size(g[0]);
  CHECK(usable < (2 * MIB + 4096) * 5 / 4, "a 2 MiB + 4 KiB block gathered keeps %zu bytes",
        usable);
  hak_stats_get(&s0);
  for (int k = 0; k < 100; k++) {
    char *v = malloc(3 * MIB);
    CHECK(v, "malloc");
    memset(v, k, 3 * MIB);
    free(opaque_ptr(v));
  }
  hak_stats_get(&s1);
  hits = s1.huge_cache_hits - s0.huge_cache_hits;
  CHECK(hits >= 90, "only %llu of 100 3 MiB blocks reused with %d gathered blocks live",
        (unsigned long long)hits, PAIRS);
  for (int i = 0; i < PAIRS; i++)
    free(g[i]);
  return 0;
}
