/* kmem's purge engines called directly (kmem/purge.c): for each engine the
 * kernel has (uring, vector, sync), every submitted range is reported done
 * exactly once, only after it reads zero, and counted; a reap that waits
 * returns with its ranges zero; bad ranges report failure without dropping
 * the engine; the queue says when it is full; threads submit and reap at
 * once (some exit with purges in flight); a forked child neither uses nor
 * disturbs the parent's ring. Each case runs in a fresh child process, with
 * HAKMEM_PURGE=off and no background thread in case the allocator is linked
 * in: it must never reap here, every completion is this test's. Exits 77
 * when uring or vector is missing from the kernel, after checking the
 * fallbacks. */
#define _GNU_SOURCE
#include "../kmem/kmem.h"
#include "purge_util.h"
#include "spawn.h"

#include <pthread.h>
#include <stdatomic.h>
#include <sys/mman.h>
#include <sys/syscall.h>

void kmem_purge_fork_child(void);

#define SMALL ((size_t)64 << 10)
#define BIG ((size_t)2 << 20)
#define MAXR 4096

typedef struct range {
  char *p;
  size_t len;
} range_t;

static range_t ranges[MAXR];
static size_t nranges;
static _Atomic int calls[MAXR];
static _Atomic int oks[MAXR];
static _Atomic int early; /* reported done before the range read zero */

static char *map(size_t len) {
  char *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  CHECK(p != MAP_FAILED, "mmap of %zu bytes failed", len);
  madvise(p, len, MADV_NOHUGEPAGE); /* RSS in whole 4 KiB pages */
  return p;
}

static bool reads_zero(const char *p, size_t len, size_t stride) {
  for (size_t off = 0; off < len; off += stride)
    if (*(const volatile uint64_t *)(p + off) != 0) return false;
  return len < 8 || *(const volatile uint64_t *)(p + len - 8) == 0;
}

static size_t add_range(char *p, size_t len) {
  CHECK(nranges < MAXR, "too many ranges");
  ranges[nranges] = (range_t){p, len};
  return nranges++;
}

static void *cookie_of(size_t i) {
  return (void *)(uintptr_t)(i + 1);
}

/* Runs on whichever thread reaps: the range must read zero by now. */
static void done(void *cookie, bool ok) {
  size_t i = (size_t)(uintptr_t)cookie - 1;
  if (i >= nranges) {
    atomic_fetch_add(&early, 1000000);
    return;
  }
  if (ok && ((uintptr_t)ranges[i].p & 4095) == 0 && !reads_zero(ranges[i].p, ranges[i].len, 4096))
    atomic_fetch_add(&early, 1);
  atomic_fetch_add(&calls[i], 1);
  atomic_store(&oks[i], ok);
}

static void submit(size_t i) {
  while (!kmem_purge_submit(ranges[i].p, ranges[i].len, cookie_of(i)))
    kmem_purge_reap(done, false);
}

static void check_reported(size_t from, size_t to, const char *what) {
  CHECK(atomic_load(&early) == 0, "%s: %d ranges reported done before they read zero", what,
        atomic_load(&early));
  for (size_t i = from; i < to; i++)
    CHECK(atomic_load(&calls[i]) == 1, "%s: range %zu (%zu bytes) reported %d times", what, i,
          ranges[i].len, atomic_load(&calls[i]));
}

static void init_engine(int e) {
  kmem_config_t cfg = {.purge_engine = e, .purge_engine_asked = true};
  kmem_init(&cfg);
}

/* The engine e should be in use: FAIL if kmem fell back although the kernel
 * has it; false if the kernel lacks it (the fallback was right). */
static bool engine_in_use(int e) {
  int got = kmem_purge_engine();
  if (got == e) return true;
  CHECK(!kernel_has(e), "HAKMEM_PURGE_ENGINE=%s: kmem uses %s although the kernel has %s",
        engine_names[e], engine_names[got], engine_names[e]);
  CHECK(got > e, "fell back from %s to %s", engine_names[e], engine_names[got]);
  return false;
}

static uint64_t via(const kmem_stats_t *s, int e) {
  return e == KMEM_PURGE_URING ? s->purges_uring : e == KMEM_PURGE_VECTOR ? s->purges_vector : 0;
}

/* 32 MiB as 64 KiB ranges and 32 MiB as 2 MiB ranges, interleaved: all come
 * back, zero, counted once, via the engine. */
static void case_basic(int e) {
  init_engine(e);
  CHECK(kmem_purge_engine() == e, "before the first reap the engine is %d, not the one asked",
        kmem_purge_engine());
  size_t len = (size_t)64 << 20, half = len / 2;
  char *a = map(len);
  memset(a, 0xAB, len);
  for (size_t s = 0, b = 0; s < half / SMALL; s++) {
    add_range(a + s * SMALL, SMALL);
    if (s % 32 == 31) add_range(a + half + b++ * BIG, BIG);
  }
  size_t rss0 = rss_bytes();
  kmem_stats_t s0, s1;
  kmem_stats_get(&s0);
  for (size_t i = 0; i < nranges; i++)
    submit(i);
  kmem_purge_reap(done, true);
  size_t rss1 = rss_bytes();
  kmem_stats_get(&s1);
  check_reported(0, nranges, "basic");
  for (size_t i = 0; i < nranges; i++)
    CHECK(atomic_load(&oks[i]), "range %zu not purged", i);
  CHECK(reads_zero(a, len, 8), "purged memory does not read zero");
  CHECK(rss0 - rss1 >= len - len / 8, "RSS went from %zu to %zu KiB only", rss0 >> 10, rss1 >> 10);
  CHECK(s1.purges - s0.purges == nranges, "purges counted %llu, not %zu",
        (unsigned long long)(s1.purges - s0.purges), nranges);
  CHECK(s1.purged_bytes - s0.purged_bytes == len, "purged_bytes counted %llu, not %zu",
        (unsigned long long)(s1.purged_bytes - s0.purged_bytes), len);
  bool in_use = engine_in_use(e);
  int used = kmem_purge_engine();
  for (int k = KMEM_PURGE_URING; k < KMEM_PURGE_SYNC; k++) {
    uint64_t want = k == used ? nranges : 0, got = via(&s1, k) - via(&s0, k);
    CHECK(got == want, "%s: purges via %s counted %llu, not %llu", engine_names[e], engine_names[k],
          (unsigned long long)got, (unsigned long long)want);
  }
  printf("basic %s: %zu ranges, RSS %zu -> %zu KiB, engine %s%s\n", engine_names[e], nranges,
         rss0 >> 10, rss1 >> 10, engine_names[used], in_use ? "" : " (kernel lacks the one asked)");
}

/* Has kmem choose its engine (on the first purge it sends) and says which. */
static int choose_engine(void) {
  char *p = map(4096);
  size_t i = add_range(p, 4096);
  submit(i);
  kmem_purge_reap(done, true);
  CHECK(atomic_load(&calls[i]) == 1 && atomic_load(&oks[i]), "a first purge failed");
  return kmem_purge_engine();
}

/* A misaligned and an unmapped range fail between good ones; the engine stays. */
static void case_bad(int e) {
  init_engine(e);
  int before = choose_engine();
  size_t first = nranges;
  char *a = map(8 * SMALL);
  memset(a, 0x11, 8 * SMALL);
  munmap(a + 4 * SMALL, SMALL);
  size_t g0 = add_range(a, SMALL);
  size_t b0 = add_range(a + SMALL + 1, 4096);
  size_t g1 = add_range(a + 2 * SMALL, SMALL);
  size_t b1 = add_range(a + 4 * SMALL, SMALL);
  size_t g2 = add_range(a + 5 * SMALL, 3 * SMALL);
  kmem_stats_t s0, s1;
  kmem_stats_get(&s0);
  for (size_t i = first; i < nranges; i++)
    submit(i);
  kmem_purge_reap(done, true);
  kmem_stats_get(&s1);
  check_reported(first, nranges, "bad ranges");
  CHECK(atomic_load(&oks[g0]) && atomic_load(&oks[g1]) && atomic_load(&oks[g2]),
        "a good range next to bad ones was not purged");
  CHECK(!atomic_load(&oks[b0]), "a misaligned range was reported purged");
  CHECK(!atomic_load(&oks[b1]), "an unmapped range was reported purged");
  CHECK(kmem_purge_engine() == before, "bad ranges made kmem drop %s for %s", engine_names[before],
        engine_names[kmem_purge_engine()]);
  CHECK(s1.purges - s0.purges == 3, "purges counted %llu for 3 good ranges",
        (unsigned long long)(s1.purges - s0.purges));
  CHECK(via(&s1, before) - via(&s0, before) == (before == KMEM_PURGE_SYNC ? 0 : 3),
        "purges via %s counted %llu for 3 good ranges", engine_names[before],
        (unsigned long long)(via(&s1, before) - via(&s0, before)));
  CHECK(reads_zero(a, SMALL, 8) && reads_zero(a + 2 * SMALL, SMALL, 8) &&
            reads_zero(a + 5 * SMALL, 3 * SMALL, 8),
        "good ranges do not read zero");
  CHECK(a[SMALL + 1] == 0x11, "a range that failed changed");
  printf("bad %s: engine %s kept\n", engine_names[e], engine_names[before]);
}

/* The queue takes 128 purges between reaps, then says no. */
static void case_queue(int e) {
  init_engine(e);
  char *a = map(256 * 4096);
  memset(a, 0x22, 256 * 4096);
  for (size_t i = 0; i < 256; i++)
    add_range(a + i * 4096, 4096);
  size_t took = 0;
  while (took < 256 && kmem_purge_submit(ranges[took].p, 4096, cookie_of(took)))
    took++;
  CHECK(took == 128, "the queue took %zu purges before saying it is full", took);
  size_t got = kmem_purge_reap(done, true);
  CHECK(got == 128, "a waiting reap completed %zu of 128 purges", got);
  for (size_t i = 128; i < 256; i++)
    submit(i);
  kmem_purge_reap(done, true);
  check_reported(0, 256, "queue");
  CHECK(reads_zero(a, 256 * 4096, 8), "purged memory does not read zero");
  printf("queue %s: full at 128\n", engine_names[e]);
}

/* ---- threads ---- */

#define THREADS 4
#define PER_THREAD 300
#define QUITTERS 2
#define PER_QUITTER 100

typedef struct worker {
  pthread_t tid;
  size_t first, count;
  bool wait; /* reaps with wait at the end and checks its ranges */
  int bad;
} worker_t;

static void *worker_main(void *arg) {
  worker_t *w = arg;
  for (size_t i = w->first; i < w->first + w->count; i++) {
    memset(ranges[i].p, 0xCD, ranges[i].len);
    submit(i);
    if (i % 16 == 0) kmem_purge_reap(done, false);
  }
  kmem_purge_reap(done, w->wait);
  if (w->wait)
    for (size_t i = w->first; i < w->first + w->count; i++)
      if (!reads_zero(ranges[i].p, ranges[i].len, 4096)) w->bad++;
  return NULL; /* quitters leave purges in flight: io_uring cancels them */
}

static void case_threads(int e) {
  init_engine(e);
  worker_t w[THREADS + QUITTERS];
  size_t total = THREADS * PER_THREAD + QUITTERS * PER_QUITTER;
  char *a = map(total * SMALL);
  for (size_t i = 0; i < total; i++)
    add_range(a + i * SMALL, SMALL);
  size_t next = 0;
  for (int t = 0; t < THREADS + QUITTERS; t++) {
    w[t] = (worker_t){
        .first = next, .count = t < THREADS ? PER_THREAD : PER_QUITTER, .wait = t < THREADS};
    next += w[t].count;
    CHECK(pthread_create(&w[t].tid, NULL, worker_main, &w[t]) == 0, "pthread_create failed");
  }
  for (int t = 0; t < THREADS + QUITTERS; t++) {
    pthread_join(w[t].tid, NULL);
    CHECK(w[t].bad == 0, "thread %d: %d ranges not zero after its waiting reap", t, w[t].bad);
  }
  kmem_purge_reap(done, true);
  check_reported(0, total, "threads");
  for (size_t i = 0; i < total; i++)
    CHECK(atomic_load(&oks[i]), "range %zu not purged", i);
  CHECK(reads_zero(a, total * SMALL, 4096), "purged memory does not read zero");
  printf("threads %s: %zu ranges from %d threads, engine %s\n", engine_names[e], total,
         THREADS + QUITTERS, engine_names[kmem_purge_engine()]);
}

/* ---- fork with purges in flight ---- */

static void case_fork(int e) {
  init_engine(e);
  /* as the allocator does (here it is not linked in: nothing calls malloc) */
  pthread_atfork(kmem_fork_prepare, kmem_fork_release, kmem_fork_release);
  int parent_engine = choose_engine();
  size_t first = nranges, count = 1024;
  char *a = map(count * SMALL);
  memset(a, 0xEF, count * SMALL);
  for (size_t i = 0; i < count; i++)
    add_range(a + i * SMALL, SMALL);
  for (size_t i = first; i < nranges; i++)
    submit(i);
  kmem_purge_reap(done, false); /* sent, mostly not finished */
  fflush(NULL);
  pid_t pid = fork();
  CHECK(pid >= 0, "fork failed");
  if (pid == 0) {
    /* kmem_fork_release dropped the ring */
    CHECK(io_uring_fds() == 0, "the child still holds the parent's io_uring fd");
    kmem_purge_fork_child(); /* again: harmless */
    kmem_purge_reap(done, true);
    check_reported(first, nranges, "fork child");
    CHECK(kmem_purge_engine() != KMEM_PURGE_URING, "the child uses io_uring");
    CHECK(reads_zero(a, count * SMALL, 4096), "child: purged memory does not read zero");
    size_t more = add_range(map(BIG), BIG);
    memset(ranges[more].p, 1, BIG);
    submit(more);
    kmem_purge_reap(done, true);
    check_reported(more, more + 1, "fork child, after");
    CHECK(reads_zero(ranges[more].p, BIG, 8), "child: a new purge does not read zero");
    fflush(NULL);
    _exit(0);
  }
  kmem_purge_reap(done, true);
  int status;
  CHECK(waitpid(pid, &status, 0) == pid, "waitpid failed");
  CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0, "the child failed (status %#x)", status);
  check_reported(first, first + count, "fork parent");
  CHECK(reads_zero(a, count * SMALL, 4096), "parent: purged memory does not read zero");
  CHECK(kmem_purge_engine() == parent_engine, "the parent's engine changed across fork");
  printf("fork %s: parent kept %s, child checked\n", engine_names[e], engine_names[parent_engine]);
}

int main(int argc, char **argv) {
  static const char *const cases[] = {"basic", "bad", "queue", "threads", "fork"};
  if (argc > 1) {
    char what[32];
    snprintf(what, sizeof what, "%s", argv[1]);
    char *colon = strchr(what, ':');
    CHECK(colon, "mode %s is not case:engine", argv[1]);
    *colon = 0;
    int e = engine_of(colon + 1);
    if (!strcmp(what, "basic"))
      case_basic(e);
    else if (!strcmp(what, "bad"))
      case_bad(e);
    else if (!strcmp(what, "queue"))
      case_queue(e);
    else if (!strcmp(what, "threads"))
      case_threads(e);
    else if (!strcmp(what, "fork"))
      case_fork(e);
    else
      FAIL("unknown case %s", what);
    return 0;
  }
  static const char *const env[] = {"HAKMEM_PURGE=off", "HAKMEM_BACKGROUND=0", NULL};
  static struct child c;
  char mode[32];
  for (int e = 0; e < 3; e++)
    for (size_t k = 0; k < sizeof cases / sizeof *cases; k++) {
      snprintf(mode, sizeof mode, "%s:%s", cases[k], engine_names[e]);
      run_self(mode, env, &c);
      if (!exited_ok(&c)) {
        fprintf(stderr, "%s", c.err);
        FAIL("%s: child failed (status %#x)", mode, c.status);
      }
    }
  for (int e = 0; e < 2; e++)
    if (!kernel_has(e)) SKIP("the kernel has no %s engine (its fallback works)", engine_names[e]);
  printf("purge_kmem: all cases passed\n");
  return 0;
}
