/* Many threads wake the dozing background thread at once.
 *
 * Each of N threads, for R rounds: allocates about a region's worth of
 * 40 KiB blocks, hands a few to its neighbour (whose frees of them are
 * remote: stashes start), sleeps 0-30 ms, frees the rest and the blocks its
 * other neighbour handed it, and sleeps 0-60 ms. With
 * HAKMEM_PURGE_DELAY_MS=10 the thread's period is 5 ms, so in the pauses it
 * backs off and dozes, and the frees (regions emptied, stashes started)
 * wake it from many threads at once: the doze's flag and wake-up race
 * (run under ThreadSanitizer too). At the end the memory must still go
 * back: committed_bytes below a third of its peak within 10 s (what stays
 * is regions a leftover page keeps from emptying: the main thread's last
 * page of the class, a block never freed; with each heap's spans in regions
 * of its own these are 2-3 regions, 3.7-4.7 of a 19 MB peak) (the TSan
 * build's hak_stats_get reads a long smaps: seconds).
 * Usage: bg_wake [threads [rounds]] (default 8 30) */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdatomic.h>
#include <time.h>
#include "check.h"
#include "t_alloc.h"

#define BLOCKS 48
#define SHARE 4
#define BLOCK_SIZE (40u << 10)
#define MAX_THREADS 64

static int nthreads, rounds;
/* blocks handed from thread i to thread i + 1, per round parity */
static void *_Atomic handed[MAX_THREADS][2][SHARE];

static void sleep_ms(long ms) {
  struct timespec t = {ms / 1000, (ms % 1000) * 1000000};
  nanosleep(&t, NULL);
}

static long now_ms(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec * 1000 + t.tv_nsec / 1000000;
}

static void *worker(void *arg) {
  int me = (int)(intptr_t)arg, from = (me + nthreads - 1) % nthreads;
  struct rng r = {(uint64_t)me * 0x9E3779B97F4A7C15ull + 1};
  void *mine[BLOCKS];
  for (int round = 0; round < rounds; round++) {
    for (int i = 0; i < BLOCKS; i++) {
      mine[i] = T_MALLOC(BLOCK_SIZE);
      CHECK(mine[i], "malloc failed");
      *(volatile char *)mine[i] = (char)i;
    }
    for (int i = 0; i < SHARE; i++) { /* the neighbour frees these */
      void *old = atomic_exchange(&handed[me][round & 1][i], mine[i]);
      if (old) T_FREE(old); /* not taken yet: ours again */
    }
    sleep_ms((long)(rng_next(&r) % 31));
    for (int i = SHARE; i < BLOCKS; i++)
      T_FREE(mine[i]);
    for (int i = 0; i < SHARE; i++) {
      void *p = atomic_exchange(&handed[from][round & 1][i], NULL);
      if (p) T_FREE(p);
    }
    sleep_ms((long)(rng_next(&r) % 61));
  }
  return NULL;
}

int main(int argc, char **argv) {
  nthreads = argc > 1 ? atoi(argv[1]) : 8;
  rounds = argc > 2 ? atoi(argv[2]) : 30;
  CHECK(nthreads > 0 && nthreads <= MAX_THREADS && rounds > 0, "usage: bg_wake [threads [rounds]]");
  pthread_t t[MAX_THREADS];
  for (int i = 0; i < nthreads; i++)
    CHECK(pthread_create(&t[i], NULL, worker, (void *)(intptr_t)i) == 0, "pthread_create");
  for (int i = 0; i < nthreads; i++)
    pthread_join(t[i], NULL);
  for (int i = 0; i < nthreads; i++)
    for (int k = 0; k < 2; k++)
      for (int j = 0; j < SHARE; j++) {
        void *p = atomic_exchange(&handed[i][k][j], NULL);
        if (p) T_FREE(p);
      }
  hak_stats_t s;
  long t0 = now_ms();
  do {
    sleep_ms(20);
    hak_stats_get(&s);
  } while (s.committed_bytes > s.peak_committed_bytes / 3 && now_ms() - t0 < 10000);
  printf("bg_wake: %d threads x %d rounds, %llu background passes; committed %llu KiB (peak "
         "%llu) %ld ms after the last free\n",
         nthreads, rounds, (unsigned long long)s.background_passes,
         (unsigned long long)(s.committed_bytes >> 10),
         (unsigned long long)(s.peak_committed_bytes >> 10), now_ms() - t0);
  CHECK(s.committed_bytes <= s.peak_committed_bytes / 3,
        "committed_bytes still %llu KiB (peak %llu) 10 s after everything was freed: the "
        "background thread was not woken (or purged nothing)",
        (unsigned long long)(s.committed_bytes >> 10),
        (unsigned long long)(s.peak_committed_bytes >> 10));
  return 0;
}
