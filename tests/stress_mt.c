/* Multi-thread stress: threads allocate random sizes (mostly small, some mid,
 * few large and huge), hand blocks to each other through shared slots so most
 * frees are cross-thread, and realloc/calloc/memalign along the way. Every
 * block carries its size and an address-derived pattern, checked before it
 * is freed. Two waves of threads: the second frees what the exited first
 * wave left in the slots; half the threads call hak_thread_done midway.
 *
 * Built three ways: plainly by the Makefile (malloc is hakmem's override),
 * and by tests/run.sh with -DSTRESS_HAK against the TSan and UBSan builds of
 * the allocator, which have no malloc override, so the hak_ names are used.
 * Usage: stress_mt [threads [ops-per-thread]] */
#define _GNU_SOURCE
#include <malloc.h>
#include <pthread.h>
#include <stdatomic.h>
#include "check.h"
#include "hakmem.h"
#include "t_alloc.h"

#define SLOTS 1024
#define LOCAL 64
#define HDR 16 /* size word + address check word */
#define MAGIC 0x5EEDF00DCAFEBABEull

static _Atomic(uintptr_t) slots[SLOTS];
static long ops_per_thread = 50000;

static size_t random_size(struct rng *r) {
  uint64_t k = rng_next(r) % 1000;
  if (k < 860) return HDR + rng_next(r) % 1024;              /* small */
  if (k < 989) return 1024 + rng_next(r) % (31 * 1024);      /* mid, up to 32 KiB */
  if (k < 999) return 32 * 1024 + rng_next(r) % (480 << 10); /* large */
  return (1 << 20) + rng_next(r) % (3 << 20);                /* huge */
}

/* Header: the size, then the address xor a constant; the rest a pattern. */
static void stamp(void *p, size_t n) {
  uint64_t *h = p;
  h[0] = n;
  h[1] = (uint64_t)(uintptr_t)p ^ MAGIC;
  fill_pattern((char *)p + HDR, n - HDR);
}

static size_t verify(void *p, const char *when) {
  uint64_t *h = p;
  size_t n = (size_t)h[0];
  CHECK(h[1] == ((uint64_t)(uintptr_t)p ^ MAGIC), "%s: header of %p overwritten", when, p);
  CHECK(n >= HDR && n <= (4u << 20) + HDR, "%s: size word of %p is %zu", when, p, n);
  CHECK(T_USABLE(p) >= n, "%s: usable size of %p is %zu < %zu", when, p, T_USABLE(p), n);
  size_t bad = check_pattern((char *)p + HDR, n - HDR);
  CHECK(bad == SIZE_MAX, "%s: block %p of %zu bytes overwritten at offset %zu", when, p, n,
        bad + HDR);
  return n;
}

static void *new_block(size_t n) {
  void *p = T_MALLOC(n);
  CHECK(p, "malloc(%zu) failed", n);
  CHECK((uintptr_t)p % 16 == 0, "malloc(%zu) = %p misaligned", n, p);
  stamp(p, n);
  return p;
}

static void release(void *p, const char *when) {
  if (!p) return;
  verify(p, when);
  T_FREE(p);
}

/* Put a block into a random shared slot; whatever was there is freed here,
 * usually by a thread other than the one that allocated it. */
static void publish(struct rng *r, void *p) {
  uintptr_t old = atomic_exchange(&slots[rng_next(r) % SLOTS], (uintptr_t)p);
  release((void *)old, "shared slot");
}

static void op_realloc(struct rng *r) {
  void *p = (void *)atomic_exchange(&slots[rng_next(r) % SLOTS], 0);
  if (!p) return;
  size_t n = verify(p, "before realloc");
  size_t to = random_size(r);
  uintptr_t was = (uintptr_t)p;
  void *q = T_REALLOC(p, to);
  CHECK(q, "realloc(%zu -> %zu) failed", n, to);
  /* The header moved with the block; the pattern is the old address's. */
  size_t keep = (n < to ? n : to) - HDR;
  size_t bad = check_pattern_as((char *)q + HDR, (void *)(was + HDR), keep);
  CHECK(bad == SIZE_MAX, "realloc(%zu -> %zu) lost byte %zu", n, to, bad + HDR);
  stamp(q, to);
  publish(r, q);
}

static void op_calloc(struct rng *r) {
  size_t n = random_size(r);
  unsigned char *p = T_CALLOC(1, n);
  CHECK(p, "calloc(%zu) failed", n);
  for (size_t i = 0; i < n; i++)
    CHECK(p[i] == 0, "calloc(%zu): byte %zu not zero", n, i);
  stamp(p, n);
  publish(r, p);
}

static void op_memalign(struct rng *r, void **local) {
  size_t align = (size_t)16 << (rng_next(r) % 9); /* 16 .. 4096 */
  size_t n = random_size(r);
  void *p = NULL;
  int rc = T_MEMALIGN(&p, align, n);
  CHECK(rc == 0 && p, "posix_memalign(%zu, %zu) failed: %d", align, n, rc);
  CHECK((uintptr_t)p % align == 0, "posix_memalign(%zu) = %p misaligned", align, p);
  stamp(p, n);
  size_t i = rng_next(r) % LOCAL;
  release(local[i], "local slot");
  local[i] = p;
}

static void *worker(void *arg) {
  struct rng r = {(uint64_t)(uintptr_t)arg * 0x9E3779B97F4A7C15ull + 1};
  void *local[LOCAL] = {0};
  for (long op = 0; op < ops_per_thread; op++) {
    /* Odd threads drop their heap halfway, with blocks still live, while
     * the others keep freeing into it. */
    if (op == ops_per_thread / 2 && ((uintptr_t)arg & 1)) hak_thread_done();
    uint64_t k = rng_next(&r) % 100;
    if (k < 60) {
      publish(&r, new_block(random_size(&r)));
    } else if (k < 85) {
      size_t i = rng_next(&r) % LOCAL;
      release(local[i], "local slot");
      local[i] = new_block(random_size(&r));
    } else if (k < 90) {
      op_realloc(&r);
    } else if (k < 95) {
      op_calloc(&r);
    } else {
      op_memalign(&r, local);
    }
  }
  /* Half of the local blocks outlive the thread: main frees them later. */
  for (int i = 0; i < LOCAL; i += 2)
    release(local[i], "local at exit");
  for (int i = 1; i < LOCAL; i += 2)
    publish(&r, local[i]);
  return NULL;
}

int main(int argc, char **argv) {
  int nthreads = argc > 1 ? atoi(argv[1]) : 8;
  if (argc > 2) ops_per_thread = atol(argv[2]);
  CHECK(nthreads >= 2 && nthreads <= 256 && ops_per_thread > 0, "usage: %s [threads [ops]]",
        argv[0]);
  hak_stats_t before, after;
  hak_stats_get(&before);
  pthread_t tid[256];
  for (int wave = 0; wave < 2; wave++) {
    for (int i = 0; i < nthreads; i++)
      CHECK(pthread_create(&tid[i], NULL, worker, (void *)(uintptr_t)(wave * 1000 + i + 1)) == 0,
            "pthread_create failed");
    for (int i = 0; i < nthreads; i++)
      pthread_join(tid[i], NULL);
  }
  for (int i = 0; i < SLOTS; i++)
    release((void *)atomic_load(&slots[i]), "final drain");
  hak_stats_get(&after);
  CHECK(after.invalid_frees == before.invalid_frees, "%llu frees counted as invalid",
        (unsigned long long)(after.invalid_frees - before.invalid_frees));
  uint64_t remote = after.remote_frees + after.remote_frees_cross_node - before.remote_frees -
                    before.remote_frees_cross_node;
  CHECK(remote > 0, "cross-thread frees happened but remote_frees did not move");
  printf("%d threads x %ld ops x 2 waves: %llu remote frees, %llu collected, "
         "%llu pages abandoned, %llu adopted\n",
         nthreads, ops_per_thread, (unsigned long long)remote,
         (unsigned long long)(after.remote_blocks_collected - before.remote_blocks_collected),
         (unsigned long long)(after.pages_abandoned - before.pages_abandoned),
         (unsigned long long)(after.pages_adopted - before.pages_adopted));
  return 0;
}
