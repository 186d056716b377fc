/* HAKMEM_UFFD=1: about one userfaultfd fault per 64 KiB page first touched,
 * fresh memory reads zero, and purged pages (whole or in part) fault again,
 * are served again and read zero.
 *
 * Runs as a child with HAKMEM_UFFD=1. The kmem part registers a mapping
 * itself (kmem_uffd_start is a no-op when the allocator started it); the
 * malloc part runs once the allocator registers its regions. */
#define _GNU_SOURCE
#include <hakmem.h>
#include <malloc.h>

#include <errno.h>
#include <sys/mman.h>

#include "../kmem/kmem.h"
#include "check.h"
#include "spawn.h"
#include "uffd_util.h"

#define KPAGE ((size_t)64 << 10)
#define AREA ((size_t)64 << 20)

/* Whether the mapping holding p is registered in missing mode: "um" among
 * its VmFlags in /proc/self/smaps. */
static int registered(const void *p) {
  FILE *f = fopen("/proc/self/smaps", "r");
  CHECK(f, "cannot open /proc/self/smaps");
  char line[512];
  int inside = 0, yes = -1;
  while (yes < 0 && fgets(line, sizeof line, f)) {
    unsigned long lo, hi;
    if (sscanf(line, "%lx-%lx ", &lo, &hi) == 2 && strchr(line, '-') < strchr(line, ' '))
      inside = (uintptr_t)p >= lo && (uintptr_t)p < hi;
    else if (inside && strncmp(line, "VmFlags:", 8) == 0)
      yes = strstr(line, " um") != NULL;
  }
  fclose(f);
  CHECK(yes >= 0, "no mapping for %p in /proc/self/smaps", p);
  return yes;
}

/* Reads the first word of every 4 KiB (a read fault first, so it must be
 * zero), then fills every word with the pattern. */
static void touch_check_zero(char *p, size_t len) {
  for (size_t off = 0; off < len; off += 4096)
    CHECK(*(volatile uint64_t *)(p + off) == 0, "fresh memory at +%zu is not zero", off);
  fill_sparse(p, len, 512);
}

static void check_zero(const char *p, size_t len, const char *what) {
  for (size_t off = 0; off < len; off += 8)
    CHECK(*(const uint64_t *)(p + off) == 0, "%s: memory at +%zu is not zero", what, off);
}

static void kmem_part(void) {
  char *a = kmem_map_aligned(AREA, KMEM_REGION_SIZE);
  CHECK(a, "kmem_map_aligned failed");
  for (size_t off = 0; off < AREA; off += KMEM_REGION_SIZE)
    kmem_uffd_register(a + off, KMEM_REGION_SIZE);
  CHECK(registered(a) && registered(a + AREA - 1), "kmem_uffd_register did not register");

  uint64_t f0 = uffd_faults();
  touch_check_zero(a, AREA);
  uint64_t first = uffd_faults() - f0;
  printf("kmem: %llu faults for %zu pages of 64 KiB\n", (unsigned long long)first, AREA / KPAGE);
  CHECK(first == AREA / KPAGE, "touching %zu pages of 64 KiB took %llu userfaultfd faults",
        AREA / KPAGE, (unsigned long long)first);
  size_t bad = check_sparse(a, AREA, 512);
  CHECK(bad == SIZE_MAX, "data lost at +%zu", bad);

  /* Whole purge: everything faults again, once per 64 KiB, and reads zero. */
  CHECK(kmem_purge_now(a, AREA), "kmem_purge_now failed");
  f0 = uffd_faults();
  check_zero(a, AREA, "after purge");
  uint64_t again = uffd_faults() - f0;
  printf("kmem: %llu faults after the purge\n", (unsigned long long)again);
  CHECK(again == AREA / KPAGE, "re-touching purged memory took %llu faults, want %zu",
        (unsigned long long)again, AREA / KPAGE);

  /* Partial purges leave 64 KiB pages half there: the first 4 KiB of one
   * page (the fill stops short), a middle 4 KiB of another (the fill finds
   * the page's start there); the rest of each page keeps its data. */
  fill_sparse(a, 4 * KPAGE, 256);
  CHECK(kmem_purge_now(a, 4096), "kmem_purge_now failed");
  CHECK(kmem_purge_now(a + KPAGE + 5 * 4096, 4096), "kmem_purge_now failed");
  CHECK(kmem_purge_now(a + 2 * KPAGE + 15 * 4096, 4096), "kmem_purge_now failed");
  f0 = uffd_faults();
  check_zero(a, 4096, "first 4 KiB purged");
  check_zero(a + KPAGE + 5 * 4096, 4096, "middle 4 KiB purged");
  check_zero(a + 2 * KPAGE + 15 * 4096, 4096, "last 4 KiB purged");
  CHECK(uffd_faults() - f0 == 3, "3 purged 4 KiB pages took %llu faults",
        (unsigned long long)(uffd_faults() - f0));
  for (size_t off = 0; off < 4 * KPAGE; off += 256) {
    size_t page4k = off / 4096;
    if (page4k == 0 || page4k == 16 + 5 || page4k == 32 + 15) continue;
    CHECK(((uint64_t *)a)[off / 8] == pattern_word(a, off), "partial purge lost data at +%zu", off);
  }
  kmem_unmap(a, AREA);

  /* Regions advised as huge pages (as the allocator does past a few): the
   * first touch arrives as a huge-page fault, served as 64 KiB pages. */
  size_t len = 4 * KMEM_REGION_SIZE;
  a = kmem_map_aligned(len, KMEM_REGION_SIZE);
  CHECK(a, "kmem_map_aligned failed");
  madvise(a, len, MADV_HUGEPAGE);
  for (size_t off = 0; off < len; off += KMEM_REGION_SIZE)
    kmem_uffd_register(a + off, KMEM_REGION_SIZE);
  f0 = uffd_faults();
  touch_check_zero(a, len);
  CHECK(uffd_faults() - f0 == len / KPAGE, "huge-page advised memory: %llu faults, want %zu",
        (unsigned long long)(uffd_faults() - f0), len / KPAGE);
  bad = check_sparse(a, len, 512);
  CHECK(bad == SIZE_MAX, "huge-page advised memory lost data at +%zu", bad);
  kmem_unmap(a, len);
}

/* hugetlbfs regions cannot be filled 64 KiB at a time: registering one
 * leaves it unregistered (demand paging) and says so once. */
static void hugetlb_part(void) {
  CHECK(kmem_uffd_start(), "kmem_uffd_start failed");
  /* No pool needed: MAP_NORESERVE maps it, and it is never touched. */
  char *h = mmap(NULL, KMEM_REGION_SIZE, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB | MAP_NORESERVE, -1, 0);
  if (h == MAP_FAILED) {
    fprintf(stderr, "no hugetlbfs mapping: %s\n", strerror(errno));
    return;
  }
  kmem_uffd_register(h, KMEM_REGION_SIZE);
  kmem_uffd_register(h, KMEM_REGION_SIZE);
  CHECK(!registered(h), "a hugetlbfs mapping stayed registered");
  munmap(h, KMEM_REGION_SIZE);
}

/* 64 MiB in 32 KiB blocks through malloc: about 1024 faults, then after
 * free, malloc_trim and calloc of the same again: faults again, zeros. */
static void malloc_part(void) {
  enum { BLK = 32 << 10, N = AREA / BLK };
  static char *b[N];
  uint64_t f0 = uffd_faults();
  for (int i = 0; i < N; i++) {
    b[i] = malloc(BLK);
    CHECK(b[i], "malloc failed");
    fill_sparse(b[i], BLK, 512);
  }
  uint64_t first = uffd_faults() - f0;
  printf("malloc: %llu faults for 64 MiB in 32 KiB blocks\n", (unsigned long long)first);
  CHECK(first >= 900 && first <= 1300, "64 MiB through malloc took %llu userfaultfd faults",
        (unsigned long long)first);
  for (int i = 0; i < N; i++) {
    size_t bad = check_sparse(b[i], BLK, 512);
    CHECK(bad == SIZE_MAX, "block %d lost data at +%zu", i, bad);
    free(b[i]);
  }

  hak_stats_t s0, s1;
  hak_stats_get(&s0);
  malloc_trim(0);
  hak_stats_get(&s1);
  uint64_t purged = s1.purged_bytes - s0.purged_bytes;
  f0 = uffd_faults();
  for (int i = 0; i < N; i++) {
    b[i] = calloc(1, BLK);
    CHECK(b[i], "calloc failed");
    check_zero(b[i], BLK, "calloc after malloc_trim");
  }
  uint64_t again = uffd_faults() - f0;
  printf("malloc: %llu MiB purged by malloc_trim, %llu faults after\n",
         (unsigned long long)(purged >> 20), (unsigned long long)again);
  CHECK(purged >= AREA / 2, "malloc_trim purged only %llu bytes", (unsigned long long)purged);
  CHECK(again >= 256, "only %llu faults re-touching purged memory", (unsigned long long)again);
  for (int i = 0; i < N; i++)
    free(b[i]);
}

int main(int argc, char **argv) {
  if (argc > 1 && strcmp(argv[1], "hugetlb") == 0) {
    hugetlb_part();
    return 0;
  }
  if (argc > 1 && strcmp(argv[1], "child") == 0) {
    int wired = uffd_child_start();
    kmem_part();
    if (wired) malloc_part();
    return 0;
  }
  struct child c;
  uffd_run_self("child", &c);
  CHECK(!strstr(c.err, "HAKMEM_UFFD"), "a fallback was reported: %s", c.err);
  uffd_run_self("hugetlb", &c);
  CHECK(strstr(c.err, "no hugetlbfs mapping") ||
            (count_lines(c.err) == 1 && strstr(c.err, "HAKMEM_UFFD unavailable") &&
             strstr(c.err, "hugetlbfs")),
        "want one fallback line naming hugetlbfs, got: %s", c.err);
  return 0;
}
