/* Threads that exit with live blocks: main frees those blocks later (half
 * right after the round, half after the next round has run), and new
 * threads must take over the abandoned pages instead of fresh ones. Asserts
 * pages_abandoned and pages_adopted move, and that pages_fresh levels off:
 * the 20 late rounds may not take more fresh pages than the first 3 did. */
#define _GNU_SOURCE
#include <pthread.h>
#include "check.h"
#include "hakmem.h"

#define ROUNDS 30
#define THREADS 4
#define BLOCKS 3000

struct handoff {
  void *block[BLOCKS];
  int count;
};

static struct handoff given[2][THREADS]; /* by round parity */

static void stamp(char *p, size_t n) {
  uint64_t head = n ^ (uint64_t)(uintptr_t)p;
  memcpy(p, &head, 8);
  memset(p + 8, (int)(head & 0xff), n - 8);
}

static void verify_free(char *p) {
  uint64_t head;
  memcpy(&head, p, 8);
  size_t n = (size_t)(head ^ (uint64_t)(uintptr_t)p);
  CHECK(n >= 16 && n <= 8192, "block %p: header overwritten", (void *)p);
  for (size_t i = 8; i < n; i++)
    CHECK((uint8_t)p[i] == (uint8_t)(head & 0xff), "block %p: byte %zu overwritten", (void *)p, i);
  free(p);
}

static void *worker(void *arg) {
  struct handoff *h = arg;
  uint64_t s = (uint64_t)(uintptr_t)arg | 1;
  h->count = 0;
  for (int i = 0; i < BLOCKS; i++) {
    s ^= s << 13, s ^= s >> 7, s ^= s << 17;
    size_t n = s % 10 ? 16 + s % 1009 : 1024 + s % 7169;
    char *p = malloc(n);
    CHECK(p, "malloc(%zu) failed", n);
    stamp(p, n);
    if (i % 3 == 0)
      verify_free(p); /* a local free: the page gets room */
    else
      h->block[h->count++] = p;
  }
  return NULL; /* exits with 2/3 of its blocks live */
}

int main(void) {
  hak_stats_t before, now;
  uint64_t fresh[ROUNDS];
  hak_stats_get(&before);
  for (int r = 0; r < ROUNDS; r++) {
    pthread_t tid[THREADS];
    struct handoff *cur = given[r % 2], *prev = given[(r + 1) % 2];
    for (int t = 0; t < THREADS; t++)
      CHECK(pthread_create(&tid[t], NULL, worker, &cur[t]) == 0, "pthread_create failed");
    for (int t = 0; t < THREADS; t++)
      pthread_join(tid[t], NULL);
    /* Previous round's remaining half, then half of this round's. */
    if (r > 0)
      for (int t = 0; t < THREADS; t++)
        for (int i = 1; i < prev[t].count; i += 2)
          verify_free(prev[t].block[i]);
    for (int t = 0; t < THREADS; t++)
      for (int i = 0; i < cur[t].count; i += 2)
        verify_free(cur[t].block[i]);
    hak_stats_get(&now);
    fresh[r] = now.pages_fresh;
  }
  struct handoff *last = given[(ROUNDS - 1) % 2];
  for (int t = 0; t < THREADS; t++)
    for (int i = 1; i < last[t].count; i += 2)
      verify_free(last[t].block[i]);

  hak_stats_get(&now);
  uint64_t early = fresh[2] - before.pages_fresh, late = fresh[ROUNDS - 1] - fresh[9];
  printf("pages_fresh: first 3 rounds %llu, last 20 rounds %llu; abandoned %llu adopted %llu\n",
         (unsigned long long)early, (unsigned long long)late,
         (unsigned long long)(now.pages_abandoned - before.pages_abandoned),
         (unsigned long long)(now.pages_adopted - before.pages_adopted));
  CHECK(now.pages_abandoned > before.pages_abandoned,
        "threads exited with live blocks but pages_abandoned did not move");
  CHECK(now.pages_adopted > before.pages_adopted,
        "abandoned pages with free room were never adopted (pages_adopted did not move)");
  CHECK(late <= early,
        "pages_fresh keeps growing: %llu in the last 20 rounds vs %llu in the first 3",
        (unsigned long long)late, (unsigned long long)early);
  return 0;
}
