/* posix_memalign, aligned_alloc and memalign for every power of two alignment
 * from 8 bytes to 1 GiB, and valloc/pvalloc page alignment. Big alignments
 * only reserve address space: the test writes a few words, never all. */
#define _GNU_SOURCE
#include <malloc.h>
#include <sys/mman.h>
#include "check.h"
#include "hakmem.h"

#define MAX_BLOCKS 32
#define STRIDE (1024 * 1024)

static void *blocks[MAX_BLOCKS];
static size_t block_size[MAX_BLOCKS]; /* bytes filled: usable, or requested if sparse */
static int sparse[MAX_BLOCKS];
static int nblocks;

/* Up to this usable size the whole usable area is filled: an aligned block
 * inside a bigger one must not claim bytes past its end. */
#define FULL_FILL (4u << 20)

static void keep(void *p, size_t align, size_t n, const char *fn) {
  CHECK(p != NULL, "%s(align %zu, size %zu) failed", fn, align, n);
  CHECK((uintptr_t)p % align == 0, "%s(align %zu, size %zu) = %p misaligned", fn, align, n, p);
  CHECK(malloc_usable_size(p) >= n, "%s(align %zu, size %zu): usable size %zu", fn, align, n,
        malloc_usable_size(p));
  CHECK(hak_owns(p), "%s(align %zu, size %zu) = %p is not hakmem memory", fn, align, n, p);
  size_t usable = malloc_usable_size(p);
  sparse[nblocks] = usable > FULL_FILL;
  block_size[nblocks] = sparse[nblocks] ? n : usable;
  if (sparse[nblocks])
    fill_sparse(p, n, STRIDE);
  else
    fill_pattern(p, usable);
  blocks[nblocks++] = p;
}

/* Whether the machine can reserve the address space an alignment needs at
 * all; the allocator is not blamed for what the kernel refuses. */
static int can_reserve(size_t bytes) {
  void *m = mmap(NULL, bytes, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (m == MAP_FAILED) return 0;
  munmap(m, bytes);
  return 1;
}

static void one_alignment(size_t align) {
  size_t sizes[] = {1, 8, 100, align, align + 8, 3 * align / 2};
  int nsizes = align <= ((size_t)64 << 20) ? 6 : 4;
  nblocks = 0;
  for (int i = 0; i < nsizes; i++) {
    size_t n = opaque_size(sizes[i]);
    void *p = NULL;
    int rc = posix_memalign(&p, align, n);
    CHECK(rc == 0, "posix_memalign(align %zu, size %zu) returned %d", align, n, rc);
    keep(p, align, n, "posix_memalign");
    keep(aligned_alloc(align, n), align, n, "aligned_alloc");
    keep(memalign(align, n), align, n, "memalign");
  }
  /* All blocks of this alignment are live together: none may overlap. */
  for (int i = 0; i < nblocks; i++) {
    size_t bad = sparse[i] ? check_sparse(blocks[i], block_size[i], STRIDE)
                           : check_pattern(blocks[i], block_size[i]);
    CHECK(bad == SIZE_MAX, "aligned block %p (size %zu, align %zu) overwritten at %zu", blocks[i],
          block_size[i], align, bad);
  }
  for (int i = 0; i < nblocks; i++)
    free(blocks[i]);
}

static void page_aligned(void) {
  size_t page = (size_t)sysconf(_SC_PAGESIZE);
  size_t sizes[] = {0, 1, 100, page - 1, page, page + 1, 100000, 3 << 20};
  for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
    size_t n = opaque_size(sizes[i]);
    void *v = valloc(n);
    CHECK(v && (uintptr_t)v % page == 0, "valloc(%zu) = %p not page aligned", n, v);
    CHECK(malloc_usable_size(v) >= n, "valloc(%zu): usable size %zu", n, malloc_usable_size(v));
    void *pv = pvalloc(n);
    size_t rounded = (n + page - 1) / page * page;
    CHECK(pv && (uintptr_t)pv % page == 0, "pvalloc(%zu) = %p not page aligned", n, pv);
    CHECK(malloc_usable_size(pv) >= rounded, "pvalloc(%zu): usable size %zu < %zu", n,
          malloc_usable_size(pv), rounded);
    memset(v, 0x5a, n);
    memset(pv, 0xa5, rounded); /* pvalloc promises whole pages */
    free(v);
    free(pv);
  }
}

int main(void) {
  for (int shift = 3; shift <= 30; shift++) {
    size_t align = (size_t)1 << shift;
    if (!can_reserve(4 * align)) {
      fprintf(stderr, "note: the machine cannot reserve %zu bytes; alignment %zu not tried\n",
              4 * align, align);
      continue;
    }
    one_alignment(align);
  }
  page_aligned();
  return 0;
}
