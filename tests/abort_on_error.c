/* Foreign frees and HAKMEM_ABORT_ON_ERROR, on child processes: with =1 the
 * first foreign free aborts (SIGABRT); unset or =0 the program goes on,
 * every foreign free is counted, and stderr gets exactly one warning line
 * however many there are. */
#define _GNU_SOURCE
#include <signal.h>
#include <sys/mman.h>
#include "check.h"
#include "hakmem.h"
#include "spawn.h"

#define MANY 1000

static char static_area[MANY];

static int child_main(const char *mode) {
  char stack_area[64];
  void *keep = malloc(100); /* initialised, as any program would be */
  if (!strcmp(mode, "one")) {
    free(opaque_ptr(stack_area));
    printf("still running after a foreign free\n");
    return 0;
  }
  hak_stats_t before, after;
  hak_stats_get(&before);
  char *m = mmap(NULL, 1 << 20, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  CHECK(m != MAP_FAILED, "mmap failed");
  for (int i = 0; i < MANY; i++) {
    void *p = i % 3 == 0   ? (void *)(static_area + i)
              : i % 3 == 1 ? (void *)(m + 1024 * i)
                           : (void *)(stack_area + i % 64);
    free(opaque_ptr(p));
  }
  hak_stats_get(&after);
  /* On stdout: stderr must hold only the allocator's warning. */
  if (after.invalid_frees - before.invalid_frees != MANY) {
    printf("invalid_frees went up by %llu for %d foreign frees\n",
           (unsigned long long)(after.invalid_frees - before.invalid_frees), MANY);
    return 3;
  }
  free(keep);
  return 0;
}

int main(int argc, char **argv) {
  if (argc > 1) return child_main(argv[1]);
  static struct child c;

  const char *abort_env[] = {"HAKMEM_ABORT_ON_ERROR=1", NULL};
  run_self("one", abort_env, &c);
  CHECK(WIFSIGNALED(c.status) && WTERMSIG(c.status) == SIGABRT,
        "HAKMEM_ABORT_ON_ERROR=1: a foreign free did not abort (status 0x%x)", c.status);

  const char *zero_env[] = {"HAKMEM_ABORT_ON_ERROR=0", NULL};
  const char *const *envs[] = {NULL, zero_env};
  const char *names[] = {"unset", "HAKMEM_ABORT_ON_ERROR=0"};
  for (int i = 0; i < 2; i++) {
    run_self("many", envs[i], &c);
    CHECK(!WIFSIGNALED(c.status), "%s: %d foreign frees killed the program with signal %d",
          names[i], MANY, WTERMSIG(c.status));
    CHECK(exited_ok(&c), "%s: the program exited with %d (3: miscounted, see above)", names[i],
          WEXITSTATUS(c.status));
    CHECK(count_lines(c.err) == 1, "%s: %d foreign frees gave %d lines on stderr, not 1:\n%.2000s",
          names[i], MANY, count_lines(c.err), c.err);
  }
  return 0;
}
