/* Helpers shared by the tests: failure and skip reporting in the format
 * tests/run.sh reads ("FAIL: why" / "SKIP: why" on stderr, exit 1 / 77), and
 * an address-derived fill pattern so a block that was handed out twice, moved
 * wrongly or overwritten by a neighbour is noticed. */
#ifndef HAK_TESTS_CHECK_H
#define HAK_TESTS_CHECK_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* _exit, not exit: other threads may still be inside the allocator. */
#define FAIL(...)                                                                                  \
  do {                                                                                             \
    fprintf(stderr, "FAIL: %s:%d: ", __FILE__, __LINE__);                                          \
    fprintf(stderr, __VA_ARGS__);                                                                  \
    fputc('\n', stderr);                                                                           \
    fflush(stderr);                                                                                \
    _exit(1);                                                                                      \
  } while (0)

#define CHECK(cond, ...)                                                                           \
  do {                                                                                             \
    if (!(cond)) FAIL(__VA_ARGS__);                                                                \
  } while (0)

#define SKIP(...)                                                                                  \
  do {                                                                                             \
    fprintf(stderr, "SKIP: ");                                                                     \
    fprintf(stderr, __VA_ARGS__);                                                                  \
    fputc('\n', stderr);                                                                           \
    fflush(stderr);                                                                                \
    _exit(77);                                                                                     \
  } while (0)

/* xorshift64*: the tests' random numbers, the same for the same seed. */
struct rng {
  uint64_t s;
};
static inline uint64_t rng_next(struct rng *r) {
  r->s ^= r->s >> 12;
  r->s ^= r->s << 25;
  r->s ^= r->s >> 27;
  return r->s * 0x2545F4914F6CDD1Dull;
}

/* Hide a value from the optimiser: keeps gcc from folding impossible sizes
 * into compile-time warnings and from eliding malloc/free pairs or frees of
 * non-heap objects. */
static inline size_t opaque_size(size_t n) {
  __asm__ volatile("" : "+r"(n));
  return n;
}
static inline void *opaque_ptr(void *p) {
  __asm__ volatile("" : "+r"(p));
  return p;
}

/* The pattern word for word index i of a block at base: a mix of both, so
 * the same offset differs between blocks and a stale copy shows. */
static inline uint64_t pattern_word(const void *base, size_t i) {
  uint64_t x = (uint64_t)(uintptr_t)base * 0x9E3779B97F4A7C15ull + (uint64_t)i;
  x ^= x >> 31;
  x *= 0x94D049BB133111EBull;
  return x ^ (x >> 29);
}

/* Byte i of the same pattern (little-endian), so a prefix checked byte by
 * byte agrees with a block filled word by word. */
static inline uint8_t pattern_byte(const void *base, size_t i) {
  return (uint8_t)(pattern_word(base, i / 8) >> (8 * (i % 8)));
}

static inline void fill_pattern(void *p, size_t n) {
  uint64_t *w = p;
  size_t words = n / 8;
  for (size_t i = 0; i < words; i++)
    w[i] = pattern_word(p, i);
  for (size_t i = words * 8; i < n; i++)
    ((uint8_t *)p)[i] = pattern_byte(p, i);
}

/* Returns the offset of the first byte of data that differs from the
 * pattern of a block at base (data itself, or where it lived before a
 * realloc moved it), or SIZE_MAX when all match. */
static inline size_t check_pattern_as(const void *data, const void *base, size_t n) {
  size_t words = n / 8;
  for (size_t i = 0; i < words; i++) {
    uint64_t w;
    memcpy(&w, (const char *)data + i * 8, 8);
    if (w != pattern_word(base, i)) return i * 8;
  }
  for (size_t i = words * 8; i < n; i++)
    if (((const uint8_t *)data)[i] != pattern_byte(base, i)) return i;
  return SIZE_MAX;
}

static inline size_t check_pattern(const void *p, size_t n) {
  return check_pattern_as(p, p, n);
}

/* Fails the test unless the block at p still holds its pattern. */
static inline void expect_pattern(const void *p, size_t n) {
  size_t at = check_pattern(p, n);
  CHECK(at == SIZE_MAX, "block %p of %zu B changed at byte %zu", p, n, at);
}

/* Same pattern, but only every stride bytes and the last word: for blocks of
 * hundreds of MiB, where touching every page would only cost time. */
static inline void fill_sparse(void *p, size_t n, size_t stride) {
  /* Stride words stop short of the last word so the two never overlap. */
  for (size_t off = 0; off + 16 <= n; off += stride)
    ((uint64_t *)p)[off / 8] = pattern_word(p, off);
  if (n >= 8)
    memcpy((char *)p + n - 8, &(uint64_t){pattern_word(p, n)}, 8);
  else if (n)
    ((uint8_t *)p)[n - 1] = pattern_byte(p, n);
}

static inline size_t check_sparse(const void *p, size_t n, size_t stride) {
  for (size_t off = 0; off + 16 <= n; off += stride)
    if (((const uint64_t *)p)[off / 8] != pattern_word(p, off)) return off;
  if (n >= 8) {
    uint64_t last;
    memcpy(&last, (const char *)p + n - 8, 8);
    if (last != pattern_word(p, n)) return n - 8;
  } else if (n && ((const uint8_t *)p)[n - 1] != pattern_byte(p, n)) {
    return n - 1;
  }
  return SIZE_MAX;
}

#endif
