/* HAKMEM_UFFD=1 under 8 threads at once: first touches of different 64 KiB
 * pages, then of different 4 KiB pages inside the same 64 KiB pages (one
 * thread's fault fills the page another is waiting on), then malloc'd
 * blocks; every byte must hold what its thread wrote. */
#define _GNU_SOURCE
#include <hakmem.h>
#include <pthread.h>

#include "../kmem/kmem.h"
#include "check.h"
#include "spawn.h"
#include "uffd_util.h"

#define KPAGE ((size_t)64 << 10)
#define AREA ((size_t)64 << 20)
#define THREADS 8

static char *area;
static size_t unit; /* bytes each thread owns in turn: 64 KiB, then 4 KiB */
static pthread_barrier_t go;

/* Thread t owns units t, t+8, t+16...: reads zero first, then fills. */
static void *toucher(void *arg) {
  size_t t = (size_t)arg;
  pthread_barrier_wait(&go);
  for (size_t off = t * unit; off < AREA; off += THREADS * unit) {
    CHECK(*(volatile uint64_t *)(area + off) == 0, "fresh memory at +%zu is not zero", off);
    fill_sparse(area + off, unit, 512);
  }
  return NULL;
}

static void round_of(size_t u) {
  unit = u;
  pthread_t th[THREADS];
  pthread_barrier_init(&go, NULL, THREADS);
  for (size_t t = 0; t < THREADS; t++)
    CHECK(pthread_create(&th[t], NULL, toucher, (void *)t) == 0, "pthread_create failed");
  for (size_t t = 0; t < THREADS; t++)
    pthread_join(th[t], NULL);
  pthread_barrier_destroy(&go);
  for (size_t off = 0; off < AREA; off += u) {
    size_t bad = check_sparse(area + off, u, 512);
    CHECK(bad == SIZE_MAX, "unit of %zu at +%zu lost data at +%zu", u, off, bad);
  }
}

static void kmem_part(void) {
  area = kmem_map_aligned(AREA, KMEM_REGION_SIZE);
  CHECK(area, "kmem_map_aligned failed");
  for (size_t off = 0; off < AREA; off += KMEM_REGION_SIZE)
    kmem_uffd_register(area + off, KMEM_REGION_SIZE);
  uint64_t f0 = uffd_faults();
  round_of(KPAGE);
  uint64_t n = uffd_faults() - f0;
  printf("64 KiB pages: %llu faults\n", (unsigned long long)n);
  CHECK(n == AREA / KPAGE, "%zu pages of 64 KiB took %llu faults", AREA / KPAGE,
        (unsigned long long)n);

  /* Same again on purged memory, 4 KiB per thread: up to 8 threads wait on
   * one 64 KiB page; each fault is served, none twice over. */
  CHECK(kmem_purge_now(area, AREA), "kmem_purge_now failed");
  f0 = uffd_faults();
  round_of(4096);
  n = uffd_faults() - f0;
  printf("4 KiB pages, 8 threads per 64 KiB: %llu faults\n", (unsigned long long)n);
  CHECK(n >= AREA / KPAGE && n <= AREA / 4096, "%llu faults", (unsigned long long)n);
  kmem_unmap(area, AREA);
}

/* Each thread: 8 MiB of 16-64 KiB blocks, filled, checked, freed. */
static void *mallocer(void *arg) {
  enum { N = 256 };
  static __thread char *b[N];
  size_t t = (size_t)arg;
  pthread_barrier_wait(&go);
  for (int i = 0; i < N; i++) {
    size_t size = (16 << 10) << ((i + t) % 3);
    b[i] = malloc(size);
    CHECK(b[i], "malloc failed");
    fill_sparse(b[i], size, 256);
  }
  for (int i = 0; i < N; i++) {
    size_t size = (16 << 10) << ((i + t) % 3);
    size_t bad = check_sparse(b[i], size, 256);
    CHECK(bad == SIZE_MAX, "thread %zu block %d lost data at +%zu", t, i, bad);
    free(b[i]);
  }
  return NULL;
}

static void malloc_part(void) {
  uint64_t f0 = uffd_faults();
  pthread_t th[THREADS];
  pthread_barrier_init(&go, NULL, THREADS);
  for (size_t t = 0; t < THREADS; t++)
    CHECK(pthread_create(&th[t], NULL, mallocer, (void *)t) == 0, "pthread_create failed");
  for (size_t t = 0; t < THREADS; t++)
    pthread_join(th[t], NULL);
  pthread_barrier_destroy(&go);
  uint64_t n = uffd_faults() - f0;
  printf("malloc in 8 threads: %llu faults\n", (unsigned long long)n);
  CHECK(n > 0, "no userfaultfd faults for 8 threads' fresh blocks");
}

int main(int argc, char **argv) {
  if (argc > 1 && strcmp(argv[1], "child") == 0) {
    int wired = uffd_child_start();
    kmem_part();
    if (wired) malloc_part();
    return 0;
  }
  struct child c;
  uffd_run_self("child", &c);
  return 0;
}
