/* A thread counts against HAKMEM_MAX_HEAPS only while it owns a heap. A
 * thread whose first allocation is an aligned one served without a heap
 * (alignment past 64 KiB: a mapping of its own) must not keep a heap's
 * place after it exits. With HAKMEM_MAX_HEAPS=2 (the test runs itself again
 * with it): the main thread owns a heap, then threads one after the other
 * each make one such block, free it and exit; a last thread then mallocs
 * and must get a heap of its own (shared_heap_threads stays 0).
 * Usage: shared_reserve */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdlib.h>
#include "check.h"
#include "hakmem.h"

static void *aligned_only(void *arg) {
  (void)arg;
  void *p = NULL;
  CHECK(posix_memalign(&p, (size_t)1 << 17, 4096) == 0, "posix_memalign");
  free(p);
  return NULL;
}

static void *plain(void *arg) {
  (void)arg;
  free(opaque_ptr(malloc(opaque_size(64))));
  return NULL;
}

static void run(void *(*f)(void *)) {
  pthread_t t;
  CHECK(pthread_create(&t, NULL, f, NULL) == 0, "pthread_create");
  pthread_join(t, NULL);
}

int main(int argc, char **argv) {
  (void)argc;
  if (!getenv("HAKMEM_MAX_HEAPS")) {
    setenv("HAKMEM_MAX_HEAPS", "2", 1);
    execv("/proc/self/exe", argv);
    FAIL("execv");
  }
  free(opaque_ptr(malloc(opaque_size(64)))); /* the main thread's heap */
  for (int i = 0; i < 4; i++)
    run(aligned_only);
  run(plain);
  hak_stats_t s;
  hak_stats_get(&s);
  CHECK(s.shared_heap_threads == 0,
        "%llu thread(s) shared a heap with only the main thread's heap owned: threads that "
        "made only aligned mappings kept their places under HAKMEM_MAX_HEAPS",
        (unsigned long long)s.shared_heap_threads);
  printf("no thread shared\n");
  return 0;
}
