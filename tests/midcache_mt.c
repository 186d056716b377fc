/* Many threads on the mid-size cache: each allocates 1-32 KiB blocks, keeps
 * some (freed by itself later, through its cache) and hands the others to
 * shared slots, where another thread takes and frees them (remote frees of
 * cached classes). Every block carries an address-derived pattern checked
 * before its free, so a block handed out twice while live, or written by
 * the cache, fails. Two waves of threads: the second frees what the exited
 * first left in the slots, on pages the first abandoned with cached blocks
 * given back. At the end, after malloc_trim, the committed bytes are back
 * near the start: no block was lost in a cache. Run also with
 * HAKMEM_NODES=2, where cross-node frees come back through mailboxes.
 *
 * Built plainly (malloc is hakmem) and by tests/run.sh with -DSTRESS_HAK
 * against the TSan build of the allocator.
 * Usage: midcache_mt [threads [ops-per-thread]] */
#define _GNU_SOURCE
#include <malloc.h>
#include <pthread.h>
#include <stdatomic.h>
#include "check.h"
#include "hakmem.h"
#include "t_alloc.h"

#define SLOTS 256
#define LOCAL 48
#define HDR 8 /* the block's size */

static _Atomic(uint64_t *) slots[SLOTS];
static long ops_per_thread = 20000;

static void *new_block(struct rng *r) {
  size_t n = 1025 + (size_t)(rng_next(r) % (32768 - 1025));
  uint64_t *p = T_MALLOC(n);
  CHECK(p, "malloc(%zu) failed", n);
  p[0] = n;
  fill_pattern(p + 1, n - HDR);
  return p;
}

static void check_free(uint64_t *p) {
  size_t n = (size_t)p[0];
  CHECK(n > 1024 && n <= 32768, "block %p: size word %zu overwritten", (void *)p, n);
  size_t at = check_pattern(p + 1, n - HDR);
  CHECK(at == SIZE_MAX, "block %p of %zu B: byte %zu overwritten (handed out twice?)", (void *)p, n,
        at + HDR);
  T_FREE(p);
}

static void *worker(void *arg) {
  struct rng r = {(uint64_t)(uintptr_t)arg * 0x9E3779B97F4A7C15ull | 1};
  uint64_t *local[LOCAL] = {0};
  for (long i = 0; i < ops_per_thread; i++) {
    uint64_t *p = new_block(&r);
    uint64_t x = rng_next(&r);
    if (x % 3) { /* kept: replaces one of ours, freed through our cache */
      unsigned k = (unsigned)(x >> 8) % LOCAL;
      if (local[k]) check_free(local[k]);
      local[k] = p;
    } else { /* handed over: whoever took the slot's old block frees it */
      uint64_t *old = atomic_exchange(&slots[(x >> 8) % SLOTS], p);
      if (old) check_free(old);
    }
  }
  for (unsigned k = 0; k < LOCAL; k += 2) /* half left live: exits with pages in use */
    if (local[k]) check_free(local[k]);
  for (unsigned k = 1; k < LOCAL; k += 2)
    if (local[k]) {
      uint64_t *old = atomic_exchange(&slots[k * 5 % SLOTS], local[k]);
      if (old) check_free(old);
    }
  return NULL;
}

static void wave(int threads, uintptr_t seed) {
  pthread_t t[64];
  for (int i = 0; i < threads; i++)
    CHECK(pthread_create(&t[i], NULL, worker, (void *)(seed + (uintptr_t)i)) == 0,
          "pthread_create failed");
  for (int i = 0; i < threads; i++)
    pthread_join(t[i], NULL);
}

int main(int argc, char **argv) {
  int threads = argc > 1 ? atoi(argv[1]) : 8;
  if (argc > 2) ops_per_thread = atol(argv[2]);
  CHECK(threads > 0 && threads <= 64, "1-64 threads");
  T_TRIM(0);
  hak_stats_t s0;
  hak_stats_get(&s0);
  wave(threads, 1);
  wave(threads, 1000);
  for (unsigned k = 0; k < SLOTS; k++) {
    uint64_t *p = atomic_exchange(&slots[k], NULL);
    if (p) check_free(p);
  }
  hakmem_flush();
  T_TRIM(0);
  hak_stats_t s;
  hak_stats_get(&s);
  CHECK(s.committed_bytes <= s0.committed_bytes + (512u << 10),
        "committed bytes did not come back after malloc_trim(0): %llu before, %llu after",
        (unsigned long long)s0.committed_bytes, (unsigned long long)s.committed_bytes);
  CHECK(s.midcache_filled > 0 && s.midcache_flushed > 0, "the mid cache was not used");
  CHECK(s.remote_frees > 0, "no remote frees");
  CHECK(s.invalid_frees == 0, "%llu invalid frees", (unsigned long long)s.invalid_frees);
  printf("midcache_mt: ok\n");
  return 0;
}
