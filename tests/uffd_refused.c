/* HAKMEM_UFFD=1 where the kernel refuses userfaultfd: a user without
 * privileges while vm.unprivileged_userfaultfd=0 (and /dev/userfaultfd is
 * root's only). The program works on plain demand paging, and the fallback
 * is said once when HAKMEM_UFFD=1 (or HAKMEM_VERBOSE=1) asked for it, never
 * otherwise.
 *
 * As root the test sets the sysctl to 0 (restoring it afterwards, also on
 * failure or a signal) and runs itself as nobody; as a user the kernel
 * already refuses, or there is nothing to test. A seccomp filter that
 * answers ENOSYS to userfaultfd() (containers do) must leave root with
 * /dev/userfaultfd, and nobody with the fallback. */
#define _GNU_SOURCE
#include <hakmem.h>

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <linux/userfaultfd.h>
#include <signal.h>
#include <stddef.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/syscall.h>

#include "../kmem/kmem.h"
#include "check.h"
#include "spawn.h"
#include "uffd_util.h"

#define SYSCTL "/proc/sys/vm/unprivileged_userfaultfd"
#define NOBODY 65534

/* The child: refused (or allowed), it allocates and touches 64 MiB. */
static int work(int refused) {
  alarm(20);
  if (refused && uffd_usable()) _exit(3);
  CHECK(kmem_uffd_start() == !refused, "kmem_uffd_start gave %d, userfaultfd %s", !refused,
        refused ? "refused" : "allowed");
  enum { BLK = 32 << 10, N = (64 << 20) / BLK };
  static char *b[N];
  for (int i = 0; i < N; i++) {
    b[i] = calloc(1, BLK);
    CHECK(b[i], "calloc failed");
    for (size_t off = 0; off < BLK; off += 4096)
      CHECK(b[i][off] == 0, "calloc memory not zero");
    fill_sparse(b[i], BLK, 1024);
  }
  for (int i = 0; i < N; i++) {
    size_t bad = check_sparse(b[i], BLK, 1024);
    CHECK(bad == SIZE_MAX, "block %d lost data at +%zu", i, bad);
    free(b[i]);
  }
  hak_stats_t s;
  hak_stats_get(&s);
  CHECK(!refused || s.uffd_faults == 0, "%llu userfaultfd faults though refused",
        (unsigned long long)s.uffd_faults);
  if (!refused) { /* the handler serves a registered mapping */
    char *a = kmem_map_aligned(KMEM_REGION_SIZE, KMEM_REGION_SIZE);
    CHECK(a, "kmem_map_aligned failed");
    kmem_uffd_register(a, KMEM_REGION_SIZE);
    uint64_t f0 = s.uffd_faults;
    for (size_t off = 0; off < KMEM_REGION_SIZE; off += 4096)
      a[off] = 1;
    hak_stats_get(&s);
    CHECK(s.uffd_faults - f0 == 32, "%llu faults for 32 pages of 64 KiB",
          (unsigned long long)(s.uffd_faults - f0));
  }
  return 0;
}

/* Containers' seccomp profiles answer ENOSYS to userfaultfd(). */
static void deny_userfaultfd_syscall(void) {
  struct sock_filter f[] = {
      BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_userfaultfd, 0, 1),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | ENOSYS),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
  };
  struct sock_fprog prog = {.len = sizeof f / sizeof *f, .filter = f};
  if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 ||
      prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog) != 0)
    _exit(124);
}

static char old_value[32] = "";

static void write_sysctl(const char *v) {
  int fd = open(SYSCTL, O_WRONLY);
  if (fd < 0) return;
  if (write(fd, v, strlen(v)) < 0) {
  }
  close(fd);
}

static void restore(void) {
  if (old_value[0]) write_sysctl(old_value);
}

static void on_signal(int sig) {
  restore();
  signal(sig, SIG_DFL);
  raise(sig);
}

#define RFAIL(...)                                                                                 \
  do {                                                                                             \
    restore();                                                                                     \
    FAIL(__VA_ARGS__);                                                                             \
  } while (0)

/* Runs this binary in mode with env, as user uid (or unchanged if -1),
 * stderr and stdout into c->err. */
static void run_as(int uid, int seccomp, const char *mode, const char *const *env,
                   struct child *c) {
  int fd[2];
  if (pipe(fd) != 0) RFAIL("pipe failed");
  fflush(NULL);
  pid_t pid = fork();
  if (pid < 0) RFAIL("fork failed");
  if (pid == 0) {
    dup2(fd[1], 1);
    dup2(fd[1], 2);
    close(fd[0]);
    close(fd[1]);
    if (uid >= 0 && (setgroups(0, NULL) != 0 || setgid(uid) != 0 || setuid(uid) != 0)) _exit(125);
    if (seccomp) deny_userfaultfd_syscall();
    char *const argv[] = {"child", (char *)mode, NULL};
    execve("/proc/self/exe", argv, (char *const *)env);
    _exit(errno == EACCES ? 126 : 127);
  }
  close(fd[1]);
  if (child_collect(pid, fd[0], c) != pid) RFAIL("waitpid failed");
}

static int count(const char *s, const char *what) {
  int n = 0;
  for (const char *p = s; (p = strstr(p, what)); p++)
    n++;
  return n;
}

/* One case: env asks (or not) for uffd; want_lines fallback lines, which
 * name the reason why. */
static void check_case(int uid, int seccomp, const char *mode, const char *const *env,
                       int want_lines, const char *why, const char *name) {
  struct child c;
  run_as(uid, seccomp, mode, env, &c);
  if (WIFEXITED(c.status) && WEXITSTATUS(c.status) == 124) {
    restore();
    SKIP("cannot install a seccomp filter");
  }
  if (WIFEXITED(c.status) && WEXITSTATUS(c.status) == 126) {
    restore();
    SKIP("this test binary cannot be run by user %d", uid);
  }
  if (WIFEXITED(c.status) && WEXITSTATUS(c.status) == 3) {
    restore();
    SKIP("userfaultfd cannot be refused here (/dev/userfaultfd open to user %d?)", uid);
  }
  if (!exited_ok(&c)) RFAIL("%s: the program failed (status %#x): %s", name, c.status, c.err);
  int lines = count(c.err, "HAKMEM_UFFD unavailable");
  fprintf(stderr, "%s: %d fallback line(s)%s%s", name, lines, c.errlen ? ":\n" : "\n", c.err);
  if (lines != want_lines)
    RFAIL("%s: %d fallback lines, want %d: %s", name, lines, want_lines, c.err);
  if (want_lines && !strstr(c.err, why))
    RFAIL("%s: the fallback does not say why (%s): %s", name, why, c.err);
}

int main(int argc, char **argv) {
  if (argc > 1 && strcmp(argv[1], "refused") == 0) return work(1);
  if (argc > 1 && strcmp(argv[1], "allowed") == 0) return work(0);
  int uid = -1;
  if (geteuid() == 0) {
    int fd = open(SYSCTL, O_RDONLY);
    if (fd < 0) SKIP("no " SYSCTL);
    ssize_t n = read(fd, old_value, sizeof old_value - 1);
    close(fd);
    if (n <= 0) SKIP("cannot read " SYSCTL);
    old_value[n] = 0;
    signal(SIGTERM, on_signal);
    signal(SIGINT, on_signal);
    signal(SIGHUP, on_signal);
    signal(SIGALRM, on_signal);
    alarm(60);
    write_sysctl("0");
    uid = NOBODY;
  } else if (uffd_usable()) {
    SKIP("userfaultfd is allowed to this user and only root can refuse it");
  }
  static const char *const asked[] = {"HAKMEM_UFFD=1", NULL};
  static const char *const quiet[] = {NULL};
  static const char *const verbose[] = {"HAKMEM_VERBOSE=1", NULL};
  check_case(uid, 0, "refused", asked, 1, "EPERM", "HAKMEM_UFFD=1");
  check_case(uid, 0, "refused", quiet, 0, "", "not asked");
  check_case(uid, 0, "refused", verbose, 1, "EPERM", "HAKMEM_VERBOSE=1");
  check_case(uid, 1, "refused", asked, 1, "ENOSYS", "HAKMEM_UFFD=1, seccomp");
  if (uid >= 0) {
    /* The same program as root: allowed, no fallback; under seccomp,
     * through /dev/userfaultfd. */
    check_case(-1, 0, "allowed", asked, 0, "", "HAKMEM_UFFD=1 as root");
    check_case(-1, 1, "allowed", asked, 0, "", "HAKMEM_UFFD=1 as root, seccomp");
  }
  restore();
  if (old_value[0]) {
    char now[32] = "";
    int fd = open(SYSCTL, O_RDONLY);
    CHECK(fd >= 0 && read(fd, now, sizeof now - 1) > 0, "cannot read " SYSCTL " back");
    close(fd);
    CHECK(strcmp(now, old_value) == 0, SYSCTL " not restored: %s, was %s", now, old_value);
  }
  return 0;
}
