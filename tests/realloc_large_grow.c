/* realloc of a large block (a run of 64 KiB pages) keeps its pointer while
 * the pages right after its span are free: grown as postgres grows its sort
 * array (192 -> 384 -> 768 KiB), contents kept, the pages taken counted
 * (committed bytes, pages activated) and given back whole by free; shrunk
 * in place with its tail pages free again; moved, contents kept, when the
 * next pages are another block's, to where it can grow in place twice
 * more. Pages purged before the grow took them
 * count as committed again and are dirty afterwards: a calloc of the same
 * pages comes back zero. */
#define _GNU_SOURCE
#include <malloc.h>
#include "check.h"
#include "hakmem.h"

#define KIB ((size_t)1024)
#define PAGE (64 * KIB)

static hak_stats_t stats(void) {
  hak_stats_t s;
  hak_stats_get(&s);
  return s;
}

/* The old block's pattern (keyed by its address, old) in the first n bytes of q. */
static void expect_kept(const void *q, const void *old, size_t n, const char *when) {
  size_t at = check_pattern_as(q, old, n);
  CHECK(at == SIZE_MAX, "%s: byte %zu of %zu lost", when, at, n);
}

static unsigned page_index(const void *p) {
  return (unsigned)(((uintptr_t)p >> 16) & 31);
}

/* 192 -> 384 -> 768 KiB on free pages, then 200 KiB and back to 384. */
static void grow_in_place(void) {
  char *p = malloc(opaque_size(192 * KIB));
  CHECK(p, "malloc(192 KiB)");
  CHECK(page_index(p) + 12 <= 32, "192 KiB block at page %u: no room to grow", page_index(p));
  fill_pattern(p, 192 * KIB);
  hak_stats_t a = stats();
  char *q = realloc(opaque_ptr(p), opaque_size(384 * KIB));
  hak_stats_t b = stats();
  CHECK(q == p, "realloc 192 -> 384 KiB moved the block (%p -> %p): the next pages were free",
        (void *)p, (void *)q);
  CHECK(malloc_usable_size(q) == 384 * KIB, "usable size %zu after growing to 384 KiB",
        malloc_usable_size(q));
  expect_kept(q, p, 192 * KIB, "grown to 384 KiB");
  CHECK(b.pages_activated - a.pages_activated == 3, "grow by 3 pages activated %llu",
        (unsigned long long)(b.pages_activated - a.pages_activated));
  CHECK(b.pages_fresh + b.pages_reused - a.pages_fresh - a.pages_reused == 3,
        "grow by 3 pages: %llu fresh or reused",
        (unsigned long long)(b.pages_fresh + b.pages_reused - a.pages_fresh - a.pages_reused));
  /* pages no span had touched, or purged: now committed */
  uint64_t grew = b.committed_bytes - a.committed_bytes;
  CHECK(grew <= 3 * PAGE && grew % PAGE == 0, "grow by 3 pages committed %llu bytes",
        (unsigned long long)grew);
  fill_pattern(q, 384 * KIB);

  q = realloc(opaque_ptr(q), opaque_size(768 * KIB));
  CHECK(q == p, "realloc 384 -> 768 KiB moved the block (%p -> %p)", (void *)p, (void *)q);
  expect_kept(q, p, 384 * KIB, "grown to 768 KiB");
  fill_pattern(q, 768 * KIB);

  /* shrunk in place: 4 pages stay, 8 go back, 2 of them are taken again */
  a = stats();
  q = realloc(opaque_ptr(q), opaque_size(200 * KIB));
  CHECK(q == p, "realloc 768 -> 200 KiB moved the block (%p -> %p)", (void *)p, (void *)q);
  CHECK(malloc_usable_size(q) == 256 * KIB, "usable size %zu after shrinking to 200 KiB",
        malloc_usable_size(q));
  expect_kept(q, p, 200 * KIB, "shrunk to 200 KiB");
  q = realloc(opaque_ptr(q), opaque_size(384 * KIB));
  b = stats();
  CHECK(q == p, "realloc 200 -> 384 KiB moved the block (%p -> %p): its tail was free", (void *)p,
        (void *)q);
  expect_kept(q, p, 200 * KIB, "grown again to 384 KiB");
  CHECK(b.pages_activated - a.pages_activated == 2, "4 -> 6 pages activated %llu",
        (unsigned long long)(b.pages_activated - a.pages_activated));

  /* free gives back the whole grown span: a second free is refused */
  free(opaque_ptr(q));
  a = stats();
  free(opaque_ptr(q));
  b = stats();
  CHECK(b.invalid_frees - a.invalid_frees == 1, "second free of the grown block not refused");
  /* and its pages are one free run again: a block as long starts there */
  char *r = malloc(opaque_size(768 * KIB));
  CHECK(r, "malloc(768 KiB)");
  free(r);
}

/* 192 KiB blocks into held[] until one takes the pages right after p;
 * returns how many (that one last). */
static int take_next(char *p, char **held, int max) {
  for (int n = 0; n < max;) {
    held[n] = malloc(opaque_size(192 * KIB));
    CHECK(held[n], "malloc(192 KiB) blocker");
    if (held[n++] == p + 192 * KIB) return n;
  }
  FAIL("no block took the pages after %p", (void *)p);
}

/* A block whose next pages hold another block moves, contents kept, to
 * where as many pages again are free after it: it grows there next time,
 * twice (6 -> 12 -> 24 pages; the pages left after the blockers in their
 * region are fewer). */
static void grow_blocked(void) {
  char *p = malloc(opaque_size(192 * KIB)), *held[64];
  CHECK(p, "malloc(192 KiB)");
  fill_pattern(p, 192 * KIB);
  int n = take_next(p, held, 64);
  char *q = realloc(opaque_ptr(p), opaque_size(384 * KIB));
  CHECK(q && q != p, "realloc into another block's pages kept %p", (void *)p);
  expect_kept(q, p, 192 * KIB, "moved to 384 KiB");
  fill_pattern(q, 384 * KIB);
  char *r = realloc(opaque_ptr(q), opaque_size(768 * KIB));
  CHECK(r == q, "realloc 384 -> 768 KiB after a move moved again (%p -> %p)", (void *)q, (void *)r);
  expect_kept(r, q, 384 * KIB, "grown to 768 KiB");
  fill_pattern(r, 768 * KIB);
  char *s = realloc(opaque_ptr(r), opaque_size(1536 * KIB));
  CHECK(s == r, "realloc 768 KiB -> 1.5 MiB after a move moved again (%p -> %p)", (void *)r,
        (void *)s);
  expect_kept(s, r, 768 * KIB, "grown to 1.5 MiB");
  hak_stats_t a = stats();
  for (int i = 0; i < n; i++)
    free(held[i]);
  free(s);
  CHECK(stats().invalid_frees == a.invalid_frees, "frees after the move counted invalid");
}

/* Pages written, freed and purged (malloc_trim) before the grow took them:
 * written through the grown block, they are no zero pages for calloc. */
static void grow_dirty_then_calloc(void) {
  char *p = malloc(opaque_size(192 * KIB)), *held[64];
  CHECK(p, "malloc(192 KiB)");
  int n = take_next(p, held, 64);
  memset(held[n - 1], 0x5a, 192 * KIB);
  free(held[n - 1]);
  malloc_trim(0); /* its pages purged: zero, not resident */
  hak_stats_t a = stats();
  char *q = realloc(opaque_ptr(p), opaque_size(384 * KIB));
  hak_stats_t b = stats();
  CHECK(q == p, "realloc 192 -> 384 KiB onto freed pages moved the block");
  CHECK(b.committed_bytes - a.committed_bytes == 3 * PAGE,
        "grow onto 3 purged pages committed %llu bytes",
        (unsigned long long)(b.committed_bytes - a.committed_bytes));
  memset(q, 0xab, 384 * KIB);
  free(q);
  unsigned char *z = calloc(1, opaque_size(384 * KIB));
  CHECK(z, "calloc(384 KiB)");
  for (size_t i = 0; i < 384 * KIB; i++)
    CHECK(z[i] == 0, "calloc(384 KiB) at %p: byte %zu is %#x (grown pages taken as zero)",
          (void *)z, i, z[i]);
  free(z);
  for (int i = 0; i < n - 1; i++)
    free(held[i]);
}

int main(void) {
  grow_in_place();
  grow_blocked();
  grow_dirty_then_calloc();
  printf("large blocks grown and shrunk in place, moved when blocked\n");
  return 0;
}
