/* Helpers of the tests/uffd_*.c tests: the allocator's fault counter,
 * whether this process may open a userfaultfd, and whether the allocator
 * itself serves fresh pages through one; the child's start and the parent's
 * run of it under HAKMEM_UFFD=1. */
#ifndef HAK_TESTS_UFFD_UTIL_H
#define HAK_TESTS_UFFD_UTIL_H

#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include "../kmem/kmem.h"
#include "check.h"
#include "hakmem.h"
#include "spawn.h"

static inline uint64_t uffd_faults(void) {
  hak_stats_t s;
  hak_stats_get(&s);
  return s.uffd_faults;
}

/* Whether this process may open a userfaultfd at all (as kmem does). */
static inline int uffd_usable(void) {
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

/* Whether the allocator itself serves fresh pages through userfaultfd:
 * touches 8 MiB of fresh blocks and looks at the counter. */
static inline int allocator_uses_uffd(void) {
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

/* The child's start: line-buffered stdout, a 20 s alarm (a fault nobody
 * serves hangs: die instead), and kmem's handler started here when the
 * allocator does not serve faults itself. Returns whether it does. */
static inline int uffd_child_start(void) {
  setvbuf(stdout, NULL, _IOLBF, 0);
  alarm(20);
  int wired = allocator_uses_uffd();
  if (!wired) {
    printf("NOTE: the allocator does not serve faults with userfaultfd yet\n");
    CHECK(kmem_uffd_start(), "kmem_uffd_start failed");
  }
  return wired;
}

/* Runs this binary in mode with HAKMEM_UFFD=1 (SKIP without userfaultfd),
 * passes its stderr on and fails unless it exited 0. Its stderr stays in c. */
static inline void uffd_run_self(const char *mode, struct child *c) {
  if (!uffd_usable()) SKIP("userfaultfd is not available to this process");
  static const char *const env[] = {"HAKMEM_UFFD=1", NULL};
  run_self(mode, env, c);
  fputs(c->err, stderr);
  CHECK(exited_ok(c), "child '%s' failed (status %#x)", mode, c->status);
}

#endif
