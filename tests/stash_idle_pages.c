/* A thread frees blocks of another heap's pages and goes idle: those pages
 * must still go back to their regions. A worker allocates about 4 MiB of
 * 64-byte blocks (spanning regions), the main thread frees them all and
 * sleeps 2 s (children with HAKMEM_PURGE_DELAY_MS=0). Committed memory then
 * must be what it is when the main thread also calls hakmem_flush() after
 * its frees: otherwise the blocks of one page wait in the main thread's
 * stash, the page cannot go back and its region is never purged.
 * Two owners of the pages:
 *   shared  HAKMEM_MAX_HEAPS=1: the main thread owns the only heap, the
 *           worker shares a heap and exits before the frees (README: "A
 *           shared heap no malloc used for a background period gives its
 *           empty pages back"; tests/shared_heaps fails its idle check on
 *           this too)
 *   exited  the worker owns its heap and exits after the frees: its pages
 *           are abandoned with the stashed blocks counted as used
 * Usage: stash_idle_pages */
#define _GNU_SOURCE
#include <pthread.h>
#include <semaphore.h>
#include <stdbool.h>
#include <stdlib.h>
#include <time.h>
#include "check.h"
#include "hakmem.h"
#include "spawn.h"

#define N ((4 << 20) / 64 - 100) /* not a multiple of a stash's 128-block hand-over */
static void *blocks[N];
static sem_t allocated, freed;
static bool exits_after_frees;

static void *worker(void *arg) {
  (void)arg;
  for (int i = 0; i < N; i++) {
    blocks[i] = malloc(opaque_size(64));
    CHECK(blocks[i], "malloc");
  }
  sem_post(&allocated);
  if (exits_after_frees) sem_wait(&freed); /* the owner is alive while the main thread frees */
  return NULL;
}

static unsigned long long child(const char *mode, const char *const *env) {
  static struct child c;
  run_self(mode, env, &c);
  CHECK(exited_ok(&c), "child %s failed: %s", mode, c.err);
  unsigned long long v = 0;
  const char *p = strstr(c.err, "committed ");
  CHECK(p && sscanf(p, "committed %llu", &v) == 1, "child %s: no result: %s", mode, c.err);
  return v;
}

static void scenario(const char *owner, const char *const *env) {
  char flush[32], idle[32];
  snprintf(flush, sizeof flush, "%s-flush", owner);
  snprintf(idle, sizeof idle, "%s-idle", owner);
  unsigned long long flushed = child(flush, env), kept = child(idle, env);
  CHECK(kept <= flushed + (256u << 10),
        "an idle thread's stash keeps a page (%s owner): %llu bytes committed 2 s after every "
        "block was freed, %llu when the freeing thread calls hakmem_flush()",
        owner, kept, flushed);
  printf("%s: committed %llu idle, %llu flushed\n", owner, kept, flushed);
}

int main(int argc, char **argv) {
  if (argc < 2) {
    static const char *const shared_env[] = {"HAKMEM_MAX_HEAPS=1", "HAKMEM_PURGE_DELAY_MS=0", NULL};
    static const char *const exited_env[] = {"HAKMEM_PURGE_DELAY_MS=0", NULL};
    scenario("shared", shared_env);
    scenario("exited", exited_env);
    return 0;
  }
  exits_after_frees = !strncmp(argv[1], "exited", 6);
  free(opaque_ptr(malloc(opaque_size(64)))); /* the main thread's heap (the one allowed) */
  sem_init(&allocated, 0, 0);
  sem_init(&freed, 0, 0);
  pthread_t t;
  CHECK(pthread_create(&t, NULL, worker, NULL) == 0, "pthread_create");
  sem_wait(&allocated);
  if (!exits_after_frees) pthread_join(t, NULL);
  for (int i = 0; i < N; i++)
    free(blocks[i]);
  if (strstr(argv[1], "-flush")) hakmem_flush();
  if (exits_after_frees) {
    sem_post(&freed);
    pthread_join(t, NULL);
  }
  nanosleep(&(struct timespec){2, 0}, NULL);
  hak_stats_t s;
  hak_stats_get(&s);
  fprintf(stderr, "committed %llu\n", (unsigned long long)s.committed_bytes);
  return 0;
}
