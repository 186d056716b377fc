/* Huge blocks (beyond LARGE_MAX, or aligned beyond 64 KiB): each its own
 * mapping. Its header sits on the 2 MiB boundary just below the block, so
 * region_of() finds it exactly as for regions. */
#include "internal.h"

#include <errno.h>

void *hak_huge_alloc(size_t size, size_t align) {
  if (atomic_load_explicit(&hak_init_state, memory_order_acquire) != 2) hak_init();
  size_t off = align > PAGE_SIZE ? align : PAGE_SIZE; /* header page before the block */
  size_t map_align = align > REGION_SIZE ? align : REGION_SIZE;
  size_t ps = kmem_os_page_size();
  if (size > ((size_t)1 << VA_BITS) || off > ((size_t)1 << VA_BITS)) {
    errno = ENOMEM;
    return NULL;
  }
  size_t len = (off + size + ps - 1) & ~(ps - 1);
  char *base = kmem_map_aligned(len, map_align);
  if (!base) {
    errno = ENOMEM;
    return NULL;
  }
  char *block = base + off;
  hak_region_t *r = region_of(block);
  r->kind = REGION_HUGE;
  r->map_base = base;
  r->map_len = len;
  r->huge_usable = len - off;
  hak_committed_add((int64_t)len);
  atomic_fetch_add_explicit(&hak_gstats.huge_allocs, 1, memory_order_relaxed);
  atomic_store_explicit(&hak_region_map[(uintptr_t)r >> REGION_SHIFT], REGION_HUGE,
                        memory_order_release);
  return block;
}

void hak_huge_free(hak_region_t *r) {
  size_t len = r->map_len;
  atomic_store_explicit(&hak_region_map[(uintptr_t)r >> REGION_SHIFT], 0, memory_order_release);
  hak_committed_add(-(int64_t)len);
  kmem_unmap(r->map_base, len);
}
