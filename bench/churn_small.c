/* churn_small: small-object churn, each thread on its own working set.
 *
 * usage: churn_small [seconds [threads [min [max [slots]]]]]
 *   seconds  run time (default 1.5)
 *   threads  worker threads; 1 is the single-thread case (default 2)
 *   min,max  block size range in bytes (default 8 512)
 *   slots    live blocks per thread (default 4096, about 1 MiB)
 *
 * The loop is in churn.h. Prints "churn_small: N ops/s". */
#include "churn.h"

int main(int argc, char **argv) {
  bench_name = "churn_small";
  bench_usage_text = "usage: churn_small [seconds [threads [min [max [slots]]]]]\n"
                     "  defaults: 1.5 2 8 512 4096\n";
  return churn_main(argc, argv, 8, 512, 4096);
}
