/* A small class's fresh page costs one 4 KiB page of memory, not more, until
 * its blocks are used: a process (a thread) that mallocs a few blocks of
 * many sizes (a forked postgres backend, a short-lived helper) pays 4 KiB per
 * class, as with one packed heap. Each block of a fresh thread's heap is on
 * a page nobody used yet; mincore counts the resident 4 KiB pages of its
 * 64 KiB page. */
#include "check.h"

#include <pthread.h>
#include <stdint.h>
#include <sys/mman.h>
#include <unistd.h>

#define MF2 ((uintptr_t)64 << 10)
#define REGION ((uintptr_t)2 << 20)

static const size_t sizes[] = {16, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024};
#define NSIZES (sizeof sizes / sizeof *sizes)

static void *blocks(void *arg) {
  void **p = arg;
  for (size_t i = 0; i < NSIZES; i++) {
    p[i] = malloc(sizes[i]);
    CHECK(p[i], "malloc(%zu) failed", sizes[i]);
    memset(p[i], 0x5a, sizes[i]);
  }
  return NULL;
}

int main(void) {
  void *p[NSIZES];
  pthread_t t;
  CHECK(pthread_create(&t, NULL, blocks, p) == 0, "pthread_create failed");
  CHECK(pthread_join(t, NULL) == 0, "pthread_join failed");
  size_t os_page = (size_t)sysconf(_SC_PAGESIZE), checked = 0;
  for (size_t i = 0; i < NSIZES; i++) {
    uintptr_t page = (uintptr_t)p[i] & ~(MF2 - 1);
    if ((page & (REGION - 1)) == 0) continue; /* the region's header shares it */
    unsigned char v[64];
    CHECK(mincore((void *)page, MF2, v) == 0, "mincore failed");
    unsigned resident = 0;
    for (size_t k = 0; k < MF2 / os_page; k++)
      resident += v[k] & 1;
    /* its 4 KiB page, and the next where the block crosses into it */
    unsigned most = ((uintptr_t)p[i] % os_page) + sizes[i] > os_page ? 2 : 1;
    printf("%zu B: %u of %zu KiB resident\n", sizes[i], resident * (unsigned)(os_page >> 10),
           (size_t)(MF2 >> 10));
    CHECK(resident <= most, "%zu B block: %u resident 4 KiB pages on its fresh page, want <= %u",
          sizes[i], resident, most);
    checked++;
  }
  CHECK(checked >= NSIZES - 1, "only %zu of the blocks were on pages of their own", checked);
  for (size_t i = 0; i < NSIZES; i++)
    free(p[i]);
  printf("ok\n");
  return 0;
}
