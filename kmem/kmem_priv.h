/* What the kmem files share and src/ does not see. */
#ifndef HAK_KMEM_PRIV_H
#define HAK_KMEM_PRIV_H

#include "kmem.h"

#include <stdatomic.h>

typedef struct kmem_counters {
  _Atomic uint64_t purges, purged_bytes, purges_uring, purges_vector, uffd_faults, hugetlb_bytes,
      thp_collapses;
} kmem_counters_t;

extern kmem_counters_t kmem_counters;
extern kmem_config_t kmem_cfg;

static inline void kmem_count(_Atomic uint64_t *c, uint64_t n) {
  atomic_fetch_add_explicit(c, n, memory_order_relaxed);
}

/* One line on stderr, "hakmem: " a b c; no stdio, no malloc. */
void kmem_say(const char *a, const char *b, const char *c);
/* A feature fell back: said when the user asked for it or HAKMEM_VERBOSE=1. */
void kmem_fallback(bool asked, const char *feature, const char *why);

void kmem_purge_fork_prepare(void);
void kmem_purge_fork_release(void); /* in a child, also drops the parent's ring */
void kmem_purge_fork_child(void);

#endif
