/* HAKMEM_PREFAULT=large (the default): a large block (a run of 64 KiB pages,
 * past 128 KiB) that malloc hands out on fresh pages is populated at once
 * (MADV_POPULATE_WRITE), the 4 KiB pages of the bytes asked for and not the
 * span's tail past them, while the caller writes what it asks for: one fresh
 * block in 8 is left to fault, a probe, and the blocks after it are
 * populated only if the probe was found written whole. calloc's fresh
 * blocks are never populated (their zero pages may stay untouched), nor
 * blocks under HAKMEM_PREFAULT=off.
 *
 * Each child takes BLOCKS fresh blocks (all kept: each takes fresh pages),
 * 1 MiB (memcached's slab page) and last one of 200000 B (49 4 KiB pages of
 * a 4-page span: 15 of tail), counts with mincore which of their 4 KiB pages
 * are resident before it touches them, then writes each whole ("write",
 * "calloc") or leaves it alone ("idle"). Children run with HAKMEM_THP=0: a
 * huge page would make the tail resident with the block.
 *
 * "reused": the probe, one page of it written, is freed and small blocks
 * written over its bytes before the next fresh block: those are not the
 * probe's writes, and the blocks after it (one page of each written) must
 * stay unpopulated.
 *
 * "inherited": a thread writes its fresh blocks whole and exits; the next
 * thread, on the same heap, writes one page of each of its own: they must
 * stay unpopulated (the first thread's probes say nothing of it). */
#include <pthread.h>
#include <sys/mman.h>
#include "kmem_util.h"

#define BLOCKS 12
#define SPAN_4K(size) (((size) + 64 * KIB - 1) / (64 * KIB) * 16) /* 4 KiB pages of its span */

static size_t size_of(int k) {
  return k == BLOCKS - 1 ? 200000 : 1 * MIB;
}

/* Resident 4 KiB pages of [p, p + n4k * 4 KiB). */
static size_t resident(void *p, size_t n4k) {
  unsigned char vec[SPAN_4K(1 * MIB)];
  CHECK(n4k <= sizeof vec && mincore(p, n4k * 4096, vec) == 0, "mincore(%p, %zu pages): %s", p, n4k,
        strerror(errno));
  size_t n = 0;
  for (size_t i = 0; i < n4k; i++)
    n += vec[i] & 1;
  return n;
}

static int child_reused(void) {
  char *probe = malloc(1 * MIB), *fresh[7];
  CHECK(probe, "malloc(1 MiB) failed");
  probe[0] = 1;
  uintptr_t at = (uintptr_t)probe; /* compared with, never read, after the free */
  free(probe);
  size_t over = 0;
  for (int i = 0; i < 3 * 1024; i++) {
    char *s = malloc(1000);
    CHECK(s, "malloc(1000) failed");
    memset(s, 7, 1000);
    over += (uintptr_t)s - at < 1 * MIB;
  }
  fprintf(stderr, "%zu small blocks on the probe's bytes\n", over);
  for (int k = 0; k < 7; k++) {
    CHECK((fresh[k] = malloc(1 * MIB)), "malloc(1 MiB) failed");
    size_t n = resident(fresh[k], 256);
    CHECK(n <= 1, "block %d after a reused probe: %zu of its 256 pages resident before any touch",
          k, n);
    fresh[k][0] = 1;
  }
  return 0;
}

static char *written[10];

static void *writer(void *arg) {
  (void)arg;
  for (int k = 0; k < 10; k++) {
    CHECK((written[k] = malloc(1 * MIB)), "malloc(1 MiB) failed");
    memset(written[k], 1, 1 * MIB);
  }
  return NULL; /* kept: the next thread's blocks take fresh pages */
}

static void *toucher(void *arg) {
  (void)arg;
  for (int k = 0; k < 7; k++) {
    char *p = malloc(1 * MIB);
    CHECK(p, "malloc(1 MiB) failed");
    size_t n = resident(p, 256);
    CHECK(n <= 1,
          "block %d of a heap's next thread: %zu of its 256 pages resident before any touch", k, n);
    p[0] = 1;
  }
  return NULL;
}

static int child_inherited(void) {
  free(malloc(16)); /* the main thread's heap: the threads' is another */
  pthread_t t;
  CHECK(pthread_create(&t, NULL, writer, NULL) == 0, "pthread_create failed");
  pthread_join(t, NULL);
  uint64_t heaps = stats_now().heaps_created;
  CHECK(pthread_create(&t, NULL, toucher, NULL) == 0, "pthread_create failed");
  pthread_join(t, NULL);
  CHECK(stats_now().heaps_created == heaps, "the second thread did not take the first's heap");
  return 0;
}

static int child_main(const char *mode) {
  if (!strcmp(mode, "reused")) return child_reused();
  if (!strcmp(mode, "inherited")) return child_inherited();
  bool clear = !strcmp(mode, "calloc"), write = strcmp(mode, "idle") != 0;
  char *blocks[BLOCKS];
  for (int k = 0; k < BLOCKS; k++) {
    size_t size = size_of(k), block = (size + 4095) / 4096, span = SPAN_4K(size);
    hak_stats_t s0 = stats_now();
    char *p = clear ? calloc(1, size) : malloc(size);
    hak_stats_t s1 = stats_now();
    CHECK(p && ((uintptr_t)p & (64 * KIB - 1)) == 0,
          "%s(%zu) = %p, expected a 64 KiB aligned block", mode, size, (void *)p);
    CHECK(s1.pages_fresh - s0.pages_fresh == span / 16,
          "%s(%zu): %llu fresh 64 KiB pages taken, expected %zu", mode, size,
          (unsigned long long)(s1.pages_fresh - s0.pages_fresh), span / 16);
    if (s1.thp_bytes > 0) SKIP("the heap is on transparent huge pages despite HAKMEM_THP=0");
    size_t in_block = resident(p, block), in_tail = resident(p + block * 4096, span - block);
    fprintf(stderr, "RESULT %d %zu %zu\n", k, in_block, in_tail);
    if (write) { /* populated or not, it reads zero and holds what is written */
      for (size_t o = 0; o < size; o += 4096)
        CHECK(p[o] == 0 && p[size - 1] == 0, "%s(%zu): byte %zu is not zero", mode, size, o);
      memset(p, 0x5a, size);
      CHECK(p[size / 2] == 0x5a && p[size - 1] == 0x5a, "%s(%zu): lost its data", mode, size);
    }
    blocks[k] = p;
  }
  for (int k = 0; k < BLOCKS; k++)
    free(blocks[k]);
  return 0;
}

/* Resident pages of each block and of its tail, as the child saw them. */
static void measure(const char *mode, const char *prefault, size_t in_block[BLOCKS],
                    size_t in_tail[BLOCKS]) {
  const char *env[] = {"HAKMEM_THP=0", prefault, NULL}; /* prefault NULL: the default */
  static struct child c;
  child_ok(mode, env, &c);
  const char *line = c.err;
  printf("%-6s %-21s", mode, prefault ? prefault : "(default)");
  for (int k = 0; k < BLOCKS; k++) {
    int got = -1;
    line = strstr(line, "RESULT ");
    CHECK(line && sscanf(line, "RESULT %d %zu %zu", &got, &in_block[k], &in_tail[k]) == 3 &&
              got == k,
          "%s with %s: no RESULT line for block %d from the child:\n%s", mode,
          prefault ? prefault : "defaults", k, c.err);
    line++;
    printf(" %zu", in_block[k]);
  }
  printf(" resident 4 KiB pages per block\n");
}

int main(int argc, char **argv) {
  if (argc > 1) return child_main(argv[1]);
  size_t blk[BLOCKS], tail[BLOCKS];
  const char *prefaults[] = {NULL, "HAKMEM_PREFAULT=large"};
  for (int m = 0; m < 2; m++) {
    measure("write", prefaults[m], blk, tail);
    for (int k = 0; k < BLOCKS; k++) {
      size_t want = k % 8 == 0 ? 0 : (size_of(k) + 4095) / 4096; /* probes fault */
      CHECK(k % 8 == 0 ? blk[k] <= 1 : blk[k] == want,
            "write: block %d (%zu B): %zu of its 4 KiB pages resident before any touch, "
            "expected %s",
            k, size_of(k), blk[k], k % 8 == 0 ? "none (a probe)" : "all");
      CHECK(tail[k] == 0, "write: block %d: %zu pages of the span's tail past the block resident",
            k, tail[k]);
    }
  }
  /* at most a page the allocator itself writes */
  const char *modes[] = {"idle", "calloc", "write"};
  const char *envs[] = {NULL, NULL, "HAKMEM_PREFAULT=off"};
  for (int m = 0; m < 3; m++) {
    measure(modes[m], envs[m], blk, tail);
    for (int k = 0; k < BLOCKS; k++)
      CHECK(blk[k] <= 1,
            "%s%s%s: block %d: %zu pages of a fresh large block resident before any touch, "
            "expected none",
            modes[m], envs[m] ? " with " : "", envs[m] ? envs[m] : "", k, blk[k]);
  }
  static struct child c;
  const char *env[] = {"HAKMEM_THP=0", NULL};
  child_ok("reused", env, &c);
  child_ok("inherited", env, &c);
  printf("populate_large: ok\n");
  return 0;
}
