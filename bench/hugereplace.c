/* hugereplace: a few huge blocks replaced at random, each new one
 * value-initialised (zeroed with memset, as `new T[n]()` or a vector's
 * resize does after operator new).
 *
 * usage: hugereplace [replacements [live [min_mib [max_mib [seed]]]]]
 *   replacements  blocks replaced (default 2000; make bench runs 200)
 *   live          live blocks (default 20)
 *   min_mib       smallest block in MiB (default 5)
 *   max_mib       largest block in MiB (default 25)
 *   seed          PRNG seed (default 1)
 *
 * The live blocks are allocated and zeroed first, untimed; then each
 * replacement frees a random one (checking it) and allocates and zeroes a
 * block of random size in its place. Whether the allocator keeps freed huge
 * blocks, gives them back to the kernel (and faults them in again), or maps
 * zeroed memory, shows in the time; what it keeps shows in peak RSS.
 *
 * Result line, one op = one replacement:
 *   hugereplace: N ops/s secs=S live_mib=L */
#include "bench.h"

int main(int argc, char **argv) {
  bench_name = "hugereplace";
  bench_usage_text = "usage: hugereplace [replacements [live [min_mib [max_mib [seed]]]]]\n"
                     "  defaults: 2000 20 5 25 1\n";
  bench_args(argc, argv, 5);
  unsigned n = (unsigned)bench_arg(argc, argv, 1, 2000, 1, 1e9);
  unsigned live = (unsigned)bench_arg(argc, argv, 2, 20, 1, 4096);
  size_t lo = (size_t)bench_arg(argc, argv, 3, 5, 1, 4096) << 20;
  size_t hi = (size_t)bench_arg(argc, argv, 4, 25, 1, 4096) << 20;
  uint64_t rng = rng_seed((uint64_t)bench_arg(argc, argv, 5, 1, 0, 1e18));
  if (hi < lo) {
    fprintf(stderr, "hugereplace: max_mib below min_mib\n");
    bench_usage(64);
  }
  void **blk = bench_alloc(live * sizeof *blk);
  size_t *size = bench_alloc(live * sizeof *size);
  size_t total = 0;
  for (unsigned i = 0; i < live; i++) {
    size[i] = rng_range(&rng, lo, hi);
    blk[i] = bench_alloc(size[i]);
    memset(blk[i], 0, size[i]);
    bench_fill(blk[i], size[i]);
    total += size[i];
  }
  double t0 = bench_now();
  for (unsigned k = 0; k < n; k++) {
    unsigned i = (unsigned)rng_range(&rng, 0, live - 1);
    bench_check_free(blk[i], size[i]);
    total -= size[i];
    size[i] = rng_range(&rng, lo, hi);
    blk[i] = bench_alloc(size[i]);
    memset(blk[i], 0, size[i]);
    bench_fill(blk[i], size[i]);
    total += size[i];
  }
  double el = bench_now() - t0;
  for (unsigned i = 0; i < live; i++)
    bench_check_free(blk[i], size[i]);
  free(blk);
  free(size);
  char extra[128];
  snprintf(extra, sizeof extra, "secs=%.3f live_mib=%zu", el, total >> 20);
  bench_result(n, el, extra);
  return 0;
}
