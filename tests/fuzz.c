/* Shadow-model fuzzer. Worker threads (4 by default) run random operation
 * sequences from fixed seeds: malloc, calloc (zero checked), realloc (the
 * kept prefix checked), free, posix_memalign / aligned_alloc / memalign
 * (alignment checked), malloc_usable_size (at least the size asked),
 * sizes mostly 1 B-1 KiB, some 1-128 KiB, a few 128 KiB-4 MiB, rarely up to
 * 16 MiB. Every live block holds a pattern derived from its address and a
 * serial number (all of it up to 64 KiB, 64 bytes every 4 or 64 KiB and
 * the end beyond), checked before it is freed, reallocated or taken over.
 *  - Ownership: a thread's own slots, and a shared pool of slots (each with
 *    its own mutex) where a block is swapped for another, so most blocks
 *    end up freed by another thread than the one that allocated them.
 *  - Overlap: a sorted set of the live blocks' [p, p + usable) ranges under
 *    a mutex; a new block that intersects a live one was handed out twice.
 *    A block leaves the set before it is freed or reallocated.
 *  - Threads end after a random number of operations (handing their blocks
 *    to the pool first) and new ones start, until the time is up.
 *  - At random: malloc_trim(0); fork, whose child checks some of the
 *    forking thread's blocks, allocates and frees a little and _exits
 *    (a child not done in 10 s, or a nonzero status, fails the test);
 *    linked with hakmem, hak_thread_done (the heap dropped mid-run).
 * A watchdog fails the test when it is not done 40 s after its time.
 * Built twice: linked with hakmem (the Makefile's rule), and with
 * -DTEST_PRELOAD against libc only (build/tests/fuzz_preload), to be run with
 * LD_PRELOAD=<an allocator's .so>.
 * Usage: fuzz [seconds [seed [threads]]] (default 20 s, seed 1, 4 threads;
 * HAKMEM_SOAK=1: 300 s). Prints "ops N" at the end. */
#define _GNU_SOURCE
#include <errno.h>
#include <malloc.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <sys/wait.h>
#include "check.h"
#include "watchdog.h"
#ifndef TEST_PRELOAD
#include "hakmem.h"
#endif

#define MAXTHREADS 16
#define LOCAL 128
#define POOL 512
#define MAXLIVE (MAXTHREADS * (LOCAL + 8) + POOL)
#define DENSE (64 * 1024) /* blocks up to this size are filled whole */

struct blk {
  char *p;
  size_t n;
  uint64_t serial;
};

static atomic_ullong serials, total_ops, forks, trims;
static atomic_int stop;
static uint64_t base_seed = 1;

/* ---- the pattern ---- */

static const void *key_of(const struct blk *b) {
  return (const void *)((uintptr_t)b->p ^ (b->serial * 0x9E3779B97F4A7C15ull));
}

static size_t stride_of(size_t n) {
  return n <= (1u << 20) ? 4096 : 65536;
}

/* The ranges of a block of n bytes that carry the pattern: all of it, or
 * 64 bytes at every stride and the last 64 bytes. */
#define FOR_RANGES(n, from, to, body)                                                              \
  do {                                                                                             \
    if ((n) <= DENSE) {                                                                            \
      size_t from = 0, to = (n);                                                                   \
      body;                                                                                        \
    } else {                                                                                       \
      size_t st_ = stride_of(n);                                                                   \
      for (size_t off_ = 0; off_ < (n); off_ += st_) {                                             \
        size_t from = off_, to = off_ + 64 < (n) ? off_ + 64 : (n);                                \
        body;                                                                                      \
      }                                                                                            \
      size_t from = (n)-64, to = (n);                                                              \
      body;                                                                                        \
    }                                                                                              \
  } while (0)

static void fill_range(char *p, const void *key, size_t from, size_t to) {
  size_t i = from;
  for (; i < to && i % 8; i++)
    p[i] = (char)pattern_byte(key, i);
  for (; i + 8 <= to; i += 8) {
    uint64_t w = pattern_word(key, i / 8);
    memcpy(p + i, &w, 8);
  }
  for (; i < to; i++)
    p[i] = (char)pattern_byte(key, i);
}

/* First offset in [from, min(to, limit)) that differs, or SIZE_MAX. */
static size_t check_range(const char *p, const void *key, size_t from, size_t to, size_t limit) {
  if (to > limit) to = limit;
  size_t i = from;
  for (; i < to && i % 8; i++)
    if ((uint8_t)p[i] != pattern_byte(key, i)) return i;
  for (; i + 8 <= to; i += 8) {
    uint64_t w;
    memcpy(&w, p + i, 8);
    if (w != pattern_word(key, i / 8)) return i;
  }
  for (; i < to; i++)
    if ((uint8_t)p[i] != pattern_byte(key, i)) return i;
  return SIZE_MAX;
}

static void fill_blk(const struct blk *b) {
  FOR_RANGES(b->n, from, to, fill_range(b->p, key_of(b), from, to));
}

/* Checks the block's pattern in its bytes below limit, read at data (the
 * block itself, or where realloc moved it). SIZE_MAX when intact. */
static size_t check_blk_at(const struct blk *b, const char *data, size_t limit) {
  size_t bad = SIZE_MAX;
  FOR_RANGES(b->n, from, to, {
    if (bad == SIZE_MAX && from < limit) bad = check_range(data, key_of(b), from, to, limit);
  });
  return bad;
}

static void verify(const struct blk *b, const char *when) {
  size_t bad = check_blk_at(b, b->p, b->n);
  CHECK(bad == SIZE_MAX,
        "%s: block %p of %zu bytes (serial %llu) overwritten at offset %zu: freed or handed out "
        "while live",
        when, (void *)b->p, b->n, (unsigned long long)b->serial, bad);
}

/* ---- the overlap model ---- */

struct range {
  uintptr_t s, e;
};
static struct range live[MAXLIVE];
static size_t nlive;
static pthread_mutex_t live_lock = PTHREAD_MUTEX_INITIALIZER;

static size_t lower_bound(uintptr_t s) {
  size_t lo = 0, hi = nlive;
  while (lo < hi) {
    size_t mid = (lo + hi) / 2;
    if (live[mid].s < s)
      lo = mid + 1;
    else
      hi = mid;
  }
  return lo;
}

static void model_add(const struct blk *b, const char *what) {
  size_t usable = malloc_usable_size(b->p);
  CHECK(usable >= b->n, "%s(%zu) = %p: malloc_usable_size is %zu", what, b->n, (void *)b->p,
        usable);
  uintptr_t s = (uintptr_t)b->p, e = s + usable;
  pthread_mutex_lock(&live_lock);
  size_t i = lower_bound(s);
  if (i > 0 && live[i - 1].e > s)
    FAIL("%s(%zu) = %p (usable %zu) overlaps the live block [%p, %p): handed out twice", what, b->n,
         (void *)b->p, usable, (void *)live[i - 1].s, (void *)live[i - 1].e);
  if (i < nlive && live[i].s < e)
    FAIL("%s(%zu) = %p (usable %zu) overlaps the live block [%p, %p): handed out twice", what, b->n,
         (void *)b->p, usable, (void *)live[i].s, (void *)live[i].e);
  CHECK(nlive < MAXLIVE, "model full");
  memmove(&live[i + 1], &live[i], (nlive - i) * sizeof live[0]);
  live[i] = (struct range){s, e};
  nlive++;
  pthread_mutex_unlock(&live_lock);
}

static void model_remove(const struct blk *b) {
  uintptr_t s = (uintptr_t)b->p;
  pthread_mutex_lock(&live_lock);
  size_t i = lower_bound(s);
  CHECK(i < nlive && live[i].s == s, "block %p is not in the model", (void *)b->p);
  memmove(&live[i], &live[i + 1], (nlive - i - 1) * sizeof live[0]);
  nlive--;
  pthread_mutex_unlock(&live_lock);
}

/* ---- operations ---- */

static size_t random_size(struct rng *r) {
  uint64_t k = rng_next(r) % 1000;
  if (k < 800) return 1 + rng_next(r) % 1024;
  if (k < 950) return 1024 + rng_next(r) % (127 * 1024 + 1);
  if (k < 995) return (128 << 10) + rng_next(r) % ((4 << 20) - (128 << 10) + 1);
  return (4 << 20) + rng_next(r) % ((12 << 20) + 1);
}

static void check_align(uintptr_t p, size_t n, const char *what) {
  size_t a = n >= 16 ? 16 : n >= 8 ? 8 : 1;
  CHECK(p % a == 0, "%s(%zu) = %#lx not %zu-aligned", what, n, (unsigned long)p, a);
}

static void adopt(struct blk *b, const char *what) {
  b->serial = atomic_fetch_add(&serials, 1) + 1;
  model_add(b, what);
  fill_blk(b);
}

static void release(struct blk *b, const char *when) {
  if (!b->p) return;
  verify(b, when);
  model_remove(b);
  free(b->p);
  b->p = NULL;
}

static void op_malloc(struct rng *r, struct blk *b) {
  size_t n = random_size(r);
  char *p = malloc(n);
  CHECK(p, "malloc(%zu) failed: %s", n, strerror(errno));
  check_align((uintptr_t)p, n, "malloc");
  *b = (struct blk){p, n, 0};
  adopt(b, "malloc");
}

static void op_calloc(struct rng *r, struct blk *b) {
  size_t n = random_size(r), cnt = 1, sz = n;
  if (n % 8 == 0 && rng_next(r) % 2) cnt = 8, sz = n / 8;
  char *p = calloc(cnt, sz);
  CHECK(p, "calloc(%zu, %zu) failed: %s", cnt, sz, strerror(errno));
  check_align((uintptr_t)p, n, "calloc");
  size_t step = n <= (1u << 20) ? 1 : 509; /* every byte, or a sample of a big block */
  for (size_t i = 0; i < n; i += step)
    CHECK(p[i] == 0, "calloc(%zu, %zu) = %p: byte %zu is 0x%02x, not zero", cnt, sz, (void *)p, i,
          (uint8_t)p[i]);
  CHECK(p[n - 1] == 0, "calloc(%zu, %zu) = %p: last byte not zero", cnt, sz, (void *)p);
  *b = (struct blk){p, n, 0};
  adopt(b, "calloc");
}

static void op_aligned(struct rng *r, struct blk *b) {
  size_t align = (size_t)8 << (rng_next(r) % 19); /* 8 B .. 2 MiB */
  size_t n = random_size(r);
  char *p = NULL;
  const char *what;
  switch (rng_next(r) % 3) {
  case 0: {
    what = "posix_memalign";
    int rc = posix_memalign((void **)&p, align, n);
    CHECK(rc == 0 && p, "posix_memalign(%zu, %zu) failed: %d", align, n, rc);
    break;
  }
  case 1:
    what = "aligned_alloc";
    n = (n + align - 1) / align * align;
    p = aligned_alloc(align, n);
    CHECK(p, "aligned_alloc(%zu, %zu) failed: %s", align, n, strerror(errno));
    break;
  default:
    what = "memalign";
    p = memalign(align, n);
    CHECK(p, "memalign(%zu, %zu) failed: %s", align, n, strerror(errno));
    break;
  }
  CHECK((uintptr_t)p % align == 0, "%s(%zu, %zu) = %p misaligned", what, align, n, (void *)p);
  *b = (struct blk){p, n, 0};
  adopt(b, what);
}

static void op_realloc(struct rng *r, struct blk *b) {
  if (!b->p) return op_malloc(r, b);
  verify(b, "before realloc");
  size_t to =
      rng_next(r) % 4 ? random_size(r) : b->n + 1 + rng_next(r) % 64; /* some grow a little */
  struct blk old = *b;
  old.p = opaque_ptr(old.p); /* its address is the old pattern's key, used after realloc */
  uintptr_t was = (uintptr_t)old.p;
  model_remove(b);
  char *q = realloc(b->p, to);
  CHECK(q, "realloc(%#lx, %zu -> %zu) failed: %s", (unsigned long)was, old.n, to, strerror(errno));
  size_t keep = old.n < to ? old.n : to;
  size_t bad = check_blk_at(&old, q, keep);
  CHECK(bad == SIZE_MAX, "realloc(%#lx, %zu -> %zu) = %p lost byte %zu of the old contents",
        (unsigned long)was, old.n, to, (void *)q, bad);
  check_align((uintptr_t)q, to, "realloc");
  *b = (struct blk){q, to, 0};
  adopt(b, "realloc");
}

/* Pool slots: a mutex each; swapping transfers ownership both ways. */
static struct {
  pthread_mutex_t m;
  struct blk b;
} pool[POOL];

static void pool_swap(struct rng *r, struct blk *b) {
  size_t i = rng_next(r) % POOL;
  pthread_mutex_lock(&pool[i].m);
  struct blk got = pool[i].b;
  pool[i].b = *b;
  pthread_mutex_unlock(&pool[i].m);
  *b = got;
  if (b->p) verify(b, "taken from the shared pool");
}

/* ---- fork ---- */

static void child_after_fork(struct blk *local) {
  /* Only this thread's blocks: no other thread exists to free them. No
   * locks of this program (other threads may have held them) and no stdio:
   * failures are exit statuses. */
  int checked = 0;
  for (int i = 0; i < LOCAL && checked < 8; i++)
    if (local[i].p) {
      if (check_blk_at(&local[i], local[i].p, local[i].n) != SIZE_MAX) _exit(3);
      checked++;
    }
  static const size_t sizes[] = {1, 24, 100, 1000, 5000, 70000, 300000, 5u << 20};
  void *p[8];
  for (int round = 0; round < 4; round++) {
    for (int i = 0; i < 8; i++) {
      p[i] = round % 2 ? calloc(1, sizes[i]) : malloc(sizes[i]);
      if (!p[i]) _exit(4);
      if (round % 2 && ((char *)p[i])[sizes[i] - 1] != 0) _exit(5);
      memset(p[i], 0x33, sizes[i]);
    }
    for (int i = 0; i < 8; i += 2) {
      void *q = realloc(p[i], sizes[i] * 2);
      if (!q || ((char *)q)[sizes[i] - 1] != 0x33) _exit(6);
      p[i] = q;
    }
    for (int i = 0; i < 8; i++)
      free(p[i]);
  }
  /* one inherited block freed in the child */
  for (int i = 0; i < LOCAL; i++)
    if (local[i].p) {
      free(local[i].p);
      break;
    }
  _exit(0);
}

static void op_fork(struct blk *local) {
  pid_t pid = fork();
  if (pid == 0) child_after_fork(local);
  if (pid < 0) {
    CHECK(errno == EAGAIN || errno == ENOMEM, "fork failed: %s", strerror(errno));
    return;
  }
  int st = 0;
  long long until = watchdog_now() + 10000000000LL;
  for (;;) {
    pid_t w = waitpid(pid, &st, WNOHANG);
    if (w == pid) break;
    CHECK(w == 0 || errno == EINTR, "waitpid failed: %s", strerror(errno));
    if (watchdog_now() > until) {
      kill(pid, SIGKILL);
      waitpid(pid, &st, 0);
      FAIL("a child of fork did not exit within 10 s: deadlocked after fork");
    }
    struct timespec ts = {0, 1000000};
    nanosleep(&ts, NULL);
  }
  CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0,
        "a child of fork ended with status 0x%x (3: an inherited block's pattern differs, 4: "
        "malloc failed, 5: calloc not zero, 6: realloc lost data)",
        st);
  atomic_fetch_add(&forks, 1);
}

/* ---- threads ---- */

struct worker {
  pthread_t tid;
  atomic_int done;
  uint64_t seed;
  long ops;
};
static struct worker workers[MAXTHREADS];

static void *worker_main(void *arg) {
  struct worker *w = arg;
  struct rng r = {w->seed};
  struct blk *local = calloc(LOCAL, sizeof *local);
  CHECK(local, "calloc failed");
  long n = 0;
  for (; n < w->ops && !atomic_load(&stop); n++) {
    struct blk *b = &local[rng_next(&r) % LOCAL];
    uint64_t k = rng_next(&r) % 1000;
    if (k < 300) {
      release(b, "before free");
      op_malloc(&r, b);
    } else if (k < 400) {
      release(b, "before free");
      op_calloc(&r, b);
    } else if (k < 550) {
      op_realloc(&r, b);
    } else if (k < 720) {
      release(b, "before free");
    } else if (k < 800) {
      release(b, "before free");
      op_aligned(&r, b);
    } else if (k < 980) {
      pool_swap(&r, b);
    } else {
      if (b->p) {
        verify(b, "usable size check");
        CHECK(malloc_usable_size(b->p) >= b->n, "malloc_usable_size(%p) = %zu < %zu", (void *)b->p,
              malloc_usable_size(b->p), b->n);
      }
      uint64_t x = rng_next(&r) % 1000;
      if (x < 2) {
        malloc_trim(0);
        atomic_fetch_add(&trims, 1);
      } else if (x < 3) {
        op_fork(local);
      }
#ifndef TEST_PRELOAD
      else if (x < 5) {
        hak_thread_done(); /* drop the heap with blocks live; go on with a fresh one */
      }
#endif
    }
  }
  /* Hand everything to the pool; free what comes back. */
  for (int i = 0; i < LOCAL; i++) {
    if (!local[i].p) continue;
    pool_swap(&r, &local[i]);
    release(&local[i], "taken from the pool at thread exit");
  }
  free(local);
  atomic_fetch_add(&total_ops, (unsigned long long)n);
  atomic_store(&w->done, 1);
  return NULL;
}

static void start_worker(int i, uint64_t gen) {
  struct rng r = {base_seed * 0x9E3779B97F4A7C15ull + gen * 0xBF58476D1CE4E5B9ull + 1};
  rng_next(&r);
  workers[i].seed = rng_next(&r) | 1;
  workers[i].ops = 2000 + (long)(rng_next(&r) % 60000);
  atomic_store(&workers[i].done, 0);
  CHECK(pthread_create(&workers[i].tid, NULL, worker_main, &workers[i]) == 0,
        "pthread_create failed");
}

int main(int argc, char **argv) {
  double secs = argc > 1 ? atof(argv[1]) : soak_mode() ? 300 : 20;
  if (argc > 2) base_seed = strtoull(argv[2], NULL, 0);
  int nthreads = argc > 3 ? atoi(argv[3]) : 4;
  CHECK(secs > 0 && nthreads >= 1 && nthreads <= MAXTHREADS,
        "usage: %s [seconds [seed [threads 1-%d]]]", argv[0], MAXTHREADS);
  for (int i = 0; i < POOL; i++)
    pthread_mutex_init(&pool[i].m, NULL);
  watchdog_start(secs + 40);
  atomic_store(&watchdog_stage, "fuzzing");
#ifndef TEST_PRELOAD
  hak_stats_t before, after;
  hak_stats_get(&before);
#endif
  uint64_t gen = 0;
  for (int i = 0; i < nthreads; i++)
    start_worker(i, gen++);
  long long end = watchdog_now() + (long long)(secs * 1e9);
  unsigned long long threads_run = nthreads;
  while (watchdog_now() < end) {
    struct timespec ts = {0, 2000000};
    nanosleep(&ts, NULL);
    for (int i = 0; i < nthreads; i++)
      if (atomic_load(&workers[i].done)) {
        pthread_join(workers[i].tid, NULL);
        start_worker(i, gen++);
        threads_run++;
      }
  }
  atomic_store(&stop, 1);
  atomic_store(&watchdog_stage, "joining the workers at the end");
  for (int i = 0; i < nthreads; i++)
    pthread_join(workers[i].tid, NULL);
  for (int i = 0; i < POOL; i++)
    release(&pool[i].b, "left in the pool at the end");
  CHECK(nlive == 0, "%zu blocks left in the model", nlive);
#ifndef TEST_PRELOAD
  hak_stats_get(&after);
  CHECK(after.invalid_frees == before.invalid_frees, "%llu frees counted as invalid",
        (unsigned long long)(after.invalid_frees - before.invalid_frees));
#endif
  printf("seed %llu, %d threads at a time, %llu threads, %llu forks, %llu trims\nops %llu\n",
         (unsigned long long)base_seed, nthreads, threads_run, (unsigned long long)forks,
         (unsigned long long)trims, (unsigned long long)total_ops);
  return 0;
}
