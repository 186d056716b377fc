/* Runs this test binary again as a child with a chosen environment, so tests
 * can check what hakmem does with its HAKMEM_* variables (read once at
 * start) and what it prints on stderr. The child sees the mode as argv[1]
 * and none of the parent's HAKMEM_* variables except those passed. */
#ifndef HAK_TESTS_SPAWN_H
#define HAK_TESTS_SPAWN_H

#include <stdbool.h>
#include <sys/wait.h>
#include "check.h"
#include "hakmem.h"

extern char **environ;

struct child {
  int status;      /* as from waitpid */
  char err[65536]; /* the child's stderr, NUL-terminated, maybe cut */
  size_t errlen;
};

/* In a forked child, before exec: drops every HAKMEM_* variable, then puts
 * env ("NAME=value" strings, NULL-terminated, or NULL for none). */
static inline void child_env(const char *const *env) {
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
}

/* In the parent: reads the child's output from fd into c->err until EOF,
 * closes fd and waits for pid. Returns what waitpid returned. */
static inline pid_t child_collect(pid_t pid, int fd, struct child *c) {
  c->errlen = 0;
  ssize_t got;
  while ((got = read(fd, c->err + c->errlen, sizeof c->err - 1 - c->errlen)) > 0)
    c->errlen += (size_t)got;
  c->err[c->errlen] = 0;
  close(fd);
  return waitpid(pid, &c->status, 0);
}

/* env: "NAME=value" strings, NULL-terminated (or NULL for none). The child
 * calls before_exec(arg), when given, just before exec. */
static inline void run_self_with(const char *mode, const char *const *env, struct child *c,
                                 void (*before_exec)(void *), void *arg) {
  int fd[2];
  CHECK(pipe(fd) == 0, "pipe failed");
  fflush(NULL);
  pid_t pid = fork();
  CHECK(pid >= 0, "fork failed");
  if (pid == 0) {
    child_env(env);
    dup2(fd[1], 2);
    close(fd[0]);
    close(fd[1]);
    if (before_exec) before_exec(arg);
    execl("/proc/self/exe", "child", mode, (char *)NULL);
    _exit(127);
  }
  close(fd[1]);
  CHECK(child_collect(pid, fd[0], c) == pid, "waitpid failed");
}

static inline void run_self(const char *mode, const char *const *env, struct child *c) {
  run_self_with(mode, env, c, NULL, NULL);
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

/* The line of text containing needle, copied into out; NULL if none. */
static inline const char *line_with(const char *text, const char *needle, char *out, size_t len) {
  const char *p = strstr(text, needle);
  if (!p) return NULL;
  while (p > text && p[-1] != '\n')
    p--;
  size_t n = strcspn(p, "\n");
  if (n >= len) n = len - 1;
  memcpy(out, p, n);
  out[n] = 0;
  return out;
}

/* The HAKMEM_VERBOSE=1 settings line of a child's stderr, copied into out. */
static inline void settings_line_of(const struct child *c, char *out, size_t len) {
  CHECK(line_with(c->err, "hakmem " HAKMEM_VERSION ":", out, len),
        "HAKMEM_VERBOSE=1 printed no settings line (\"hakmem " HAKMEM_VERSION ": ...\"):\n%s",
        c->err);
}

/* A child run with one bad variable (var: "NAME=value") said so in exactly
 * one line that names the variable, shows the value (an empty one as
 * "NAME=", or also as "" or '' when quotes_ok) and says what is accepted. */
static inline void check_bad_value_line(const struct child *c, const char *var, bool quotes_ok) {
  char name[256];
  snprintf(name, sizeof name, "%.*s", (int)strcspn(var, "="), var);
  const char *value = var + strlen(name) + (var[strlen(name)] == '=');
  CHECK(count_lines(c->err) == 1, "%s: expected exactly one line on stderr, got %d:\n%s", var,
        count_lines(c->err), c->err);
  CHECK(strstr(c->err, name), "%s: the message does not name the variable: %s", var, c->err);
  CHECK(*value ? strstr(c->err, value) != NULL
               : strstr(c->err, var) != NULL || (quotes_ok && (strstr(c->err, "\"\"") != NULL ||
                                                               strstr(c->err, "''") != NULL)),
        "%s: the message does not show the value: %s", var, c->err);
  CHECK(strstr(c->err, "accept") || strstr(c->err, "valid") || strstr(c->err, "expect"),
        "%s: the message does not say what is accepted: %s", var, c->err);
}

#endif
