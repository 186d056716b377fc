/* Helpers of the tests/kmem_*.c tests (lazy zero, purge, prefault and huge
 * pages): resident memory, faults, idle waits, small /proc and /sys files,
 * and running this binary again under chosen HAKMEM_* settings. */
#ifndef HAK_TESTS_KMEM_UTIL_H
#define HAK_TESTS_KMEM_UTIL_H

#include <errno.h>
#include <fcntl.h>
#include <malloc.h>
#include <stdbool.h>
#include <sys/resource.h>
#include <time.h>
#include "check.h"
#include "hakmem.h"
#include "spawn.h"

#define KIB ((size_t)1 << 10)
#define MIB ((size_t)1 << 20)

/* Resident bytes of this process, from /proc/self/statm. */
static inline size_t rss_bytes(void) {
  char buf[128] = {0};
  int fd = open("/proc/self/statm", O_RDONLY);
  CHECK(fd >= 0, "cannot open /proc/self/statm: %s", strerror(errno));
  ssize_t n = read(fd, buf, sizeof buf - 1);
  close(fd);
  unsigned long size = 0, rss = 0;
  CHECK(n > 0 && sscanf(buf, "%lu %lu", &size, &rss) == 2, "cannot parse /proc/self/statm");
  return (size_t)rss * (size_t)sysconf(_SC_PAGESIZE);
}

static inline long minor_faults(void) {
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  return ru.ru_minflt;
}

static inline void sleep_ms(long ms) {
  struct timespec ts = {ms / 1000, (ms % 1000) * 1000000};
  while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
  }
}

static inline long now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Writes one byte in every 4 KiB of [p, p+n): every page faults in. */
static inline void touch(void *p, size_t n) {
  for (size_t o = 0; o < n; o += 4096)
    ((volatile char *)p)[o] = 1;
  if (n) ((volatile char *)p)[n - 1] = 1;
}

/* The first line of a small file, NUL-terminated, newline stripped; NULL if
 * it cannot be read. */
static inline const char *read_line(const char *path, char *buf, size_t len) {
  int fd = open(path, O_RDONLY);
  if (fd < 0) return NULL;
  ssize_t n = read(fd, buf, len - 1);
  close(fd);
  if (n < 0) return NULL;
  buf[n] = 0;
  buf[strcspn(buf, "\n")] = 0;
  return buf;
}

static inline long read_long(const char *path) {
  char buf[64];
  return read_line(path, buf, sizeof buf) ? strtol(buf, NULL, 10) : -1;
}

static inline bool write_long(const char *path, long v) {
  int fd = open(path, O_WRONLY);
  if (fd < 0) return false;
  char buf[32];
  int n = snprintf(buf, sizeof buf, "%ld\n", v);
  bool ok = write(fd, buf, (size_t)n) == n;
  close(fd);
  return ok;
}

static inline hak_stats_t stats_now(void) {
  hak_stats_t s;
  hak_stats_get(&s);
  return s;
}

/* The counters once malloc_trim(0) gave back every free page. */
static inline hak_stats_t stats_trimmed(void) {
  malloc_trim(0);
  return stats_now();
}

/* The counters once `bytes` more were purged than in s0, or after ms: they
 * follow a purge's completion, RSS its system call (io_uring's completions
 * are reaped later), so a test that saw RSS drop waits for them. */
static inline hak_stats_t stats_purged(const hak_stats_t *s0, uint64_t bytes, long ms) {
  hak_stats_t s = stats_now();
  for (long waited = 0; waited < ms && s.purged_bytes - s0->purged_bytes < bytes; waited += 10) {
    sleep_ms(10);
    s = stats_now();
  }
  return s;
}

/* Runs this binary as a child in mode with env ("NAME=value" strings,
 * NULL-terminated); fails with the child's stderr unless it exited 0. Its
 * stderr is left in c for further checks. */
static inline void child_ok(const char *mode, const char *const *env, struct child *c) {
  run_self(mode, env, c);
  if (exited_ok(c)) return;
  char env_text[512] = "";
  for (const char *const *e = env; e && *e; e++) {
    strncat(env_text, *e, sizeof env_text - strlen(env_text) - 2);
    strcat(env_text, " ");
  }
  if (WIFSIGNALED(c->status))
    FAIL("child '%s' with %skilled by signal %d; its stderr:\n%s", mode, env_text,
         WTERMSIG(c->status), c->err);
  if (WIFEXITED(c->status) && WEXITSTATUS(c->status) == 77) {
    const char *why = strstr(c->err, "SKIP: ");
    SKIP("child '%s' with %s%s", mode, env_text, why ? why + 6 : c->err);
  }
  FAIL("child '%s' with %sexited %d; its stderr:\n%s", mode, env_text,
       WIFEXITED(c->status) ? WEXITSTATUS(c->status) : -1, c->err);
}

/* Lines of s that contain "hakmem:" (the allocator's messages). */
static inline int hakmem_lines(const char *s) {
  int n = 0;
  for (const char *p = s; (p = strstr(p, "hakmem:")) != NULL; p++)
    n++;
  return n;
}

#endif
