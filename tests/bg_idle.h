/* Makes the background thread's timing the test's choice, without hooks (so
 * a test also runs on code that has none): the whole process on one CPU and
 * the background thread SCHED_IDLE there. It then runs only while the main
 * thread sleeps or waits, and a main thread waking preempts it at once,
 * wherever it is. */
#ifndef HAK_TESTS_BG_IDLE_H
#define HAK_TESTS_BG_IDLE_H

#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <dirent.h>
#include <sched.h>
#include <sys/syscall.h>
#include "kmem_util.h"

/* Before any thread exists: threads created later inherit the mask. */
static inline void pin_to_one_cpu(void) {
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(sched_getcpu() < 0 ? 0 : sched_getcpu(), &set);
  if (sched_setaffinity(0, sizeof set, &set) != 0) SKIP("sched_setaffinity: %s", strerror(errno));
}

/* The threads of this process but the caller: up to max of them in out;
 * returns how many there are. */
static inline int other_threads(pid_t *out, int max) {
  pid_t self = (pid_t)syscall(SYS_gettid);
  int n = 0;
  DIR *d = opendir("/proc/self/task");
  CHECK(d, "opendir /proc/self/task: %s", strerror(errno));
  for (struct dirent *e; (e = readdir(d)) != NULL;) {
    if (e->d_name[0] == '.') continue;
    pid_t t = (pid_t)atoi(e->d_name);
    if (t == self) continue;
    if (n < max) out[n] = t;
    n++;
  }
  closedir(d);
  return n;
}

/* The one thread of this process that is not the caller (the last listed
 * if there are more), or 0; *count: the process's threads. */
static inline pid_t other_thread(int *count) {
  pid_t t[64];
  int n = other_threads(t, 64);
  *count = n + 1;
  return n ? t[(n < 64 ? n : 64) - 1] : 0;
}

/* Calls poke (which must make hakmem want and start its background thread)
 * until a second thread exists, then makes that thread SCHED_IDLE. */
static inline pid_t background_idle(void (*poke)(void)) {
  pid_t bg = 0;
  int n = 0;
  for (long until = now_ms() + 3000; now_ms() < until; sleep_ms(1)) {
    poke();
    bg = other_thread(&n);
    if (bg) break;
  }
  CHECK(bg && n == 2, "expected the main and the background thread, found %d threads", n);
  struct sched_param sp = {0};
  if (sched_setscheduler(bg, SCHED_IDLE, &sp) != 0)
    SKIP("sched_setscheduler(SCHED_IDLE) on the background thread: %s", strerror(errno));
  return bg;
}

#endif
