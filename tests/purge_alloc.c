/* Purging through the allocator with each HAKMEM_PURGE_ENGINE: freed memory
 * comes back to the kernel (RSS drops), reads zero when handed out again, and
 * is counted as purged by the engine asked for (purges_uring, purges_vector,
 * neither for sync); with HAKMEM_PURGE_DELAY_MS=0 an idle process returns it
 * too (background purger, completions reaped later). A process forked while
 * io_uring purges are in flight drops the parent's ring and purges with the
 * next engine. A child that forbids io_uring_setup with a seccomp filter
 * (ENOSYS), or io_uring_setup and process_madvise (EPERM), falls back, says
 * so, and still returns memory. Exits 77 when the kernel has no io_uring or
 * no process_madvise on self, after checking the fallbacks. */
#define _GNU_SOURCE
#include "hakmem.h"
#include "purge_util.h"
#include "spawn.h"

#include <malloc.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stddef.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <time.h>

#define BLOCK ((size_t)96 << 10) /* a size class: blocks past MAP_MIN get mappings */
#define NBLOCKS 512              /* 48 MiB */

static uint64_t via(const hak_stats_t *s, int e) {
  return e == URING ? s->purges_uring : e == VECTOR ? s->purges_vector : 0;
}

/* ---- the child: allocate, free, see the memory come back ---- */

static char *blocks[NBLOCKS];

static void fill(void) {
  for (int i = 0; i < NBLOCKS; i++) {
    blocks[i] = malloc(opaque_size(BLOCK));
    CHECK(blocks[i], "malloc(%zu) failed", BLOCK);
    memset(blocks[i], 0x5A, BLOCK);
  }
}

static void drain(void) {
  for (int i = 0; i < NBLOCKS; i++)
    free(blocks[i]);
}

/* how: "trim" (malloc_trim waits for the purges) or "idle" (delay 0: the
 * background thread purges and reaps); expect: the engine that should be in
 * use. */
static void child(const char *how, int expect) {
  bool trim = !strcmp(how, "trim");
  fill();
  size_t rss0 = rss_bytes();
  hak_stats_t s0, s1;
  hak_stats_get(&s0);
  drain();
  size_t want_drop = NBLOCKS * BLOCK * 3 / 4, rss1 = rss0;
  if (trim) {
    malloc_trim(0);
    rss1 = rss_bytes();
  } else {
    for (int ms = 0; ms < 5000 && rss0 - rss1 < want_drop; ms += 10) {
      nanosleep(&(struct timespec){0, 10000000}, NULL);
      rss1 = rss_bytes();
    }
  }
  s1 = stats_purged(&s0, want_drop, 2000);
  uint64_t purges = s1.purges - s0.purges, bytes = s1.purged_bytes - s0.purged_bytes;
  CHECK(rss0 > rss1 && rss0 - rss1 >= want_drop, "%s: RSS went from %zu to %zu KiB only", how,
        rss0 >> 10, rss1 >> 10);
  CHECK(purges > 0 && bytes >= want_drop, "%s: purges %llu, purged_bytes %llu", how,
        (unsigned long long)purges, (unsigned long long)bytes);
  for (int e = URING; e < SYNC; e++) {
    uint64_t n = via(&s1, e) - via(&s0, e);
    if (e == expect)
      CHECK(n > 0, "%s: nothing purged via %s (purges %llu)", how, engine_names[e],
            (unsigned long long)purges);
    else
      CHECK(n == 0, "%s: %llu purges via %s, expected %s", how, (unsigned long long)n,
            engine_names[e], engine_names[expect]);
  }
  if (trim) { /* every free page went back: new blocks are all zero */
    for (int i = 0; i < NBLOCKS; i++) {
      blocks[i] = malloc(opaque_size(BLOCK));
      CHECK(blocks[i], "malloc(%zu) failed", BLOCK);
      for (size_t off = 0; off < BLOCK; off += 8)
        CHECK(*(uint64_t *)(blocks[i] + off) == 0, "byte %zu of a block after the purge is %#x",
              off, (unsigned)(unsigned char)blocks[i][off]);
    }
    drain();
  }
  printf("%s %s: RSS %zu -> %zu KiB, %llu purges (%llu via uring, %llu via vector)\n", how,
         engine_names[expect], rss0 >> 10, rss1 >> 10, (unsigned long long)purges,
         (unsigned long long)(s1.purges_uring - s0.purges_uring),
         (unsigned long long)(s1.purges_vector - s0.purges_vector));
}

/* ---- fork with purges in flight ---- */

/* The parent purges with io_uring and forks while freed memory is being
 * purged; the child holds no ring and purges with the engine after it. */
static void child_fork(int expect) {
  hak_stats_t s0, s1;
  hak_stats_get(&s0);
  fill();
  drain();
  malloc_trim(0);
  hak_stats_get(&s1);
  if (kernel_has(URING))
    CHECK(s1.purges_uring > s0.purges_uring, "the parent purged nothing via uring");
  fill();
  drain(); /* HAKMEM_PURGE_DELAY_MS=0: purges sent as regions empty */
  fflush(NULL);
  pid_t pid = fork();
  CHECK(pid >= 0, "fork failed");
  if (pid == 0) {
    CHECK(io_uring_fds() == 0, "the forked child holds the parent's io_uring fd");
    child("trim", expect);
    fflush(NULL);
    _exit(0);
  }
  malloc_trim(0);
  int status;
  CHECK(waitpid(pid, &status, 0) == pid, "waitpid failed");
  CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0, "the forked child failed (status %#x)",
        status);
}

/* ---- seccomp: forbid the engines' system calls ---- */

#if defined(__x86_64__)
#define AUDIT_ARCH_SELF AUDIT_ARCH_X86_64
#elif defined(__aarch64__)
#define AUDIT_ARCH_SELF AUDIT_ARCH_AARCH64
#endif

/* block 1: io_uring_setup fails with ENOSYS; 2: it and process_madvise fail
 * with EPERM. Returns false where the filter cannot be installed. */
static bool forbid(int block) {
#ifdef AUDIT_ARCH_SELF
  unsigned ring_err = block == 1 ? ENOSYS : EPERM, other = block == 2 ? SYS_process_madvise : ~0u;
  struct sock_filter f[] = {
      BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch)),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, AUDIT_ARCH_SELF, 1, 0),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
      BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_io_uring_setup, 0, 1),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | ring_err),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, other, 0, 1),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | EPERM),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
  };
  struct sock_fprog prog = {sizeof f / sizeof *f, f};
  return prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0 &&
         prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog) == 0;
#else
  (void)block;
  return false;
#endif
}

/* Installs the filter of *(int *)block in the child before exec: every
 * thread of it, the allocator's included, runs under it from the start. */
static void install_filter(void *block) {
  if (*(int *)block && !forbid(*(int *)block)) {
    fprintf(stderr, "SKIP: no seccomp filter here\n");
    _exit(77);
  }
}

int main(int argc, char **argv) {
  if (argc > 1) { /* "how:engine" */
    char how[32];
    snprintf(how, sizeof how, "%s", argv[1]);
    char *colon = strchr(how, ':');
    CHECK(colon, "mode %s is not how:engine", argv[1]);
    *colon = 0;
    if (!strcmp(how, "fork"))
      child_fork(engine_of(colon + 1));
    else
      child(how, engine_of(colon + 1));
    return 0;
  }
  bool has[3] = {kernel_has(URING), kernel_has(VECTOR), true};
  static struct child c;
  char mode[64], engine_env[64];
  for (int e = URING; e <= SYNC; e++)
    for (int idle = 0; idle < 2; idle++) {
      int expect = has[e] ? e : has[VECTOR] && e < VECTOR ? VECTOR : SYNC;
      snprintf(mode, sizeof mode, "%s:%s", idle ? "idle" : "trim", engine_names[expect]);
      snprintf(engine_env, sizeof engine_env, "HAKMEM_PURGE_ENGINE=%s", engine_names[e]);
      const char *env[] = {engine_env, idle ? "HAKMEM_PURGE_DELAY_MS=0" : "HAKMEM_BACKGROUND=0",
                           NULL};
      run_self(mode, env, &c);
      if (!exited_ok(&c)) {
        fprintf(stderr, "%s", c.err);
        FAIL("HAKMEM_PURGE_ENGINE=%s, %s: child failed (status %#x)", engine_names[e], mode,
             c.status);
      }
      if (e == expect)
        CHECK(!strstr(c.err, "unavailable"), "HAKMEM_PURGE_ENGINE=%s says: %s", engine_names[e],
              c.err);
    }
  snprintf(mode, sizeof mode, "fork:%s", engine_names[has[VECTOR] ? VECTOR : SYNC]);
  const char *fork_env[] = {"HAKMEM_PURGE_ENGINE=uring", "HAKMEM_PURGE_DELAY_MS=0",
                            "HAKMEM_BACKGROUND=0", NULL};
  run_self(mode, fork_env, &c);
  if (!exited_ok(&c)) {
    fprintf(stderr, "%s", c.err);
    FAIL("fork with purges in flight: child failed (status %#x)", c.status);
  }
  /* io_uring_setup refused (ENOSYS), then both engines refused (EPERM) */
  for (int block = 1; block <= 2; block++) {
    int expect = block == 1 && has[VECTOR] ? VECTOR : SYNC;
    snprintf(mode, sizeof mode, "trim:%s", engine_names[expect]);
    const char *env[] = {"HAKMEM_PURGE_ENGINE=uring", "HAKMEM_BACKGROUND=0", NULL};
    run_self_with(mode, env, &c, install_filter, &block);
    if (WIFEXITED(c.status) && WEXITSTATUS(c.status) == 77) SKIP("%s", c.err + 6);
    if (!exited_ok(&c)) {
      fprintf(stderr, "%s", c.err);
      FAIL("seccomp %s: child failed (status %#x)", block == 1 ? "ENOSYS" : "EPERM", c.status);
    }
    const char *said = block == 1 ? "HAKMEM_PURGE_ENGINE=uring unavailable: io_uring_setup: ENOSYS"
                                  : "HAKMEM_PURGE_ENGINE=uring unavailable: io_uring_setup: EPERM";
    CHECK(strstr(c.err, said), "seccomp: the fallback was not reported (stderr: %s)", c.err);
    if (block == 2 && has[VECTOR])
      CHECK(strstr(c.err, "HAKMEM_PURGE_ENGINE=vector unavailable: process_madvise: EPERM"),
            "seccomp: the fallback from vector was not reported (stderr: %s)", c.err);
    printf("seccomp %s: fell back to %s\n", block == 1 ? "ENOSYS" : "EPERM", engine_names[expect]);
  }
  for (int e = URING; e < SYNC; e++)
    if (!has[e]) SKIP("the kernel has no %s engine (its fallback works)", engine_names[e]);
  printf("purge_alloc: all cases passed\n");
  return 0;
}
