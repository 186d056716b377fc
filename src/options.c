/* HAKMEM_* environment variables, read once from environ (no getenv: it may
 * run before libc is ready for it) and validated. */
#include "format.h"
#include "internal.h"

#include <string.h>

extern char **environ;

hak_options_t hak_opt = {.thp = true, .purge_delay_ms = 100};

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

static void parse_bool(const char *name, const char *v, bool *out) {
  if (!strcmp(v, "0")) *out = false;
  else if (!strcmp(v, "1")) *out = true;
  else bad_value(name, v, "0 or 1");
}

static void parse_ms(const char *name, const char *v, uint64_t *out) {
  uint64_t x = 0;
  const char *s = v;
  for (; *s >= '0' && *s <= '9' && x < 100000000; s++) x = x * 10 + (uint64_t)(*s - '0');
  if (s == v || *s) bad_value(name, v, "milliseconds, 0 to 100000000");
  else *out = x;
}

static void parse_stats(const char *name, const char *v) {
  if (!strcmp(v, "0")) hak_opt.stats = STATS_OFF;
  else if (!strcmp(v, "1") || !strcmp(v, "text")) hak_opt.stats = STATS_TEXT;
  else if (!strcmp(v, "json")) hak_opt.stats = STATS_JSON;
  else bad_value(name, v, "0, 1, text or json");
}

static void parse_path(const char *name, const char *v) {
  if (strlen(v) >= sizeof hak_opt.stats_file) bad_value(name, v, "a path shorter than 256 bytes");
  else strcpy(hak_opt.stats_file, v);
}

void hak_options_read(void) {
  if (!environ) return;
  for (char **e = environ; *e; e++) {
    if (strncmp(*e, "HAKMEM_", 7)) continue;
    const char *eq = strchr(*e, '=');
    if (!eq) continue;
    char name[64];
    size_t n = (size_t)(eq - *e);
    if (n >= sizeof name) n = sizeof name - 1;
    memcpy(name, *e, n);
    name[n] = 0;
    const char *v = eq + 1;
    if (!strcmp(name, "HAKMEM_STATS")) parse_stats(name, v);
    else if (!strcmp(name, "HAKMEM_STATS_FILE")) parse_path(name, v);
    else if (!strcmp(name, "HAKMEM_THP")) parse_bool(name, v, &hak_opt.thp);
    else if (!strcmp(name, "HAKMEM_ABORT_ON_ERROR")) parse_bool(name, v, &hak_opt.abort_on_error);
    else if (!strcmp(name, "HAKMEM_PURGE_DELAY_MS")) parse_ms(name, v, &hak_opt.purge_delay_ms);
    else if (!strcmp(name, "HAKMEM_VERBOSE")) parse_bool(name, v, &hak_opt.verbose);
    else hak_warn("unknown variable ", name, " ignored (see README for the HAKMEM_* list)");
  }
}

/* HAKMEM_VERBOSE=1: one line at start-up with the settings in force. */
void hak_options_banner(void) {
  if (!hak_opt.verbose) return;
  static const char *stats_names[] = {"0", "text", "json"};
  char mem[256];
  hak_buf_t b = {mem, 0, sizeof mem};
  buf_str(&b, "hakmem " HAKMEM_VERSION ": THP=");
  buf_str(&b, hak_opt.thp ? "1" : "0");
  buf_str(&b, " PURGE_DELAY_MS=");
  buf_u64(&b, hak_opt.purge_delay_ms);
  buf_str(&b, " STATS=");
  buf_str(&b, stats_names[hak_opt.stats]);
  buf_str(&b, " ABORT_ON_ERROR=");
  buf_str(&b, hak_opt.abort_on_error ? "1" : "0");
  buf_str(&b, "\n");
  buf_write(2, &b);
}
