/* Moving pages between mappings we own, without copying or faulting. */
#define _GNU_SOURCE /* mremap */
#include "kmem_priv.h"

#include <sys/mman.h>

/* Moves the pages of [src, src+len) to dst, replacing what was mapped there
 * (a range of the caller's own mapping); src is unmapped. The kernel moves
 * page table entries, whole page tables where both ends are 2 MiB aligned.
 * A range of several mappings moves only on Linux 6.17+; false when refused. */
bool kmem_move_fixed(void *src, size_t len, void *dst) {
  return mremap(src, len, len, MREMAP_MAYMOVE | MREMAP_FIXED, dst) != MAP_FAILED;
}

void kmem_discard(void *p, size_t len) {
  madvise(p, len, MADV_DONTNEED);
}

void kmem_advise_nohuge(void *p, size_t len) {
  madvise(p, len, MADV_NOHUGEPAGE);
}
