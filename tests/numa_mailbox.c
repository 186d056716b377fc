/* Cross-node frees through the node mailboxes, on this machine's one real
 * node as two virtual ones (children run with HAKMEM_NODES=2; threads pick
 * their heap's node with hakmem_thread_set_node). Each child mode:
 *
 *   prodcons  producers on node 0 hand pattern-checked blocks to consumers
 *             on node 1. Every free is cross-node; they go in batches
 *             (batches_sent <= remote_frees_cross_node / 8 with the default
 *             batch); once all threads exited and a node-0 thread called
 *             hakmem_flush(), blocks_drained == remote_frees_cross_node; and
 *             after malloc_trim(0) committed bytes are back where they were.
 *   partial   a node-1 thread frees a few blocks of a live node-0 owner and
 *             exits without a flush: its partial batch is sent at exit and
 *             drained when the owner calls hakmem_flush().
 *   partial_exit  the same, but the owner drains by exiting.
 *   orphan    frees wait in node 0's mailbox when their owner exits: its
 *             exit drains them, the pages are released, nothing leaks.
 *   orphan_late  the owner exits first (pages abandoned with live blocks),
 *             then the frees arrive with no node-0 thread alive; a new
 *             node-0 thread's flush drains them into the abandoned pages,
 *             which are adopted or released: nothing leaks.
 *             The batches are reused (mailbox_bytes stays at a few dozen
 *             batches for the hundreds sent), and the owners keep the
 *             pages the drains empty instead of cycling them through the
 *             pool (pages_reused stays in the tens, not the hundreds).
 *   large     blocks past the small sizes freed from node 1 go straight
 *             back to their region, never into a batch that could wait.
 *   own_foreign  a thread frees its own blocks after moving its heap to
 *             node 1: they are its pages, freed at once, not mailed.
 *   batch1    HAKMEM_MAILBOX_BATCH=1: cross-node frees skip the mailboxes. */
#define _GNU_SOURCE
#include <malloc.h>
#include <stdatomic.h>
#include "numa_util.h"

#define PRODUCERS 2
#define CONSUMERS 2
#define PER_PRODUCER 30000
#define RING 256
/* Committed bytes a child may keep after its test: the pages of blocks it
 * still holds itself (stdio's buffer, ...), a few 64 KiB pages at most. */
#define SLACK (256 * KIB)

/* ---- shared ---- */

struct blk {
  char *p;
  size_t n;
};

static uint64_t rnd(uint64_t *s) {
  *s ^= *s << 13, *s ^= *s >> 7, *s ^= *s << 17;
  return *s;
}

/* Mostly small, some mid-sized blocks: the classes cross-node frees hit. */
static size_t block_size(uint64_t *s) {
  uint64_t r = rnd(s);
  return r % 16 ? 16 + r % 2033 : 8 * KIB + r % (24 * KIB);
}

static char *new_block(size_t n) {
  char *p = malloc(n);
  CHECK(p, "malloc(%zu) failed", n);
  fill_pattern(p, n);
  return p;
}

static void check_free(struct blk b, const char *who) {
  size_t bad = check_pattern(b.p, b.n);
  CHECK(bad == SIZE_MAX, "%s: block %p of %zu bytes overwritten at offset %zu", who, (void *)b.p,
        b.n, bad);
  free(b.p);
}

static void set_node(int node) {
  CHECK(hakmem_thread_set_node(node) == 0, "hakmem_thread_set_node(%d) failed: %s", node,
        strerror(errno));
  CHECK(hakmem_thread_node() == node, "hakmem_thread_set_node(%d), then hakmem_thread_node() = %d",
        node, hakmem_thread_node());
}

/* Committed bytes once every free page went back (the caller's too). */
static uint64_t trimmed_committed(void) {
  malloc_trim(0);
  return stats().committed_bytes;
}

static void *warm_thread(void *arg) {
  free(new_block((size_t)(uintptr_t)arg));
  return NULL;
}

/* The level a test must come back to: measured after as many threads as it
 * runs at once have come and gone, since glibc keeps what it allocated for
 * them (thread descriptors, TLS vectors) for the next threads. */
static uint64_t baseline(void) {
  pthread_t t[PRODUCERS + CONSUMERS];
  for (int i = 0; i < PRODUCERS + CONSUMERS; i++)
    CHECK(pthread_create(&t[i], NULL, warm_thread, (void *)(uintptr_t)(16 << i)) == 0,
          "pthread_create");
  for (int i = 0; i < PRODUCERS + CONSUMERS; i++)
    pthread_join(t[i], NULL);
  return trimmed_committed();
}

static void *flush_on_node0(void *arg) {
  (void)arg;
  set_node(0);
  hakmem_flush();
  return NULL;
}

/* A one-shot event between threads. */
struct event {
  pthread_mutex_t lock;
  pthread_cond_t cond;
  int set;
};
#define EVENT_INIT                                                                                 \
  { PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0 }

static void ev_set(struct event *e) {
  pthread_mutex_lock(&e->lock);
  e->set = 1;
  pthread_cond_broadcast(&e->cond);
  pthread_mutex_unlock(&e->lock);
}

static void ev_wait(struct event *e) {
  pthread_mutex_lock(&e->lock);
  while (!e->set)
    pthread_cond_wait(&e->cond, &e->lock);
  pthread_mutex_unlock(&e->lock);
}

static void check_back(uint64_t before, const char *what) {
  uint64_t after = trimmed_committed();
  CHECK(after <= before + SLACK,
        "%s: committed bytes did not come back after malloc_trim(0): %llu before, %llu after "
        "(%lld KiB more; %u KiB allowed)",
        what, (unsigned long long)before, (unsigned long long)after,
        (long long)(after - before) / 1024, (unsigned)(SLACK / KIB));
}

/* ---- prodcons ---- */

struct ring {
  _Atomic size_t head; /* consumer's position */
  char pad1[56];
  _Atomic size_t tail; /* producer's position */
  char pad2[56];
  struct blk slot[RING];
};

static struct ring rings[PRODUCERS][CONSUMERS];
static _Atomic int producers_left = PRODUCERS;

static void *producer(void *arg) {
  int id = (int)(uintptr_t)arg;
  uint64_t s = 0x9E3779B97F4A7C15ull * (uint64_t)(id + 1);
  set_node(0);
  for (long i = 0; i < PER_PRODUCER; i++) {
    struct blk b;
    b.n = block_size(&s);
    b.p = new_block(b.n);
    struct ring *r = &rings[id][i % CONSUMERS];
    size_t t = atomic_load_explicit(&r->tail, memory_order_relaxed);
    while (t - atomic_load_explicit(&r->head, memory_order_acquire) == RING)
      sched_yield();
    r->slot[t % RING] = b;
    atomic_store_explicit(&r->tail, t + 1, memory_order_release);
  }
  atomic_fetch_sub(&producers_left, 1);
  return NULL; /* exits while consumers still free its blocks */
}

static void *consumer(void *arg) {
  int id = (int)(uintptr_t)arg;
  set_node(1);
  for (;;) {
    int idle = 1, done = atomic_load(&producers_left) == 0;
    for (int p = 0; p < PRODUCERS; p++) {
      struct ring *r = &rings[p][id];
      size_t h = atomic_load_explicit(&r->head, memory_order_relaxed);
      while (h != atomic_load_explicit(&r->tail, memory_order_acquire)) {
        check_free(r->slot[h % RING], "consumer");
        atomic_store_explicit(&r->head, ++h, memory_order_release);
        idle = 0;
      }
    }
    if (idle && done) break;
    if (idle) sched_yield();
  }
  return NULL; /* thread exit sends the last partial batch */
}

static int prodcons(void) {
  uint64_t before = baseline();
  hak_stats_t s0 = stats();
  pthread_t t[PRODUCERS + CONSUMERS];
  for (int i = 0; i < PRODUCERS; i++)
    CHECK(pthread_create(&t[i], NULL, producer, (void *)(uintptr_t)i) == 0, "pthread_create");
  for (int i = 0; i < CONSUMERS; i++)
    CHECK(pthread_create(&t[PRODUCERS + i], NULL, consumer, (void *)(uintptr_t)i) == 0,
          "pthread_create");
  for (int i = 0; i < PRODUCERS + CONSUMERS; i++)
    pthread_join(t[i], NULL);
  hak_stats_t s1 = stats();
  on_thread(flush_on_node0, NULL);
  hak_stats_t s2 = stats();

  uint64_t total = (uint64_t)PRODUCERS * PER_PRODUCER;
  uint64_t cross = s2.remote_frees_cross_node - s0.remote_frees_cross_node;
  uint64_t batches = s2.batches_sent - s0.batches_sent;
  uint64_t drained = s2.blocks_drained - s0.blocks_drained;
  printf("prodcons: %llu blocks, %llu cross-node frees in %llu batches; drained %llu before the "
         "node-0 flush, %llu after, in %llu drains\n",
         (unsigned long long)total, (unsigned long long)cross, (unsigned long long)batches,
         (unsigned long long)(s1.blocks_drained - s0.blocks_drained), (unsigned long long)drained,
         (unsigned long long)(s2.mailbox_drains - s0.mailbox_drains));
  CHECK(cross == total,
        "%llu blocks of node-0 heaps freed by node-1 threads, but "
        "remote_frees_cross_node moved by %llu",
        (unsigned long long)total, (unsigned long long)cross);
  CHECK(batches >= 1 && batches <= cross / 8,
        "%llu cross-node frees went in %llu batches: not batched (expected at most %llu)",
        (unsigned long long)cross, (unsigned long long)batches, (unsigned long long)cross / 8);
  CHECK(drained == cross,
        "all threads exited and a node-0 thread called hakmem_flush(), but blocks_drained moved "
        "by %llu for %llu cross-node frees",
        (unsigned long long)drained, (unsigned long long)cross);
  /* every batch buffer made is reused: without that, one per batch sent */
  uint64_t batch_bytes = 24 + 64 * sizeof(void *);
  uint64_t made = (s2.mailbox_bytes - s0.mailbox_bytes) / batch_bytes;
  uint64_t reused = s2.pages_reused - s0.pages_reused;
  printf("prodcons: %llu batch buffers made for %llu batches; %llu pages reused from the pool\n",
         (unsigned long long)made, (unsigned long long)batches, (unsigned long long)reused);
  CHECK(made * 4 <= batches,
        "%llu batch buffers made (mailbox_bytes) for %llu batches sent: drained batches are "
        "not going back to their senders",
        (unsigned long long)made, (unsigned long long)batches);
  CHECK(reused <= 100, /* 0-36 here; 301 when drains retire pages */
        "pages_reused moved by %llu: the drains retire the pages they empty, so the owners "
        "take them from the pool again",
        (unsigned long long)reused);
  check_back(before, "prodcons");
  return 0;
}

/* ---- large blocks ---- */

#define LARGES 8
static struct blk large[LARGES];

static void *large_owner(void *arg) {
  (void)arg;
  set_node(0);
  for (int i = 0; i < LARGES; i++) {
    large[i].n = 200 * KIB + (size_t)i * 100 * KIB; /* past the 128 KiB of the size classes */
    large[i].p = new_block(large[i].n);
  }
  return NULL; /* the blocks outlive it */
}

static void *large_freer(void *arg) {
  (void)arg;
  set_node(1);
  for (int i = 0; i < LARGES; i++)
    check_free(large[i], "node-1 freer");
  return NULL; /* its exit would send a partial batch */
}

static int large_blocks(void) {
  uint64_t before = baseline();
  on_thread(large_owner, NULL);
  hak_stats_t s0 = stats();
  on_thread(large_freer, NULL);
  hak_stats_t s1 = stats();
  CHECK(s1.batches_sent == s0.batches_sent,
        "%d large blocks freed from node 1 went into %llu batches: with no node-0 thread left "
        "they would wait there",
        LARGES, (unsigned long long)(s1.batches_sent - s0.batches_sent));
  printf("large: %d blocks of 200-900 KiB freed from node 1 straight to their region\n", LARGES);
  check_back(before, "large");
  return 0;
}

/* ---- a heap's own blocks after it moved ---- */

#define OWN 1000
static void *own_foreign(void *arg) {
  (void)arg;
  static struct blk own[OWN];
  uint64_t s = 777;
  set_node(0);
  for (int i = 0; i < OWN; i++) {
    own[i].n = block_size(&s);
    own[i].p = new_block(own[i].n);
  }
  set_node(1);
  hak_stats_t s0 = stats();
  for (int i = 0; i < OWN; i++)
    check_free(own[i], "own blocks");
  hakmem_flush();
  hak_stats_t s1 = stats();
  CHECK(s1.remote_frees == s0.remote_frees,
        "a heap moved to node 1 freed %d of its own blocks: remote_frees moved by %llu", OWN,
        (unsigned long long)(s1.remote_frees - s0.remote_frees));
  CHECK(s1.batches_sent == s0.batches_sent,
        "a heap moved to node 1 freed its own node-0 blocks through %llu batches: they are its "
        "pages, and no node-0 thread may ever drain them",
        (unsigned long long)(s1.batches_sent - s0.batches_sent));
  printf("own_foreign: %d blocks freed by their own heap after it moved to node 1\n", OWN);
  return NULL;
}

static int own_blocks(void) {
  uint64_t before = baseline();
  on_thread(own_foreign, NULL);
  check_back(before, "own_foreign");
  return 0;
}

/* ---- partial batches ---- */

#define FEW 10 /* far below the default batch of 64 */
static struct blk few[FEW];
static struct event few_made = EVENT_INIT, few_freed = EVENT_INIT, few_flushed = EVENT_INIT;
static int owner_flushes; /* partial: the owner drains with hakmem_flush, else by exiting */
static hak_stats_t owner_flushed;

static void *few_owner(void *arg) {
  (void)arg;
  set_node(0);
  for (int i = 0; i < FEW; i++) {
    few[i].n = 24 + 100 * (size_t)i;
    few[i].p = new_block(few[i].n);
  }
  ev_set(&few_made);
  ev_wait(&few_freed);
  if (owner_flushes) {
    hakmem_flush();
    hak_stats_get(&owner_flushed); /* before its exit could drain too */
    ev_set(&few_flushed);
  }
  return NULL;
}

static void *few_freer(void *arg) {
  (void)arg;
  set_node(1);
  for (int i = 0; i < FEW; i++)
    check_free(few[i], "node-1 freer");
  return NULL; /* no flush: the batch leaves at thread exit */
}

static int partial(int flush) {
  owner_flushes = flush;
  uint64_t before = baseline();
  hak_stats_t s0 = stats();
  pthread_t owner;
  CHECK(pthread_create(&owner, NULL, few_owner, NULL) == 0, "pthread_create");
  ev_wait(&few_made);
  on_thread(few_freer, NULL);
  hak_stats_t s1 = stats();
  CHECK(s1.remote_frees_cross_node - s0.remote_frees_cross_node == FEW,
        "%d cross-node frees, remote_frees_cross_node moved by %llu", FEW,
        (unsigned long long)(s1.remote_frees_cross_node - s0.remote_frees_cross_node));
  CHECK(s1.batches_sent - s0.batches_sent == 1,
        "a thread exited with a partial batch of %d frees: batches_sent moved by %llu, expected 1",
        FEW, (unsigned long long)(s1.batches_sent - s0.batches_sent));
  ev_set(&few_freed);
  const char *how = "its exit";
  hak_stats_t s2;
  if (flush) {
    how = "hakmem_flush()";
    ev_wait(&few_flushed);
    s2 = owner_flushed;
    pthread_join(owner, NULL);
  } else {
    pthread_join(owner, NULL);
    s2 = stats();
  }
  uint64_t drained = s2.blocks_drained - s0.blocks_drained;
  CHECK(drained == FEW,
        "the owner on node 0 drained with %s, but blocks_drained moved by %llu, expected %d", how,
        (unsigned long long)drained, FEW);
  printf("partial batch of %d frees sent at thread exit, drained by the owner with %s\n", FEW, how);
  check_back(before, flush ? "partial" : "partial_exit");
  return 0;
}

/* ---- owners gone while frees wait ---- */

#define ORPHANS 5000
static struct blk orphan[ORPHANS];
static struct event orph_made = EVENT_INIT, orph_freed = EVENT_INIT;

static void *orph_owner(void *arg) {
  int wait_for_frees = (int)(uintptr_t)arg;
  uint64_t s = 12345;
  set_node(0);
  for (int i = 0; i < ORPHANS; i++) {
    orphan[i].n = block_size(&s);
    orphan[i].p = new_block(orphan[i].n);
  }
  ev_set(&orph_made);
  if (wait_for_frees) ev_wait(&orph_freed);
  return NULL; /* exits with every block live, or with all of them in the mailbox */
}

static void *orph_freer(void *arg) {
  (void)arg;
  set_node(1);
  for (int i = 0; i < ORPHANS; i++)
    check_free(orphan[i], "node-1 freer");
  hakmem_flush(); /* every batch in node 0's mailbox */
  return NULL;
}

static int orphans(int late) {
  uint64_t before = baseline();
  hak_stats_t s0 = stats();
  pthread_t owner;
  CHECK(pthread_create(&owner, NULL, orph_owner, (void *)(uintptr_t)!late) == 0, "pthread_create");
  ev_wait(&orph_made);
  if (late) pthread_join(owner, NULL); /* gone before any free */
  on_thread(orph_freer, NULL);
  hak_stats_t s1 = stats();
  if (!late) {
    ev_set(&orph_freed);
    pthread_join(owner, NULL); /* its exit finds the frees in the mailbox */
  } else {
    on_thread(flush_on_node0, NULL); /* nobody on node 0 was left to drain */
  }
  hak_stats_t s2 = stats();
  uint64_t cross = s1.remote_frees_cross_node - s0.remote_frees_cross_node;
  uint64_t drained = s2.blocks_drained - s0.blocks_drained;
  CHECK(cross == ORPHANS, "%d cross-node frees, remote_frees_cross_node moved by %llu", ORPHANS,
        (unsigned long long)cross);
  CHECK(drained == cross, "%s: blocks_drained moved by %llu for %llu cross-node frees",
        late ? "frees for exited owners, then a node-0 flush" : "owner exited with frees waiting",
        (unsigned long long)drained, (unsigned long long)cross);
  printf("%s: %llu frees drained; pages abandoned %llu, adopted %llu\n",
         late ? "orphan_late" : "orphan", (unsigned long long)drained,
         (unsigned long long)(s2.pages_abandoned - s0.pages_abandoned),
         (unsigned long long)(s2.pages_adopted - s0.pages_adopted));
  check_back(before, late ? "orphan_late" : "orphan");
  return 0;
}

/* ---- HAKMEM_MAILBOX_BATCH=1 ---- */

static int batch1(void) {
  uint64_t before = baseline();
  hak_stats_t s0 = stats();
  pthread_t owner;
  CHECK(pthread_create(&owner, NULL, orph_owner, (void *)(uintptr_t)1) == 0, "pthread_create");
  ev_wait(&orph_made);
  on_thread(orph_freer, NULL);
  ev_set(&orph_freed);
  pthread_join(owner, NULL);
  hak_stats_t s1 = stats();
  uint64_t cross = s1.remote_frees_cross_node - s0.remote_frees_cross_node;
  CHECK(cross == ORPHANS, "%d cross-node frees, remote_frees_cross_node moved by %llu", ORPHANS,
        (unsigned long long)cross);
  CHECK(s1.batches_sent == s0.batches_sent && s1.blocks_drained == s0.blocks_drained,
        "HAKMEM_MAILBOX_BATCH=1: %llu batches sent, %llu blocks drained; expected none",
        (unsigned long long)(s1.batches_sent - s0.batches_sent),
        (unsigned long long)(s1.blocks_drained - s0.blocks_drained));
  printf("batch1: %llu cross-node frees straight to the pages' remote lists\n",
         (unsigned long long)cross);
  check_back(before, "batch1");
  return 0;
}

int main(int argc, char **argv) {
  if (argc > 1) {
    CHECK(hak_node_count() == 2, "HAKMEM_NODES=2, but hak_node_count() = %d", hak_node_count());
    if (!strcmp(argv[1], "prodcons")) return prodcons();
    if (!strcmp(argv[1], "partial")) return partial(1);
    if (!strcmp(argv[1], "partial_exit")) return partial(0);
    if (!strcmp(argv[1], "orphan")) return orphans(0);
    if (!strcmp(argv[1], "orphan_late")) return orphans(1);
    if (!strcmp(argv[1], "batch1")) return batch1();
    if (!strcmp(argv[1], "large")) return large_blocks();
    if (!strcmp(argv[1], "own_foreign")) return own_blocks();
    FAIL("unknown mode %s", argv[1]);
  }
  static struct child c;
  const char *nodes2[] = {"HAKMEM_NODES=2", NULL};
  const char *modes[] = {"prodcons",    "partial", "partial_exit", "orphan",
                         "orphan_late", "large",   "own_foreign"};
  for (size_t i = 0; i < sizeof modes / sizeof modes[0]; i++) {
    child_must_pass(modes[i], nodes2, &c);
    fputs(c.err, stderr);
  }
  const char *one[] = {"HAKMEM_NODES=2", "HAKMEM_MAILBOX_BATCH=1", NULL};
  child_must_pass("batch1", one, &c);
  fputs(c.err, stderr);
  printf("numa_mailbox: ok\n");
  return 0;
}
