/* Remote frees handed over in chains: a thread with a heap keeps the blocks
 * it frees into another heap's page in its stash and hands them to the page
 * with one push per chain (remote.c).
 *
 * counts: one freer, counted exactly. 64 blocks of 1 KiB go over in chains
 *   of 8 KiB (remote_handoffs an eighth of the frees, not one each); 32
 *   blocks of 64 B wait for hakmem_flush, then for the freer's exit. While
 *   its blocks wait in a stash, their page's owner exits and the freer
 *   adopts the page: it must get every block it stashed back from its own
 *   page.
 * checks: once a freer's stash gathers a page, its next frees into that
 *   page are checked against the blocks the stash noted, not the page's
 *   descriptor: an interior pointer, the page's tail past its last block
 *   and a pointer below its first block each count one invalid free and
 *   leave the blocks intact; the valid frees around them count as remote.
 * relife: a stash entry outlives its page's life. The freer stashes 5
 *   blocks of page P, another thread takes them (hakmem_flush) and P goes
 *   back to its region (malloc_trim); the entry still names P, its pushes
 *   and its chain's end are P's old life's. A third thread gets P again for
 *   the same class and the freer frees into it: an interior pointer, P's
 *   tail (and on page 0 its region header) count invalid against the
 *   entry's copy of P's blocks; every block of the new life counts remote
 *   and comes back exactly once (a chain handed over with the old life's
 *   end or count would lose blocks or hand them out twice). Then P's new
 *   life in another class (48 B) while the old entry still names P: an old
 *   block start that is none now counts invalid too. Each on a page inside
 *   a region and on a region's page 0, whose first block lies past the
 *   region header.
 * pairs: T threads in pairs free each other's 16-512 B blocks in batches,
 *   patterns checked; every block comes back (committed memory bounded)
 *   and the counters show chains (remote_frees several times
 *   remote_handoffs). Also built against the TSan build (-DSTRESS_HAK).
 * Usage: remote_stash [threads [rounds]] (of pairs; default 8 10000) */
#define _GNU_SOURCE
#include <malloc.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include "check.h"
#include "hakmem.h"
#include "t_alloc.h"

/* Every thread on the main thread's node: frees across nodes go through
 * the mailboxes, not the stash (HAKMEM_NODES=2, or a NUMA machine where the
 * scheduler puts a thread on the other node). */
static int node0;
static void same_node(void) {
  CHECK(hakmem_thread_set_node(node0) == 0, "hakmem_thread_set_node(%d)", node0);
}

static hak_stats_t stats(void) {
  hak_stats_t s;
  hak_stats_get(&s);
  return s;
}

/* ---- counts ---- */

#define NB 64
static void *blk[NB];
static size_t nblk, bsize;
static uint64_t handoffs_in_frees, handoffs_at_flush;

static void alloc_blocks(size_t n, size_t size) {
  nblk = n;
  bsize = size;
  for (size_t i = 0; i < n; i++) {
    blk[i] = T_MALLOC(size);
    CHECK(blk[i], "malloc(%zu) failed", size);
    fill_pattern(blk[i], size);
  }
}

static void *run(void *(*fn)(void *)) {
  pthread_t t;
  void *ret;
  CHECK(pthread_create(&t, NULL, fn, NULL) == 0, "pthread_create");
  CHECK(pthread_join(t, &ret) == 0, "pthread_join");
  return ret;
}

/* The freer: a heap of its own (a block of another class), then frees. */
static void free_blocks(void) {
  same_node();
  void *volatile own = T_MALLOC(3000);
  T_FREE(own);
  uint64_t before = stats().remote_handoffs;
  for (size_t i = 0; i < nblk; i++) {
    expect_pattern(blk[i], bsize);
    T_FREE(blk[i]);
  }
  handoffs_in_frees = stats().remote_handoffs - before;
}

static void *free_and_flush(void *arg) {
  (void)arg;
  free_blocks();
  uint64_t before = stats().remote_handoffs;
  hakmem_flush();
  handoffs_at_flush = stats().remote_handoffs - before;
  return NULL;
}

static void *free_and_exit(void *arg) {
  (void)arg;
  free_blocks();
  return NULL;
}

/* Stashes a page's blocks, waits for the page's owner to exit, adopts the
 * page, hands the chain over and allocates until every block is back. */
static pthread_mutex_t step_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t step_cond = PTHREAD_COND_INITIALIZER;
static int step;
static int got_back;
static uint64_t adopted;

static void wait_step(int s) {
  pthread_mutex_lock(&step_lock);
  while (step < s)
    pthread_cond_wait(&step_cond, &step_lock);
  pthread_mutex_unlock(&step_lock);
}

static void set_step(int s) {
  pthread_mutex_lock(&step_lock);
  step = s;
  pthread_cond_broadcast(&step_cond);
  pthread_mutex_unlock(&step_lock);
}

static void *stash_across_exit(void *arg) {
  (void)arg;
  wait_step(1);  /* the owner allocated */
  free_blocks(); /* 2 KiB of one page: all of it waits in the stash */
  set_step(2);
  wait_step(3); /* the owner has exited */
  uint64_t before = stats().pages_adopted;
  enum { MORE = 4096 };
  static void *more[MORE];
  int n = 0;
  more[n++] = T_MALLOC(64); /* the freer has no page of the class: adopts */
  hakmem_flush();
  for (; n < MORE && got_back < 32; n++) {
    more[n] = T_MALLOC(64);
    for (size_t i = 0; i < 32; i++)
      got_back += more[n] == blk[i];
  }
  adopted = stats().pages_adopted - before;
  for (int i = 0; i < n; i++)
    T_FREE(more[i]);
  return NULL;
}

static void *owner_allocs(void *arg) {
  (void)arg;
  same_node();
  alloc_blocks(32, 64);
  set_step(1);
  wait_step(2);
  return NULL; /* exits: its page, blocks still out, is abandoned */
}

static void across_exit(void) {
  pthread_t t;
  CHECK(pthread_create(&t, NULL, stash_across_exit, NULL) == 0, "pthread_create");
  run(owner_allocs);
  set_step(3);
  pthread_join(t, NULL);
}

static int counts(void) {
  hak_stats_t s0 = stats();
  alloc_blocks(NB, 1024);
  run(free_and_flush);
  hak_stats_t s1 = stats();
  printf("64 x 1 KiB freed by another thread: remote_frees %llu, handed over in %llu chains "
         "(%llu more at the flush)\n",
         (unsigned long long)(s1.remote_frees - s0.remote_frees),
         (unsigned long long)handoffs_in_frees, (unsigned long long)handoffs_at_flush);
  CHECK(s1.remote_frees - s0.remote_frees == NB, "remote_frees grew by %llu, not %d",
        (unsigned long long)(s1.remote_frees - s0.remote_frees), NB);
  /* 8 KiB a chain (STASH_BYTES); a page boundary among the blocks starts
   * another chain */
  CHECK(handoffs_in_frees >= NB / 8 - 1 && handoffs_in_frees <= NB / 8 + 2,
        "64 remote frees of 1 KiB made %llu hand-overs, not about 8",
        (unsigned long long)handoffs_in_frees);

  alloc_blocks(32, 64);
  run(free_and_flush);
  printf("32 x 64 B: %llu hand-overs while freeing, %llu at hakmem_flush\n",
         (unsigned long long)handoffs_in_frees, (unsigned long long)handoffs_at_flush);
  CHECK(handoffs_in_frees == 0, "2 KiB of frees were handed over before a flush (%llu)",
        (unsigned long long)handoffs_in_frees);
  CHECK(handoffs_at_flush >= 1 && handoffs_at_flush <= 2,
        "hakmem_flush handed over %llu chains, not the stash's 1 or 2",
        (unsigned long long)handoffs_at_flush);

  alloc_blocks(32, 64);
  uint64_t before = stats().remote_handoffs;
  run(free_and_exit);
  uint64_t at_exit = stats().remote_handoffs - before - handoffs_in_frees;
  printf("32 x 64 B, the freer exits: %llu hand-overs at its exit\n", (unsigned long long)at_exit);
  CHECK(handoffs_in_frees == 0 && at_exit >= 1 && at_exit <= 2,
        "thread exit did not hand the stash over (%llu while freeing, %llu at exit)",
        (unsigned long long)handoffs_in_frees, (unsigned long long)at_exit);

  across_exit();
  printf("owner exited, the freer adopted the page: %d of 32 stashed blocks came back\n", got_back);
  CHECK(adopted >= 1, "the freer adopted no page");
  CHECK(got_back == 32, "only %d of the 32 blocks stashed for an adopted page came back", got_back);
  return 0;
}

/* ---- checks ---- */

#define CHECK_SIZE 100 /* 112-byte blocks: a page's tail (16 B, 64 on page 0) holds no block */
#define CHECK_BS 112
static char *check_page[2]; /* two blocks next to each other on one page */
static uint64_t check_invalid, check_valid;

static void *free_checked(void *arg) {
  (void)arg;
  same_node();
  void *volatile own = T_MALLOC(3000);
  T_FREE(own);
  char *a = check_page[0], *b = check_page[1];
  uintptr_t base = (uintptr_t)a & ~(uintptr_t)0xFFFF;
  bool page0 = (base & (((uintptr_t)2 << 20) - 1)) == 0;
  char *first = (char *)base + (page0 ? 4096 : 0);
  size_t capacity = (size_t)((char *)base + 0x10000 - first) / CHECK_BS;
  hak_stats_t s0 = stats();
  T_FREE(a); /* starts the stash's entry for the page */
  T_FREE(opaque_ptr(b + 16));
  T_FREE(opaque_ptr(first + capacity * CHECK_BS));
  T_FREE(opaque_ptr(first - (page0 ? 16 : CHECK_BS))); /* page 0: into its region header */
  expect_pattern(b, CHECK_SIZE);
  T_FREE(b);
  hak_stats_t s1 = stats();
  check_invalid = s1.invalid_frees - s0.invalid_frees;
  check_valid = s1.remote_frees - s0.remote_frees;
  hakmem_flush();
  return NULL;
}

static int checks(void) {
  enum { N = 64 };
  void *p[N];
  for (int i = 0; i < N; i++) {
    p[i] = T_MALLOC(CHECK_SIZE);
    CHECK(p[i], "malloc failed");
    fill_pattern(p[i], CHECK_SIZE);
  }
  int i = 0;
  while (i + 1 < N && ((uintptr_t)p[i] >> 16 != (uintptr_t)p[i + 1] >> 16 ||
                       (char *)p[i + 1] - (char *)p[i] != CHECK_BS))
    i++;
  CHECK(i + 1 < N, "no two 112-byte blocks next to each other on a page");
  check_page[0] = p[i];
  check_page[1] = p[i + 1];
  run(free_checked);
  printf("3 bad frees among a stash's checked ones: invalid_frees %llu, remote_frees %llu\n",
         (unsigned long long)check_invalid, (unsigned long long)check_valid);
  CHECK(check_invalid == 3, "3 bad remote frees counted %llu invalid frees",
        (unsigned long long)check_invalid);
  CHECK(check_valid == 2, "2 good remote frees counted %llu", (unsigned long long)check_valid);
  for (int k = 0; k < N; k++)
    if (k != i && k != i + 1) {
      expect_pattern(p[k], CHECK_SIZE);
      T_FREE(p[k]);
    }
  return 0;
}

/* ---- relife ---- */

#define RELIFE_OLD 5      /* blocks of P's old life in the entry */
#define RELIFE_MAX 100000 /* blocks the new owner allocates looking for P */
static char *relife_base, *relife_first;
static size_t relife_size, relife_bs, relife_cap; /* P's new life: malloc size, blocks */
static void *relife_old[RELIFE_OLD];
static void **relife_new; /* the new owner's blocks on P, relife_cap of them */
static uint64_t relife_invalid, relife_valid;
static bool relife_missed; /* the pool gave P to none of the new owner's mallocs */

static bool on_relife_page(const void *p) {
  return (const char *)p >= relife_first && (const char *)p < relife_first + relife_cap * relife_bs;
}

/* Frees of no block of P's new life: an interior pointer, P's tail past its
 * last block, on page 0 the region header, and a block start of P's old
 * life that is none in the new one. Returns how many. */
static uint64_t relife_bad_frees(void) {
  uint64_t n = 0;
  char *tail = relife_first + relife_cap * relife_bs;
  T_FREE(opaque_ptr((char *)relife_new[0] + 16));
  n++;
  if (tail < relife_base + 0x10000) {
    T_FREE(opaque_ptr(tail));
    n++;
  }
  if (relife_first != relife_base) {
    T_FREE(opaque_ptr(relife_first - 16));
    n++;
  }
  if (CHECK_BS % relife_bs) {
    T_FREE(opaque_ptr(relife_first + CHECK_BS));
    n++;
  }
  return n;
}

/* The freer: P's old blocks into its stash, then (step 12) every block of
 * P's new life. */
static void *relife_freer(void *arg) {
  (void)arg;
  same_node();
  void *volatile own = T_MALLOC(3000);
  T_FREE(own);
  for (int i = 0; i < RELIFE_OLD; i++)
    T_FREE(relife_old[i]);
  set_step(11);
  wait_step(12);
  if (relife_missed) {
    set_step(13);
    return NULL;
  }
  hak_stats_t s0 = stats();
  uint64_t bad = relife_bad_frees(); /* against the entry's copy (same class) */
  T_FREE(relife_new[0]);
  bad += relife_bad_frees(); /* against the copy of P's new life */
  for (size_t i = 1; i < relife_cap; i++)
    T_FREE(relife_new[i]);
  hak_stats_t s1 = stats();
  relife_invalid = s1.invalid_frees - s0.invalid_frees - bad; /* 0: each counted */
  relife_valid = s1.remote_frees - s0.remote_frees;
  hakmem_flush();
  set_step(13);
  return NULL;
}

/* The new owner: allocates until it holds every block of P, then (step 13)
 * gets all of them back from the freer. */
static void *relife_owner(void *arg) {
  (void)arg;
  same_node();
  static void *other[RELIFE_MAX];
  size_t n = 0, mine = 0;
  while (n < RELIFE_MAX && mine < relife_cap) {
    void *p = T_MALLOC(relife_size);
    CHECK(p, "malloc failed");
    if (on_relife_page(p))
      relife_new[mine++] = p;
    else
      other[n++] = p;
  }
  relife_missed = mine < relife_cap;
  if (relife_missed) {
    for (size_t i = 0; i < mine; i++)
      T_FREE(relife_new[i]);
    for (size_t i = 0; i < n; i++)
      T_FREE(other[i]);
  }
  set_step(12);
  if (relife_missed) return NULL;
  wait_step(13);
  /* every block back on P once: capacity mallocs, all on P, all distinct */
  void **again = calloc(relife_cap, sizeof *again);
  CHECK(again, "calloc");
  size_t on = 0;
  for (size_t i = 0; i < relife_cap; i++) {
    again[i] = T_MALLOC(relife_size);
    CHECK(again[i], "malloc failed");
    on += on_relife_page(again[i]);
    for (size_t k = 0; k < i; k++)
      CHECK(again[k] != again[i], "block %p handed out twice", again[i]);
  }
  CHECK(on == relife_cap, "only %zu of the %zu blocks freed into P's new life came back", on,
        relife_cap);
  for (size_t i = 0; i < relife_cap; i++)
    T_FREE(again[i]);
  for (size_t i = 0; i < n; i++)
    T_FREE(other[i]);
  free(again);
  return NULL;
}

/* P: the page of main's first block on a region's page 0 (page0) or on
 * another; false when it has none. Its new life: blocks of
 * size bytes, bs apart (one-page spans). */
static bool relife(bool page0, size_t size, size_t bs) {
  enum { N = 40000 };
  static void *p[N];
  int n = page0 ? N : 1200; /* at least two pages: the one emptied goes back */
  relife_base = NULL;
  for (int i = 0; i < n; i++) {
    p[i] = T_MALLOC(CHECK_SIZE);
    CHECK(p[i], "malloc failed");
    uintptr_t base = (uintptr_t)p[i] & ~(uintptr_t)0xFFFF;
    if (!relife_base && page0 == ((base & (((uintptr_t)2 << 20) - 1)) == 0))
      relife_base = (char *)base;
  }
  if (!relife_base) {
    printf("no 112-byte block of %d on a page %s0 of its region\n", n, page0 ? "" : "other than ");
    for (int i = 0; i < n; i++)
      T_FREE(p[i]);
    return false;
  }
  relife_first = relife_base + (page0 ? 4096 : 0);
  relife_size = size;
  relife_bs = bs;
  relife_cap = (size_t)(relife_base + 0x10000 - relife_first) / bs;
  relife_new = calloc(relife_cap, sizeof *relife_new);
  CHECK(relife_new, "calloc");
  for (int i = 0, k = 0; i < n && k < RELIFE_OLD; i++)
    if ((char *)((uintptr_t)p[i] & ~(uintptr_t)0xFFFF) == relife_base) {
      relife_old[k++] = p[i];
      p[i] = NULL;
    }
  set_step(10);
  pthread_t freer, owner;
  CHECK(pthread_create(&freer, NULL, relife_freer, NULL) == 0, "pthread_create");
  wait_step(11);
  uint64_t before = stats().remote_handoffs;
  hakmem_flush(); /* takes the freer's entry: the blocks go back to P */
  CHECK(stats().remote_handoffs - before == 1, "hakmem_flush took %llu chains, not the entry",
        (unsigned long long)(stats().remote_handoffs - before));
  /* P goes back to its region, the only free page of it, as main keeps
   * its other blocks: the pool gives P to the new owner's next span */
  for (int i = 0; i < n; i++)
    if (p[i] && (char *)((uintptr_t)p[i] & ~(uintptr_t)0xFFFF) == relife_base) {
      T_FREE(p[i]);
      p[i] = NULL;
    }
  T_TRIM(0);
  CHECK(pthread_create(&owner, NULL, relife_owner, NULL) == 0, "pthread_create");
  pthread_join(freer, NULL);
  pthread_join(owner, NULL);
  for (int i = 0; i < n; i++)
    T_FREE(p[i]);
  free(relife_new);
  if (relife_missed) {
    printf("page %p: the pool gave it to none of %d mallocs, not checked\n", (void *)relife_base,
           RELIFE_MAX);
    return false;
  }
  printf("page %p%s of 112-byte blocks, then of %zu-byte ones, %zu blocks: bad frees' "
         "invalid_frees short by %llu, %llu remote frees\n",
         (void *)relife_base, page0 ? " (page 0)" : "", bs, relife_cap,
         (unsigned long long)relife_invalid, (unsigned long long)relife_valid);
  CHECK(relife_invalid == 0, "bad frees into the new life counted %lld invalid frees too few",
        (long long)relife_invalid);
  CHECK(relife_valid == relife_cap, "%zu good frees into the new life counted %llu remote",
        relife_cap, (unsigned long long)relife_valid);
  return true;
}

static int relives(void) {
  relife(false, CHECK_SIZE, CHECK_BS);
  relife(false, 40, 48); /* another class: the old entry names P still */
#ifndef STRESS_HAK       /* the page-0 hunt's 10^5 mallocs: minutes under TSan */
  relife(true, CHECK_SIZE, CHECK_BS);
  relife(true, 40, 48);
#endif
  return 0;
}

/* ---- pairs ---- */

#define BATCH 64
#define QUEUE 4

struct item {
  void *p;
  size_t n;
};

#include "pair_ring.h"

struct side {
  struct pair *pair;
  int side, rounds;
  uint64_t seed;
};

static void *side_main(void *arg) {
  struct side *w = arg;
  struct pair *q = w->pair;
  int me = w->side;
  struct rng r = {w->seed};
  struct item mine[BATCH], theirs[BATCH];
  int sent = 0, received = 0;
  same_node();
  bool have = false;
  while (sent < w->rounds || received < w->rounds) {
    if (!have && sent < w->rounds) {
      for (int i = 0; i < BATCH; i++) {
        mine[i].n = 16 + rng_next(&r) % 497;
        mine[i].p = T_MALLOC(mine[i].n);
        CHECK(mine[i].p, "malloc failed");
        fill_pattern(mine[i].p, mine[i].n);
      }
      have = true;
    }
    bool had = have, got = pair_exchange(q, me, mine, &have, theirs);
    if (had && !have) sent++;
    if (got) {
      for (int i = 0; i < BATCH; i++) {
        expect_pattern(theirs[i].p, theirs[i].n);
        T_FREE(theirs[i].p);
      }
      received++;
    }
  }
  return NULL;
}

static int pairs(int threads, int rounds) {
  int npairs = threads / 2;
  struct pair *q = calloc((size_t)npairs, sizeof *q);
  struct side *w = calloc((size_t)npairs * 2, sizeof *w);
  pthread_t *t = calloc((size_t)npairs * 2, sizeof *t);
  CHECK(q && w && t, "calloc");
  hak_stats_t s0 = stats();
  for (int i = 0; i < npairs; i++) {
    pthread_mutex_init(&q[i].lock, NULL);
    pthread_cond_init(&q[i].cond, NULL);
    for (int s = 0; s < 2; s++) {
      w[2 * i + s] = (struct side){&q[i], s, rounds, (uint64_t)(2 * i + s + 1) * 7919};
      CHECK(pthread_create(&t[2 * i + s], NULL, side_main, &w[2 * i + s]) == 0, "pthread_create");
    }
  }
  for (int i = 0; i < 2 * npairs; i++)
    pthread_join(t[i], NULL);
  hak_stats_t s1 = stats();
  uint64_t frees = s1.remote_frees - s0.remote_frees,
           handoffs = s1.remote_handoffs - s0.remote_handoffs;
  printf("%d threads, %d batches each way: remote_frees %llu in %llu hand-overs, "
         "remote_blocks_collected %llu, committed %llu KiB\n",
         threads, rounds, (unsigned long long)frees, (unsigned long long)handoffs,
         (unsigned long long)(s1.remote_blocks_collected - s0.remote_blocks_collected),
         (unsigned long long)(s1.committed_bytes >> 10));
  CHECK(frees >= (uint64_t)npairs * rounds * BATCH, "only %llu remote frees",
        (unsigned long long)frees);
  CHECK(handoffs > 0 && frees >= 4 * handoffs,
        "remote frees were not handed over in chains: %llu frees, %llu hand-overs",
        (unsigned long long)frees, (unsigned long long)handoffs);
  /* the blocks in flight are a few batches per pair: what came back was
   * reused, so memory stays far below one page per block batch sent (it
   * may shrink: regions emptied meanwhile are purged) */
  CHECK(s1.committed_bytes < s0.committed_bytes + (uint64_t)threads * (4u << 20),
        "committed memory grew by %llu KiB",
        (unsigned long long)((s1.committed_bytes - s0.committed_bytes) >> 10));
  free(q);
  free(w);
  free(t);
  return 0;
}

int main(int argc, char **argv) {
  node0 = hakmem_thread_node();
  return counts() || checks() || relives() ||
         pairs(argc > 1 ? atoi(argv[1]) : 8, argc > 2 ? atoi(argv[2]) : 10000);
}
