/* Transparent huge pages: with a 256 MiB live heap, hak_stats' thp_bytes
 * (AnonHugePages of hakmem's regions) is above 0 under HAKMEM_THP=1 and 0
 * under HAKMEM_THP=0. thp_bytes never exceeds the AnonHugePages of the whole
 * process. Skipped where THP is off ("never") or where the kernel gives no
 * huge page even to a mapping of our own that asks for one. */
#include <sys/mman.h>
#include "kmem_util.h"

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

static int child_main(const char *mode) {
  size_t live = 0, n = 0;
  uint64_t rng = 12345;
  while (live < HEAP && n < NBLK) {
    rng = rng * 6364136223846793005ull + 1442695040888963407ull;
    size_t sz = 16 * KIB + (size_t)(rng >> 33) % (48 * KIB); /* 16-64 KiB */
    blocks[n] = malloc(sz);
    CHECK(blocks[n], "malloc(%zu) failed", sz);
    touch(blocks[n], sz);
    live += sz;
    n++;
  }
  hak_stats_t s = stats_now();
  size_t all = process_thp();
  fprintf(stderr,
          "%s: %zu MiB live in %zu blocks: thp_bytes %llu MiB, process AnonHugePages %zu MiB\n",
          mode, live / MIB, n, (unsigned long long)(s.thp_bytes / MIB), all / MIB);
  CHECK(s.thp_bytes <= all, "%s: thp_bytes %llu exceeds the process's AnonHugePages %zu", mode,
        (unsigned long long)s.thp_bytes, all);
  if (!strcmp(mode, "thp1")) {
    CHECK(s.thp_bytes > 0,
          "HAKMEM_THP=1: thp_bytes is 0 with %zu MiB live (the process has %zu MiB AnonHugePages)",
          live / MIB, all / MIB);
  } else {
    CHECK(s.thp_bytes == 0,
          "HAKMEM_THP=0: thp_bytes is %llu MiB with %zu MiB live, expected 0 (where THP is "
          "\"always\", regions need MADV_NOHUGEPAGE for this)",
          (unsigned long long)(s.thp_bytes / MIB), live / MIB);
  }
  for (size_t i = 0; i < n; i++)
    free(blocks[i]);
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
  child_ok("thp1", thp1, &c);
  fputs(c.err, stdout);
  child_ok("thp0", thp0, &c);
  fputs(c.err, stdout);
  printf("thp: ok (enabled: %s)\n", mode);
  return 0;
}
