/* The seed regression (shared/seed): producers allocate 2-32 KiB blocks that
 * consumers free, so nearly every free is remote and lands on pages that are
 * still active in the producer's heap. The old allocator never collected
 * those frees and kept taking fresh pages (30x what it needed). Asserts:
 * remote_blocks_collected > 0, and pages_fresh * 64 KiB stays within 4x the
 * peak of live bytes this test itself tracks (requested sizes). */
#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include "check.h"
#include "hakmem.h"

#define PRODUCERS 4
#define CONSUMERS 4
#define RING 64                        /* blocks in flight per producer->consumer pair */
#define BLOCKS_PER_PRODUCER (1L << 18) /* 1M blocks in all: 2M malloc+free */
#define PAGE (64 * 1024)
/* The most that can ever be live: full rings plus one block per producer. */
#define MAX_LIVE ((uint64_t)(PRODUCERS * CONSUMERS * RING + PRODUCERS) * 32768)

struct ring {
  _Atomic size_t head; /* consumer's position */
  char pad1[56];
  _Atomic size_t tail; /* producer's position */
  char pad2[56];
  void *slot[RING];
};

static struct ring rings[PRODUCERS][CONSUMERS];
static _Atomic int producers_done;
static _Atomic int64_t live_bytes;
static _Atomic int64_t peak_bytes;

static void stamp(char *p, size_t n) {
  uint64_t head = n ^ (uint64_t)(uintptr_t)p, tail = ~head;
  memcpy(p, &head, 8);
  memcpy(p + n - 8, &tail, 8);
}

static size_t verify(char *p) {
  uint64_t head, tail;
  memcpy(&head, p, 8);
  size_t n = (size_t)(head ^ (uint64_t)(uintptr_t)p);
  CHECK(n >= 2048 && n <= 32768, "block %p: header overwritten (size word %zu)", (void *)p, n);
  memcpy(&tail, p + n - 8, 8);
  CHECK(tail == ~head, "block %p of %zu bytes: last word overwritten", (void *)p, n);
  return n;
}

static void *producer(void *arg) {
  int id = (int)(uintptr_t)arg;
  uint64_t s = 0x9E3779B97F4A7C15ull * (uint64_t)(id + 1);
  for (long i = 0; i < BLOCKS_PER_PRODUCER; i++) {
    /* Past 4 x MAX_LIVE the final check cannot pass: fail now, not after
     * minutes of an allocator that never reuses what consumers free. */
    if (id == 0 && i % 4096 == 0) {
      hak_stats_t st;
      hak_stats_get(&st);
      CHECK(st.pages_fresh * PAGE <= 4 * MAX_LIVE,
            "after %ld blocks pages_fresh is already %llu (%llu bytes), over 4 x the most "
            "this test can have live (%llu bytes)",
            i, (unsigned long long)st.pages_fresh, (unsigned long long)st.pages_fresh * PAGE,
            (unsigned long long)MAX_LIVE);
    }
    s ^= s << 13, s ^= s >> 7, s ^= s << 17;
    size_t n = 2048 + s % (30 * 1024 + 1);
    char *p = malloc(n);
    CHECK(p, "malloc(%zu) failed", n);
    stamp(p, n);
    int64_t now = atomic_fetch_add(&live_bytes, (int64_t)n) + (int64_t)n;
    int64_t peak = atomic_load(&peak_bytes);
    while (now > peak && !atomic_compare_exchange_weak(&peak_bytes, &peak, now)) {
    }
    struct ring *r = &rings[id][i % CONSUMERS];
    size_t t = atomic_load_explicit(&r->tail, memory_order_relaxed);
    while (t - atomic_load_explicit(&r->head, memory_order_acquire) == RING)
      sched_yield();
    r->slot[t % RING] = p;
    atomic_store_explicit(&r->tail, t + 1, memory_order_release);
  }
  atomic_fetch_add(&producers_done, 1);
  return NULL;
}

/* Pops one block from any ring of this consumer; 0 when all were empty. */
static int consume_some(int id) {
  int got = 0;
  for (int p = 0; p < PRODUCERS; p++) {
    struct ring *r = &rings[p][id];
    size_t h = atomic_load_explicit(&r->head, memory_order_relaxed);
    if (h == atomic_load_explicit(&r->tail, memory_order_acquire)) continue;
    char *b = r->slot[h % RING];
    atomic_store_explicit(&r->head, h + 1, memory_order_release);
    size_t n = verify(b);
    atomic_fetch_sub(&live_bytes, (int64_t)n);
    free(b);
    got = 1;
  }
  return got;
}

static void *consumer(void *arg) {
  int id = (int)(uintptr_t)arg;
  for (;;) {
    if (consume_some(id)) continue;
    /* Done only when every producer finished and the rings are empty;
     * the load of producers_done comes before the final look. */
    if (atomic_load(&producers_done) == PRODUCERS && !consume_some(id)) break;
    sched_yield();
  }
  return NULL;
}

int main(void) {
  hak_stats_t before, after;
  hak_stats_get(&before);
  pthread_t prod[PRODUCERS], cons[CONSUMERS];
  for (int i = 0; i < CONSUMERS; i++)
    CHECK(pthread_create(&cons[i], NULL, consumer, (void *)(uintptr_t)i) == 0, "pthread_create");
  for (int i = 0; i < PRODUCERS; i++)
    CHECK(pthread_create(&prod[i], NULL, producer, (void *)(uintptr_t)i) == 0, "pthread_create");
  for (int i = 0; i < PRODUCERS; i++)
    pthread_join(prod[i], NULL);
  for (int i = 0; i < CONSUMERS; i++)
    pthread_join(cons[i], NULL);
  hak_stats_get(&after);

  CHECK(atomic_load(&live_bytes) == 0, "test bug: %lld bytes still live",
        (long long)atomic_load(&live_bytes));
  int64_t peak = atomic_load(&peak_bytes);
  uint64_t collected = after.remote_blocks_collected - before.remote_blocks_collected;
  printf("peak live %lld bytes; pages_fresh %llu (%llu bytes); pages_reused %llu; "
         "remote_frees %llu; remote_blocks_collected %llu\n",
         (long long)peak, (unsigned long long)after.pages_fresh,
         (unsigned long long)after.pages_fresh * PAGE, (unsigned long long)after.pages_reused,
         (unsigned long long)(after.remote_frees - before.remote_frees),
         (unsigned long long)collected);
  CHECK(collected > 0, "remote frees were never collected (remote_blocks_collected is 0)");
  CHECK(after.pages_fresh * PAGE <= 4 * (uint64_t)peak,
        "pages_fresh %llu x 64 KiB = %llu bytes > 4 x peak live %lld bytes",
        (unsigned long long)after.pages_fresh, (unsigned long long)after.pages_fresh * PAGE,
        (long long)peak);
  return 0;
}
