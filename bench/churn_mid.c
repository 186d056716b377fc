/* churn_mid: mid-size churn (2-32 KiB), each thread on its own working set.
 *
 * usage: churn_mid [seconds [threads [min [max [slots]]]]]
 *   seconds  run time (default 1.5)
 *   threads  worker threads (default 2)
 *   min,max  block size range in bytes (default 2048 32768)
 *   slots    live blocks per thread (default 256, about 4 MiB)
 *
 * Sizes around the page size stress size-class spacing and whether freed
 * pages are returned and faulted back. The loop is in churn.h.
 * Prints "churn_mid: N ops/s". */
#include "churn.h"

int main(int argc, char **argv) {
  bench_name = "churn_mid";
  bench_usage_text = "usage: churn_mid [seconds [threads [min [max [slots]]]]]\n"
                     "  defaults: 1.5 2 2048 32768 256\n";
  return churn_main(argc, argv, 2048, 32768, 256);
}
