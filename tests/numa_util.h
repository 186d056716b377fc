/* Helpers of the NUMA tests (tests/numa_*.c, and tests/numa_vm/guest.c inside
 * the two-node VM): a block's memory policy and the node of its pages through
 * the raw system calls (no libnuma: these run on allocator paths' results,
 * and the Makefile links tests without it), the CPUs of a node from /sys,
 * pinning, and per-node statistics. */
#ifndef HAK_TESTS_NUMA_UTIL_H
#define HAK_TESTS_NUMA_UTIL_H

#include <errno.h>
#include <fcntl.h>
#include <linux/mempolicy.h>
#include <pthread.h>
#include <sched.h>
#include <sys/syscall.h>
#include "check.h"
#include "hakmem.h"
#include "spawn.h"

#define KIB ((size_t)1 << 10)
#define MIB ((size_t)1 << 20)
#define REGION ((size_t)2 << 20)
#define MASK_WORDS 16 /* 1024 nodes: more than any kernel's nr_node_ids */

static const char *const mpol_names[] = {"MPOL_DEFAULT", "MPOL_PREFERRED",
                                         "MPOL_BIND",    "MPOL_INTERLEAVE",
                                         "MPOL_LOCAL",   "MPOL_PREFERRED_MANY"};

static inline const char *mpol_name(int mode) {
  return mode >= 0 && mode < (int)(sizeof mpol_names / sizeof mpol_names[0]) ? mpol_names[mode]
                                                                             : "MPOL_?";
}

/* The policy of the mapping at p: its mode (flags stripped) and the first
 * word of its node mask (0 when the mode has none). -1 on error. */
static inline int policy_at(const void *p, unsigned long *mask0) {
  int mode = -1;
  unsigned long mask[MASK_WORDS] = {0};
  if (syscall(SYS_get_mempolicy, &mode, mask, (unsigned long)MASK_WORDS * 64, p, MPOL_F_ADDR))
    return -1;
  if (mask0) *mask0 = mask[0];
  return mode & ~MPOL_MODE_FLAGS;
}

/* The node of the page at p as get_mempolicy(MPOL_F_NODE | MPOL_F_ADDR)
 * reports it. The page must have been touched: the call faults an absent
 * page in for reading, which would report the zero page's node. */
static inline int addr_node(const void *p) {
  int node = -1;
  if (syscall(SYS_get_mempolicy, &node, NULL, 0UL, p, MPOL_F_NODE | MPOL_F_ADDR)) return -1;
  return node;
}

/* The node of the page at p as move_pages(nodes=NULL) reports it, or a
 * negative errno (-ENOENT: not present). */
static inline int page_node(const void *p) {
  void *page = (void *)((uintptr_t)p & ~(uintptr_t)4095);
  int status = -1;
  if (syscall(SYS_move_pages, 0, 1UL, &page, NULL, &status, 0)) return -errno;
  return status;
}

/* Checks every 4 KiB page of [p, p+n): move_pages and get_mempolicy both say
 * node `want`. Returns NULL or a description of the first page that is not. */
static inline const char *placed_on(const void *p, size_t n, int want, char *why, size_t len) {
  uintptr_t a = (uintptr_t)p & ~(uintptr_t)4095, end = (uintptr_t)p + n;
  for (; a < end; a += 4096) {
    int mp = page_node((void *)a), gm = addr_node((void *)a);
    if (mp != want || gm != want) {
      snprintf(why, len,
               "page %#lx (offset %zu of %zu) is on node %d (move_pages) / %d "
               "(get_mempolicy), not %d",
               (unsigned long)a, (size_t)(a - (uintptr_t)p), n, mp, gm, want);
      return why;
    }
  }
  return NULL;
}

/* The CPUs of a node from /sys/devices/system/node/nodeN/cpulist ("0-1,4").
 * Returns how many, 0 if the node does not exist or has none. */
static inline int node_cpus(int node, cpu_set_t *set) {
  char path[96], buf[512];
  snprintf(path, sizeof path, "/sys/devices/system/node/node%d/cpulist", node);
  CPU_ZERO(set);
  int fd = open(path, O_RDONLY);
  if (fd < 0) return 0;
  ssize_t got = read(fd, buf, sizeof buf - 1);
  close(fd);
  if (got <= 0) return 0;
  buf[got] = 0;
  for (char *s = buf; *s && *s != '\n';) {
    char *end;
    long lo = strtol(s, &end, 10), hi = lo;
    if (end == s) break;
    if (*end == '-') hi = strtol(end + 1, &end, 10);
    for (long c = lo; c <= hi && c < CPU_SETSIZE; c++)
      CPU_SET((int)c, set);
    s = *end == ',' ? end + 1 : end;
  }
  return CPU_COUNT(set);
}

/* Real nodes as the allocator counts them: the highest online node + 1. */
static inline int real_node_count(void) {
  char buf[256] = {0};
  int fd = open("/sys/devices/system/node/online", O_RDONLY);
  if (fd < 0) return 1;
  ssize_t got = read(fd, buf, sizeof buf - 1);
  close(fd);
  int last = 0;
  for (char *s = buf; got > 0 && *s;) {
    char *end;
    long v = strtol(s, &end, 10);
    if (end == s) break;
    last = (int)v;
    s = *end ? end + 1 : end;
  }
  return last + 1;
}

/* Pins the calling thread to the CPUs of a real node; fails the test if it
 * cannot, or if the thread does not then run there. */
static inline void pin_to_node(int node) {
  cpu_set_t set;
  CHECK(node_cpus(node, &set) > 0, "node %d has no CPUs in /sys", node);
  CHECK(sched_setaffinity(0, sizeof set, &set) == 0, "sched_setaffinity to node %d: %s", node,
        strerror(errno));
  unsigned cpu = 0, on = 0;
  CHECK(getcpu(&cpu, &on) == 0 && (int)on == node,
        "pinned to node %d, but running on cpu %u "
        "of node %u",
        node, cpu, on);
}

static inline hak_node_stats_t node_stats(int node) {
  hak_node_stats_t s;
  CHECK(hak_node_stats_get(node, &s) == 0, "hak_node_stats_get(%d) failed", node);
  return s;
}

static inline hak_stats_t stats(void) {
  hak_stats_t s;
  hak_stats_get(&s);
  return s;
}

/* Committed bytes over every node. */
static inline uint64_t nodes_committed(void) {
  uint64_t sum = 0;
  for (int n = 0; n < hak_node_count(); n++)
    sum += node_stats(n).committed_bytes;
  return sum;
}

/* Runs fn(arg) on a new thread and waits for it. */
static inline void on_thread(void *(*fn)(void *), void *arg) {
  pthread_t t;
  CHECK(pthread_create(&t, NULL, fn, arg) == 0, "pthread_create failed");
  CHECK(pthread_join(t, NULL) == 0, "pthread_join failed");
}

/* Runs this binary again in mode with env ("NAME=value" strings, NULL-
 * terminated) and fails with the child's stderr unless it exited 0; passes
 * a child's SKIP on. The child's stderr stays in c. */
static inline void child_must_pass(const char *mode, const char *const *env, struct child *c) {
  run_self(mode, env, c);
  if (exited_ok(c)) return;
  char what[512] = "";
  for (const char *const *e = env; e && *e; e++)
    snprintf(what + strlen(what), sizeof what - strlen(what), "%s ", *e);
  if (WIFEXITED(c->status) && WEXITSTATUS(c->status) == 77) {
    const char *why = strstr(c->err, "SKIP: ");
    SKIP("%s (%s): %s", mode, what, why ? why + 6 : c->err);
  }
  const char *why = strstr(c->err, "FAIL: ");
  if (WIFSIGNALED(c->status))
    FAIL("%s (%s): killed by signal %d; stderr:\n%s", mode, what, WTERMSIG(c->status), c->err);
  FAIL("%s (%s): %s", mode, what, why ? why + 6 : c->err);
}

#endif
