/* Cross-node stress: 8 threads spread over 2 and then 4 virtual nodes
 * (children with HAKMEM_NODES=2 and =4; thread i on node i mod N by
 * hakmem_thread_set_node) allocate random sizes, hand blocks to each other
 * through shared slots so most frees are cross-node, flush now and then, and
 * half of them drop their heap midway. Two waves: the second frees what the
 * first left. Every block is pattern-checked before it is freed. At the end,
 * after one thread per node called hakmem_flush(), every cross-node free has
 * been drained, nothing was counted invalid, and committed bytes are back
 * near the start after malloc_trim(0).
 *
 * Built plainly by the Makefile, and by tests/run.sh with -DSTRESS_HAK
 * against the ThreadSanitizer build of the allocator (hak_* entry points).
 * Usage: numa_stress [ops-per-thread]; a child: numa_stress nodes=N,ops=M. */
#define _GNU_SOURCE
#include <malloc.h>
#include <stdatomic.h>
#include "numa_util.h"
#include "t_alloc.h"

#define THREADS 8
#define SLOTS 512
#define LOCAL 32
#define HDR 16
#define MAGIC 0xC0FFEE0DDBA11ull
/* Committed bytes the run may keep: blocks the process itself still holds
 * (stdio, thread bookkeeping) and pages of the size classes they sit in. */
#define SLACK (512 * KIB)

static _Atomic(uintptr_t) slots[SLOTS];
static long ops = 20000;
static int nodes;

static uint64_t rnd(uint64_t *s) {
  *s ^= *s >> 12;
  *s ^= *s << 25;
  *s ^= *s >> 27;
  return *s * 0x2545F4914F6CDD1Dull;
}

static size_t random_size(uint64_t *s) {
  uint64_t k = rnd(s) % 1000;
  if (k < 850) return HDR + rnd(s) % 1024;
  if (k < 990) return 1024 + rnd(s) % (31 * 1024);
  if (k < 999) return 32 * KIB + rnd(s) % (400 * KIB);
  return MIB + rnd(s) % (2 * MIB); /* huge */
}

static void *new_block(uint64_t *s) {
  size_t n = random_size(s);
  uint64_t *p = T_MALLOC(n);
  CHECK(p, "malloc(%zu) failed", n);
  p[0] = n;
  p[1] = (uint64_t)(uintptr_t)p ^ MAGIC;
  if (n > 64 * KIB) /* big blocks only sparsely: the sanitizer run stays short */
    fill_sparse(p + 2, n - HDR, 4096);
  else
    fill_pattern(p + 2, n - HDR);
  return p;
}

static void release(void *v, const char *when) {
  if (!v) return;
  uint64_t *p = v;
  size_t n = (size_t)p[0];
  CHECK(p[1] == ((uint64_t)(uintptr_t)p ^ MAGIC), "%s: header of %p overwritten", when, v);
  CHECK(n >= HDR && n <= 3 * MIB + HDR, "%s: size word of %p is %zu", when, v, n);
  size_t bad = n > 64 * KIB ? check_sparse(p + 2, n - HDR, 4096) : check_pattern(p + 2, n - HDR);
  CHECK(bad == SIZE_MAX, "%s: block %p of %zu bytes overwritten at %zu", when, v, n, bad + HDR);
  T_FREE(v);
}

static void *worker(void *arg) {
  int id = (int)(uintptr_t)arg;
  uint64_t s = 0x9E3779B97F4A7C15ull * (uint64_t)(id + 1);
  void *local[LOCAL] = {0};
  int node = id % nodes;
  CHECK(hakmem_thread_set_node(node) == 0, "hakmem_thread_set_node(%d) failed", node);
  for (long op = 0; op < ops; op++) {
    if (op == ops / 2 && (id & 1)) { /* a fresh heap midway, blocks still live */
      hak_thread_done();
      CHECK(hakmem_thread_set_node(node) == 0, "hakmem_thread_set_node(%d) failed", node);
    }
    uint64_t k = rnd(&s) % 100;
    if (k < 65) {
      void *old = (void *)atomic_exchange(&slots[rnd(&s) % SLOTS], (uintptr_t)new_block(&s));
      release(old, "shared slot");
    } else if (k < 98) {
      size_t i = rnd(&s) % LOCAL;
      release(local[i], "local slot");
      local[i] = new_block(&s);
    } else {
      hakmem_flush();
    }
  }
  for (int i = 0; i < LOCAL; i += 2)
    release(local[i], "local at exit");
  for (int i = 1; i < LOCAL; i += 2) { /* outlive the thread */
    void *old = (void *)atomic_exchange(&slots[rnd(&s) % SLOTS], (uintptr_t)local[i]);
    release(old, "shared slot");
  }
  return NULL;
}

static void *flusher(void *arg) {
  CHECK(hakmem_thread_set_node((int)(uintptr_t)arg) == 0, "hakmem_thread_set_node failed");
  hakmem_flush();
  return NULL;
}

static int child(void) {
  CHECK(hak_node_count() == nodes, "HAKMEM_NODES=%d, but hak_node_count() = %d", nodes,
        hak_node_count());
  T_TRIM(0);
  hak_stats_t s0 = stats();
  pthread_t t[THREADS];
  for (int wave = 0; wave < 2; wave++) {
    for (int i = 0; i < THREADS; i++)
      CHECK(pthread_create(&t[i], NULL, worker, (void *)(uintptr_t)(wave * THREADS + i)) == 0,
            "pthread_create failed");
    for (int i = 0; i < THREADS; i++)
      pthread_join(t[i], NULL);
  }
  for (int i = 0; i < SLOTS; i++)
    release((void *)atomic_exchange(&slots[i], 0), "final drain");
  hakmem_flush(); /* main's own batches out, then every node drains */
  for (int n = 0; n < nodes; n++)
    on_thread(flusher, (void *)(uintptr_t)n);
  T_TRIM(0);
  hak_stats_t s1 = stats();
  uint64_t cross = s1.remote_frees_cross_node - s0.remote_frees_cross_node;
  uint64_t drained = s1.blocks_drained - s0.blocks_drained;
  uint64_t batches = s1.batches_sent - s0.batches_sent;
  printf("%d nodes, %d threads x %ld ops x 2 waves: %llu remote frees, %llu cross-node in %llu "
         "batches, %llu drained; committed %llu -> %llu bytes\n",
         nodes, THREADS, ops, (unsigned long long)(s1.remote_frees - s0.remote_frees),
         (unsigned long long)cross, (unsigned long long)batches, (unsigned long long)drained,
         (unsigned long long)s0.committed_bytes, (unsigned long long)s1.committed_bytes);
  CHECK(s1.invalid_frees == s0.invalid_frees, "%llu frees counted as invalid",
        (unsigned long long)(s1.invalid_frees - s0.invalid_frees));
  CHECK(cross > 0 && batches > 0,
        "threads on %d nodes freed each other's blocks, but "
        "remote_frees_cross_node moved by %llu and batches_sent by %llu",
        nodes, (unsigned long long)cross, (unsigned long long)batches);
  CHECK(drained == cross, "after a flush on every node, %llu of %llu cross-node frees drained",
        (unsigned long long)drained, (unsigned long long)cross);
  CHECK(s1.committed_bytes <= s0.committed_bytes + SLACK,
        "committed bytes did not come back after malloc_trim(0): %llu before, %llu after",
        (unsigned long long)s0.committed_bytes, (unsigned long long)s1.committed_bytes);
  return 0;
}

int main(int argc, char **argv) {
  if (argc > 1 && sscanf(argv[1], "nodes=%d,ops=%ld", &nodes, &ops) == 2) return child();
  if (argc > 1) ops = atol(argv[1]);
  CHECK(ops > 0, "usage: %s [ops-per-thread]", argv[0]);
  static struct child c;
  for (int n = 2; n <= 4; n += 2) {
    char env[32], mode[64];
    snprintf(env, sizeof env, "HAKMEM_NODES=%d", n);
    snprintf(mode, sizeof mode, "nodes=%d,ops=%ld", n, ops);
    const char *e[] = {env, NULL};
    child_must_pass(mode, e, &c);
    fputs(c.err, stderr);
  }
  printf("numa_stress: ok\n");
  return 0;
}
