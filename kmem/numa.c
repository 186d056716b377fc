/* NUMA topology and placement. The topology is read once from /sys with
 * plain read(2) into static tables (libnuma's topology functions allocate
 * through malloc, which is us); placement uses libnuma's mbind wrapper, a
 * bare system call. With HAKMEM_NODES=N the allocator sees N virtual nodes
 * (CPU c on node c mod N), each mapped onto a real node for every policy
 * call. */
#define _GNU_SOURCE
#include "kmem_priv.h"

#include <errno.h>
#include <fcntl.h>
#include <numaif.h>
#include <sched.h>
#include <sys/syscall.h>
#include <unistd.h>

#define MAX_CPUS 1024

static int real_nodes = 1;
static int nodes = 1;
static int16_t cpu_real_node[MAX_CPUS]; /* from /sys, 0 where unknown */
static _Atomic bool policy_refused;
static _Atomic unsigned interleave_next;

/* Reads a small /sys file into buf; false if it is not there. */
static bool read_small(const char *path, char *buf, size_t len) {
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return false;
  ssize_t n = read(fd, buf, len - 1);
  close(fd);
  if (n <= 0) return false;
  buf[n] = 0;
  return true;
}

/* Calls fn(i, arg) for every number of a /sys list such as "0-3,8,10-11". */
static void for_each_in_list(const char *s, void (*fn)(int, int), int arg) {
  while (*s >= '0' && *s <= '9') {
    int a = 0, b;
    while (*s >= '0' && *s <= '9')
      a = a * 10 + (*s++ - '0');
    b = a;
    if (*s == '-') {
      s++;
      b = 0;
      while (*s >= '0' && *s <= '9')
        b = b * 10 + (*s++ - '0');
    }
    for (int i = a; i <= b; i++)
      fn(i, arg);
    if (*s == ',') s++;
  }
}

static int max_seen;
static void note_node(int node, int arg) {
  (void)arg;
  if (node + 1 > max_seen) max_seen = node + 1;
}
static void note_cpu(int cpu, int node) {
  if (cpu >= 0 && cpu < MAX_CPUS) cpu_real_node[cpu] = (int16_t)node;
}

/* "/sys/devices/system/node/node<n>/cpulist" */
static void cpulist_path(char *out, int n) {
  const char *head = "/sys/devices/system/node/node", *tail = "/cpulist";
  char digits[12];
  int k = 0;
  while (*head)
    *out++ = *head++;
  do
    digits[k++] = (char)('0' + n % 10);
  while ((n /= 10) != 0);
  while (k)
    *out++ = digits[--k];
  while (*tail)
    *out++ = *tail++;
  *out = 0;
}

void kmem_numa_init(int virtual_nodes) {
  char buf[4096], path[64];
  if (read_small("/sys/devices/system/node/online", buf, sizeof buf)) {
    for_each_in_list(buf, note_node, 0);
    if (max_seen > 0) real_nodes = max_seen > KMEM_MAX_NODES ? KMEM_MAX_NODES : max_seen;
  }
  for (int n = 0; n < real_nodes; n++) {
    cpulist_path(path, n);
    if (read_small(path, buf, sizeof buf)) for_each_in_list(buf, note_cpu, n);
  }
  nodes = virtual_nodes > 0 ? virtual_nodes : real_nodes;
}

int kmem_node_count(void) {
  return nodes;
}

/* The calling thread's node, from the CPU it runs on now (slow paths only). */
int kmem_current_node(void) {
  unsigned cpu = 0, node = 0;
  if (syscall(SYS_getcpu, &cpu, &node, NULL) != 0) return 0;
  if (nodes != real_nodes) return (int)(cpu % (unsigned)nodes); /* virtual */
  return cpu < MAX_CPUS ? cpu_real_node[cpu] : (int)node % nodes;
}

/* Sets the policy of a fresh region before its first touch. */
void kmem_bind(void *p, size_t len, int node) {
  int mode = kmem_cfg.numa_mode;
  if (mode == KMEM_NUMA_OFF || atomic_load_explicit(&policy_refused, memory_order_relaxed)) return;
  if (mode == KMEM_NUMA_INTERLEAVE) node = (int)atomic_fetch_add(&interleave_next, 1) % nodes;
  int real = node % real_nodes;
  unsigned long mask[KMEM_MAX_NODES / (8 * sizeof(unsigned long)) + 1] = {0};
  mask[real / (8 * sizeof(unsigned long))] = 1UL << (real % (8 * sizeof(unsigned long)));
  int policy = mode == KMEM_NUMA_STRICT ? MPOL_BIND : MPOL_PREFERRED;
  if (mbind(p, len, policy, mask, KMEM_MAX_NODES + 1, 0) != 0) {
    /* containers often refuse policy calls: say so once, then stop trying */
    if (!atomic_exchange(&policy_refused, true))
      kmem_fallback(kmem_cfg.numa_asked, "HAKMEM_NUMA placement",
                    errno == EPERM ? "mbind refused (EPERM); memory goes where the kernel puts it"
                                   : "mbind failed; memory goes where the kernel puts it");
  }
}
