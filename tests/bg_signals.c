/* hakmem's own threads (the background thread; the userfaultfd handler
 * under HAKMEM_UFFD=1) block every signal: a process-directed signal the
 * program's threads all block stays pending until one of them unblocks
 * it, and never runs the program's handler on a thread of ours.
 *
 * postgres's postmaster blocks its signals except while it waits in
 * select(); with the background thread taking SIGCHLD meanwhile, its
 * reaper ran on two threads at once, corrupted the list of background
 * workers and spun there (and a query lost its parallel workers).
 * Here: the main thread waits for hakmem's threads (usage: bg_signals
 * [threads], the process's count to wait for: 2, or 3 with the userfaultfd
 * thread), checks each one's blocked set in /proc (every signal but those
 * none can block and glibc's two internal ones), then blocks SIGUSR1 and
 * sends it to the process: the handler must not run until the main thread
 * unblocks it, and then on the main thread. */
#define _GNU_SOURCE
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include "bg_idle.h"
#include "t_alloc.h"

static _Atomic pid_t handled_on;

static void on_usr1(int sig) {
  (void)sig;
  atomic_store(&handled_on, (pid_t)syscall(SYS_gettid));
}

/* A huge mapping freed, cached until the background thread expires it:
 * the next malloc starts that thread. */
static void poke(void) {
  void *p = T_MALLOC(4 << 20);
  CHECK(p, "malloc failed");
  *(volatile char *)p = 1;
  T_FREE(p);
}

/* Signals a thread's blocked set may lack: SIGKILL and SIGSTOP (never
 * blocked), 32 and 33 (glibc's cancellation and setxid, which its
 * pthread_sigmask leaves open). Bit n - 1 stands for signal n. */
#define MAY_BE_OPEN (1ull << (SIGKILL - 1) | 1ull << (SIGSTOP - 1) | 1ull << 31 | 1ull << 32)

/* Checks the SigBlk line of every thread but the caller; returns how many. */
static int check_blocked(void) {
  pid_t t[64];
  int n = other_threads(t, 64);
  CHECK(n <= 64, "%d threads: more than this test looks at", n);
  for (int i = 0; i < n; i++) {
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/self/task/%d/status", (int)t[i]);
    FILE *f = fopen(path, "r");
    CHECK(f, "cannot open %s: %s", path, strerror(errno));
    unsigned long long blk = 0;
    bool found = false;
    while (!found && fgets(line, sizeof line, f))
      found = sscanf(line, "SigBlk: %llx", &blk) == 1;
    fclose(f);
    CHECK(found, "no SigBlk line in %s", path);
    CHECK((blk | MAY_BE_OPEN) == ~0ull, "thread %d blocks only %016llx: signals open to it",
          (int)t[i], blk);
  }
  return n;
}

int main(int argc, char **argv) {
  int want = argc > 1 ? atoi(argv[1]) : 2;
  struct sigaction sa = {.sa_handler = on_usr1};
  sigemptyset(&sa.sa_mask);
  CHECK(sigaction(SIGUSR1, &sa, NULL) == 0, "sigaction: %s", strerror(errno));
  int threads = 0;
  for (long until = now_ms() + 3000; now_ms() < until && threads < want; sleep_ms(1)) {
    poke();
    other_thread(&threads);
  }
  CHECK(threads >= want, "%d threads after 3 s, not %d: hakmem did not start its own", threads,
        want);
  CHECK(check_blocked() == threads - 1, "threads came or went while their masks were read");

  sigset_t usr1;
  sigemptyset(&usr1);
  sigaddset(&usr1, SIGUSR1);
  CHECK(pthread_sigmask(SIG_BLOCK, &usr1, NULL) == 0, "pthread_sigmask failed");
  CHECK(kill(getpid(), SIGUSR1) == 0, "kill: %s", strerror(errno));
  sleep_ms(200);
  pid_t on = atomic_load(&handled_on);
  CHECK(on == 0,
        "SIGUSR1, blocked by the program's only thread, ran its handler on thread %d, "
        "one of hakmem's %d",
        (int)on, threads - 1);
  CHECK(pthread_sigmask(SIG_UNBLOCK, &usr1, NULL) == 0, "pthread_sigmask failed");
  pid_t self = (pid_t)syscall(SYS_gettid);
  CHECK(atomic_load(&handled_on) == self,
        "the pending SIGUSR1 ran on thread %d, not the main one %d", (int)atomic_load(&handled_on),
        (int)self);
  printf("bg_signals: %d hakmem thread(s) left SIGUSR1 pending for the main thread\n", threads - 1);
  return 0;
}
