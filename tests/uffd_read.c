/* HAKMEM_UFFD=1: faults the kernel takes for the program are served too.
 * read(2) from a pipe into a fresh 1 MiB buffer writes it from inside the
 * kernel (copy_to_user); a user-mode-only userfaultfd would fail that read
 * with EFAULT, and a handler that misses it would hang it. Also write(2)
 * from a fresh buffer (the kernel reads it first). */
#define _GNU_SOURCE
#include <hakmem.h>
#include <pthread.h>

#include <errno.h>
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>

#include "../kmem/kmem.h"
#include "check.h"
#include "spawn.h"

#define LEN ((size_t)1 << 20)

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

static int fds[2];
static char *source; /* LEN of pattern, ordinary memory */

static void *writer(void *arg) {
  (void)arg;
  for (size_t off = 0; off < LEN;) {
    ssize_t n = write(fds[1], source + off, LEN - off);
    CHECK(n > 0, "write to the pipe failed");
    off += (size_t)n;
  }
  return NULL;
}

/* Reads LEN bytes of pattern from a pipe into dst with read(2) only. */
static void read_into(char *dst, const char *what) {
  CHECK(pipe(fds) == 0, "pipe failed");
  pthread_t t;
  CHECK(pthread_create(&t, NULL, writer, NULL) == 0, "pthread_create failed");
  uint64_t f0 = uffd_faults();
  for (size_t off = 0; off < LEN;) {
    ssize_t n = read(fds[0], dst + off, LEN - off);
    CHECK(n > 0, "%s: read(2) into a fresh buffer failed at +%zu: %s", what, off,
          n < 0 ? strerror(errno) : "end of file");
    off += (size_t)n;
  }
  pthread_join(t, NULL);
  close(fds[0]);
  close(fds[1]);
  uint64_t n = uffd_faults() - f0;
  printf("%s: %llu faults\n", what, (unsigned long long)n);
  CHECK(memcmp(dst, source, LEN) == 0, "%s: read(2) data differs", what);
  CHECK(n > 0, "%s: read(2) into registered memory took no userfaultfd fault", what);
}

/* write(2) from a fresh buffer: the kernel reads zeros from it. */
static void write_from(const char *src, const char *what, int want_fault) {
  char path[] = "/tmp/hakmem-uffd-XXXXXX";
  int fd = mkstemp(path);
  CHECK(fd >= 0, "mkstemp failed");
  unlink(path);
  uint64_t f0 = uffd_faults();
  CHECK(write(fd, src, LEN) == (ssize_t)LEN, "%s: write(2) from a fresh buffer failed: %s", what,
        strerror(errno));
  CHECK(!want_fault || uffd_faults() > f0, "%s: write(2) from registered memory took no fault",
        what);
  static char back[LEN];
  CHECK(pread(fd, back, LEN, 0) == (ssize_t)LEN, "pread failed");
  for (size_t i = 0; i < LEN; i++)
    CHECK(back[i] == 0, "%s: fresh memory read by write(2) is not zero at +%zu", what, i);
  close(fd);
}

int main(int argc, char **argv) {
  if (argc > 1 && strcmp(argv[1], "child") == 0) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    alarm(20);                            /* a fault nobody serves hangs: die instead */
    source = kmem_map_aligned(LEN, 4096); /* never registered */
    CHECK(source, "kmem_map_aligned failed");
    fill_pattern(source, LEN);
    int wired = allocator_uses_uffd();
    if (!wired) {
      printf("NOTE: the allocator does not serve faults with userfaultfd yet\n");
      CHECK(kmem_uffd_start(), "kmem_uffd_start failed");
    }
    char *r = kmem_map_aligned(2 * KMEM_REGION_SIZE, KMEM_REGION_SIZE);
    CHECK(r, "kmem_map_aligned failed");
    kmem_uffd_register(r, 2 * KMEM_REGION_SIZE);
    read_into(r, "kmem region");
    write_from(r + KMEM_REGION_SIZE, "kmem region", 1);
    if (wired) {
      char *m = malloc(LEN);
      CHECK(m, "malloc failed");
      read_into(m, "malloc");
      free(m);
      m = calloc(1, LEN);
      CHECK(m, "calloc failed");
      write_from(m, "calloc", 0); /* it may reuse (and clear) the block above */
      free(m);
    }
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
