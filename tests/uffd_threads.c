/* HAKMEM_UFFD=1 under 8 threads at once: first touches of different 64 KiB
 * pages, then of different 4 KiB pages inside the same 64 KiB pages (one
 * thread's fault fills the page another is waiting on), then malloc'd
 * blocks; every byte must hold what its thread wrote. */
#define _GNU_SOURCE
#include <hakmem.h>
#include <pthread.h>

#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>

#include "../kmem/kmem.h"
#include "check.h"
#include "spawn.h"

#define KPAGE ((size_t)64 << 10)
#define AREA ((size_t)64 << 20)
#define THREADS 8

static uint64_t uffd_faults(void) {
  hak_stats_t s;
  hak_stats_get(&s);
  return s.uffd_faults;
}

static int uffd_usable(void) {
  int fd = (int)syscall(SYS_userfaultfd, O_CLOEXEC);
  if (fd < 0) {
    int dev = open("/dev/userfaultfd", O_RDWR | O_CLOEXEC);
    if (dev >= 0) {
      fd = ioctl(dev, USERFAULTFD_IOC_NEW, O_CLOEXEC);
      close(dev);
    }
  }
  if (fd < 0) return 0;
  close(fd);
  return 1;
}

static int allocator_uses_uffd(void) {
  enum { N = 256 };  /* 8 MiB: past the first region (made inside kmem_uffd_start) */
  static void *b[N]; /* kept, so what the test allocates next is fresh */
  uint64_t before = uffd_faults();
  for (int i = 0; i < N; i++) {
    b[i] = malloc(32 << 10);
    CHECK(b[i], "malloc failed");
    memset(b[i], 1, 32 << 10);
  }
  return uffd_faults() > before;
}

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
    setvbuf(stdout, NULL, _IOLBF, 0);
    alarm(20); /* a fault nobody serves hangs: die instead */
    int wired = allocator_uses_uffd();
    if (!wired) {
      printf("NOTE: the allocator does not serve faults with userfaultfd yet\n");
      CHECK(kmem_uffd_start(), "kmem_uffd_start failed");
    }
    kmem_part();
    if (wired) malloc_part();
    return 0;
  }
  if (!uffd_usable()) SKIP("userfaultfd is not available to this process");
  static const char *const env[] = {"HAKMEM_UFFD=1", NULL};
  struct child c;
  run_self("child", env, &c);
  fputs(c.err, stderr);
  CHECK(exited_ok(&c), "child failed (status %#x)", c.status);
  return 0;
}
