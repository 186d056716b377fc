/* The stash's blocks of a page whose owner exits while the freeing thread
 * goes idle: the page is abandoned with them counted as used and cannot go
 * back to its region until the freer's 64th slow path, hakmem_flush(),
 * malloc_trim or exit; an idle process keeps the region committed. A
 * worker allocates about 4 MiB of 64-byte blocks (spanning regions), the
 * main thread frees them all while the worker waits, the worker exits, the
 * main thread sleeps 2 s. Committed memory must then be what it is when the
 * main thread also calls hakmem_flush() after its frees (children with
 * HAKMEM_PURGE_DELAY_MS=0). Usage: stash_idle_exit */
#define _GNU_SOURCE
#include <pthread.h>
#include <semaphore.h>
#include <stdlib.h>
#include <time.h>
#include "check.h"
#include "hakmem.h"
#include "spawn.h"

#define N ((4 << 20) / 64 - 100) /* not a multiple of a stash's 128-block hand-over */
static void *blocks[N];
static sem_t allocated, freed;

static void *worker(void *arg) {
  (void)arg;
  for (int i = 0; i < N; i++) {
    blocks[i] = malloc(opaque_size(64));
    CHECK(blocks[i], "malloc");
  }
  sem_post(&allocated);
  sem_wait(&freed); /* the owner is alive while the main thread frees */
  return NULL;
}

static unsigned long long child(const char *mode) {
  static const char *const env[] = {"HAKMEM_PURGE_DELAY_MS=0", NULL};
  static struct child c;
  run_self(mode, env, &c);
  CHECK(exited_ok(&c), "child %s failed: %s", mode, c.err);
  unsigned long long v = 0;
  const char *p = strstr(c.err, "committed ");
  CHECK(p && sscanf(p, "committed %llu", &v) == 1, "child %s: no result: %s", mode, c.err);
  return v;
}

int main(int argc, char **argv) {
  if (argc < 2) {
    unsigned long long flushed = child("flush"), idle = child("idle");
    CHECK(idle <= flushed + (256u << 10),
          "an idle thread's stash keeps an exited thread's page: %llu bytes committed 2 s after "
          "every block was freed, %llu when the freeing thread calls hakmem_flush()",
          idle, flushed);
    printf("committed %llu idle, %llu flushed\n", idle, flushed);
    return 0;
  }
  free(opaque_ptr(malloc(opaque_size(64))));
  sem_init(&allocated, 0, 0);
  sem_init(&freed, 0, 0);
  pthread_t t;
  CHECK(pthread_create(&t, NULL, worker, NULL) == 0, "pthread_create");
  sem_wait(&allocated);
  for (int i = 0; i < N; i++)
    free(blocks[i]);
  if (!strcmp(argv[1], "flush")) hakmem_flush();
  sem_post(&freed);
  pthread_join(t, NULL);
  nanosleep(&(struct timespec){2, 0}, NULL);
  hak_stats_t s;
  hak_stats_get(&s);
  fprintf(stderr, "committed %llu\n", (unsigned long long)s.committed_bytes);
  return 0;
}
