/* Placement on this machine's real node(s), through the allocator: blocks of
 * every kind (small and mid classes, page runs, a huge block) sit on their
 * heap's node by get_mempolicy(MPOL_F_NODE | MPOL_F_ADDR) and move_pages,
 * and carry the policy each HAKMEM_NUMA mode promises (get_mempolicy with
 * MPOL_F_ADDR): MPOL_PREFERRED on the heap's node by default, MPOL_BIND with
 * strict, MPOL_DEFAULT (no policy call) with off. With HAKMEM_NODES=2 a heap
 * of virtual node 1 still gets a policy on a real node, and its regions
 * count for node 1. Also the API's edges: hakmem_thread_set_node refuses
 * nodes that do not exist, and the JSON statistics list every node. Each
 * case runs in a child with its HAKMEM_* settings. */
#define _GNU_SOURCE
#include <malloc.h>
#include <sys/mman.h>
#include "numa_util.h"

static const size_t sizes[] = {16, 200, 3000, 24 * KIB, 200 * KIB, 1 * MIB, 6 * MIB};
#define NSIZES (sizeof sizes / sizeof sizes[0])

static const char *kind(size_t n) {
  return n <= 1024 ? "small" : n <= 112 * KIB ? "mid" : "own mapping";
}

/* Whether this process may set memory policies at all (containers may
 * refuse mbind): the allocator then falls back, and there is nothing to see. */
static int mbind_error(void) {
  void *p = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  CHECK(p != MAP_FAILED, "mmap failed");
  unsigned long mask = 1;
  int err = syscall(SYS_mbind, p, 4096UL, MPOL_PREFERRED, &mask, 64UL, 0U) ? errno : 0;
  munmap(p, 4096);
  return err;
}

/* The real node a (virtual) node's policies name: the node itself, or with
 * HAKMEM_NODES, node mod the number of real nodes (0 on a one-node machine). */
static int real_node(int node) {
  return node % real_node_count();
}

/* One heap of the given (virtual) node allocates every size; every page of
 * every block must be on `real` with policy want_mode on `real` (or no
 * policy when want_mode is MPOL_DEFAULT). */
static void place(int node, int want_mode) {
  int real = real_node(node);
  if (node != hakmem_thread_node())
    CHECK(hakmem_thread_set_node(node) == 0, "hakmem_thread_set_node(%d) failed: %s", node,
          strerror(errno));
  char *b[NSIZES], why[256];
  for (size_t i = 0; i < NSIZES; i++) {
    b[i] = malloc(sizes[i]);
    CHECK(b[i], "malloc(%zu) failed", sizes[i]);
    fill_pattern(b[i], sizes[i]); /* get_mempolicy(MPOL_F_NODE) needs touched pages */
  }
  for (size_t i = 0; i < NSIZES; i++) {
    unsigned long mask = 0;
    int mode = policy_at(b[i], &mask);
    if (want_mode == MPOL_DEFAULT)
      CHECK(mode == MPOL_DEFAULT,
            "HAKMEM_NUMA=off: %s block of %zu bytes has policy %s (mask %#lx): a policy call "
            "was made",
            kind(sizes[i]), sizes[i], mpol_name(mode), mask);
    else
      CHECK(mode == want_mode && mask == 1UL << real,
            "%s block of %zu bytes of a node-%d heap: policy %s mask %#lx, expected %s mask "
            "%#lx (real node %d)",
            kind(sizes[i]), sizes[i], node, mpol_name(mode), mask, mpol_name(want_mode),
            1UL << real, real);
    CHECK(!placed_on(b[i], sizes[i], real, why, sizeof why), "%s block of %zu bytes: %s",
          kind(sizes[i]), sizes[i], why);
    CHECK(check_pattern(b[i], sizes[i]) == SIZE_MAX, "block of %zu bytes overwritten", sizes[i]);
  }
  if (want_mode != MPOL_DEFAULT) {
    hak_node_stats_t s = node_stats(node);
    CHECK(s.regions > 0 && s.committed_bytes > 0,
          "a node-%d heap holds blocks, but hak_node_stats(%d): %llu regions, %llu committed "
          "bytes",
          node, node, (unsigned long long)s.regions, (unsigned long long)s.committed_bytes);
  }
  for (size_t i = 0; i < NSIZES; i++)
    free(b[i]);
  /* the heap's empty pages back to their regions: the next place() takes
   * fresh spans from its node (a heap keeps the pages it has when it changes
   * node, and blocks past MAP_MIN are mappings, in no region) */
  malloc_trim(0);
}

/* hak_stats_json's "nodes" array: one {"node": n, ...} per node, n in order. */
static void check_json_nodes(int count) {
  static char buf[1 << 16];
  size_t need = hak_stats_json(buf, sizeof buf);
  CHECK(need < sizeof buf, "hak_stats_json needs %zu bytes", need);
  const char *a = strstr(buf, "\"nodes\"");
  CHECK(a, "hak_stats_json has no \"nodes\" array: %s", buf);
  a = strchr(a, '[');
  CHECK(a, "\"nodes\" is not an array: %s", buf);
  for (int n = 0; n < count; n++) {
    char want[32];
    snprintf(want, sizeof want, "\"node\":%d", n);
    const char *e = strstr(a, want);
    CHECK(e && strchr(a, ']') > e, "the \"nodes\" array has no entry %s: %s", want, a);
    const char *close = strchr(e, '}');
    const char *r = strstr(e, "\"regions\":"), *c = strstr(e, "\"committed_bytes\":");
    CHECK(r && c && r < close && c < close, "node %d's entry lacks regions or committed_bytes: %s",
          n, a);
    unsigned long long regions = strtoull(r + 10, NULL, 10);
    CHECK(regions == node_stats(n).regions,
          "node %d: JSON says %llu regions, "
          "hak_node_stats_get %llu",
          n, regions, (unsigned long long)node_stats(n).regions);
  }
  char extra[32];
  snprintf(extra, sizeof extra, "\"node\":%d", count);
  const char *e = strstr(a, extra);
  CHECK(!e || e > strchr(a, ']'), "the \"nodes\" array has more than %d entries: %s", count, a);
}

static void check_api(int count) {
  CHECK(hak_node_count() == count, "hak_node_count() = %d, expected %d", hak_node_count(), count);
  int bad[] = {-1, count, count + 7, 1 << 20};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    errno = 0;
    int was = hakmem_thread_node();
    CHECK(hakmem_thread_set_node(bad[i]) == -1 && errno == EINVAL,
          "hakmem_thread_set_node(%d) with %d node(s): expected -1 with EINVAL, got errno %d",
          bad[i], count, errno);
    CHECK(hakmem_thread_node() == was, "a refused hakmem_thread_set_node(%d) changed the node",
          bad[i]);
  }
  hak_node_stats_t s;
  CHECK(hak_node_stats_get(count, &s) == -1 && hak_node_stats_get(-1, &s) == -1,
        "hak_node_stats_get accepts a node that does not exist");
  check_json_nodes(count);
}

static int child(const char *mode) {
  if (!strcmp(mode, "local")) {
    check_api(hak_node_count());
    place(hakmem_thread_node(), MPOL_PREFERRED);
  } else if (!strcmp(mode, "strict")) {
    place(hakmem_thread_node(), MPOL_BIND);
  } else if (!strcmp(mode, "off")) {
    place(hakmem_thread_node(), MPOL_DEFAULT);
  } else if (!strcmp(mode, "virtual")) { /* HAKMEM_NODES=2 */
    check_api(2);
    place(0, MPOL_PREFERRED);
    place(1, MPOL_PREFERRED);
  } else if (!strcmp(mode, "virtual_strict")) {
    place(1, MPOL_BIND);
  } else {
    FAIL("unknown mode %s", mode);
  }
  printf("%s: ok\n", mode);
  return 0;
}

int main(int argc, char **argv) {
  if (argc > 1) return child(argv[1]);
  int err = mbind_error();
  if (err) SKIP("mbind(MPOL_PREFERRED) is refused here (%s): no policy to check", strerror(err));
  static struct child c;
  const struct {
    const char *mode, *env[3];
  } cases[] = {
      {"local", {NULL}},
      {"local", {"HAKMEM_NUMA=local", NULL}},
      {"strict", {"HAKMEM_NUMA=strict", NULL}},
      {"off", {"HAKMEM_NUMA=off", NULL}},
      {"virtual", {"HAKMEM_NODES=2", NULL}},
      {"virtual_strict", {"HAKMEM_NODES=2", "HAKMEM_NUMA=strict", NULL}},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    child_must_pass(cases[i].mode, cases[i].env, &c);
    CHECK(!strstr(c.err, "hakmem"), "%s: the allocator complained: %s", cases[i].mode, c.err);
  }
  printf("numa_place: ok\n");
  return 0;
}
