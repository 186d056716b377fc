/* Bad values of the purge, prefault, huge page and heap limit variables: each prints
 * exactly one line on stderr that names the variable, the value and what is
 * accepted; the default is used (the HAKMEM_VERBOSE=1 settings line is the
 * same as without the variable); and the program works (a child allocates,
 * checks, frees, with threads). Several bad variables at once give one line
 * each. */
#include <malloc.h>
#include <pthread.h>
#include "kmem_util.h"

static const char *const bad[][2] = {
    {"HAKMEM_PURGE", "sometimes"},
    {"HAKMEM_PURGE", "REGION"},
    {"HAKMEM_PURGE", ""},
    {"HAKMEM_PURGE_DELAY_MS", "abc"},
    {"HAKMEM_PURGE_DELAY_MS", "-5"},
    {"HAKMEM_PURGE_DELAY_MS", "10ms"},
    {"HAKMEM_PURGE_DELAY_MS", "99999999999999999999"},
    {"HAKMEM_BACKGROUND", "2"},
    {"HAKMEM_BACKGROUND", "yes"},
    {"HAKMEM_PURGE_ENGINE", "fast"},
    {"HAKMEM_PURGE_ENGINE", "io_uring"},
    {"HAKMEM_PREFAULT", "on"},
    {"HAKMEM_PREFAULT", "1"},
    {"HAKMEM_UFFD", "true"},
    {"HAKMEM_UFFD", "01"},
    {"HAKMEM_THP", "always"},
    {"HAKMEM_HUGETLB", "yes"},
    {"HAKMEM_HUGETLB", "-1"},
    {"HAKMEM_MAX_HEAPS", "-1"},
    {"HAKMEM_MAX_HEAPS", "many"},
    {"HAKMEM_MAX_HEAPS", "65537"},
    {"HAKMEM_MAX_HEAPS", ""},
};
#define NBAD (sizeof bad / sizeof bad[0])

/* ---- the child: ordinary work that must not notice anything ---- */

static void *work(void *arg) {
  uint64_t seed = (uint64_t)(uintptr_t)arg * 7919 + 1;
  static _Thread_local void *blk[512];
  static _Thread_local size_t len[512];
  for (int round = 0; round < 2; round++) {
    for (int i = 0; i < 512; i++) {
      seed = seed * 6364136223846793005ull + 1442695040888963407ull;
      size_t r = (size_t)(seed >> 33);
      len[i] = i % 64 == 0 ? 100 * KIB + r % (3 * MIB) : 1 + r % (16 * KIB);
      blk[i] = i % 3 ? malloc(len[i]) : calloc(1, len[i]);
      CHECK(blk[i], "allocation of %zu bytes failed", len[i]);
      if (i % 3 == 0)
        for (size_t o = 0; o < len[i]; o += 512)
          CHECK(((char *)blk[i])[o] == 0, "calloc(1, %zu) not zero at %zu", len[i], o);
      fill_pattern(blk[i], len[i]);
    }
    for (int i = 0; i < 512; i++) {
      CHECK(check_pattern(blk[i], len[i]) == SIZE_MAX, "block of %zu bytes corrupted", len[i]);
      free(blk[i]);
    }
  }
  return NULL;
}

static int child_main(void) {
  pthread_t t[2];
  for (uintptr_t i = 0; i < 2; i++)
    CHECK(pthread_create(&t[i], NULL, work, (void *)i) == 0, "pthread_create failed");
  work((void *)2);
  for (int i = 0; i < 2; i++)
    pthread_join(t[i], NULL);
  malloc_trim(0);
  return 0;
}

/* ---- the checks ---- */

/* The HAKMEM_VERBOSE=1 settings line of a child run with env. */
static void settings_line(const char *const *env, char *out, size_t len) {
  static struct child c;
  child_ok("child", env, &c);
  settings_line_of(&c, out, len);
}

int main(int argc, char **argv) {
  (void)argv;
  if (argc > 1) return child_main();
  static struct child c;
  char defaults[1024], line[1024], var[256];
  const char *verbose[] = {"HAKMEM_VERBOSE=1", NULL};
  settings_line(verbose, defaults, sizeof defaults);

  for (size_t i = 0; i < NBAD; i++) {
    snprintf(var, sizeof var, "%s=%s", bad[i][0], bad[i][1]);
    const char *env[] = {var, NULL};
    child_ok("child", env, &c);
    check_bad_value_line(&c, var, false);

    const char *env_v[] = {var, "HAKMEM_VERBOSE=1", NULL};
    settings_line(env_v, line, sizeof line);
    CHECK(!strcmp(line, defaults),
          "%s: the default is not used; settings line\n  %s\ninstead of\n  %s", var, line,
          defaults);
    printf("ok %-45s %s", var, c.err);
  }

  /* all at once: one line each, nothing else */
  static char vars[8][128];
  const char *env_all[9] = {0};
  const char *names[] = {"HAKMEM_PURGE",        "HAKMEM_PURGE_DELAY_MS", "HAKMEM_BACKGROUND",
                         "HAKMEM_PURGE_ENGINE", "HAKMEM_PREFAULT",       "HAKMEM_UFFD",
                         "HAKMEM_THP",          "HAKMEM_HUGETLB"};
  for (int i = 0; i < 8; i++) {
    snprintf(vars[i], sizeof vars[i], "%s=bogus%d", names[i], i);
    env_all[i] = vars[i];
  }
  child_ok("child", env_all, &c);
  CHECK(count_lines(c.err) == 8, "eight bad variables: expected eight lines, got %d:\n%s",
        count_lines(c.err), c.err);
  for (int i = 0; i < 8; i++) {
    char want[64];
    snprintf(want, sizeof want, "bogus%d", i);
    CHECK(line_with(c.err, want, line, sizeof line) && strstr(line, names[i]),
          "eight bad variables: no line names %s with its value %s:\n%s", names[i], want, c.err);
  }
  printf("bad env: ok\n");
  return 0;
}
