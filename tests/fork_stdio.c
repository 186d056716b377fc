/* fork while other threads use stdio and malloc: the pattern of glibc bug
 * 19431 (glibc's tst-malloc-fork-deadlock). glibc's fork runs the atfork
 * prepare handlers (an interposed allocator's locks) before it takes its
 * stdio list lock; getdelim allocates while it holds its FILE's lock, and
 * fflush(NULL) holds the list lock while it waits for each FILE's lock. An
 * allocator that holds its locks from its prepare handler until after fork
 * and makes malloc wait for them closes the cycle: fork waits for the list
 * lock (fflush), fflush for the FILE (getdelim), getdelim for the
 * allocator's lock (fork).
 *  phase 1: threads read lines of 1 B to 100 KiB with getline/getdelim
 *    from fmemopen streams and temporary files, a thread calls fflush(NULL)
 *    in a loop, two threads malloc and free; the main thread forks in a
 *    loop (the child mallocs and frees a little and _exits).
 *  phase 2: eight threads fopen /dev/null, fprintf to it, malloc, free and
 *    fclose, while the main thread forks in a loop (the child also opens
 *    and closes a stream).
 * A watchdog thread fails the test when it is not done in time.
 * Usage: fork_stdio [seconds per phase] (default 4; HAKMEM_SOAK=1: 30). */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <sys/wait.h>
#include "check.h"
#include "watchdog.h"

static char text[1 << 20];
static size_t text_len;
static atomic_int stop;
static atomic_long lines_read, flushes, streams;

static uint64_t rnd(uint64_t *s) {
  *s ^= *s >> 12;
  *s ^= *s << 25;
  *s ^= *s >> 27;
  return *s * 0x2545F4914F6CDD1Dull;
}

/* Lines of 0 B to 100 KiB (mostly short), some with commas for getdelim. */
static void make_text(void) {
  uint64_t s = 42;
  size_t at = 0;
  while (at < sizeof text - 200000) {
    uint64_t k = rnd(&s) % 100;
    size_t n = k < 70 ? rnd(&s) % 200 : k < 95 ? rnd(&s) % 8192 : rnd(&s) % 100000;
    for (size_t i = 0; i < n; i++)
      text[at++] = rnd(&s) % 17 == 0 ? ',' : (char)('a' + i % 26);
    text[at++] = '\n';
  }
  text_len = at;
}

static void read_all(FILE *f, int delim) {
  char *line = NULL;
  size_t cap = 0;
  ssize_t n;
  long count = 0;
  while ((n = getdelim(&line, &cap, delim, f)) > 0) {
    count++;
    if (n > 1024) { /* the next long line allocates afresh, under the FILE's lock */
      free(line);
      line = NULL;
      cap = 0;
    }
  }
  free(line);
  atomic_fetch_add(&lines_read, count);
}

static void *reader(void *arg) {
  uintptr_t id = (uintptr_t)arg;
  FILE *tmp = NULL;
  if (id & 1) {
    tmp = tmpfile();
    CHECK(tmp, "tmpfile failed: %s", strerror(errno));
    CHECK(fwrite(text, 1, text_len, tmp) == text_len, "writing the temporary file failed");
  }
  for (int pass = 0; !atomic_load(&stop); pass++) {
    int delim = pass % 3 == 2 ? ',' : '\n';
    if (tmp) {
      rewind(tmp);
      read_all(tmp, delim);
    } else {
      FILE *f = fmemopen(text, text_len, "r");
      CHECK(f, "fmemopen failed: %s", strerror(errno));
      read_all(f, delim);
      fclose(f);
    }
  }
  if (tmp) fclose(tmp);
  return NULL;
}

static void *flusher(void *arg) {
  (void)arg;
  while (!atomic_load(&stop)) {
    fflush(NULL);
    atomic_fetch_add(&flushes, 1);
  }
  return NULL;
}

static void *churner(void *arg) {
  uint64_t s = (uintptr_t)arg;
  void *keep[256] = {0};
  while (!atomic_load(&stop)) {
    size_t i = rnd(&s) % 256;
    free(keep[i]);
    uint64_t k = rnd(&s) % 100;
    size_t n = k < 80   ? 1 + rnd(&s) % 1024
               : k < 98 ? 1024 + rnd(&s) % (127 << 10)
                        : (128 << 10) + rnd(&s) % (2 << 20);
    keep[i] = malloc(n);
    CHECK(keep[i], "malloc(%zu) failed", n);
    memset(keep[i], 1, n < 256 ? n : 256);
  }
  for (int i = 0; i < 256; i++)
    free(keep[i]);
  return NULL;
}

/* Phase 2's threads: streams on /dev/null, formatted output, malloc. */
static void *printer(void *arg) {
  uint64_t s = (uintptr_t)arg;
  while (!atomic_load(&stop)) {
    FILE *f = fopen("/dev/null", "w");
    CHECK(f, "fopen(/dev/null) failed: %s", strerror(errno));
    for (int i = 0; i < 20; i++)
      fprintf(f, "%d %s %.3f %*s\n", i, "line", (double)i / 7, (int)(rnd(&s) % 3000), "x");
    size_t n = 1 + rnd(&s) % 20000;
    char *p = malloc(n);
    CHECK(p, "malloc(%zu) failed", n);
    memset(p, 2, n);
    fwrite(p, 1, n, f);
    free(p);
    fclose(f);
    atomic_fetch_add(&streams, 1);
  }
  return NULL;
}

static void child_work(int with_stdio) {
  void *p[8];
  for (int i = 0; i < 8; i++) {
    p[i] = malloc((size_t)16 << i);
    if (!p[i]) _exit(2);
    memset(p[i], 3, (size_t)16 << i);
  }
  if (with_stdio) {
    FILE *f = fopen("/dev/null", "w");
    if (!f) _exit(3);
    fprintf(f, "child %d\n", (int)getpid());
    fclose(f);
  }
  for (int i = 0; i < 8; i++)
    free(p[i]);
  _exit(0);
}

/* Forks in a loop until seconds have passed; returns the number of forks. */
static long fork_loop(double seconds, int with_stdio, const char *stage) {
  long long end = watchdog_now() + (long long)(seconds * 1e9);
  long n = 0;
  while (watchdog_now() < end) {
    atomic_store(&watchdog_stage, stage);
    pid_t pid = fork();
    if (pid == 0) child_work(with_stdio);
    if (pid < 0) {
      CHECK(errno == EAGAIN || errno == EINTR, "fork failed: %s", strerror(errno));
      continue;
    }
    atomic_store(&watchdog_child, pid);
    int st;
    while (waitpid(pid, &st, 0) < 0)
      CHECK(errno == EINTR, "waitpid failed: %s", strerror(errno));
    atomic_store(&watchdog_child, 0);
    CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "%s: a child ended with status 0x%x", stage, st);
    n++;
  }
  return n;
}

int main(int argc, char **argv) {
  double secs = argc > 1 ? atof(argv[1]) : soak_mode() ? 30 : 4;
  CHECK(secs > 0, "usage: %s [seconds per phase]", argv[0]);
  watchdog_start(2 * secs + 12);
  make_text();

  pthread_t t[8];
  int nt = 0;
  for (uintptr_t i = 0; i < 3; i++)
    CHECK(pthread_create(&t[nt++], NULL, reader, (void *)i) == 0, "pthread_create failed");
  CHECK(pthread_create(&t[nt++], NULL, flusher, NULL) == 0, "pthread_create failed");
  for (uintptr_t i = 0; i < 2; i++)
    CHECK(pthread_create(&t[nt++], NULL, churner, (void *)(i + 77)) == 0, "pthread_create failed");
  long f1 = fork_loop(secs, 0,
                      "phase 1: forking (or waiting for a child) while threads getline, "
                      "fflush(NULL), malloc");
  atomic_store(&stop, 1);
  atomic_store(&watchdog_stage, "phase 1: joining the threads");
  for (int i = 0; i < nt; i++)
    pthread_join(t[i], NULL);

  atomic_store(&stop, 0);
  nt = 0;
  for (uintptr_t i = 0; i < 8; i++)
    CHECK(pthread_create(&t[nt++], NULL, printer, (void *)(i * 1000 + 1)) == 0,
          "pthread_create failed");
  long f2 = fork_loop(secs, 1,
                      "phase 2: forking (or waiting for a child) while 8 threads fopen, "
                      "fprintf, malloc, free, fclose");
  atomic_store(&stop, 1);
  atomic_store(&watchdog_stage, "phase 2: joining the threads");
  for (int i = 0; i < nt; i++)
    pthread_join(t[i], NULL);
  printf("phase 1: %ld forks, %ld lines read, %ld fflush(NULL); phase 2: %ld forks, %ld streams\n",
         f1, atomic_load(&lines_read), atomic_load(&flushes), f2, atomic_load(&streams));
  CHECK(f1 > 0 && f2 > 0, "no fork completed");
  return 0;
}
