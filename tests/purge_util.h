/* Helpers of tests/purge_alloc.c and tests/purge_kmem.c: the engine names
 * (in kmem's order), whether the kernel has an engine, and the io_uring fds
 * this process holds. */
#ifndef HAK_TESTS_PURGE_UTIL_H
#define HAK_TESTS_PURGE_UTIL_H

#include <dirent.h>
#include <errno.h>
#include <liburing.h>
#include <stdbool.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include "check.h"
#include "kmem_util.h"

enum { URING, VECTOR, SYNC }; /* as KMEM_PURGE_URING, _VECTOR, _SYNC */
static const char *const engine_names[] = {"uring", "vector", "sync"};

static inline int engine_of(const char *name) {
  for (int e = 0; e < 3; e++)
    if (!strcmp(name, engine_names[e])) return e;
  FAIL("unknown engine %s", name);
}

/* Whether the kernel has the engine, asked without hakmem or kmem. */
static inline bool kernel_has(int e) {
  if (e == URING) {
    struct io_uring r;
    if (io_uring_queue_init(4, &r, 0) < 0) return false;
    union {
      struct io_uring_probe probe;
      char room[sizeof(struct io_uring_probe) + 256 * sizeof(struct io_uring_probe_op)];
    } u;
    memset(&u, 0, sizeof u);
    bool has = io_uring_register_probe(&r, &u.probe, 256) == 0 &&
               io_uring_opcode_supported(&u.probe, IORING_OP_MADVISE);
    io_uring_queue_exit(&r);
    return has;
  }
  if (e == VECTOR) {
    char *page = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    CHECK(page != MAP_FAILED, "mmap failed");
    page[0] = 1;
    struct iovec iov = {page, 4096};
    long r = syscall(SYS_process_madvise, -10000 /* PIDFD_SELF */, &iov, 1, MADV_DONTNEED, 0);
    if (r < 0 && errno == EBADF) {
      int fd = (int)syscall(SYS_pidfd_open, getpid(), 0);
      r = fd < 0 ? -1 : syscall(SYS_process_madvise, fd, &iov, 1, MADV_DONTNEED, 0);
      if (fd >= 0) close(fd);
    }
    munmap(page, 4096);
    return r == 4096;
  }
  return true;
}

/* How many of this process's fds are io_uring instances. */
static inline int io_uring_fds(void) {
  DIR *d = opendir("/proc/self/fd");
  CHECK(d, "cannot open /proc/self/fd");
  int n = 0;
  char path[300], target[256];
  for (struct dirent *de; (de = readdir(d));) {
    snprintf(path, sizeof path, "/proc/self/fd/%s", de->d_name);
    ssize_t len = readlink(path, target, sizeof target - 1);
    if (len > 0) {
      target[len] = 0;
      n += strstr(target, "io_uring") != NULL;
    }
  }
  closedir(d);
  return n;
}

#endif
