/* HAKMEM_* environment variables, read once from environ (no getenv: it may
 * run before libc is ready for it) and validated against one table. */
#include "format.h"
#include "internal.h"

#include <string.h>

extern char **environ;

hak_options_t hak_opt = {
    .thp = KMEM_THP_COLLAPSE, /* measured: see README's modes section */
    .purge_delay_ms = 100,
    .purge = PURGE_REGION,
    .purge_engine = KMEM_PURGE_VECTOR, /* measured: least CPU, no extra threads */
    .background = true,
    .prefault = PREFAULT_LARGE,
    .numa = KMEM_NUMA_LOCAL,
    .mailbox_batch = 64,
    .max_heaps = -1,
};

void hak_warn(const char *a, const char *b, const char *c) {
  char mem[512];
  hak_buf_t buf = {mem, 0, sizeof mem};
  buf_str(&buf, "hakmem: ");
  buf_str(&buf, a);
  buf_str(&buf, b);
  buf_str(&buf, c);
  buf_str(&buf, "\n");
  buf_write(2, &buf);
}

enum { OPT_BOOL, OPT_CHOICE, OPT_MS, OPT_PATH, OPT_INT };

typedef struct option {
  const char *name;
  int type;
  void *value;            /* bool, int (choice), uint64_t (ms) or char[256] */
  const char *choices[4]; /* OPT_CHOICE: accepted words, value = index;
                             OPT_INT: the accepted range as text */
  bool *asked;            /* set when the user gave a valid value */
  int min, max;           /* OPT_INT */
} option_t;

static const option_t options[] = {
    {"HAKMEM_STATS", OPT_CHOICE, &hak_opt.stats, {"0", "1", "json", "text"}, NULL, 0, 0},
    {"HAKMEM_STATS_FILE", OPT_PATH, hak_opt.stats_file, {0}, NULL, 0, 0},
    {"HAKMEM_THP", OPT_CHOICE, &hak_opt.thp, {"0", "1", "collapse"}, NULL, 0, 0},
    {"HAKMEM_HUGETLB", OPT_BOOL, &hak_opt.hugetlb, {0}, NULL, 0, 0},
    {"HAKMEM_PURGE", OPT_CHOICE, &hak_opt.purge, {"region", "page", "off"}, NULL, 0, 0},
    {"HAKMEM_PURGE_DELAY_MS", OPT_MS, &hak_opt.purge_delay_ms, {0}, NULL, 0, 0},
    {"HAKMEM_PURGE_ENGINE",
     OPT_CHOICE,
     &hak_opt.purge_engine,
     {"uring", "vector", "sync"},
     &hak_opt.purge_engine_asked,
     0,
     0},
    {"HAKMEM_BACKGROUND", OPT_BOOL, &hak_opt.background, {0}, NULL, 0, 0},
    {"HAKMEM_PREFAULT",
     OPT_CHOICE,
     &hak_opt.prefault,
     {"off", "page", "ahead", "large"},
     NULL,
     0,
     0},
    {"HAKMEM_UFFD", OPT_BOOL, &hak_opt.uffd, {0}, NULL, 0, 0},
    {"HAKMEM_NUMA",
     OPT_CHOICE,
     &hak_opt.numa,
     {"local", "strict", "interleave", "off"},
     &hak_opt.numa_asked,
     0,
     0},
    {"HAKMEM_NODES", OPT_INT, &hak_opt.nodes, {"1 to 64"}, NULL, 1, KMEM_MAX_NODES},
    {"HAKMEM_MAILBOX_BATCH", OPT_INT, &hak_opt.mailbox_batch, {"1 to 4096"}, NULL, 1, 4096},
    {"HAKMEM_MAX_HEAPS", OPT_INT, &hak_opt.max_heaps, {"0 to 65536"}, NULL, 0, 65536},
    {"HAKMEM_ABORT_ON_ERROR", OPT_BOOL, &hak_opt.abort_on_error, {0}, NULL, 0, 0},
    {"HAKMEM_VERBOSE", OPT_BOOL, &hak_opt.verbose, {0}, NULL, 0, 0},
};

static void bad_value(const char *name, const char *value, const char *accepted) {
  char mem[256];
  hak_buf_t msg = {mem, 0, sizeof mem};
  buf_str(&msg, "=");
  buf_str(&msg, value);
  buf_str(&msg, " is not valid (accepted: ");
  buf_str(&msg, accepted);
  buf_str(&msg, "); using the default");
  hak_warn(name, mem, "");
}

static bool parse(const option_t *o, const char *v) {
  switch (o->type) {
  case OPT_BOOL:
    if (strcmp(v, "0") && strcmp(v, "1")) {
      bad_value(o->name, v, "0 or 1");
      return false;
    }
    *(bool *)o->value = v[0] == '1';
    return true;
  case OPT_CHOICE: {
    char accepted[64];
    hak_buf_t list = {accepted, 0, sizeof accepted};
    for (int i = 0; i < 4 && o->choices[i]; i++) {
      if (!strcmp(v, o->choices[i])) {
        *(int *)o->value = i;
        return true;
      }
      buf_str(&list, i ? ", " : "");
      buf_str(&list, o->choices[i]);
    }
    bad_value(o->name, v, accepted);
    return false;
  }
  case OPT_INT: {
    long x = 0;
    const char *s = v;
    for (; *s >= '0' && *s <= '9' && x <= o->max; s++)
      x = x * 10 + (*s - '0');
    if (s == v || *s || x < o->min || x > o->max) {
      bad_value(o->name, v, o->choices[0]);
      return false;
    }
    *(int *)o->value = (int)x;
    return true;
  }
  case OPT_MS: {
    uint64_t x = 0;
    const char *s = v;
    for (; *s >= '0' && *s <= '9' && x < 100000000; s++)
      x = x * 10 + (uint64_t)(*s - '0');
    if (s == v || *s) {
      bad_value(o->name, v, "milliseconds, 0 to 100000000");
      return false;
    }
    *(uint64_t *)o->value = x;
    return true;
  }
  default:
    if (strlen(v) >= sizeof hak_opt.stats_file) {
      bad_value(o->name, v, "a path shorter than 256 bytes");
      return false;
    }
    strcpy(o->value, v);
    return true;
  }
}

void hak_options_read(void) {
  if (!environ) return;
  for (char **e = environ; *e; e++) {
    if (strncmp(*e, "HAKMEM_", 7)) continue;
    const char *eq = strchr(*e, '=');
    if (!eq) continue;
    size_t n = (size_t)(eq - *e);
    const option_t *o = NULL;
    for (size_t i = 0; i < sizeof options / sizeof *options && !o; i++)
      if (strlen(options[i].name) == n && !strncmp(options[i].name, *e, n)) o = &options[i];
    if (!o) {
      char name[64];
      if (n >= sizeof name) n = sizeof name - 1;
      memcpy(name, *e, n);
      name[n] = 0;
      hak_warn("unknown variable ", name, " ignored (see README for the HAKMEM_* list)");
      continue;
    }
    if (parse(o, eq + 1) && o->asked) *o->asked = true;
  }
  if (hak_opt.stats == STATS_TEXT_ALIAS) hak_opt.stats = STATS_TEXT;
}

/* HAKMEM_VERBOSE=1: one line at start-up with the settings in force. */
void hak_options_banner(void) {
  if (!hak_opt.verbose) return;
  char mem[512];
  hak_buf_t b = {mem, 0, sizeof mem};
  buf_str(&b, "hakmem " HAKMEM_VERSION ":");
  for (size_t i = 0; i < sizeof options / sizeof *options; i++) {
    const option_t *o = &options[i];
    buf_str(&b, " ");
    buf_str(&b, o->name + 7);
    buf_str(&b, "=");
    switch (o->type) {
    case OPT_BOOL:
      buf_str(&b, *(bool *)o->value ? "1" : "0");
      break;
    case OPT_CHOICE:
      buf_str(&b, o->choices[*(int *)o->value]);
      break;
    case OPT_MS:
      buf_u64(&b, *(uint64_t *)o->value);
      break;
    case OPT_INT:
      buf_u64(&b, (uint64_t) * (int *)o->value);
      break;
    default:
      buf_str(&b, *(char *)o->value ? (char *)o->value : "-");
    }
  }
  buf_str(&b, "\n");
  buf_write(2, &b);
}
