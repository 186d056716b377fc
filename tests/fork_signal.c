/* fork from a signal handler that interrupts a fork. The main thread forks
 * in a loop (each child _exits at once) while a timer sends it SIGUSR1 at
 * short random intervals; the handler forks too (its child _exits at once),
 * reaps its child and sets the next timer. A signal that arrives while the
 * main thread's fork holds the allocator's atfork locks (in the prepare
 * handlers, or pending during the fork system call, which the kernel then
 * restarts after the handler) makes the handler's fork run the prepare
 * handlers again on the same thread: an allocator whose fork handlers are
 * not reentrant deadlocks there.
 *
 * The process stays single-threaded (a timer, not a thread, sends the
 * signals; the watchdog is SIGALRM): in a multi-threaded process glibc
 * itself (2.36) holds its own atfork lock across the fork system call, so
 * no allocator could pass. If the allocator starts a thread of its own
 * before the loop the test skips for the same reason. The main thread does
 * not allocate during the loop (a handler's fork interrupting malloc itself
 * is not what this tests).
 * Usage: fork_signal [forks] (default 3000; HAKMEM_SOAK=1: 30000). */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdatomic.h>
#include <sys/wait.h>
#include <time.h>
#include "check.h"
#include "watchdog.h"

static timer_t timer;
static volatile sig_atomic_t handler_forks, bad_handler_child;
static uint64_t seed = 0x9E3779B97F4A7C15ull;

static uint64_t rnd(void) {
  seed ^= seed >> 12;
  seed ^= seed << 25;
  seed ^= seed >> 27;
  return seed * 0x2545F4914F6CDD1Dull;
}

/* The next signal in 10-300 us. */
static void arm_timer(void) {
  struct itimerspec its = {{0, 0}, {0, 10000 + (long)(rnd() % 290000)}};
  timer_settime(timer, 0, &its, NULL);
}

static void on_usr1(int sig) {
  (void)sig;
  int saved = errno;
  pid_t pid = fork();
  if (pid == 0) _exit(0);
  if (pid > 0) {
    int st = 0;
    while (waitpid(pid, &st, 0) < 0 && errno == EINTR) {
    }
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) bad_handler_child++;
    handler_forks++;
  }
  arm_timer();
  errno = saved;
}

static int threads_now(void) {
  FILE *f = fopen("/proc/self/status", "r");
  CHECK(f, "cannot open /proc/self/status");
  char line[256];
  int n = -1;
  while (fgets(line, sizeof line, f))
    if (sscanf(line, "Threads: %d", &n) == 1) break;
  fclose(f);
  return n;
}

int main(int argc, char **argv) {
  long forks = argc > 1 ? atol(argv[1]) : soak_mode() ? 30000 : 3000;
  CHECK(forks > 0, "usage: %s [forks]", argv[0]);
  watchdog_alarm(soak_mode() ? 300 : 20);
  /* Some live blocks of several sizes, so the heap is not trivial. */
  static void *keep[512];
  for (int i = 0; i < 512; i++) {
    keep[i] = malloc(16 + (size_t)(rnd() % 70000));
    CHECK(keep[i], "malloc failed");
  }
  int nt = threads_now();
  if (nt != 1)
    SKIP("the process has %d threads before the loop (the allocator started some): glibc's own "
         "atfork lock makes fork from a handler interrupting fork deadlock then",
         nt);
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_usr1;
  sa.sa_flags = SA_RESTART;
  sigemptyset(&sa.sa_mask);
  CHECK(sigaction(SIGUSR1, &sa, NULL) == 0, "sigaction failed");
  struct sigevent sev;
  memset(&sev, 0, sizeof sev);
  sev.sigev_notify = SIGEV_SIGNAL;
  sev.sigev_signo = SIGUSR1;
  CHECK(timer_create(CLOCK_MONOTONIC, &sev, &timer) == 0, "timer_create failed: %s",
        strerror(errno));
  atomic_store(&watchdog_stage, "the main thread forks in a loop, a signal handler forks too");
  arm_timer();
  long done = 0, bad = 0;
  for (; done < forks; done++) {
    pid_t pid = fork();
    if (pid == 0) _exit(0);
    if (pid < 0) {
      if (errno == EAGAIN || errno == EINTR) continue;
      FAIL("fork failed: %s", strerror(errno));
    }
    atomic_store(&watchdog_child, pid);
    int st;
    while (waitpid(pid, &st, 0) < 0)
      CHECK(errno == EINTR, "waitpid failed: %s", strerror(errno));
    atomic_store(&watchdog_child, 0);
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) bad++;
  }
  timer_delete(timer);
  signal(SIGUSR1, SIG_IGN);
  alarm(0);
  CHECK(!bad, "%ld of %ld children of the main thread's forks did not exit with 0", bad, done);
  CHECK(!bad_handler_child, "%d children of the signal handler's forks did not exit with 0",
        (int)bad_handler_child);
  CHECK(handler_forks > 0, "the signal handler never ran");
  for (int i = 0; i < 512; i++)
    free(keep[i]);
  printf("%ld forks, %d forks from the signal handler\n", done, (int)handler_forks);
  return 0;
}
