/* Bad values of HAKMEM_NUMA, HAKMEM_NODES and HAKMEM_MAILBOX_BATCH: each
 * prints exactly one line on stderr naming the variable, the value and what
 * is accepted; the default is used (the HAKMEM_VERBOSE=1 settings line is
 * the same as without the variable, and the child sees the machine's node
 * count); and the program works, cross-node frees included. All three bad
 * at once give one line each. Good values are taken (HAKMEM_NODES=3 gives
 * three nodes). */
#define _GNU_SOURCE
#include "numa_util.h"

static const char *const bad[][2] = {
    {"HAKMEM_NUMA", "on"},
    {"HAKMEM_NUMA", "LOCAL"},
    {"HAKMEM_NUMA", "bind"},
    {"HAKMEM_NUMA", "1"},
    {"HAKMEM_NUMA", ""},
    {"HAKMEM_NODES", "0"},
    {"HAKMEM_NODES", "-1"},
    {"HAKMEM_NODES", "two"},
    {"HAKMEM_NODES", "2x"},
    {"HAKMEM_NODES", "65"},
    {"HAKMEM_NODES", "99999999999999999999"},
    {"HAKMEM_NODES", ""},
    {"HAKMEM_MAILBOX_BATCH", "0"},
    {"HAKMEM_MAILBOX_BATCH", "-3"},
    {"HAKMEM_MAILBOX_BATCH", "4097"},
    {"HAKMEM_MAILBOX_BATCH", "big"},
    {"HAKMEM_MAILBOX_BATCH", "8 "},
};
#define NBAD (sizeof bad / sizeof bad[0])

/* ---- the child: ordinary work with threads on different nodes ---- */

#define BLOCKS 2000
static char *blk[BLOCKS];

static void *make(void *arg) {
  (void)arg;
  for (int i = 0; i < BLOCKS; i++) {
    size_t n = 16 + (size_t)i * 13 % 5000;
    blk[i] = malloc(n);
    CHECK(blk[i], "malloc(%zu) failed", n);
    fill_pattern(blk[i], n);
  }
  return NULL;
}

static void *take(void *arg) {
  (void)arg;
  /* another node when there is one: the frees cross nodes */
  if (hak_node_count() > 1)
    CHECK(hakmem_thread_set_node(hak_node_count() - 1) == 0, "hakmem_thread_set_node failed");
  for (int i = 0; i < BLOCKS; i++) {
    size_t n = 16 + (size_t)i * 13 % 5000;
    CHECK(check_pattern(blk[i], n) == SIZE_MAX, "block of %zu bytes overwritten", n);
    free(blk[i]);
  }
  return NULL;
}

static int child_main(const char *mode) {
  if (!strncmp(mode, "nodes=", 6)) {
    int want = atoi(mode + 6);
    CHECK(hak_node_count() == want, "hak_node_count() = %d, expected %d", hak_node_count(), want);
  }
  on_thread(make, NULL);
  on_thread(take, NULL);
  hakmem_flush();
  return 0;
}

/* ---- the checks ---- */

/* The HAKMEM_VERBOSE=1 settings line of a child run with env. */
static void settings_line(const char *mode, const char *const *env, char *out, size_t len) {
  static struct child c;
  child_must_pass(mode, env, &c);
  settings_line_of(&c, out, len);
}

int main(int argc, char **argv) {
  if (argc > 1) return child_main(argv[1]);
  static struct child c;
  char defaults[1024], line[1024], var[256], mode[64];
  const char *verbose[] = {"HAKMEM_VERBOSE=1", NULL};
  settings_line("child", verbose, defaults, sizeof defaults);
  CHECK(strstr(defaults, "NUMA=") && strstr(defaults, "NODES=") &&
            strstr(defaults, "MAILBOX_BATCH="),
        "the settings line does not show NUMA, NODES and MAILBOX_BATCH: %s", defaults);
  /* a bad HAKMEM_NODES must leave the machine's count */
  snprintf(mode, sizeof mode, "nodes=%d", real_node_count());

  for (size_t i = 0; i < NBAD; i++) {
    snprintf(var, sizeof var, "%s=%s", bad[i][0], bad[i][1]);
    const char *env[] = {var, NULL};
    child_must_pass(mode, env, &c);
    check_bad_value_line(&c, var, true);

    const char *env_v[] = {var, "HAKMEM_VERBOSE=1", NULL};
    settings_line(mode, env_v, line, sizeof line);
    CHECK(!strcmp(line, defaults),
          "%s: the default is not used; settings line\n  %s\ninstead of\n  %s", var, line,
          defaults);
    printf("ok %-36s %s", var, c.err);
  }

  /* all three at once: one line each, nothing else */
  const char *all[] = {"HAKMEM_NUMA=bogus0", "HAKMEM_NODES=bogus1", "HAKMEM_MAILBOX_BATCH=bogus2",
                       NULL};
  child_must_pass(mode, all, &c);
  CHECK(count_lines(c.err) == 3, "three bad variables: expected three lines, got %d:\n%s",
        count_lines(c.err), c.err);
  for (int i = 0; i < 3; i++) {
    char want[16];
    snprintf(want, sizeof want, "bogus%d", i);
    char name[32];
    snprintf(name, sizeof name, "%.*s", (int)strcspn(all[i], "="), all[i]);
    CHECK(line_with(c.err, want, line, sizeof line) && strstr(line, name),
          "three bad variables: no line names %s with its value %s:\n%s", name, want, c.err);
  }

  /* good values are taken, silently */
  const char *good[] = {"HAKMEM_NODES=3", "HAKMEM_NUMA=interleave", "HAKMEM_MAILBOX_BATCH=1", NULL};
  child_must_pass("nodes=3", good, &c);
  CHECK(c.errlen == 0, "good values of the NUMA variables printed: %s", c.err);
  printf("numa_bad_env: ok\n");
  return 0;
}
