/* The statistics environment variables, checked on a child process:
 * HAKMEM_STATS=json with HAKMEM_STATS_FILE writes one JSON object at exit with
 * every hak_stats_t key plus "version" (and real values); HAKMEM_STATS=1
 * prints a human table; unset or 0 prints nothing. Bad values of
 * HAKMEM_STATS, HAKMEM_THP and HAKMEM_ABORT_ON_ERROR print one line naming
 * the variable, the value and what is accepted, and the default is used. */
#define _GNU_SOURCE
#include <ctype.h>
#include <fcntl.h>
#include "check.h"
#include "hakmem.h"
#include "spawn.h"
#include "stats_keys.h"

#define FOREIGN_FREES 3

static char static_block[64];

static void child_work(void) {
  static void *blocks[1000];
  for (int i = 0; i < 1000; i++) {
    size_t n = i % 100 == 0 ? (size_t)i * 4096 : 16 + (size_t)i * 7;
    blocks[i] = malloc(n);
    CHECK(blocks[i], "malloc(%zu) failed", n);
    memset(blocks[i], i, n);
  }
  for (int i = 0; i < 1000; i++)
    free(blocks[i]);
}

static int child_main(const char *mode) {
  child_work();
  if (!strcmp(mode, "invalid"))
    for (int i = 0; i < FOREIGN_FREES; i++)
      free(opaque_ptr(static_block + 16 * i));
  if (!strcmp(mode, "print")) hak_stats_print();
  return 0; /* the at-exit report happens after this */
}

/* Case-insensitive search where '_', '-' and ' ' count as the same. */
static int has_words(const char *hay, const char *needle) {
  size_t n = strlen(needle);
  for (; *hay; hay++) {
    size_t i = 0;
    for (; i < n && hay[i]; i++) {
      char a = (char)tolower((unsigned char)hay[i]), b = needle[i];
      if (a == '-' || a == ' ') a = '_';
      if (a != b) break;
    }
    if (i == n) return 1;
  }
  return 0;
}

static void check_table(const char *text, const char *where) {
  const char *must[] = {"pages_fresh", "pages_reused", "remote_frees", "invalid_frees",
                        "committed"};
  CHECK(count_lines(text) >= 5, "%s: expected a table, got %d line(s): %s", where,
        count_lines(text), text);
  for (size_t i = 0; i < sizeof must / sizeof must[0]; i++)
    CHECK(has_words(text, must[i]), "%s: the table does not mention %s:\n%s", where, must[i], text);
}

static void check_json(const char *text, const char *where, uint64_t invalid) {
  CHECK(one_json_object(text), "%s: not exactly one JSON object:\n%s", where, text);
  for (size_t i = 0; i < NKEYS; i++)
    CHECK(json_number(text, stats_keys[i]) != UINT64_MAX, "%s: key \"%s\" missing or not a number",
          where, stats_keys[i]);
  const char *v = json_value(text, "version");
  CHECK(v && !strncmp(v, "\"" HAKMEM_VERSION "\"", strlen(HAKMEM_VERSION) + 2),
        "%s: \"version\": \"%s\" missing", where, HAKMEM_VERSION);
  CHECK(json_number(text, "invalid_frees") == invalid, "%s: invalid_frees is %llu, expected %llu",
        where, (unsigned long long)json_number(text, "invalid_frees"), (unsigned long long)invalid);
  CHECK(json_number(text, "pages_activated") > 0, "%s: pages_activated is 0", where);
}

static char *read_file(const char *path) {
  static char buf[65536];
  int fd = open(path, O_RDONLY);
  if (fd < 0) return NULL;
  ssize_t n = read(fd, buf, sizeof buf - 1);
  close(fd);
  buf[n > 0 ? n : 0] = 0;
  return buf;
}

static struct child c;

/* A bad value: one line naming variable, value and every word in accepted. */
static void bad_value(const char *var, const char *mode, int lines, const char *const *accepted) {
  char env[128];
  snprintf(env, sizeof env, "%s=wibble", var);
  const char *e[] = {env, NULL};
  run_self(mode, e, &c);
  CHECK(exited_ok(&c), "%s=wibble: the program did not run normally (status 0x%x)", var, c.status);
  CHECK(count_lines(c.err) == lines, "%s=wibble: expected %d line(s) on stderr, got:\n%s", var,
        lines, c.err);
  const char *line = strstr(c.err, var);
  CHECK(line, "%s=wibble: no line names the variable:\n%s", var, c.err);
  size_t len = strcspn(line, "\n");
  char copy[1024];
  snprintf(copy, sizeof copy, "%.*s", (int)len, line);
  CHECK(strstr(copy, "wibble"), "%s=wibble: the line does not show the value: %s", var, copy);
  for (; *accepted; accepted++)
    CHECK(strstr(copy + strlen(var), *accepted),
          "%s=wibble: the line does not say that \"%s\" is accepted: %s", var, *accepted, copy);
}

int main(int argc, char **argv) {
  if (argc > 1) return child_main(argv[1]);

  char path[] = "/tmp/hakmem-stats-XXXXXX";
  int fd = mkstemp(path);
  CHECK(fd >= 0, "mkstemp failed");
  close(fd);
  char file_env[64];
  snprintf(file_env, sizeof file_env, "HAKMEM_STATS_FILE=%s", path);

  /* json into a file: one object, every key, real values; stderr has only
   * the foreign-free warning. */
  const char *json_file[] = {"HAKMEM_STATS=json", file_env, NULL};
  run_self("invalid", json_file, &c);
  CHECK(exited_ok(&c), "HAKMEM_STATS=json: child status 0x%x", c.status);
  const char *text = read_file(path);
  CHECK(text && *text, "HAKMEM_STATS=json HAKMEM_STATS_FILE: nothing written to the file");
  check_json(text, "stats file", FOREIGN_FREES);
  CHECK(!strstr(c.err, "pages_fresh"), "the stats went to stderr as well as the file");

  /* json without a file goes to stderr. */
  const char *json_err[] = {"HAKMEM_STATS=json", NULL};
  run_self("work", json_err, &c);
  CHECK(exited_ok(&c), "HAKMEM_STATS=json: child status 0x%x", c.status);
  check_json(c.err, "HAKMEM_STATS=json on stderr", 0);

  /* The human table: on stderr, or in the file. */
  const char *human[] = {"HAKMEM_STATS=1", NULL};
  run_self("work", human, &c);
  CHECK(exited_ok(&c), "HAKMEM_STATS=1: child status 0x%x", c.status);
  check_table(c.err, "HAKMEM_STATS=1");
  unlink(path);
  const char *human_file[] = {"HAKMEM_STATS=1", file_env, NULL};
  run_self("work", human_file, &c);
  CHECK(exited_ok(&c) && c.errlen == 0, "HAKMEM_STATS=1 with a file: stderr not empty:\n%s", c.err);
  text = read_file(path);
  CHECK(text, "HAKMEM_STATS=1 HAKMEM_STATS_FILE: no file written");
  check_table(text, "HAKMEM_STATS=1 into the file");
  unlink(path);

  /* hak_stats_print with no variable set. */
  run_self("print", NULL, &c);
  CHECK(exited_ok(&c), "hak_stats_print: child status 0x%x", c.status);
  check_table(c.err, "hak_stats_print");

  /* Off: nothing at all on stderr. */
  run_self("work", NULL, &c);
  CHECK(exited_ok(&c) && c.errlen == 0, "no HAKMEM_STATS: stderr not empty:\n%s", c.err);
  const char *off[] = {"HAKMEM_STATS=0", NULL};
  run_self("work", off, &c);
  CHECK(exited_ok(&c) && c.errlen == 0, "HAKMEM_STATS=0: stderr not empty:\n%s", c.err);

  /* Bad values. The default of HAKMEM_STATS is off, so nothing else is
   * printed; the default of HAKMEM_ABORT_ON_ERROR is to warn once and go on,
   * so there is one more line and no abort. */
  const char *stats_ok[] = {"0", "1", "json", NULL};
  const char *bool_ok[] = {"0", "1", NULL};
  bad_value("HAKMEM_STATS", "work", 1, stats_ok);
  const char *thp_ok[] = {"0", "1", "collapse", NULL};
  bad_value("HAKMEM_THP", "work", 1, thp_ok);
  bad_value("HAKMEM_ABORT_ON_ERROR", "invalid", 2, bool_ok);
  return 0;
}
