/* Runs this test binary again as a child with a chosen environment, so tests
 * can check what hakmem does with its HAKMEM_* variables (read once at
 * start) and what it prints on stderr. The child sees the mode as argv[1]
 * and none of the parent's HAKMEM_* variables except those passed. */
#ifndef HAK_TESTS_SPAWN_H
#define HAK_TESTS_SPAWN_H

#include <sys/wait.h>
#include "check.h"

extern char **environ;

struct child {
  int status;      /* as from waitpid */
  char err[65536]; /* the child's stderr, NUL-terminated, maybe cut */
  size_t errlen;
};

/* env: "NAME=value" strings, NULL-terminated (or NULL for none). */
static inline void run_self(const char *mode, const char *const *env, struct child *c) {
  int fd[2];
  CHECK(pipe(fd) == 0, "pipe failed");
  fflush(NULL);
  pid_t pid = fork();
  CHECK(pid >= 0, "fork failed");
  if (pid == 0) {
    char name[256];
    for (int again = 1; again;) { /* unsetenv reshuffles environ: rescan */
      again = 0;
      for (char **e = environ; *e; e++) {
        if (strncmp(*e, "HAKMEM_", 7) != 0) continue;
        size_t n = strcspn(*e, "=");
        snprintf(name, sizeof name, "%.*s", (int)n, *e);
        unsetenv(name);
        again = 1;
        break;
      }
    }
    for (; env && *env; env++)
      putenv((char *)*env);
    dup2(fd[1], 2);
    close(fd[0]);
    close(fd[1]);
    execl("/proc/self/exe", "child", mode, (char *)NULL);
    _exit(127);
  }
  close(fd[1]);
  c->errlen = 0;
  ssize_t got;
  while ((got = read(fd[0], c->err + c->errlen, sizeof c->err - 1 - c->errlen)) > 0)
    c->errlen += (size_t)got;
  c->err[c->errlen] = 0;
  close(fd[0]);
  CHECK(waitpid(pid, &c->status, 0) == pid, "waitpid failed");
}

/* Lines of text, counting a last line without its newline. */
static inline int count_lines(const char *s) {
  int n = 0;
  for (const char *p = s; *p; p++)
    if (*p == '\n' || p[1] == 0) n++;
  return n;
}

static inline int exited_ok(const struct child *c) {
  return WIFEXITED(c->status) && WEXITSTATUS(c->status) == 0;
}

#endif
