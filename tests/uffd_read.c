/* HAKMEM_UFFD=1: faults the kernel takes for the program are served too.
 * read(2) from a pipe into a fresh 1 MiB buffer writes it from inside the
 * kernel (copy_to_user); a user-mode-only userfaultfd would fail that read
 * with EFAULT, and a handler that misses it would hang it. Also write(2)
 * from a fresh buffer (the kernel reads it first). */
#define _GNU_SOURCE
#include <hakmem.h>
#include <pthread.h>

#include <errno.h>

#include "../kmem/kmem.h"
#include "check.h"
#include "spawn.h"
#include "uffd_util.h"

#define LEN                                                                                        \
  ((size_t)96 << 10) /* a size class: blocks past MAP_MIN get mappings, not registered             \
                      */

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
    source = kmem_map_aligned(LEN, 4096); /* never registered */
    CHECK(source, "kmem_map_aligned failed");
    fill_pattern(source, LEN);
    int wired = uffd_child_start();
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
  struct child c;
  uffd_run_self("child", &c);
  return 0;
}
