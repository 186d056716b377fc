/* HAKMEM_UFFD=1 and fork: the child has no handler thread and its mappings
 * lost their registration, so it runs on plain demand paging: it can touch
 * fresh memory of regions registered before the fork, allocate and touch
 * new memory, and exit 0. The parent's handler keeps serving afterwards. */
#define _GNU_SOURCE
#include <hakmem.h>

#include "../kmem/kmem.h"
#include "check.h"
#include "spawn.h"
#include "uffd_util.h"

#define KPAGE ((size_t)64 << 10)
#define AREA ((size_t)8 << 20)

static void touch(char *p, size_t len) {
  for (size_t off = 0; off < len; off += 4096)
    CHECK(*(volatile uint64_t *)(p + off) == 0, "fresh memory at +%zu is not zero", off);
  fill_sparse(p, len, 1024);
  size_t bad = check_sparse(p, len, 1024);
  CHECK(bad == SIZE_MAX, "data lost at +%zu", bad);
}

/* The child: whatever it touches must not wait for a handler. */
static void in_child(char *area, int wired) {
  alarm(10);
  if (!wired) kmem_uffd_fork_child(); /* the allocator's atfork does it once wired */
  size_t bad = check_sparse(area, AREA / 2, 1024);
  CHECK(bad == SIZE_MAX, "child: the parent's data differs at +%zu", bad);
  uint64_t f0 = uffd_faults();
  touch(area + AREA / 2, AREA / 2); /* registered in the parent, fresh */
  char *r = kmem_map_aligned(KMEM_REGION_SIZE, KMEM_REGION_SIZE);
  CHECK(r, "child: kmem_map_aligned failed");
  kmem_uffd_register(r, KMEM_REGION_SIZE); /* must be a no-op now */
  touch(r, KMEM_REGION_SIZE);
  enum { N = 256 };
  static char *b[N];
  for (int i = 0; i < N; i++) {
    b[i] = calloc(1, 32 << 10);
    CHECK(b[i], "child: calloc failed");
    touch(b[i], 32 << 10);
  }
  for (int i = 0; i < N; i++)
    free(b[i]);
  CHECK(uffd_faults() == f0, "child: %llu userfaultfd faults counted without a handler",
        (unsigned long long)(uffd_faults() - f0));
  _exit(0);
}

int main(int argc, char **argv) {
  if (argc > 1 && strcmp(argv[1], "child") == 0) {
    int wired = uffd_child_start();
    char *area = kmem_map_aligned(AREA, KMEM_REGION_SIZE);
    CHECK(area, "kmem_map_aligned failed");
    for (size_t off = 0; off < AREA; off += KMEM_REGION_SIZE)
      kmem_uffd_register(area + off, KMEM_REGION_SIZE);
    uint64_t f0 = uffd_faults();
    touch(area, AREA / 2);
    CHECK(uffd_faults() - f0 == AREA / 2 / KPAGE, "parent: %llu faults before the fork",
          (unsigned long long)(uffd_faults() - f0));

    for (int round = 0; round < 3; round++) {
      fflush(NULL);
      pid_t pid = fork();
      CHECK(pid >= 0, "fork failed");
      if (pid == 0) in_child(area, wired);
      int status;
      CHECK(waitpid(pid, &status, 0) == pid, "waitpid failed");
      CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0,
            "fork child failed (status %#x; 0xe: hung on a fault, killed by its alarm)", status);
    }

    /* The parent still has its handler: its fresh pages fault and are
     * served, one fault per 64 KiB. */
    f0 = uffd_faults();
    touch(area + AREA / 2, AREA / 2);
    CHECK(uffd_faults() - f0 == AREA / 2 / KPAGE, "parent: %llu faults after the fork",
          (unsigned long long)(uffd_faults() - f0));
    return 0;
  }
  struct child c;
  uffd_run_self("child", &c);
  /* A fork child that kept the fd would fail to register (its ioctls act
   * on the parent's address space) and say so. */
  CHECK(!strstr(c.err, "HAKMEM_UFFD"), "a fallback was reported: %s", c.err);
  return 0;
}
