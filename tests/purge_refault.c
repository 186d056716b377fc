/* Memory purged and wanted again at once keeps the next free memory longer:
 * a child (HAKMEM_PURGE_DELAY_MS=100) writes 24 MiB of 100 KB blocks, frees
 * them, waits for the purge, and writes them again at once, taking the
 * purged pages back (each a fault). Freed again, they must still be there
 * one and a half delays after (no purge: the pool's delay has grown, up to
 * 16x), and must still go back to the kernel within ten delays while the
 * process idles (an idle pool purges at the base delay, from two delays
 * after its last span traffic).
 * Without the growth a purge comes after one delay. A second child refills
 * three delays after the purge: memory wanted again within a few delays
 * means the process's phases outlast the delay (redis's 16 KiB phase frees
 * what its 100 KB phase takes again some 300 ms later), so that grows it
 * too. The refill has to follow the purge within its gap, which a busy
 * machine may not let it do: the round is tried up to ROUNDS times, and one
 * that keeps the memory passes. */
#include "check.h"
#include "hakmem.h"

#include <stdbool.h>
#include <sys/wait.h>
#include <time.h>

#define DELAY_MS 100
#define KEEP_MS (3 * DELAY_MS / 2) /* grown to 2x: no purge this soon */
#define LATE_MS (3 * DELAY_MS)     /* the second child's refill after the purge */
#define NBLK 240
#define BLOCK 100000
#define ROUNDS 5
#define IDLE_MS (10 * DELAY_MS) /* the grown delay is 16x: only idleness purges this soon */
#define IDLE_WAIT_MS 20000

static void *blocks[NBLK];

static uint64_t now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static void sleep_ms(unsigned ms) {
  struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000};
  nanosleep(&ts, NULL);
}

static uint64_t purges(void) {
  hak_stats_t s;
  hak_stats_get(&s);
  return s.purges;
}

static void fill(void) {
  for (int i = 0; i < NBLK; i++) {
    blocks[i] = malloc(opaque_size(BLOCK));
    CHECK(blocks[i], "malloc(%d) failed", BLOCK);
    memset(blocks[i], 0x5a, BLOCK);
  }
}

static void drop(void) {
  for (int i = 0; i < NBLK; i++)
    free(blocks[i]);
}

/* Waits up to ms for a purge after `since` purges; true if one came. */
static bool purge_within(uint64_t since, unsigned ms) {
  for (uint64_t end = now_ms() + ms; now_ms() < end; sleep_ms(1))
    if (purges() > since) return true;
  return purges() > since;
}

static int child(unsigned gap_ms) {
  for (int round = 1; round <= ROUNDS; round++) {
    fill();
    uint64_t p0 = purges();
    drop();
    CHECK(purge_within(p0, IDLE_WAIT_MS), "round %d: the freed blocks were never purged", round);
    sleep_ms(gap_ms);
    fill(); /* the pages just purged */
    uint64_t p1 = purges();
    drop();
    if (purge_within(p1, KEEP_MS)) {
      printf("round %d: purged again within %d ms of the refill's free\n", round, KEEP_MS);
      continue;
    }
    CHECK(purge_within(p1, IDLE_MS), "round %d: an idle process kept its memory %d ms", round,
          IDLE_MS);
    printf("round %d: kept for %d ms after a refault, purged later\n", round, KEEP_MS);
    return 0;
  }
  FAIL("every round purged the memory again within %d ms of its refault", KEEP_MS);
}

/* A child refilling gap_ms after each purge. */
static void run_child(char **argv, const char *gap) {
  fflush(stdout);
  pid_t pid = fork();
  CHECK(pid >= 0, "fork");
  if (pid == 0) {
    setenv("PURGE_REFAULT_CHILD", gap, 1);
    setenv("HAKMEM_PURGE_DELAY_MS", "100", 1); /* DELAY_MS */
    unsetenv("HAKMEM_PURGE");
    unsetenv("HAKMEM_BACKGROUND");
    execv("/proc/self/exe", argv);
    _exit(2);
  }
  int st;
  CHECK(waitpid(pid, &st, 0) == pid, "waitpid");
  CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "the child refilling %s ms after the purge failed",
        gap);
}

int main(int argc, char **argv) {
  (void)argc;
  const char *gap = getenv("PURGE_REFAULT_CHILD");
  if (gap) return child((unsigned)atoi(gap));
  run_child(argv, "0");
  char late[16];
  snprintf(late, sizeof late, "%d", LATE_MS);
  run_child(argv, late);
  printf("PASS purge_refault\n");
  return 0;
}
