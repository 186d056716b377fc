/* The edges of every size class's spans, now that spans start their blocks
 * at a color past their base and end in a tail no block covers. For each
 * class, blocks filling several spans:
 *  - usable size the class size at the block, and under the checked library
 *    bs - k at k bytes in (the release build takes only what malloc
 *    returned, as glibc and mimalloc: the block size for any pointer into a
 *    page without aligned blocks);
 *    blocks of a power-of-two size aligned to it (up to 4 KiB), blocks of
 *    a multiple of 64 bytes on a cache line; none overlapping, all intact;
 *  - realloc within the block stays in place;
 *  - bad frees from another thread (the remote free's checks, with and
 *    without the page in its stash entry) count one invalid free each and
 *    change nothing: a pointer 16/48/64 bytes before any block in the same
 *    4 KiB page (the color gap before a span's first block, or the previous
 *    block's inside) and 16 bytes past any block's end in the same 4 KiB
 *    page (the next block's inside, or the tail after a span's last block);
 *    with the argument "debug" (the checked library preloaded) the owner
 *    makes the same bad frees, which its fast path checks there;
 *  - calloc afterwards, in the spans the class's frees left, all zero;
 *  - aligned_alloc and posix_memalign of every power of two from 32 B to
 *    64 KiB, at the class size and 16 bytes less: aligned, usable, intact,
 *    freed half by the owner and half by another thread, no invalid free.
 * Built twice like bad_pointers: linked with the release archive, and
 * without hakmem (-DTEST_PRELOAD) to run under the checked library. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <malloc.h>
#include <pthread.h>
#include <stdbool.h>
#include "check.h"
#include "hakmem.h"

#define CLASS_BYTES ((size_t)200 << 10) /* per class: several spans of each */
#define MIN_BLOCKS 24
#define MAX_BLOCKS 16384
#define ALIGNED_BLOCKS 24

static void *blk[MAX_BLOCKS];
static size_t nblk, bsize;
static bool debug_owner;

static uint64_t invalid_now(void) {
  hak_stats_t s;
#ifdef TEST_PRELOAD
  void (*get)(hak_stats_t *) = (void (*)(hak_stats_t *))dlsym(RTLD_DEFAULT, "hak_stats_get");
  CHECK(get, "hak_stats_get not found: run with LD_PRELOAD=build/debug/libhakmem.so");
  get(&s);
#else
  hak_stats_get(&s);
#endif
  return s.invalid_frees;
}

/* Bad frees made; each must count one invalid free (hak_stats_get reads
 * more than a counter: compared per class and thread, not per free). */
static size_t bad_made;

static void bad_free(char *p) {
  free(opaque_ptr(p));
  bad_made++;
}

static bool same_4k(const char *a, const char *b) {
  return ((uintptr_t)a >> 12) == ((uintptr_t)b >> 12);
}

/* Bad frees around block p of the class: before it and past its end, each
 * in p's span (in its 4 KiB page or its block) and no block start. */
static void bad_frees_around(char *p) {
  static const size_t before[] = {16, 48, 64};
  for (size_t i = 0; i < sizeof before / sizeof *before; i++)
    if (before[i] % bsize && same_4k(p - before[i], p)) bad_free(p - before[i]);
  /* less than a block past a 4 KiB boundary: where the span's blocks would
   * begin without its color, and the block after that; a gap or p's inside */
  size_t off = (uintptr_t)p & 4095;
  if (off && off < bsize) {
    bad_free(p - off);
    bad_free(p - off + bsize);
  }
  char *past = p + bsize + 16;
  if (bsize != 16 && same_4k(past, p + bsize - 1)) bad_free(past);
}

static int cmp_ptr(const void *a, const void *b) {
  uintptr_t x = *(const uintptr_t *)a, y = *(const uintptr_t *)b;
  return x < y ? -1 : x > y;
}

/* Another thread: bad frees around each block, a first good free of it
 * (its page into this thread's stash entry), then bad frees again (checked
 * against the entry). */
static void *remote_frees(void *arg) {
  (void)arg;
  void *own =
      malloc(opaque_size(16)); /* a heap with a page: its frees take the remote free's checks */
  for (size_t i = 0; i < nblk; i++) {
    char *p = blk[i];
    bad_frees_around(p);
    free(opaque_ptr(p));
    bad_frees_around(opaque_ptr(p));
  }
  free(opaque_ptr(own));
  return NULL;
}

/* fn on another thread; its bad frees, and only those, counted. */
static void run_thread(void *(*fn)(void *)) {
  uint64_t before = invalid_now();
  bad_made = 0;
  pthread_t t;
  CHECK(pthread_create(&t, NULL, fn, NULL) == 0, "pthread_create");
  CHECK(pthread_join(t, NULL) == 0, "pthread_join");
  uint64_t got = invalid_now() - before;
  CHECK(got == bad_made, "%zu-byte class: %zu bad frees from another thread counted %llu invalid",
        bsize, bad_made, (unsigned long long)got);
}

static void class_edges(size_t bs) {
  bsize = bs;
  nblk = CLASS_BYTES / bs;
  if (nblk < MIN_BLOCKS) nblk = MIN_BLOCKS;
  if (nblk > MAX_BLOCKS) nblk = MAX_BLOCKS;
  size_t pow2_align = !(bs & (bs - 1)) ? (bs < 4096 ? bs : 4096) : 16;
  for (size_t i = 0; i < nblk; i++) {
    char *p = malloc(opaque_size(bs));
    CHECK(p, "malloc(%zu) failed", bs);
    CHECK(malloc_usable_size(p) == bs, "%p: usable %zu, class %zu", (void *)p,
          malloc_usable_size(p), bs);
    CHECK(!debug_owner || (malloc_usable_size(p + bs / 2) == bs - bs / 2 &&
                           malloc_usable_size(p + bs - 1) == 1),
          "%zu-byte block %p: usable halfway %zu, at its last byte %zu", bs, (void *)p,
          malloc_usable_size(p + bs / 2), malloc_usable_size(p + bs - 1));
    CHECK((uintptr_t)p % pow2_align == 0, "%zu-byte block %p not aligned to %zu", bs, (void *)p,
          pow2_align);
    CHECK(bs % 64 || (uintptr_t)p % 64 == 0, "%zu-byte block %p not on a line", bs, (void *)p);
    fill_pattern(p, bs);
    blk[i] = p;
  }
  qsort(blk, nblk, sizeof *blk, cmp_ptr);
  for (size_t i = 0; i + 1 < nblk; i++)
    CHECK((char *)blk[i] + bs <= (char *)blk[i + 1], "%zu-byte blocks %p and %p overlap", bs,
          blk[i], blk[i + 1]);
  uint64_t before = invalid_now();
  bad_made = 0;
  for (size_t i = 0; i < nblk; i++) {
    CHECK(realloc(blk[i], bs) == blk[i] && realloc(blk[i], bs / 2 + 1) == blk[i],
          "%zu-byte block %p: realloc within it moved it", bs, blk[i]);
    if (debug_owner) bad_frees_around(blk[i]);
  }
  CHECK(invalid_now() - before == bad_made,
        "%zu-byte class: %zu bad frees by the owner counted %llu", bsize, bad_made,
        (unsigned long long)(invalid_now() - before));
  for (size_t i = 0; i < nblk; i++)
    CHECK(check_pattern(blk[i], bs) == SIZE_MAX, "%zu-byte block %p overwritten at byte %zu", bs,
          blk[i], check_pattern(blk[i], bs));
  run_thread(remote_frees);
  for (size_t i = 0; i < nblk; i++) {
    char *p = calloc(1, opaque_size(bs));
    CHECK(p, "calloc(%zu) failed", bs);
    for (size_t k = 0; k < bs; k++)
      CHECK(!p[k], "calloc'd %zu-byte block %p: byte %zu is %d", bs, (void *)p, k, p[k]);
    blk[i] = p;
  }
  for (size_t i = 0; i < nblk; i++)
    free(blk[i]);
}

static void *remote_free_all(void *arg) {
  (void)arg;
  void *own = malloc(opaque_size(16));
  for (size_t i = 0; i < nblk; i++)
    free(blk[i]);
  free(opaque_ptr(own));
  return NULL;
}

/* ALIGNED_BLOCKS blocks of size n aligned to align: half freed by the owner,
 * half by another thread. */
static void aligned_blocks(size_t align, size_t n, bool posix) {
  for (size_t i = 0; i < ALIGNED_BLOCKS; i++) {
    void *p = NULL;
    if (posix)
      CHECK(posix_memalign(&p, align, opaque_size(n)) == 0, "posix_memalign(%zu, %zu)", align, n);
    else
      p = aligned_alloc(align, opaque_size(n));
    CHECK(p, "aligned_alloc(%zu, %zu) failed", align, n);
    CHECK((uintptr_t)p % align == 0, "%p of %zu bytes not aligned to %zu", p, n, align);
    CHECK(malloc_usable_size(p) >= n, "%p aligned to %zu: usable %zu < %zu", p, align,
          malloc_usable_size(p), n);
    fill_pattern(p, n);
    blk[i] = p;
  }
  for (size_t i = 0; i < ALIGNED_BLOCKS; i++)
    CHECK(check_pattern(blk[i], n) == SIZE_MAX, "%zu bytes aligned to %zu at %p overwritten", n,
          align, blk[i]);
  for (size_t i = 0; i < ALIGNED_BLOCKS / 2; i++)
    free(blk[i]);
  memmove(blk, blk + ALIGNED_BLOCKS / 2, ALIGNED_BLOCKS / 2 * sizeof *blk);
  nblk = ALIGNED_BLOCKS / 2;
  run_thread(remote_free_all);
}

int main(int argc, char **argv) {
  debug_owner = argc > 1 && !strcmp(argv[1], "debug");
  size_t classes[64], nclasses = 0;
  for (size_t n = 16; n <= ((size_t)128 << 10); n += 16) {
    void *p = malloc(opaque_size(n));
    CHECK(p, "malloc(%zu) failed", n);
    size_t bs = malloc_usable_size(p);
    free(p);
    if (!nclasses || classes[nclasses - 1] != bs) {
      CHECK(nclasses < 64, "more than 64 classes");
      classes[nclasses++] = bs;
    }
    n = bs;
  }
  uint64_t invalid0 = invalid_now();
  for (size_t c = 0; c < nclasses; c++)
    class_edges(classes[c]);
  uint64_t bad = invalid_now() - invalid0, before = invalid_now();
  for (size_t c = 0; c < nclasses; c++)
    for (size_t align = 32; align <= ((size_t)64 << 10); align *= 2)
      for (size_t k = 0; k < 2; k++) {
        size_t n = classes[c] - 16 * k;
        aligned_blocks(align, n, k == 0);
      }
  CHECK(invalid_now() == before, "aligned blocks: %llu invalid frees",
        (unsigned long long)(invalid_now() - before));
  printf("span_bounds: %zu classes, %llu bad frees counted%s\n", nclasses, (unsigned long long)bad,
         debug_owner ? " (the owner's too)" : "");
  return 0;
}
