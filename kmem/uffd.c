/* userfaultfd (HAKMEM_UFFD=1): regions are registered in missing mode and one
 * handler thread serves every first touch by filling the whole 64 KiB page
 * around the fault with UFFDIO_COPY from a zeroed buffer: one round trip per
 * 64 KiB instead of sixteen kernel faults.
 *
 * Measured here (2 vCPUs, 256 MiB write-touched, CPU per 64 KiB, medians of
 * 9): plain faults 26 us; COPY of 64 KiB 26 us (1 fault instead of 16);
 * ZEROPAGE of 64 KiB 44 us (it maps the zero page, so every write then takes
 * a COW fault anyway); MOVE of pages zeroed ahead 12 us on the fault path but
 * 23 us more to zero them, and under steady faulting the pool runs dry. COPY
 * it is. One handler serves all threads: faults no longer scale with CPUs.
 *
 * The handler never calls malloc and never touches registered memory: its
 * stack and the zero buffer are its own mappings, and it blocks every signal
 * so no application handler (which may allocate) runs on it. Correctness
 * never depends on it: refusal, registration errors and fork fall back to
 * plain demand paging. */
#define _GNU_SOURCE /* syscall, MAP_STACK */
#include "kmem_priv.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#ifndef USERFAULTFD_IOC_NEW /* uapi headers before 6.1 */
#define USERFAULTFD_IOC_NEW _IO(0xAA, 0x00)
#endif

#define KPAGE ((size_t)64 << 10) /* a hakmem page: what one fault fills */
#define OS_PAGE ((size_t)4096)
/* glibc puts the thread's static TLS on this stack too; untouched pages of
 * the mapping cost nothing. */
#define STACK_SIZE ((size_t)1 << 20)
#define MSGS_PER_READ 32

static int uffd = -1;
static dev_t uffd_dev; /* the file's identity: the program may close our */
static ino_t uffd_ino; /* number (close_range) and reuse it for another file */
static _Atomic bool uffd_on;
static _Atomic bool tried;           /* one attempt (and message) per process */
static _Atomic bool register_failed; /* said once */
static _Atomic bool serve_failed;    /* said once */
static char *zero_src;               /* KPAGE of zeros, not registered */

/* The syscall, or /dev/userfaultfd where the syscall is refused to this
 * user (its file permissions decide instead). Never UFFD_USER_MODE_ONLY:
 * faults taken inside the kernel (read(2) into a fresh buffer) need serving
 * too. */
static int open_uffd(const char **why) {
  int fd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);
  if (fd >= 0) return fd;
  int err = errno;
  int dev = open("/dev/userfaultfd", O_RDWR | O_CLOEXEC);
  if (dev >= 0) {
    fd = ioctl(dev, USERFAULTFD_IOC_NEW, O_CLOEXEC | O_NONBLOCK);
    close(dev);
    if (fd >= 0) return fd;
  }
  if (err == ENOSYS)
    *why = "userfaultfd() not available (ENOSYS: kernel or seccomp) and /dev/userfaultfd "
           "not usable; demand paging";
  else if (err == EPERM)
    *why = "userfaultfd() refused (EPERM: vm.unprivileged_userfaultfd=0) and "
           "/dev/userfaultfd not usable; demand paging";
  else
    *why = "userfaultfd() failed and /dev/userfaultfd not usable; demand paging";
  return -1;
}

/* A high number, so a program that opens files after closing ours (daemons
 * closing every descriptor) is unlikely to get it back. */
static int move_high(int fd) {
  struct rlimit rl;
  int want = 512;
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY &&
      rl.rlim_cur / 2 < (rlim_t)want)
    want = (int)(rl.rlim_cur / 2);
  if (fd >= want) return fd;
  int hi = fcntl(fd, F_DUPFD_CLOEXEC, want);
  if (hi < 0) return fd;
  close(fd);
  return hi;
}

/* Whether uffd still names our userfaultfd: same inode (each userfaultfd
 * has its own), and where /proc says, a userfaultfd at all. */
static bool uffd_ours(void) {
  struct stat st;
  if (uffd < 0 || fstat(uffd, &st) != 0 || st.st_dev != uffd_dev || st.st_ino != uffd_ino)
    return false;
  char path[40], link[64];
  int n = 0;
  for (const char *s = "/proc/self/fd/"; *s; s++)
    path[n++] = *s;
  char digits[12];
  int d = 0;
  for (unsigned v = (unsigned)uffd; d == 0 || v; v /= 10)
    digits[d++] = (char)('0' + v % 10);
  while (d)
    path[n++] = digits[--d];
  path[n] = 0;
  ssize_t len = readlink(path, link, sizeof link - 1);
  if (len < 0) return true; /* no /proc: the inode has to do */
  link[len] = 0;
  return strcmp(link, "anon_inode:[userfaultfd]") == 0;
}

/* Fills [dst, dst+len) with zeros and wakes the threads waiting there.
 * Returns the bytes filled from dst onwards; errno tells why it stopped. */
static size_t fill(uintptr_t dst, size_t len) {
  struct uffdio_copy c = {.dst = dst, .src = (uintptr_t)zero_src, .len = len, .mode = 0};
  if (ioctl(uffd, UFFDIO_COPY, &c) == 0) return len;
  return c.copy > 0 ? (size_t)c.copy : 0;
}

static void wake(uintptr_t start, size_t len) {
  struct uffdio_range r = {.start = start, .len = len};
  ioctl(uffd, UFFDIO_WAKE, &r);
}

/* A fault we cannot serve: hand its region back to the kernel (unregister
 * wakes the waiters), so the thread faults again as plain demand paging
 * instead of waiting forever. */
static void give_up(uintptr_t at) {
  struct uffdio_range r = {.start = at & ~(uintptr_t)(KMEM_REGION_SIZE - 1),
                           .len = KMEM_REGION_SIZE};
  if (ioctl(uffd, UFFDIO_UNREGISTER, &r) != 0) {
    r = (struct uffdio_range){.start = at, .len = OS_PAGE};
    ioctl(uffd, UFFDIO_UNREGISTER, &r);
  }
  wake(at, OS_PAGE);
  if (!atomic_exchange(&serve_failed, true))
    kmem_fallback(kmem_cfg.uffd, "HAKMEM_UFFD",
                  "a fault could not be served; its region uses demand paging");
}

/* Returns false when the fd is no longer our userfaultfd: stop. */
static bool serve(uintptr_t addr) {
  uintptr_t page = addr & ~(uintptr_t)(KPAGE - 1);
  uintptr_t at = addr & ~(uintptr_t)(OS_PAGE - 1);
  /* Counted before the wake, so the woken thread already sees it. */
  kmem_count(&kmem_counters.uffd_faults, 1);
  size_t done = fill(page, KPAGE);
  if (at < page + done) return true; /* filled and woken */
  /* Stopped before the faulting 4 KiB: part of this page is there already
   * (a partial purge, or another thread's fault on the same page served
   * first). Fill just that 4 KiB. */
  if (fill(at, OS_PAGE) == OS_PAGE) return true;
  if (errno == EEXIST || errno == EAGAIN || errno == ENOMEM || errno == EINTR)
    wake(at, OS_PAGE); /* there, or worth a retry: the thread faults again */
  else if (!uffd_ours())
    return false; /* no ioctls on whatever file has the number now */
  else
    give_up(at);
  return true;
}

static void *handler(void *arg) {
  (void)arg;
  prctl(PR_SET_NAME, "hakmem-uffd", 0, 0, 0);
  struct uffd_msg msg[MSGS_PER_READ];
  for (;;) {
    struct pollfd pfd = {.fd = uffd, .events = POLLIN};
    if (poll(&pfd, 1, -1) < 0) continue; /* EINTR (setxid) */
    /* The program may have closed our fd and opened another file under its
     * number: reading that would eat its data. Looked at before every read
     * (an fstat; a fault costs far more). */
    if (!uffd_ours()) break;
    if (pfd.revents & (POLLNVAL | POLLERR | POLLHUP)) break; /* never for a live userfaultfd */
    ssize_t n = read(uffd, msg, sizeof msg);
    if (n < 0) {
      if (errno == EAGAIN || errno == EINTR || uffd_ours()) continue; /* another wakeup took it */
      break;
    }
    for (ssize_t i = 0; i < n / (ssize_t)sizeof *msg; i++)
      if (msg[i].event == UFFD_EVENT_PAGEFAULT && !serve((uintptr_t)msg[i].arg.pagefault.address))
        goto gone;
  }
gone:
  /* The file is gone from our number, and once its last reference goes the
   * kernel drops the registrations and wakes their waiters: faults are
   * demand paging again. Stop registering (the number may be another
   * file's) and never touch the number again. */
  atomic_store(&uffd_on, false);
  kmem_fallback(false, "HAKMEM_UFFD", "its file descriptor was closed; demand paging from now");
  return NULL;
}

/* The handler's stack, with a guard page below it. */
static void *map_stack(void) {
  char *p = mmap(NULL, STACK_SIZE + OS_PAGE, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_STACK, -1, 0);
  if (p == MAP_FAILED) return NULL;
  mprotect(p, OS_PAGE, PROT_NONE);
  return p + OS_PAGE;
}

static bool start_handler(void) {
  void *stack = map_stack();
  if (!stack) return false;
  pthread_attr_t attr;
  pthread_attr_init(&attr);
  pthread_attr_setstack(&attr, stack, STACK_SIZE);
  pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
  /* The new thread inherits this mask: every signal blocked. */
  sigset_t all, old;
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &old);
  pthread_t t;
  int err = pthread_create(&t, &attr, handler, NULL);
  pthread_sigmask(SIG_SETMASK, &old, NULL);
  pthread_attr_destroy(&attr);
  if (err) munmap((char *)stack - OS_PAGE, STACK_SIZE + OS_PAGE);
  return err == 0;
}

bool kmem_uffd_start(void) {
  if (atomic_exchange(&tried, true)) return atomic_load(&uffd_on);
  const char *why = NULL;
  int fd = open_uffd(&why);
  if (fd < 0) {
    kmem_fallback(kmem_cfg.uffd, "HAKMEM_UFFD", why);
    return false;
  }
  /* No features: no fork, remap or remove events (a fork child simply
   * loses the registration), and no SIGBUS mode. */
  struct uffdio_api api = {.api = UFFD_API, .features = 0};
  if (ioctl(fd, UFFDIO_API, &api) != 0 || !(api.ioctls & ((uint64_t)1 << _UFFDIO_REGISTER))) {
    close(fd);
    kmem_fallback(kmem_cfg.uffd, "HAKMEM_UFFD", "UFFDIO_API handshake failed; demand paging");
    return false;
  }
  if (!zero_src) {
    char *z = mmap(NULL, KPAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (z == MAP_FAILED) {
      close(fd);
      kmem_fallback(kmem_cfg.uffd, "HAKMEM_UFFD", "no memory for its buffer; demand paging");
      return false;
    }
    /* Real zeroed pages (COPY from the shared zero page measured no faster). */
    for (size_t i = 0; i < KPAGE; i += OS_PAGE)
      z[i] = 0;
    zero_src = z;
  }
  fd = move_high(fd);
  struct stat st;
  if (fstat(fd, &st) != 0) {
    close(fd);
    kmem_fallback(kmem_cfg.uffd, "HAKMEM_UFFD", "fstat of its fd failed; demand paging");
    return false;
  }
  uffd_dev = st.st_dev;
  uffd_ino = st.st_ino;
  uffd = fd;
  /* pthread_create may allocate (glibc's TLS vector): uffd_on is still off,
   * so that memory is not registered and nothing waits on a handler that
   * does not exist yet. */
  if (!start_handler()) {
    uffd = -1;
    close(fd);
    kmem_fallback(kmem_cfg.uffd, "HAKMEM_UFFD", "cannot start its thread; demand paging");
    return false;
  }
  atomic_store(&uffd_on, true);
  return true;
}

void kmem_uffd_register(void *p, size_t len) {
  if (!atomic_load_explicit(&uffd_on, memory_order_acquire)) return;
  struct uffdio_register r = {
      .range = {.start = (uintptr_t)p, .len = len},
      .mode = UFFDIO_REGISTER_MODE_MISSING,
  };
  const uint64_t want = (uint64_t)1 << _UFFDIO_COPY | (uint64_t)1 << _UFFDIO_ZEROPAGE;
  const char *why = NULL;
  if (ioctl(uffd, UFFDIO_REGISTER, &r) != 0) {
    if (!uffd_ours()) { /* closed by the program: stop, quietly */
      atomic_store(&uffd_on, false);
      return;
    }
    why = "UFFDIO_REGISTER failed; such regions use demand paging";
  } else if ((r.ioctls & want) != want) {
    /* Registered, but not fillable 4 KiB at a time: hugetlbfs pages (no
     * ZEROPAGE there, and COPY takes whole huge pages only). Undo. */
    ioctl(uffd, UFFDIO_UNREGISTER, &r.range);
    why = "not for hugetlbfs regions (they use demand paging)";
  }
  if (why && !atomic_exchange(&register_failed, true))
    kmem_fallback(kmem_cfg.uffd, "HAKMEM_UFFD", why);
}

/* Without UFFD_FEATURE_EVENT_FORK the child's mappings lost their
 * registration, and the handler thread is not there: plain paging. The fd
 * must go too: its ioctls would act on the parent's address space. */
void kmem_uffd_fork_child(void) {
  if (!atomic_load(&uffd_on)) return;
  atomic_store(&uffd_on, false);
  if (uffd_ours()) close(uffd); /* not a file of the program's under our old number */
  uffd = -1;
}
