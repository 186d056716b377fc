/* hak_stats_get and hak_stats_json in-process: the JSON is one object with
 * every hak_stats_t key plus "version", its values agree with
 * hak_stats_get, and the length contract is snprintf's (returns the length
 * needed, always NUL-terminates within len, len 0 writes nothing). Counters
 * move with what the program does. A call costs as much with a 64 TiB
 * reservation of someone else's mapped (sanitizers and runtimes make such):
 * it looked up every 2 MiB of each mapping for THP bytes, seconds a call
 * under TSan. */
#define _GNU_SOURCE
#include <errno.h>
#include <sys/mman.h>
#include <time.h>
#include "check.h"
#include "hakmem.h"
#include "stats_keys.h"

static char foreign[32];

/* Fastest of 5 calls, in thread CPU ns. */
static uint64_t stats_call_ns(void) {
  uint64_t best = UINT64_MAX;
  for (int i = 0; i < 5; i++) {
    struct timespec a, b;
    hak_stats_t s;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &a);
    hak_stats_get(&s);
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &b);
    uint64_t ns =
        (uint64_t)(b.tv_sec - a.tv_sec) * 1000000000u + (uint64_t)b.tv_nsec - (uint64_t)a.tv_nsec;
    if (ns < best) best = ns;
  }
  return best;
}

static void stats_cost_with_big_mapping(void) {
  uint64_t plain = stats_call_ns();
  size_t len = (size_t)64 << 40;
  void *big = mmap(NULL, len, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (big == MAP_FAILED) {
    printf("stats_api: no 64 TiB reservation here (%s): its cost is not checked\n",
           strerror(errno));
    return;
  }
  uint64_t with = stats_call_ns();
  munmap(big, len);
  printf("stats_api: hak_stats_get %llu us, %llu us beside a 64 TiB reservation\n",
         (unsigned long long)plain / 1000, (unsigned long long)with / 1000);
  /* a lookup per 2 MiB is 32M of them: tens of ms against a fraction of one */
  CHECK(with <= 4 * plain + 5000000,
        "hak_stats_get took %llu us beside a 64 TiB mapping, %llu us without",
        (unsigned long long)with / 1000, (unsigned long long)plain / 1000);
}

int main(void) {
  hak_stats_t s0, s1;
  hak_stats_get(&s0);
  void *blocks[100];
  for (int i = 0; i < 100; i++) {
    blocks[i] = malloc((size_t)i * 100 + 1);
    CHECK(blocks[i], "malloc failed");
  }
  void *huge = malloc(64 << 20);
  CHECK(huge, "malloc(64 MiB) failed");
  free(opaque_ptr(foreign));
  free(opaque_ptr(foreign + 16));
  hak_stats_get(&s1);
  CHECK(s1.pages_activated > 0, "pages_activated is 0 after 100 mallocs");
  CHECK(s1.regions_reserved > 0, "regions_reserved is 0 after 100 mallocs");
  CHECK(s1.heaps_created > 0, "heaps_created is 0 after the main thread allocated");
  CHECK(s1.huge_allocs > s0.huge_allocs, "huge_allocs did not move for a 64 MiB block");
  CHECK(s1.invalid_frees == s0.invalid_frees + 2, "invalid_frees moved by %llu, not 2",
        (unsigned long long)(s1.invalid_frees - s0.invalid_frees));
  CHECK(s1.committed_bytes > 0 && s1.peak_committed_bytes >= s1.committed_bytes,
        "committed %llu, peak %llu", (unsigned long long)s1.committed_bytes,
        (unsigned long long)s1.peak_committed_bytes);

  static char buf[16384];
  size_t need = hak_stats_json(buf, sizeof buf);
  CHECK(need == strlen(buf), "hak_stats_json returned %zu for a %zu-byte string", need,
        strlen(buf));
  CHECK(one_json_object(buf), "hak_stats_json: not one JSON object:\n%s", buf);
  const uint64_t *field = (const uint64_t *)&s1;
  for (size_t i = 0; i < NKEYS; i++) {
    uint64_t v = json_number(buf, stats_keys[i]);
    CHECK(v != UINT64_MAX, "hak_stats_json: key \"%s\" missing or not a number", stats_keys[i]);
    /* Nothing allocated since hak_stats_get, so the totals agree; the
     * current committed bytes may only have moved by a purge. */
    if (strcmp(stats_keys[i], "committed_bytes") != 0)
      CHECK(v == field[i], "hak_stats_json: %s is %llu, hak_stats_get said %llu", stats_keys[i],
            (unsigned long long)v, (unsigned long long)field[i]);
  }
  const char *v = json_value(buf, "version");
  CHECK(v && !strncmp(v, "\"" HAKMEM_VERSION "\"", strlen(HAKMEM_VERSION) + 2),
        "hak_stats_json: no \"version\": \"%s\"", HAKMEM_VERSION);

  /* snprintf-style truncation. */
  char small[10];
  memset(small, 'x', sizeof small);
  size_t need2 = hak_stats_json(small, sizeof small);
  CHECK(need2 >= need - 8 && need2 <= need + 8, "truncated call returned %zu, full call %zu", need2,
        need);
  CHECK(small[9] == 0 && strlen(small) == 9, "truncated output is not NUL-terminated at len-1");
  CHECK(!strncmp(small, buf, 9), "truncated output differs from the start of the full one");
  char one = 'x';
  hak_stats_json(&one, 1);
  CHECK(one == 0, "len 1 must write just the NUL");
  size_t need3 = hak_stats_json(NULL, 0);
  CHECK(need3 >= need - 8 && need3 <= need + 8, "hak_stats_json(NULL, 0) returned %zu", need3);

  stats_cost_with_big_mapping();
  for (int i = 0; i < 100; i++)
    free(blocks[i]);
  free(huge);
  return 0;
}
