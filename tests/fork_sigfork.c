/* fork from a signal handler that interrupted a fork. The main thread forks
 * in a loop; a signal whose handler forks too is sent to it from inside the
 * outer fork, just after the allocator's prepare handler took its locks (by
 * this test's own prepare handler, which runs after the allocator's). Unless
 * the allocator's prepare handler blocks signals until its parent or child
 * handler, the inner fork's prepare handler waits on the same thread for
 * the locks the outer one holds, forever. Another thread sends the same
 * signal at random times too, but only while the main thread waits in
 * waitpid (it does not leave that window while a signal is being sent): elsewhere it may be in
 * malloc (not async-signal-safe) or in glibc's own window of fork (atfork_lock held between the
 * handlers), where a fork from a handler deadlocks in glibc whatever the allocator. A watchdog
 * turns a hang into "FAIL: deadlock". */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <sys/wait.h>
#include <time.h>
#include "check.h"

#define SECONDS 4

static atomic_int stop, in_waitpid;
static atomic_uint inner_forks;
static volatile sig_atomic_t in_handler;
static pthread_t main_thread;

static void on_alarm(int sig) {
  (void)sig;
  static const char msg[] = "FAIL: deadlock (fork from a signal handler during a fork)\n";
  if (write(2, msg, sizeof msg - 1) < 0) {
  }
  _exit(1);
}

static void on_usr1(int sig) {
  (void)sig;
  int saved = errno;
  in_handler = 1;
  pid_t pid = fork();
  if (pid == 0) _exit(0);
  if (pid > 0) {
    while (waitpid(pid, NULL, 0) < 0 && errno == EINTR) {
    }
    atomic_fetch_add(&inner_forks, 1);
  }
  in_handler = 0;
  errno = saved;
}

/* Registered before the allocator's handlers (see below), so it runs after
 * the allocator's prepare handler: the signal arrives with its locks held. */
static void prepare_raise(void) {
  if (!in_handler && pthread_equal(pthread_self(), main_thread)) pthread_kill(main_thread, SIGUSR1);
}

/* .preinit_array runs before every constructor, so before the allocator
 * registers its handlers (glibc's first handlers need no malloc). */
static void register_early(void) {
  pthread_atfork(prepare_raise, NULL, NULL);
}
__attribute__((section(".preinit_array"), used)) static void (*preinit)(void) = register_early;

static void *signaller(void *arg) {
  (void)arg;
  while (!atomic_load(&stop)) {
    /* 2 holds the main thread in its waitpid window until the signal is
     * queued: a check-then-kill could land after it left, inside malloc */
    int in = 1;
    if (atomic_compare_exchange_strong(&in_waitpid, &in, 2)) {
      pthread_kill(main_thread, SIGUSR1);
      atomic_store(&in_waitpid, 1);
    }
    struct timespec ts = {0, 20000 + rand() % 200000};
    nanosleep(&ts, NULL);
  }
  return NULL;
}

int main(void) {
  signal(SIGALRM, on_alarm);
  struct sigaction sa = {.sa_handler = on_usr1, .sa_flags = SA_RESTART};
  sigemptyset(&sa.sa_mask);
  sigaction(SIGUSR1, &sa, NULL);
  main_thread = pthread_self();
  pthread_t t;
  CHECK(pthread_create(&t, NULL, signaller, NULL) == 0, "pthread_create failed");
  alarm(SECONDS + 10);
  unsigned forks = 0;
  for (time_t end = time(NULL) + SECONDS; time(NULL) < end; forks++) {
    void *p = malloc(1000 + forks % 100000);
    CHECK(p, "malloc failed");
    pid_t pid = fork();
    CHECK(pid >= 0, "fork failed");
    if (pid == 0) {
      free(p);
      free(malloc(100));
      _exit(0);
    }
    free(p);
    int status;
    pid_t got;
    atomic_store(&in_waitpid, 1);
    while ((got = waitpid(pid, &status, 0)) < 0 && errno == EINTR) {
    }
    for (int in = 1; !atomic_compare_exchange_weak(&in_waitpid, &in, 0); in = 1) {
    }
    CHECK(got == pid, "waitpid failed");
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0, "child failed (status %#x)", status);
  }
  atomic_store(&stop, 1);
  pthread_join(t, NULL);
  alarm(0);
  CHECK(atomic_load(&inner_forks) >= forks, "%u forks from the handler for %u forks",
        atomic_load(&inner_forks), forks);
  printf("%u forks, %u from the signal handler\n", forks, atomic_load(&inner_forks));
  return 0;
}
