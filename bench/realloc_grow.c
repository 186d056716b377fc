/* realloc_grow: buffers grown with realloc, as strings and vectors are.
 *
 * usage: realloc_grow [seconds [threads [maxsize]]]
 *   seconds  run time (default 1.5)
 *   threads  worker threads (default 2)
 *   maxsize  size a vector grows to, in bytes (default 4194304)
 *
 * Each thread grows 4 vectors and 4 strings in turn, one step each:
 *   - a vector doubles from 16 bytes to maxsize (realloc to twice the size),
 *   - a string appends 1-128 bytes with a realloc to the exact new length,
 *     up to maxsize / 16 (many small growths: in-place growth and size-class
 *     slack decide how often the whole string is copied).
 * A buffer that reached its limit is freed and starts again. Growing several
 * buffers in turn keeps the neighbour of each buffer busy, so growth in
 * place is not free. Content is checked after every realloc.
 * One op = one realloc. Prints "realloc_grow: N ops/s". */
#include "bench.h"

#define NBUF 4

struct buf {
  unsigned char *p;
  size_t len;
  unsigned char salt;
};

static size_t max_vec, max_str;

static inline unsigned char expect(size_t i, unsigned char salt) {
  return (unsigned char)((i * 2654435761u) >> 13) ^ salt;
}

static unsigned char *grow(unsigned char *p, size_t n) {
  p = realloc(p, n);
  if (!p) bench_fail(3, "out of memory", NULL, n);
  return p;
}

/* Vectors: only the first byte, one byte per page and the last byte are
 * written, so a step costs the realloc and page faults, not a memset. */
static void vec_step(struct buf *v, uint64_t *rng) {
  if (v->len >= max_vec) {
    free(v->p);
    *v = (struct buf){.salt = (unsigned char)rng_next(rng)};
  }
  size_t old = v->len, n = old ? old * 2 : 16;
  v->p = grow(v->p, n);
  int bad = old && (v->p[0] != expect(0, v->salt) || v->p[old - 1] != expect(old - 1, v->salt));
  for (size_t o = BENCH_PAGE; o < old; o += BENCH_PAGE)
    bad |= v->p[o] != expect(o, v->salt);
  if (bad) bench_fail(2, "realloc lost vector content", v->p, n);
  v->p[0] = expect(0, v->salt);
  for (size_t o = (old + BENCH_PAGE - 1) / BENCH_PAGE * BENCH_PAGE; o < n; o += BENCH_PAGE)
    v->p[o] = expect(o, v->salt);
  v->p[n - 1] = expect(n - 1, v->salt);
  v->len = n;
}

/* Strings: every byte is written, as an append would. */
static void str_step(struct buf *s, uint64_t *rng) {
  if (s->len >= max_str) {
    free(s->p);
    *s = (struct buf){.salt = (unsigned char)rng_next(rng)};
  }
  size_t old = s->len, n = old + rng_range(rng, 1, 128);
  s->p = grow(s->p, n);
  if (old) {
    size_t i = (size_t)(rng_next(rng) % old);
    if (s->p[0] != expect(0, s->salt) || s->p[i] != expect(i, s->salt) ||
        s->p[old - 1] != expect(old - 1, s->salt))
      bench_fail(2, "realloc lost string content", s->p, n);
  }
  for (size_t i = old; i < n; i++)
    s->p[i] = expect(i, s->salt);
  s->len = n;
}

static void *worker_main(void *arg) {
  struct bench_worker *w = arg;
  uint64_t rng = w->rng, ops = 0;
  struct buf vec[NBUF] = {0}, str[NBUF] = {0};
  bench_go();
  while (!bench_stopped()) {
    for (int i = 0; i < NBUF; i++) {
      vec_step(&vec[i], &rng);
      str_step(&str[i], &rng);
    }
    ops += 2 * NBUF;
  }
  for (int i = 0; i < NBUF; i++) {
    free(vec[i].p);
    free(str[i].p);
  }
  w->ops = ops;
  return NULL;
}

int main(int argc, char **argv) {
  bench_name = "realloc_grow";
  bench_usage_text = "usage: realloc_grow [seconds [threads [maxsize]]]\n"
                     "  defaults: 1.5 2 4194304\n";
  bench_args(argc, argv, 3);
  double seconds = bench_arg(argc, argv, 1, 1.5, 0.01, 1e6);
  int threads = (int)bench_arg(argc, argv, 2, 2, 1, 1024);
  max_vec = (size_t)bench_arg(argc, argv, 3, 4 << 20, 256, 1ull << 34);
  max_str = max_vec / 16;

  bench_run_plain(threads, seconds, worker_main);
  return 0;
}
