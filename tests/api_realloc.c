/* realloc keeps the contents (up to the smaller size) across every kind of
 * transition: small <-> mid <-> large <-> huge, in place and moving, from
 * aligned blocks, and in a random walk with several blocks live at once. */
#define _GNU_SOURCE
#include <malloc.h>
#include "check.h"
#include "hakmem.h"

/* A block's content is the byte pattern of the address it was first
 * allocated at, over its whole current size. */
struct chain {
  unsigned char *p;
  const void *origin;
  size_t n;
};

static void extend(struct chain *c, size_t from, size_t to) {
  for (size_t i = from; i < to; i++)
    c->p[i] = pattern_byte(c->origin, i);
}

static void verify(const struct chain *c, const char *when) {
  for (size_t i = 0; i < c->n; i++)
    CHECK(c->p[i] == pattern_byte(c->origin, i), "%s: byte %zu of %zu lost (block %p)", when, i,
          c->n, (void *)c->p);
}

static void start(struct chain *c, void *p, size_t n) {
  CHECK(p, "allocating %zu bytes failed", n);
  c->p = p;
  c->origin = p;
  c->n = n;
  extend(c, 0, n);
}

static void step(struct chain *c, size_t to, int use_hak) {
  char when[96];
  snprintf(when, sizeof when, "realloc %zu -> %zu", c->n, to);
  void *q = use_hak ? hak_realloc(c->p, opaque_size(to)) : realloc(c->p, opaque_size(to));
  CHECK(q, "%s returned NULL", when);
  CHECK(to < 16 || (uintptr_t)q % 16 == 0, "%s returned misaligned %p", when, q);
  CHECK(malloc_usable_size(q) >= to, "%s: usable size %zu", when, malloc_usable_size(q));
  CHECK(hak_owns(q), "%s returned %p, not hakmem memory", when, q);
  size_t keep = c->n < to ? c->n : to;
  c->p = q;
  c->n = keep;
  verify(c, when);
  extend(c, keep, to);
  c->n = to;
}

static void run_chain(const size_t *sizes, size_t count) {
  struct chain c;
  start(&c, malloc(sizes[0]), sizes[0]);
  for (size_t i = 1; i < count; i++)
    step(&c, sizes[i], (int)(i & 1));
  verify(&c, "end of chain");
  free(c.p);
}

static uint64_t rng_state = 0x2545F4914F6CDD1Dull;
static uint64_t rnd(void) {
  rng_state ^= rng_state << 13;
  rng_state ^= rng_state >> 7;
  rng_state ^= rng_state << 17;
  return rng_state;
}

/* Sizes spread evenly over the powers of two from 1 byte to 2 MiB. */
static size_t random_size(void) {
  int shift = (int)(rnd() % 22);
  return ((size_t)1 << shift) + rnd() % ((size_t)1 << shift);
}

int main(void) {
  const size_t chain1[] = {100, 20 * 1024, 300 * 1024, 8 << 20, 50};
  const size_t chain2[] = {1, 65536, 1, 1 << 20, (2 << 20) + 1, 32 << 20, 17, 4096};
  const size_t chain3[] = {1000, 1001, 999, 1024, 1025, 1023, 2000, 1500, 1000};
  const size_t chain4[] = {32 << 20, 24 << 20, 12 << 20, 3 << 20, 600 * 1024, 40000, 300, 8};
  const size_t chain5[] = {8, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024};
  run_chain(chain1, sizeof chain1 / sizeof chain1[0]);
  run_chain(chain2, sizeof chain2 / sizeof chain2[0]);
  run_chain(chain3, sizeof chain3 / sizeof chain3[0]);
  run_chain(chain4, sizeof chain4 / sizeof chain4[0]);
  run_chain(chain5, sizeof chain5 / sizeof chain5[0]);

  /* From aligned blocks, which may carry an offset inside their page. */
  size_t aligns[] = {64, 4096, 65536, 1 << 21};
  for (size_t i = 0; i < sizeof aligns / sizeof aligns[0]; i++) {
    struct chain c;
    start(&c, memalign(aligns[i], 5000), 5000);
    step(&c, 100000, 0);
    step(&c, 10, 1);
    step(&c, 3 << 20, 0);
    verify(&c, "aligned chain");
    free(c.p);
  }

  /* Random walk, eight blocks live so moves land next to live data. */
  struct chain live[8];
  for (int i = 0; i < 8; i++)
    start(&live[i], malloc(64), 64);
  for (int s = 0; s < 600; s++) {
    struct chain *c = &live[rnd() % 8];
    step(c, random_size(), s & 1);
  }
  for (int i = 0; i < 8; i++) {
    verify(&live[i], "random walk");
    free(live[i].p);
  }
  return 0;
}
