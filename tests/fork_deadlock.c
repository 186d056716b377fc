/* fork while other threads use stdio (glibc bug 19431, glibc's
 * tst-malloc-fork-deadlock). glibc's fork takes _IO_list_lock after the
 * atfork prepare handlers; if ours took the allocator's locks first, a
 * thread in fflush(NULL) (holding _IO_list_lock, waiting for a FILE lock)
 * and a thread in getline (holding that FILE lock, waiting in realloc for an
 * allocator lock the forking thread holds) close a cycle.
 *
 * Part 1: getline on fmemopen'd streams with lines long enough that realloc
 * reaches the pool's large spans, fflush(NULL) loops, malloc/free loops, and
 * the main thread forking. Part 2: eight threads doing fopen/fprintf/fclose,
 * malloc and free while the main thread forks. A watchdog turns a hang into
 * "FAIL: deadlock". */
#define _GNU_SOURCE
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <sys/wait.h>
#include <time.h>
#include "check.h"

#define LINE_LEN (300 << 10) /* past 128 KiB: realloc takes large spans from the pool */
#define LINES 4
#define SECONDS_PER_PART 4

static atomic_int stop;
static char text[LINES * (LINE_LEN + 1)];
static char tmpdir[] = "/tmp/hak-fork-deadlock.XXXXXX";

static void on_alarm(int sig) {
  (void)sig;
  static const char msg[] = "FAIL: deadlock (fork with threads using stdio hangs)\n";
  if (write(2, msg, sizeof msg - 1) < 0) {
  }
  _exit(1);
}

static void *reader(void *arg) {
  (void)arg;
  FILE *f = fmemopen(text, sizeof text, "r");
  CHECK(f, "fmemopen failed");
  while (!atomic_load(&stop)) {
    char *line = NULL; /* a fresh buffer: realloc grows it from small to large */
    size_t cap = 0;
    ssize_t n = getline(&line, &cap, f);
    if (n < 0) {
      CHECK(!ferror(f), "getline failed");
      rewind(f);
    } else {
      CHECK(n == LINE_LEN + 1 && line[0] >= 'a' && line[0] < 'a' + LINES && line[n - 2] == line[0],
            "getline read a bad line");
    }
    free(line);
  }
  fclose(f);
  return NULL;
}

static void *flusher(void *arg) {
  (void)arg;
  while (!atomic_load(&stop))
    fflush(NULL); /* _IO_list_lock, then every FILE's lock */
  return NULL;
}

static void *churner(void *arg) {
  uint64_t s = (uint64_t)(uintptr_t)arg * 0x9E3779B97F4A7C15ull;
  void *live[64] = {0};
  while (!atomic_load(&stop)) {
    s ^= s << 13, s ^= s >> 7, s ^= s << 17;
    int k = (int)(s % 64);
    free(live[k]);
    size_t n = s >> 40 & 1 ? 16 + (s >> 20) % 4096 : 100000 + (s >> 20) % 900000;
    live[k] = malloc(n);
    CHECK(live[k], "malloc failed");
    ((char *)live[k])[0] = 1;
  }
  for (int k = 0; k < 64; k++)
    free(live[k]);
  return NULL;
}

static void *filer(void *arg) {
  int id = (int)(uintptr_t)arg;
  char path[64];
  snprintf(path, sizeof path, "%s/%d", tmpdir, id);
  for (unsigned i = 0; !atomic_load(&stop); i++) {
    FILE *f = fopen(path, "w"); /* malloc for the FILE, its buffer on first write */
    CHECK(f, "fopen %s failed", path);
    fprintf(f, "thread %d round %u\n", id, i);
    void *p = malloc(1 + i % 200000);
    CHECK(p, "malloc failed");
    fclose(f);
    free(p);
  }
  unlink(path);
  return NULL;
}

/* Forks for `seconds` while the threads run; each child allocates a little. */
static unsigned fork_loop(int seconds) {
  time_t end = time(NULL) + seconds;
  unsigned forks = 0;
  while (time(NULL) < end) {
    pid_t pid = fork();
    CHECK(pid >= 0, "fork failed");
    if (pid == 0) {
      alarm(10);
      for (int i = 0; i < 100; i++)
        free(malloc(1 + (size_t)i * 997));
      _exit(0);
    }
    int status;
    CHECK(waitpid(pid, &status, 0) == pid, "waitpid failed");
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0, "child failed (status %#x)", status);
    forks++;
  }
  return forks;
}

static void run_threads(void *(*const *fns)(void *), int n, int seconds, const char *what) {
  pthread_t t[16];
  atomic_store(&stop, 0);
  for (int i = 0; i < n; i++)
    CHECK(pthread_create(&t[i], NULL, fns[i], (void *)(uintptr_t)(i + 1)) == 0,
          "pthread_create failed");
  unsigned forks = fork_loop(seconds);
  atomic_store(&stop, 1);
  for (int i = 0; i < n; i++)
    pthread_join(t[i], NULL);
  printf("%s: %u forks\n", what, forks);
  fflush(stdout);
}

int main(void) {
  signal(SIGALRM, on_alarm);
  for (int l = 0; l < LINES; l++) {
    memset(text + (size_t)l * (LINE_LEN + 1), 'a' + l, LINE_LEN);
    text[(size_t)l * (LINE_LEN + 1) + LINE_LEN] = '\n';
  }
  CHECK(mkdtemp(tmpdir), "mkdtemp failed");

  alarm(SECONDS_PER_PART + 8);
  void *(*const part1[])(void *) = {reader, reader, reader, flusher, flusher, churner, churner};
  run_threads(part1, 7, SECONDS_PER_PART, "getline/fflush(NULL)/malloc");

  alarm(SECONDS_PER_PART + 8);
  void *(*const part2[])(void *) = {filer, filer, filer, filer, filer, filer, filer, filer};
  run_threads(part2, 8, SECONDS_PER_PART, "fopen/fprintf/fclose");
  alarm(0);
  rmdir(tmpdir);
  return 0;
}
