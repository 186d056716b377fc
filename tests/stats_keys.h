/* The names of hak_stats_t's fields as the JSON output must spell them, and
 * a minimal reader for that JSON: enough to check that the text is one
 * object and to pull out one numeric value by key. */
#ifndef HAK_TESTS_STATS_KEYS_H
#define HAK_TESTS_STATS_KEYS_H

#include <ctype.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include "hakmem.h"

/* Kept in the struct's order; the size check below catches a field added to
 * the header and not here. */
static const char *const stats_keys[] = {"regions_reserved",
                                         "pages_fresh",
                                         "pages_reused",
                                         "pages_activated",
                                         "remote_frees",
                                         "remote_frees_cross_node",
                                         "remote_blocks_collected",
                                         "batches_sent",
                                         "mailbox_drains",
                                         "blocks_drained",
                                         "pages_abandoned",
                                         "pages_adopted",
                                         "purges",
                                         "purged_bytes",
                                         "purges_uring",
                                         "uffd_faults",
                                         "committed_bytes",
                                         "peak_committed_bytes",
                                         "invalid_frees",
                                         "huge_allocs",
                                         "heaps_created",
                                         "purges_vector",
                                         "thp_bytes",
                                         "hugetlb_bytes",
                                         "node_fallbacks",
                                         "mailbox_bytes",
                                         "thp_collapses",
                                         "huge_cache_hits",
                                         "remote_handoffs",
                                         "midcache_filled",
                                         "midcache_flushed",
                                         "shared_heap_threads",
                                         "background_passes"};
#define NKEYS (sizeof stats_keys / sizeof stats_keys[0])
_Static_assert(NKEYS * sizeof(uint64_t) == sizeof(hak_stats_t),
               "tests/stats_keys.h does not list every field of hak_stats_t");

/* Nonzero when s (ignoring surrounding white space) is exactly one JSON
 * object: starts with '{' and its closing brace is the last character. */
static inline int one_json_object(const char *s) {
  while (isspace((unsigned char)*s))
    s++;
  if (*s != '{') return 0;
  int depth = 0, in_str = 0;
  for (; *s; s++) {
    if (in_str) {
      if (*s == '\\' && s[1])
        s++;
      else if (*s == '"')
        in_str = 0;
      continue;
    }
    if (*s == '"')
      in_str = 1;
    else if (*s == '{' || *s == '[')
      depth++;
    else if (*s == '}' || *s == ']') {
      if (--depth == 0) break;
    }
  }
  if (!*s) return 0;
  for (s++; *s; s++)
    if (!isspace((unsigned char)*s)) return 0;
  return 1;
}

/* Finds "key": and returns a pointer to the value's first character, or
 * NULL. Good enough for flat keys that are not a suffix of another. */
static inline const char *json_value(const char *s, const char *key) {
  size_t n = strlen(key);
  for (const char *p = strchr(s, '"'); p; p = strchr(p + 1, '"')) {
    if (strncmp(p + 1, key, n) != 0 || p[n + 1] != '"') continue;
    const char *v = p + n + 2;
    while (isspace((unsigned char)*v))
      v++;
    if (*v != ':') continue;
    v++;
    while (isspace((unsigned char)*v))
      v++;
    return v;
  }
  return NULL;
}

/* The key's value as an unsigned number; -1 (as uint64_t max) when the key
 * is missing or its value is not a number. */
static inline uint64_t json_number(const char *s, const char *key) {
  const char *v = json_value(s, key);
  if (!v || !isdigit((unsigned char)*v)) return UINT64_MAX;
  return strtoull(v, NULL, 10);
}

#endif
