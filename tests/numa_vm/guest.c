/* The checks tests/numa_vm.sh runs inside a QEMU VM with two real NUMA
 * nodes, as the VM's /init (a static binary linked with build/libhakmem.a).
 *
 * As PID 1 it mounts /proc, /sys and /dev, runs each check as a child (this
 * binary again, exec'd with the check's name and its HAKMEM_* settings: the
 * allocator reads its environment once, at start), prints "PASS: name ..." or
 * the child's "FAIL: ..." per check, then "N passed, N failed", and powers
 * the VM off. Run by hand with a check's name it runs just that check.
 *
 * Checks: the guest sees two nodes; the allocator works there with threads
 * on both; hakmem sees the nodes and binds heaps to their threads' node;
 * blocks of every size class kind land on their heap's node (move_pages and
 * get_mempolicy) with the policy each HAKMEM_NUMA mode promises; cross-node
 * frees travel through the mailboxes and are drained by the owning node. */
#define _GNU_SOURCE
#include <linux/reboot.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/stat.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <termios.h>
#include <time.h>
#include "numa_util.h"

#define NODES 2
#define CHECK_SECONDS 60 /* TCG is slow, but no check should come near this */

static double uptime(void) {
  struct timespec ts;
  clock_gettime(CLOCK_BOOTTIME, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* As PID 1, before any other constructor: libnuma (linked into the
 * allocator) reads /sys in its own constructor. Only system calls here. */
__attribute__((constructor(101))) static void mount_fs(void) {
  if (getpid() != 1) return;
  mkdir("/proc", 0555);
  mkdir("/sys", 0555);
  mkdir("/dev", 0755);
  mount("proc", "/proc", "proc", 0, NULL);
  mount("sysfs", "/sys", "sysfs", 0, NULL);
  mount("devtmpfs", "/dev", "devtmpfs", 0, NULL);
  if (fcntl(1, F_GETFD) < 0) { /* no console given to us: open it */
    int fd = open("/dev/console", O_RDWR);
    if (fd >= 0) {
      dup2(fd, 0);
      dup2(fd, 1);
      dup2(fd, 2);
    }
  }
}

struct blk {
  char *p;
  size_t n;
};

/* Every kind of block: small classes, mid classes, page runs inside a
 * region, and a huge block with its own mapping. */
static const size_t sizes[] = {16, 200, 3000, 24 * KIB, 200 * KIB, 1 * MIB, 6 * MIB};
#define NSIZES (sizeof sizes / sizeof sizes[0])

/* ---- topology and plain allocation ---- */

static void check_topology(char *info, size_t len) {
  char buf[64] = {0};
  int fd = open("/sys/devices/system/node/online", O_RDONLY);
  CHECK(fd >= 0, "no /sys/devices/system/node/online: %s", strerror(errno));
  CHECK(read(fd, buf, sizeof buf - 1) > 0, "cannot read /sys/devices/system/node/online");
  close(fd);
  buf[strcspn(buf, "\n")] = 0;
  CHECK(!strcmp(buf, "0-1"), "nodes online are '%s', expected '0-1'", buf);
  cpu_set_t set[NODES];
  for (int n = 0; n < NODES; n++)
    CHECK(node_cpus(n, &set[n]) > 0, "node %d has no CPUs", n);
  snprintf(info, len, "nodes 0-1, %d and %d CPUs", CPU_COUNT(&set[0]), CPU_COUNT(&set[1]));
}

struct work {
  int node;
  struct blk b[NSIZES * 4];
};

static void *alloc_worker(void *arg) {
  struct work *w = arg;
  pin_to_node(w->node);
  for (size_t i = 0; i < NSIZES * 4; i++) {
    w->b[i].n = sizes[i % NSIZES] + i;
    w->b[i].p = malloc(w->b[i].n);
    CHECK(w->b[i].p, "malloc(%zu) failed on node %d", w->b[i].n, w->node);
    CHECK(hak_owns(w->b[i].p), "malloc(%zu) = %p is not hakmem's", w->b[i].n, (void *)w->b[i].p);
    fill_pattern(w->b[i].p, w->b[i].n);
  }
  return NULL;
}

/* Threads on both nodes allocate; main checks and frees everything (frees
 * from another thread, half of them from another node). */
static void check_alloc(char *info, size_t len) {
  static struct work w[NODES];
  for (int n = 0; n < NODES; n++) {
    w[n].node = n;
    on_thread(alloc_worker, &w[n]);
  }
  for (int n = 0; n < NODES; n++)
    for (size_t i = 0; i < NSIZES * 4; i++) {
      size_t bad = check_pattern(w[n].b[i].p, w[n].b[i].n);
      CHECK(bad == SIZE_MAX, "block of %zu bytes from node %d overwritten at %zu", w[n].b[i].n, n,
            bad);
      free(w[n].b[i].p);
    }
  snprintf(info, len, "%zu blocks of 16 B - 6 MiB from threads on both nodes", 2 * NSIZES * 4);
}

static void check_nodes(char *info, size_t len) {
  CHECK(hak_node_count() == NODES, "hak_node_count() = %d, expected %d", hak_node_count(), NODES);
  snprintf(info, len, "hak_node_count() = %d", hak_node_count());
}

/* ---- placement ---- */

struct place {
  int cpu_node;  /* where the allocating thread runs */
  int heap_node; /* its heap's node (hakmem_thread_set_node when different) */
  int toucher;   /* node whose CPU first writes the blocks' memory */
  struct blk b[NSIZES];
};

static void *place_alloc(void *arg) {
  struct place *pl = arg;
  pin_to_node(pl->cpu_node);
  if (pl->heap_node != pl->cpu_node)
    CHECK(hakmem_thread_set_node(pl->heap_node) == 0, "hakmem_thread_set_node(%d) failed: %s",
          pl->heap_node, strerror(errno));
  CHECK(hakmem_thread_node() == pl->heap_node,
        "thread on node %d (heap meant for node %d): hakmem_thread_node() = %d", pl->cpu_node,
        pl->heap_node, hakmem_thread_node());
  for (size_t i = 0; i < NSIZES; i++) {
    pl->b[i].n = sizes[i];
    pl->b[i].p = malloc(sizes[i]);
    CHECK(pl->b[i].p, "malloc(%zu) failed", sizes[i]);
  }
  return NULL;
}

/* First write of the blocks' memory from the toucher's node: without a
 * policy, the pages the allocator has not touched would land there. */
static void *place_touch(void *arg) {
  struct place *pl = arg;
  pin_to_node(pl->toucher);
  for (size_t i = 0; i < NSIZES; i++)
    fill_pattern(pl->b[i].p, pl->b[i].n);
  return NULL;
}

/* For each node: blocks of every size allocated for a heap of that node,
 * first touched from cpu/toucher nodes, must sit on the heap's node with
 * the policy want_mode on exactly that node (want_mode < 0: no placement
 * expected, just MPOL_DEFAULT). */
static void placement(int want_mode, int set_node, char *info, size_t len) {
  char why[256];
  for (int n = 0; n < NODES; n++) {
    static struct place pl;
    pl.heap_node = n;
    pl.cpu_node = set_node ? 1 - n : n;
    pl.toucher = 1 - n;
    on_thread(place_alloc, &pl);
    on_thread(place_touch, &pl);
    for (size_t i = 0; i < NSIZES; i++) {
      struct blk *b = &pl.b[i];
      unsigned long mask = 0;
      int mode = policy_at(b->p, &mask);
      if (want_mode == MPOL_DEFAULT) {
        CHECK(mode == MPOL_DEFAULT,
              "HAKMEM_NUMA=off: block of %zu bytes has policy %s (mask "
              "%#lx), expected MPOL_DEFAULT",
              b->n, mpol_name(mode), mask);
      } else {
        CHECK(mode == want_mode && mask == 1UL << n,
              "block of %zu bytes of a node-%d heap has policy %s mask %#lx, expected %s mask "
              "%#lx",
              b->n, n, mpol_name(mode), mask, mpol_name(want_mode), 1UL << n);
        CHECK(!placed_on(b->p, b->n, n, why, sizeof why),
              "block of %zu bytes of a node-%d heap (thread on node %d, first written from node "
              "%d): %s",
              b->n, n, pl.cpu_node, pl.toucher, why);
      }
      size_t bad = check_pattern(b->p, b->n);
      CHECK(bad == SIZE_MAX, "block of %zu bytes overwritten at %zu", b->n, bad);
    }
    if (want_mode != MPOL_DEFAULT) {
      hak_node_stats_t s = node_stats(n);
      CHECK(s.regions > 0 && s.committed_bytes > 0,
            "node %d holds blocks, but hak_node_stats says %llu regions, %llu committed bytes", n,
            (unsigned long long)s.regions, (unsigned long long)s.committed_bytes);
    }
    for (size_t i = 0; i < NSIZES; i++)
      free(pl.b[i].p);
  }
  snprintf(info, len, "16 B - 6 MiB blocks%s, first written from the other node: %s",
           set_node ? " of heaps set to the other node than their thread's" : "",
           want_mode == MPOL_DEFAULT ? "MPOL_DEFAULT" : mpol_name(want_mode));
  if (want_mode != MPOL_DEFAULT)
    snprintf(info + strlen(info), len - strlen(info), " on the heap's node, every page there");
}

static void check_local(char *info, size_t len) {
  placement(MPOL_PREFERRED, 0, info, len);
}
static void check_set_node(char *info, size_t len) {
  placement(MPOL_PREFERRED, 1, info, len);
}
static void check_strict(char *info, size_t len) {
  placement(MPOL_BIND, 0, info, len);
}
static void check_off(char *info, size_t len) {
  placement(MPOL_DEFAULT, 0, info, len);
}

/* Regions round-robin over the nodes: 1 MiB blocks (about one per region)
 * from one thread on node 0 must spread over both nodes, each region whole
 * on one node. */
#define IL_BLOCKS 16
static struct blk il[IL_BLOCKS];
static void *interleave_worker(void *arg) {
  (void)arg;
  pin_to_node(0);
  for (int i = 0; i < IL_BLOCKS; i++) {
    il[i].n = MIB;
    il[i].p = malloc(MIB);
    CHECK(il[i].p, "malloc(1 MiB) failed");
    fill_pattern(il[i].p, il[i].n);
  }
  return NULL;
}

static void check_interleave(char *info, size_t len) {
  on_thread(interleave_worker, NULL);
  uintptr_t region[IL_BLOCKS];
  int regions = 0, on[NODES] = {0};
  char why[256];
  for (int i = 0; i < IL_BLOCKS; i++) {
    uintptr_t r = (uintptr_t)il[i].p & ~(uintptr_t)(REGION - 1);
    int node = page_node(il[i].p);
    CHECK(node == 0 || node == 1, "1 MiB block %d: move_pages says node %d", i, node);
    CHECK(!placed_on(il[i].p, il[i].n, node, why, sizeof why),
          "1 MiB block %d is not on one node: %s", i, why);
    int seen = 0;
    for (int j = 0; j < regions; j++)
      seen |= region[j] == r;
    if (!seen) {
      region[regions++] = r;
      on[node]++;
    }
  }
  for (int i = 0; i < IL_BLOCKS; i++) {
    CHECK(check_pattern(il[i].p, il[i].n) == SIZE_MAX, "1 MiB block %d overwritten", i);
    free(il[i].p);
  }
  CHECK(regions >= 4, "16 blocks of 1 MiB share only %d regions", regions);
  CHECK(on[0] * 3 >= regions && on[1] * 3 >= regions,
        "HAKMEM_NUMA=interleave: of %d regions of one thread on node 0, %d are on node 0 and %d on "
        "node 1 (round-robin puts about half on each)",
        regions, on[0], on[1]);
  snprintf(info, len, "%d regions of a node-0 thread: %d on node 0, %d on node 1", regions, on[0],
           on[1]);
}

/* ---- cross-node frees ---- */

#define MB_BLOCKS 3000
static struct blk mb[MB_BLOCKS];
static pthread_mutex_t mb_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t mb_cond = PTHREAD_COND_INITIALIZER;
static int mb_phase; /* 1: blocks allocated, 2: consumer done, 3: producer flushed */
static hak_stats_t mb_flushed;
static hak_node_stats_t mb_round1, mb_round2;

static void mb_wait(int phase) {
  pthread_mutex_lock(&mb_lock);
  while (mb_phase < phase)
    pthread_cond_wait(&mb_cond, &mb_lock);
  pthread_mutex_unlock(&mb_lock);
}

static void mb_set(int phase) {
  pthread_mutex_lock(&mb_lock);
  mb_phase = phase;
  pthread_cond_broadcast(&mb_cond);
  pthread_mutex_unlock(&mb_lock);
}

static void mb_alloc_all(void) {
  uint64_t s = 0x9E3779B97F4A7C15ull;
  for (int i = 0; i < MB_BLOCKS; i++) {
    s ^= s << 13, s ^= s >> 7, s ^= s << 17;
    mb[i].n = 16 + s % 2033;
    mb[i].p = malloc(mb[i].n);
    CHECK(mb[i].p, "malloc(%zu) failed", mb[i].n);
    fill_pattern(mb[i].p, mb[i].n);
  }
}

static void *mb_producer(void *arg) {
  (void)arg;
  pin_to_node(0);
  CHECK(hakmem_thread_node() == 0, "producer on node 0: hakmem_thread_node() = %d",
        hakmem_thread_node());
  mb_alloc_all();
  mb_round1 = node_stats(0);
  mb_set(1);
  mb_wait(2);
  hakmem_flush(); /* drains node 0's mailbox: the blocks come home */
  hak_stats_get(&mb_flushed);
  /* The same blocks again: the drained ones serve them, no new region. */
  mb_alloc_all();
  mb_round2 = node_stats(0);
  for (int i = 0; i < MB_BLOCKS; i++)
    free(mb[i].p);
  return NULL;
}

static void *mb_consumer(void *arg) {
  (void)arg;
  pin_to_node(1);
  CHECK(hakmem_thread_node() == 1, "consumer on node 1: hakmem_thread_node() = %d",
        hakmem_thread_node());
  for (int i = 0; i < MB_BLOCKS; i++) {
    size_t bad = check_pattern(mb[i].p, mb[i].n);
    CHECK(bad == SIZE_MAX, "block %d of %zu bytes overwritten at %zu before its cross-node free", i,
          mb[i].n, bad);
    free(mb[i].p);
  }
  hakmem_flush(); /* sends the partial batch */
  return NULL;
}

/* Producer on node 0, consumer on node 1 freeing everything. batched: the
 * default batch (blocks go through node 0's mailbox); otherwise
 * HAKMEM_MAILBOX_BATCH=1 (straight to the pages' remote lists). */
static void mailbox(int batched, char *info, size_t len) {
  hak_stats_t s0 = stats(), s1;
  pthread_t prod, cons;
  mb_phase = 0;
  CHECK(pthread_create(&prod, NULL, mb_producer, NULL) == 0, "pthread_create failed");
  mb_wait(1);
  CHECK(pthread_create(&cons, NULL, mb_consumer, NULL) == 0, "pthread_create failed");
  pthread_join(cons, NULL);
  s1 = stats();
  mb_set(2);
  pthread_join(prod, NULL);
  uint64_t cross = s1.remote_frees_cross_node - s0.remote_frees_cross_node;
  uint64_t batches = s1.batches_sent - s0.batches_sent;
  uint64_t drained = mb_flushed.blocks_drained - s0.blocks_drained;
  uint64_t drains = mb_flushed.mailbox_drains - s0.mailbox_drains;
  CHECK(cross == MB_BLOCKS,
        "%d frees on node 1 of node-0 blocks: remote_frees_cross_node moved by "
        "%llu",
        MB_BLOCKS, (unsigned long long)cross);
  if (batched) {
    CHECK(batches >= 1 && batches <= cross / 8,
          "%llu cross-node frees went in %llu batches (expected 1 to %llu)",
          (unsigned long long)cross, (unsigned long long)batches, (unsigned long long)cross / 8);
    CHECK(drained == cross && drains >= 1,
          "after node 0's hakmem_flush: blocks_drained moved by %llu in %llu drains, expected "
          "%llu (every cross-node free)",
          (unsigned long long)drained, (unsigned long long)drains, (unsigned long long)cross);
  } else {
    CHECK(batches == 0 && drained == 0,
          "HAKMEM_MAILBOX_BATCH=1: %llu cross-node frees made %llu batches and %llu drained "
          "blocks, expected none (straight to the pages' remote lists)",
          (unsigned long long)cross, (unsigned long long)batches, (unsigned long long)drained);
  }
  CHECK(mb_round2.regions <= mb_round1.regions,
        "the same blocks allocated again on node 0 after the cross-node frees came home took new "
        "regions: %llu -> %llu",
        (unsigned long long)mb_round1.regions, (unsigned long long)mb_round2.regions);
  snprintf(info, len,
           "%llu cross-node frees, %llu batches, %llu blocks drained in %llu drains by node 0; "
           "node 0 regions %llu -> %llu on reuse",
           (unsigned long long)cross, (unsigned long long)batches, (unsigned long long)drained,
           (unsigned long long)drains, (unsigned long long)mb_round1.regions,
           (unsigned long long)mb_round2.regions);
}

static void check_mailbox(char *info, size_t len) {
  mailbox(1, info, len);
}
static void check_batch1(char *info, size_t len) {
  mailbox(0, info, len);
}

/* ---- the runner ---- */

static const struct check {
  const char *name;
  const char *env; /* one HAKMEM_* setting or NULL */
  void (*fn)(char *info, size_t len);
} checks[] = {
    {"topology", NULL, check_topology},
    {"alloc", NULL, check_alloc},
    {"nodes", NULL, check_nodes},
    {"local", NULL, check_local},
    {"set_node", NULL, check_set_node},
    {"strict", "HAKMEM_NUMA=strict", check_strict},
    {"interleave", "HAKMEM_NUMA=interleave", check_interleave},
    {"off", "HAKMEM_NUMA=off", check_off},
    {"mailbox", NULL, check_mailbox},
    {"mailbox_batch1", "HAKMEM_MAILBOX_BATCH=1", check_batch1},
};
#define NCHECKS (sizeof checks / sizeof checks[0])

/* Runs one check in a child: the binary again, with the check's setting.
 * Its stderr comes back here so that its FAIL line can name the check. */
static int run_check(const struct check *c) {
  int fd[2];
  fflush(NULL);
  if (pipe(fd) != 0) {
    printf("FAIL: %s: pipe: %s\n", c->name, strerror(errno));
    return 0;
  }
  pid_t pid = fork();
  if (pid < 0) {
    printf("FAIL: %s: fork: %s\n", c->name, strerror(errno));
    return 0;
  }
  if (pid == 0) {
    char *argv[] = {"init", (char *)c->name, NULL};
    char *envp[] = {"PATH=/", (char *)c->env, NULL};
    dup2(fd[1], 2);
    close(fd[0]);
    close(fd[1]);
    execve("/proc/self/exe", argv, envp);
    printf("FAIL: %s: exec: %s\n", c->name, strerror(errno));
    _exit(126);
  }
  close(fd[1]);
  static char err[16384];
  size_t len = 0;
  ssize_t got;
  while ((got = read(fd[0], err + len, sizeof err - 1 - len)) > 0)
    len += (size_t)got;
  err[len] = 0;
  close(fd[0]);
  int st;
  while (waitpid(pid, &st, 0) < 0 && errno == EINTR) {
  }
  int said = 0; /* the child printed its own FAIL line */
  for (char *line = err, *end; *line; line = end) {
    end = line + strcspn(line, "\n");
    if (*end) *end++ = 0;
    if (!strncmp(line, "FAIL: ", 6)) {
      printf("FAIL: %s: %s\n", c->name, line + 6);
      said = 1;
    } else {
      printf("%s\n", line);
    }
  }
  if (WIFEXITED(st) && WEXITSTATUS(st) == 0) return 1;
  if (WIFSIGNALED(st))
    printf("FAIL: %s: killed by signal %d%s\n", c->name, WTERMSIG(st),
           WTERMSIG(st) == SIGALRM ? " (over the time limit)" : "");
  else if (!said)
    printf("FAIL: %s: exit status %d\n", c->name, WEXITSTATUS(st));
  return 0;
}

static int run_one_check(const char *name) {
  for (size_t i = 0; i < NCHECKS; i++) {
    if (strcmp(checks[i].name, name)) continue;
    char info[512] = "";
    alarm(CHECK_SECONDS);
    double t0 = uptime();
    checks[i].fn(info, sizeof info);
    printf("PASS: %s%s%s: %s (%.2f s)\n", name, checks[i].env ? " with " : "",
           checks[i].env ? checks[i].env : "", info, uptime() - t0);
    fflush(stdout);
    return 0;
  }
  FAIL("no check named '%s'", name);
}

static void power_off(void) {
  fflush(NULL);
  tcdrain(1);
  sync();
  reboot(RB_POWER_OFF);
  for (;;) /* PID 1 must not return: the kernel would panic */
    pause();
}

int main(int argc, char **argv) {
  if (argc > 1) return run_one_check(argv[1]);
  struct utsname u;
  uname(&u);
  /* the leading newline: SeaBIOS leaves its last line open */
  printf("\nnuma_vm guest: kernel %s, pid %d, uptime %.2f s\n", u.release, getpid(), uptime());
  int passed = 0, failed = 0;
  for (size_t i = 0; i < NCHECKS; i++) {
    if (run_check(&checks[i]))
      passed++;
    else
      failed++;
  }
  printf("numa_vm guest: done at uptime %.2f s\n", uptime());
  printf("%d passed, %d failed\n", passed, failed);
  if (getpid() == 1) power_off();
  return failed ? 1 : 0;
}
