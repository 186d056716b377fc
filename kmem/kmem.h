/* kmem: the only part of hakmem that asks the kernel for memory or policy.
 * Nothing here knows about size classes or heaps. */
#ifndef HAK_KMEM_H
#define HAK_KMEM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define KMEM_REGION_SHIFT 21
#define KMEM_REGION_SIZE ((size_t)1 << KMEM_REGION_SHIFT)

typedef struct kmem_config {
  bool thp; /* advise MADV_HUGEPAGE on regions */
} kmem_config_t;

void kmem_init(const kmem_config_t *cfg);

/* One 2 MiB-aligned region of 2 MiB, carved from a larger reservation.
 * Its memory reads as zero. NULL when address space or memory runs out. */
void *kmem_region_alloc(void);

/* Zero-filled, never-touched mapping of len bytes whose start is aligned to
 * align (a power of two >= 4 KiB). NULL on failure. */
void *kmem_map_aligned(size_t len, size_t align);
void kmem_unmap(void *p, size_t len);
/* Grows a mapping from old_len to new_len without moving it. */
bool kmem_resize_inplace(void *p, size_t old_len, size_t new_len);
/* Moves a mapping's pages (no copy, no new faults) to a new align-aligned
 * place of new_len bytes; returns it, or NULL with the old mapping intact. */
void *kmem_move(void *p, size_t old_len, size_t new_len, size_t align);

/* Address space for metadata that is read sparsely (pages commit on touch). */
void *kmem_reserve_sparse(size_t len);

/* Gives the physical memory of [p, p+len) back; it reads as zero afterwards.
 * Returns false if the kernel refused. */
bool kmem_purge(void *p, size_t len);

/* Small, permanent, zeroed metadata (heap structs). Never freed. */
void *kmem_meta_alloc(size_t size);

size_t kmem_os_page_size(void);

/* fork: take every kmem lock before, release both in parent and child. */
void kmem_fork_prepare(void);
void kmem_fork_release(void);

#endif
