/* A watchdog for tests that can deadlock: when the deadline passes it
 * prints "FAIL: deadlock: <stage>" (what the test was doing), kills the
 * child named in watchdog_child (a forked child that may hang too) and
 * exits the process with 1. It allocates nothing once started, so a
 * deadlock inside the allocator cannot stop it. Either a thread
 * (watchdog_start) or, for tests that must stay single-threaded,
 * SIGALRM (watchdog_alarm). */
#ifndef HAK_TESTS_WATCHDOG_H
#define HAK_TESTS_WATCHDOG_H

#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <time.h>
#include "check.h"

static _Atomic(const char *) watchdog_stage = "starting";
static _Atomic pid_t watchdog_child;        /* killed on timeout when nonzero */
static _Atomic long long watchdog_deadline; /* CLOCK_MONOTONIC ns */

static inline long long watchdog_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* (Re)sets the deadline to seconds from now. */
static inline void watchdog_arm(double seconds) {
  atomic_store(&watchdog_deadline, watchdog_now() + (long long)(seconds * 1e9));
}

static void watchdog_fire(void) {
  char msg[512];
  /* No snprintf: it may allocate. */
  const char *parts[] = {"FAIL: deadlock: not done in time while ", atomic_load(&watchdog_stage),
                         "\n"};
  size_t len = 0;
  for (int i = 0; i < 3; i++)
    for (const char *s = parts[i]; *s && len < sizeof msg - 1; s++)
      msg[len++] = *s;
  if (write(2, msg, len) < 0) {
  }
  pid_t c = atomic_load(&watchdog_child);
  if (c > 0) kill(c, SIGKILL);
  _exit(1);
}

static void *watchdog_main(void *arg) {
  (void)arg;
  for (;;) {
    struct timespec ts = {0, 50 * 1000 * 1000};
    nanosleep(&ts, NULL);
    if (watchdog_now() >= atomic_load(&watchdog_deadline)) watchdog_fire();
  }
  return NULL;
}

static void watchdog_on_alarm(int sig) {
  (void)sig;
  watchdog_fire();
}

/* The same without a thread: SIGALRM after seconds (whole, at least 1). */
static inline void watchdog_alarm(unsigned seconds) {
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = watchdog_on_alarm;
  sigemptyset(&sa.sa_mask);
  CHECK(sigaction(SIGALRM, &sa, NULL) == 0, "sigaction(SIGALRM) failed");
  alarm(seconds ? seconds : 1);
}

/* Starts the watchdog with a deadline seconds from now. */
static inline void watchdog_start(double seconds) {
  watchdog_arm(seconds);
  pthread_t t;
  pthread_attr_t a;
  pthread_attr_init(&a);
  pthread_attr_setdetachstate(&a, PTHREAD_CREATE_DETACHED);
  CHECK(pthread_create(&t, &a, watchdog_main, NULL) == 0, "pthread_create failed");
  pthread_attr_destroy(&a);
}

/* HAKMEM_SOAK=1 in the environment: run the long version. */
static inline int soak_mode(void) {
  const char *s = getenv("HAKMEM_SOAK");
  return s && *s && strcmp(s, "0") != 0;
}

#endif
