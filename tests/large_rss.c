/* Memory follows use for large blocks: N live blocks of one size, each
 * written whole, must cost at most 5% more resident memory than their bytes
 * (RSS after minus RSS before, over N * size), for every size from 128 KiB
 * to 32 MiB, with 128 and 256 live blocks, with the default settings
 * (regions get transparent huge pages past 32 MiB of heap) and with
 * HAKMEM_THP=0. Each case runs in a child of its own (the settings are read
 * at start-up), which execs this program again. Live bytes are capped at
 * 512 MiB a case (fewer blocks of the biggest sizes), so the test stays
 * within a shared machine's memory. */
#include "kmem_util.h"

#include <sys/wait.h>

#define LIVE_CAP ((size_t)512 << 20)

static int child(size_t size, int n) {
  void **p = calloc((size_t)n, sizeof *p);
  CHECK(p, "calloc");
  free(malloc(100));
  long before = (long)(rss_bytes() >> 10);
  for (int i = 0; i < n; i++) {
    p[i] = malloc(opaque_size(size));
    CHECK(p[i], "malloc(%zu) failed", size);
    memset(p[i], 0x5a, size);
  }
  long after = (long)(rss_bytes() >> 10);
  double ratio = (double)(after - before) * 1024 / ((double)size * n);
  printf("%zu KiB x %d: RSS/live %.3f\n", size >> 10, n, ratio);
  CHECK(ratio <= 1.05, "%zu KiB x %d (%s): RSS grew %ld KiB for %zu KiB live: %.3f > 1.05",
        size >> 10, n, getenv("HAKMEM_THP") ? "HAKMEM_THP=0" : "default", after - before,
        (size >> 10) * n, ratio);
  for (int i = 0; i < n; i++)
    free(p[i]);
  free(p);
  return 0;
}

int main(int argc, char **argv) {
  if (argc == 4 && !strcmp(argv[1], "child"))
    return child(strtoull(argv[2], NULL, 0), atoi(argv[3]));
  static const size_t kib[] = {128, 256, 512, 768, 1024, 1536, 2048, 4096, 8192, 32768};
  static const int counts[] = {128, 256};
  int failed = 0;
  for (size_t s = 0; s < sizeof kib / sizeof *kib; s++) {
    for (size_t c = 0; c < 2; c++) {
      size_t size = kib[s] << 10;
      int n = counts[c];
      if ((size_t)n * size > LIVE_CAP) n = (int)(LIVE_CAP / size);
      if (c == 1 && n < counts[1]) continue; /* capped: the same case again */
      for (int thp0 = 0; thp0 < 2; thp0++) {
        fflush(stdout);
        pid_t pid = fork();
        CHECK(pid >= 0, "fork");
        if (pid == 0) {
          if (thp0)
            setenv("HAKMEM_THP", "0", 1);
          else
            unsetenv("HAKMEM_THP");
          char sz[32], cnt[16];
          snprintf(sz, sizeof sz, "%zu", size);
          snprintf(cnt, sizeof cnt, "%d", n);
          execl("/proc/self/exe", argv[0], "child", sz, cnt, (char *)NULL);
          _exit(2);
        }
        int st;
        CHECK(waitpid(pid, &st, 0) == pid, "waitpid");
        if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) failed++;
      }
    }
  }
  if (failed) FAIL("%d cases past RSS/live 1.05 (their lines above)", failed);
  return 0;
}
