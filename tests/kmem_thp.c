/* Transparent huge pages, by HAKMEM_THP value. thp_bytes is hak_stats'
 * AnonHugePages of hakmem's regions; it never exceeds the AnonHugePages of
 * the whole process.
 * - collapse (the default): a small heap, a heap dense in spans but barely
 *   touched, and a heap of 1 MiB blocks (half of every region free) get no
 *   huge page, even after many background periods; a dense, long-lived,
 *   touched heap is collapsed within a few periods (thp_bytes > 0,
 *   thp_collapses > 0), and freeing it splits and purges it all again.
 *   (A region is collapsed only once 31/32 of it is resident: a heap of 16-64
 *   KiB blocks leaves too much of its class pages untouched; 1-8 KiB blocks
 *   fill them.)
 * - collapse, paced: of a dense heap of 32 regions, one region is collapsed
 *   a background pass (each collapse copies 2 MiB on the background thread,
 *   which competes with the application); with HAKMEM_PURGE_DELAY_MS=2000
 *   the passes are 1 s apart, and 300 ms after the first collapse there is
 *   still only one.
 * - collapse where MADV_COLLAPSE is refused (EINVAL): no huge page, one line
 *   under HAKMEM_VERBOSE=1, none without.
 * - 1: a 256 MiB live heap gets huge pages at once (advice at mapping).
 * - 0: none, even for the dense heap after waiting.
 * Skipped where THP is off ("never") or where the kernel gives no huge page
 * even to a mapping of our own that asks for one. */
#include <malloc.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include "kmem_util.h"

/* The "refused" child's kernel has no MADV_COLLAPSE: this madvise (the
 * statically linked allocator's calls come here) answers EINVAL, as Linux
 * before 6.1 does. */
static bool refuse_collapse;
int madvise(void *p, size_t len, int advice) {
  if (advice == 25 /* MADV_COLLAPSE */ && refuse_collapse) {
    errno = EINVAL;
    return -1;
  }
  return syscall(SYS_madvise, p, len, advice) == 0 ? 0 : -1;
}

#define HEAP (256 * MIB)
#define NBLK (HEAP / (16 * KIB))

static void *blocks[NBLK];

/* AnonHugePages of the whole process, in bytes. */
static size_t process_thp(void) {
  FILE *f = fopen("/proc/self/smaps_rollup", "r");
  if (!f) return 0;
  char line[256];
  unsigned long kb = 0;
  while (fgets(line, sizeof line, f))
    if (sscanf(line, "AnonHugePages: %lu kB", &kb) == 1) break;
  fclose(f);
  return (size_t)kb * KIB;
}

/* Blocks of lo..hi bytes up to heap bytes; each touched over touch_len
 * bytes (SIZE_MAX: all of it). Returns the count. */
static size_t build_sized(size_t heap, size_t lo, size_t hi, size_t touch_len) {
  size_t live = 0, n = 0;
  uint64_t rng = 12345;
  while (live < heap && n < NBLK) {
    rng = rng * 6364136223846793005ull + 1442695040888963407ull;
    size_t sz = lo + (size_t)(rng >> 33) % (hi - lo + 1);
    blocks[n] = malloc(sz);
    CHECK(blocks[n], "malloc(%zu) failed", sz);
    touch(blocks[n], sz < touch_len ? sz : touch_len);
    live += sz;
    n++;
  }
  return n;
}

/* 16-64 KiB blocks: size classes leave parts of their pages untouched */
static size_t build(size_t heap, size_t touch_len) {
  return build_sized(heap, 16 * KIB, 64 * KIB, touch_len);
}

static void free_all(size_t n) {
  for (size_t i = 0; i < n; i++)
    free(blocks[i]);
}

static hak_stats_t checked_stats(const char *mode, const char *what) {
  hak_stats_t s = stats_now();
  size_t all = process_thp();
  fprintf(stderr, "%s, %s: thp_bytes %llu MiB, thp_collapses %llu, process AnonHugePages %zu MiB\n",
          mode, what, (unsigned long long)(s.thp_bytes / MIB), (unsigned long long)s.thp_collapses,
          all / MIB);
  CHECK(s.thp_bytes <= all, "%s, %s: thp_bytes %llu exceeds the process's AnonHugePages %zu", mode,
        what, (unsigned long long)s.thp_bytes, all);
  return s;
}

/* Waits up to ms for thp_bytes > 0 and a collapse counted (collapse mode;
 * the count comes after MADV_COLLAPSE returns, smaps may show the huge page
 * a moment earlier). */
static hak_stats_t wait_for_thp(long ms) {
  long until = now_ms() + ms;
  hak_stats_t s;
  do {
    sleep_ms(50);
    s = stats_now();
  } while ((s.thp_bytes == 0 || s.thp_collapses == 0) && now_ms() < until);
  sleep_ms(50);
  return s;
}

/* The background period is 50 ms (HAKMEM_PURGE_DELAY_MS=100): a region has
 * to be dense for 100 ms, so a second is ten times what a collapse needs. */
#define SETTLE_MS 1000

static int child_main(const char *mode) {
  if (!strcmp(mode, "thp1")) { /* advice at mapping: huge pages at once */
    size_t n = build(HEAP, SIZE_MAX);
    hak_stats_t s = checked_stats(mode, "256 MiB touched");
    CHECK(s.thp_bytes > 0, "HAKMEM_THP=1: thp_bytes is 0 with 256 MiB live");
    CHECK(s.thp_collapses == 0, "HAKMEM_THP=1: %llu collapses, expected none",
          (unsigned long long)s.thp_collapses);
    free_all(n);
  } else if (!strcmp(mode, "thp0")) {
    size_t n = build(64 * MIB, SIZE_MAX);
    sleep_ms(SETTLE_MS);
    hak_stats_t s = checked_stats(mode, "64 MiB touched, after 1 s");
    CHECK(s.thp_bytes == 0 && s.thp_collapses == 0,
          "HAKMEM_THP=0: thp_bytes %llu MiB, %llu collapses, expected none (where THP is "
          "\"always\", regions need MADV_NOHUGEPAGE for this)",
          (unsigned long long)(s.thp_bytes / MIB), (unsigned long long)s.thp_collapses);
    free_all(n);
  } else if (!strcmp(mode, "small")) { /* one region: no huge page, ever */
    size_t n = build(1 * MIB, SIZE_MAX);
    sleep_ms(SETTLE_MS);
    hak_stats_t s = checked_stats(mode, "1 MiB touched, after 1 s");
    CHECK(s.thp_bytes == 0, "collapse: a 1 MiB heap has %llu MiB of huge pages",
          (unsigned long long)(s.thp_bytes / MIB));
    free_all(n);
  } else if (!strcmp(mode, "sparse")) {
    /* dense in spans, 4 KiB touched per block: mostly not resident */
    size_t n = build(64 * MIB, 4 * KIB);
    /* 1 MiB blocks: every region has one and 15 free pages */
    void *big[32];
    for (int i = 0; i < 32; i++) {
      big[i] = malloc(MIB);
      CHECK(big[i], "malloc(1 MiB) failed");
      touch(big[i], MIB);
    }
    sleep_ms(SETTLE_MS);
    hak_stats_t s = checked_stats(mode, "64 MiB 4 KiB-touched + 32 MiB in 1 MiB blocks, after 1 s");
    CHECK(s.thp_bytes == 0 && s.thp_collapses == 0,
          "collapse: a sparse heap got huge pages: thp_bytes %llu MiB, %llu collapses",
          (unsigned long long)(s.thp_bytes / MIB), (unsigned long long)s.thp_collapses);
    for (int i = 0; i < 32; i++)
      free(big[i]);
    free_all(n);
  } else if (!strcmp(mode, "refused")) {
    refuse_collapse = true;
    size_t n = build_sized(64 * MIB, 1 * KIB, 8 * KIB, SIZE_MAX);
    sleep_ms(SETTLE_MS);
    hak_stats_t s = checked_stats(mode, "64 MiB touched, collapses refused, after 1 s");
    CHECK(s.thp_bytes == 0 && s.thp_collapses == 0,
          "refused: thp_bytes %llu MiB, %llu collapses, expected none",
          (unsigned long long)(s.thp_bytes / MIB), (unsigned long long)s.thp_collapses);
    free_all(n);
  } else if (!strcmp(mode, "paced")) { /* HAKMEM_PURGE_DELAY_MS=2000: a pass a second */
    size_t n = build_sized(64 * MIB, 1 * KIB, 8 * KIB, SIZE_MAX);
    long until = now_ms() + 5 * SETTLE_MS;
    hak_stats_t s;
    do {
      sleep_ms(5);
      s = stats_now();
    } while (s.thp_collapses == 0 && now_ms() < until);
    if (s.thp_collapses == 0) SKIP("no region was collapsed in 5 s (memory too fragmented?)");
    long first = now_ms();
    sleep_ms(300);
    s = checked_stats(mode, "64 MiB touched, 300 ms after the first collapse");
    if (now_ms() - first < 900) /* still within the pass (a loaded machine may stall us) */
      CHECK(s.thp_collapses == 1, "paced: %llu collapses in one background pass, expected 1",
            (unsigned long long)s.thp_collapses);
    free_all(n);
  } else { /* dense: collapsed within a few periods, split again when freed */
    size_t n = build_sized(64 * MIB, 1 * KIB, 8 * KIB, SIZE_MAX); /* pages filled whole */
    hak_stats_t s = checked_stats(mode, "64 MiB touched, at once");
    CHECK(s.thp_collapses == 0 || s.thp_bytes > 0, "collapses without huge pages");
    s = wait_for_thp(3 * SETTLE_MS);
    s = checked_stats(mode, "64 MiB touched, after waiting");
    if (s.thp_bytes == 0 && s.thp_collapses == 0)
      SKIP("no region was collapsed in 3 s (memory too fragmented for a huge page?)");
    CHECK(s.thp_bytes > 0 && s.thp_collapses > 0,
          "collapse: a dense 64 MiB heap: thp_bytes %llu MiB after %llu collapses",
          (unsigned long long)(s.thp_bytes / MIB), (unsigned long long)s.thp_collapses);
    free_all(n);
    malloc_trim(0); /* the heap's cached empty pages too */
    s = checked_stats(mode, "all freed and trimmed");
    CHECK(s.thp_bytes < 4 * MIB, "collapse: %llu MiB of huge pages left after freeing everything",
          (unsigned long long)(s.thp_bytes / MIB));
  }
  return 0;
}

int main(int argc, char **argv) {
  if (argc > 1) return child_main(argv[1]);
  char mode[128];
  if (!read_line("/sys/kernel/mm/transparent_hugepage/enabled", mode, sizeof mode))
    SKIP("no /sys/kernel/mm/transparent_hugepage/enabled: this kernel has no THP");
  if (strstr(mode, "[never]")) SKIP("transparent huge pages are disabled here (enabled: %s)", mode);

  /* Can this machine give a huge page to a mapping that asks for one? */
  size_t len = 8 * MIB;
  char *map = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  CHECK(map != MAP_FAILED, "mmap of 8 MiB failed");
  char *aligned = (char *)(((uintptr_t)map + 2 * MIB - 1) & ~(uintptr_t)(2 * MIB - 1));
  size_t before = process_thp();
  CHECK(madvise(aligned, 4 * MIB, MADV_HUGEPAGE) == 0, "madvise(MADV_HUGEPAGE) failed");
  touch(aligned, 4 * MIB);
  size_t got = process_thp() - before;
  munmap(map, len);
  if (got == 0)
    SKIP("the kernel gave no huge page to a MADV_HUGEPAGE mapping of our own (enabled: %s; "
         "memory fragmented?)",
         mode);

  static struct child c;
  const char *thp1[] = {"HAKMEM_THP=1", NULL};
  const char *thp0[] = {"HAKMEM_THP=0", NULL};
  const char *collapse[] = {"HAKMEM_THP=collapse", NULL};
  const char *deflt[] = {NULL};
  child_ok("thp1", thp1, &c);
  fputs(c.err, stdout);
  child_ok("thp0", thp0, &c);
  fputs(c.err, stdout);
  child_ok("small", deflt, &c);
  fputs(c.err, stdout);
  child_ok("sparse", deflt, &c);
  fputs(c.err, stdout);
  child_ok("dense", deflt, &c);
  fputs(c.err, stdout);
  child_ok("dense", collapse, &c);
  fputs(c.err, stdout);
  const char *paced[] = {"HAKMEM_PURGE_DELAY_MS=2000", NULL};
  child_ok("paced", paced, &c);
  fputs(c.err, stdout);
  const char *refused_verbose[] = {"HAKMEM_VERBOSE=1", NULL};
  child_ok("refused", refused_verbose, &c);
  fputs(c.err, stdout);
  int said = 0;
  for (const char *p = c.err; (p = strstr(p, "MADV_COLLAPSE")) != NULL; p++)
    said++;
  CHECK(said == 1, "refused, HAKMEM_VERBOSE=1: %d lines name MADV_COLLAPSE, expected 1:\n%s", said,
        c.err);
  child_ok("refused", deflt, &c);
  CHECK(hakmem_lines(c.err) == 0, "refused, not verbose: hakmem said something:\n%s", c.err);
  printf("thp: ok (enabled: %s)\n", mode);
  return 0;
}
