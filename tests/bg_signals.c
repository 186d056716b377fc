/* hakmem's own threads (the background thread; the userfaultfd handler
 * under HAKMEM_UFFD=1) block every signal: a process-directed signal the
 * program's threads all block stays pending until one of them unblocks
 * it, and never runs the program's handler on a thread of ours.
 *
 * postgres's postmaster blocks its signals except while it waits in
 * select(); with the background thread taking SIGCHLD meanwhile, its
 * reaper ran on two threads at once, corrupted the list of background
 * workers and spun there (and a query lost its parallel workers).
 * Here: the main thread waits for hakmem's thread, blocks SIGUSR1 and
 * sends it to the process; the handler must not run until the main thread
 * unblocks it, and then on the main thread. */
#define _GNU_SOURCE
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
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

int main(void) {
  struct sigaction sa = {.sa_handler = on_usr1};
  sigemptyset(&sa.sa_mask);
  CHECK(sigaction(SIGUSR1, &sa, NULL) == 0, "sigaction: %s", strerror(errno));
  int threads = 0;
  for (long until = now_ms() + 3000; now_ms() < until && threads < 2; sleep_ms(1)) {
    poke();
    other_thread(&threads);
  }
  CHECK(threads >= 2, "hakmem started no thread of its own in 3 s");

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
