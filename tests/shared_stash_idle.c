/* Blocks of a shared heap freed by a thread that owns a heap, which then
 * goes idle: the shared heap's pages must still go back (README: "A shared
 * heap no malloc used for a background period gives its empty pages back").
 * In children with HAKMEM_MAX_HEAPS=1 and HAKMEM_PURGE_DELAY_MS=0, the main
 * thread owns the only heap; a second thread shares a heap, allocates about
 * 4 MiB of 64-byte blocks (spanning regions) and exits; the main thread
 * frees them all and sleeps 2 s. Committed memory then must be what it is
 * when the main thread also calls hakmem_flush() after the frees: otherwise
 * the blocks of one page wait in the main thread's stash, the page cannot
 * go back and its region is never purged. (tests/shared_heaps fails its
 * idle check on this in most runs.) Usage: shared_stash_idle */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdlib.h>
#include <time.h>
#include "check.h"
#include "hakmem.h"
#include "spawn.h"

/* not a multiple of the 128 blocks (8 KiB) a stash hands over at once */
#define N ((4 << 20) / 64 - 100)
static void *blocks[N];

static void *alloc_all(void *arg) {
  (void)arg;
  for (int i = 0; i < N; i++) {
    blocks[i] = malloc(opaque_size(64));
    CHECK(blocks[i], "malloc");
  }
  return NULL;
}

static unsigned long long committed(void) {
  hak_stats_t s;
  hak_stats_get(&s);
  return (unsigned long long)s.committed_bytes;
}

static unsigned long long child(const char *mode) {
  static const char *const env[] = {"HAKMEM_MAX_HEAPS=1", "HAKMEM_PURGE_DELAY_MS=0", NULL};
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
          "an idle thread's stash keeps a shared heap's page: %llu bytes committed 2 s after "
          "every block was freed, %llu when the freeing thread calls hakmem_flush()",
          idle, flushed);
    printf("committed %llu idle, %llu flushed\n", idle, flushed);
    return 0;
  }
  free(opaque_ptr(malloc(opaque_size(64)))); /* the main thread's heap, the one allowed */
  pthread_t t;
  CHECK(pthread_create(&t, NULL, alloc_all, NULL) == 0, "pthread_create");
  pthread_join(t, NULL);
  for (int i = 0; i < N; i++)
    free(blocks[i]);
  if (!strcmp(argv[1], "flush")) hakmem_flush();
  nanosleep(&(struct timespec){2, 0}, NULL);
  fprintf(stderr, "committed %llu\n", committed());
  return 0;
}
