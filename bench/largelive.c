/* largelive: RSS per live byte of large blocks of one size.
 *
 * usage: largelive count size_kb [size_kb...]
 *   count    live blocks per size (e.g. 128 or 256)
 *   size_kb  block sizes in KiB (up to 16 sizes, e.g. 128 256 512 768 1024)
 *
 * For each size, a child process (fork: the measure starts from the same
 * small heap every time, not from what the previous size left behind) reads
 * its RSS, allocates `count` blocks of that size, writes every byte of each
 * once (memset, then a check pattern), reads its RSS again with all of them
 * live, checks and frees them. The ratio (RSS with the blocks live - RSS
 * before) / (count * size) is 1.00 when the allocator keeps no more resident
 * than what the program wrote; an allocator that rounds a block up to a
 * bigger class, or backs it with a huge page it only partly uses, shows more.
 *
 * Result line, one op = one block allocated, written, checked and freed:
 *   largelive: N ops/s rss_live_<count>_<size>=R ... worst=W
 * with <size> as 128k, 1536k, 2m ...; W the largest ratio. */
#define _GNU_SOURCE
#include "bench.h"

#include <sys/wait.h>

/* (RSS delta in KiB) for count blocks of n bytes, measured in this process. */
static long live_delta_kb(size_t count, size_t n) {
  void **blk = bench_alloc(count * sizeof *blk);
  long before = bench_rss_kb();
  for (size_t i = 0; i < count; i++) {
    blk[i] = bench_alloc(n);
    memset(blk[i], 0x5a, n);
    bench_fill(blk[i], n);
  }
  long live = bench_rss_kb();
  for (size_t i = 0; i < count; i++)
    bench_check_free(blk[i], n);
  free(blk);
  return live - before;
}

static void size_name(char *buf, size_t len, size_t kb) {
  if (kb % 1024 == 0)
    snprintf(buf, len, "%zum", kb / 1024);
  else
    snprintf(buf, len, "%zuk", kb);
}

int main(int argc, char **argv) {
  bench_name = "largelive";
  bench_usage_text = "usage: largelive count size_kb [size_kb...]\n"
                     "  e.g. largelive 128 128 256 512 768 1024 1536 2048 4096\n";
  bench_args(argc, argv, 17);
  if (argc < 3) bench_usage(64);
  size_t count = (size_t)bench_arg(argc, argv, 1, 128, 1, 1 << 20);
  char extra[2048];
  size_t len = 0;
  double worst = 0, t0 = bench_now();
  uint64_t ops = 0;
  for (int a = 2; a < argc; a++) {
    size_t kb = (size_t)bench_arg(argc, argv, a, 128, 4, 1 << 22);
    int fd[2];
    if (pipe(fd)) bench_fail(4, "pipe failed", NULL, 0);
    fflush(stdout);
    pid_t pid = fork();
    if (pid < 0) bench_fail(4, "fork failed", NULL, 0);
    if (pid == 0) {
      close(fd[0]);
      long d = live_delta_kb(count, kb << 10);
      if (write(fd[1], &d, sizeof d) != (ssize_t)sizeof d) _exit(4);
      _exit(0);
    }
    close(fd[1]);
    long d = -1;
    ssize_t got = read(fd[0], &d, sizeof d);
    close(fd[0]);
    int st = 0;
    while (waitpid(pid, &st, 0) < 0 && errno == EINTR) {
    }
    if (got != (ssize_t)sizeof d || !WIFEXITED(st) || WEXITSTATUS(st)) {
      /* the child's own exit code (2 corruption, 3 out of memory) */
      int code = WIFEXITED(st) && WEXITSTATUS(st) ? WEXITSTATUS(st) : 2;
      fprintf(stderr, "largelive: %zu KiB child failed (status %d)\n", kb, st);
      return code;
    }
    double r = (double)d / (double)(count * kb);
    if (r > worst) worst = r;
    char name[32];
    size_name(name, sizeof name, kb);
    len +=
        (size_t)snprintf(extra + len, sizeof extra - len, "rss_live_%zu_%s=%.3f ", count, name, r);
    ops += count;
  }
  snprintf(extra + len, sizeof extra - len, "worst=%.3f", worst);
  bench_result(ops, bench_now() - t0, extra);
  return 0;
}
