/* Counters: global ones updated on slow paths, per-heap ones summed on
 * demand; printed at exit as a table or one JSON object. */
#include "format.h"
#include "internal.h"

#include <fcntl.h>
#include <time.h>
#include <unistd.h>

hak_global_stats_t hak_gstats;

uint64_t hak_now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
  return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

HAK_EXPORT void hak_stats_get(hak_stats_t *out) {
  hak_heap_stats_t h = {0};
  hak_heaps_stats(&h);
  kmem_stats_t k;
  kmem_stats_get(&k);
#define G(x) atomic_load_explicit(&hak_gstats.x, memory_order_relaxed)
#define H(x) atomic_load_explicit(&h.x, memory_order_relaxed)
  *out = (hak_stats_t){
      .regions_reserved = G(regions_reserved),
      .pages_fresh = H(pages_fresh),
      .pages_reused = H(pages_reused),
      .pages_activated = H(pages_activated),
      .remote_frees = H(remote_frees) + G(remote_frees),
      .remote_blocks_collected = H(remote_blocks_collected),
      .remote_frees_cross_node = H(remote_frees_cross_node),
      .batches_sent = H(batches_sent),
      .mailbox_drains = H(mailbox_drains) + G(mailbox_drains),
      .blocks_drained = H(blocks_drained) + G(blocks_drained),
      .node_fallbacks = G(node_fallbacks),
      .mailbox_bytes = G(mailbox_bytes),
      .pages_abandoned = H(pages_abandoned),
      .pages_adopted = H(pages_adopted),
      .remote_handoffs = H(remote_handoffs) + G(remote_handoffs),
      .purges = k.purges,
      .purged_bytes = k.purged_bytes,
      .purges_uring = k.purges_uring,
      .purges_vector = k.purges_vector,
      .uffd_faults = k.uffd_faults,
      .hugetlb_bytes = k.hugetlb_bytes,
      .thp_bytes = kmem_thp_bytes(hak_pool_has_region),
      .committed_bytes = G(committed_bytes),
      .peak_committed_bytes = G(peak_committed_bytes),
      .invalid_frees = G(invalid_frees),
      .huge_allocs = G(huge_allocs),
      .huge_cache_hits = G(huge_cache_hits),
      .midcache_filled = H(midcache_filled),
      .midcache_flushed = H(midcache_flushed),
      .heaps_created = G(heaps_created),
      .shared_heap_threads = G(shared_heap_threads),
      .background_passes = G(background_passes),
      .thp_collapses = k.thp_collapses,
  };
#undef G
#undef H
}

#define FIELDS(X)                                                                                  \
  X(regions_reserved)                                                                              \
  X(pages_fresh)                                                                                   \
  X(pages_reused)                                                                                  \
  X(pages_activated)                                                                               \
  X(remote_frees)                                                                                  \
  X(remote_frees_cross_node)                                                                       \
  X(remote_blocks_collected)                                                                       \
  X(batches_sent)                                                                                  \
  X(mailbox_drains)                                                                                \
  X(blocks_drained)                                                                                \
  X(pages_abandoned)                                                                               \
  X(pages_adopted)                                                                                 \
  X(purges)                                                                                        \
  X(purged_bytes)                                                                                  \
  X(purges_uring)                                                                                  \
  X(uffd_faults)                                                                                   \
  X(committed_bytes)                                                                               \
  X(peak_committed_bytes)                                                                          \
  X(invalid_frees)                                                                                 \
  X(huge_allocs)                                                                                   \
  X(heaps_created)                                                                                 \
  X(purges_vector)                                                                                 \
  X(thp_bytes)                                                                                     \
  X(hugetlb_bytes)                                                                                 \
  X(node_fallbacks)                                                                                \
  X(mailbox_bytes)                                                                                 \
  X(thp_collapses)                                                                                 \
  X(huge_cache_hits)                                                                               \
  X(remote_handoffs)                                                                               \
  X(midcache_filled)                                                                               \
  X(midcache_flushed)                                                                              \
  X(shared_heap_threads)                                                                           \
  X(background_passes)

static void format_json(hak_buf_t *b, const hak_stats_t *s) {
  buf_str(b, "{\"version\":\"" HAKMEM_VERSION "\"");
#define X(f)                                                                                       \
  buf_str(b, ",\"" #f "\":");                                                                      \
  buf_u64(b, s->f);
  FIELDS(X)
#undef X
  buf_str(b, ",\"nodes\":[");
  for (int n = 0; n < hak_node_count(); n++) {
    hak_node_stats_t ns;
    hak_node_stats_get(n, &ns);
    buf_str(b, n ? ",{\"node\":" : "{\"node\":");
    buf_u64(b, (uint64_t)n);
    buf_str(b, ",\"regions\":");
    buf_u64(b, ns.regions);
    buf_str(b, ",\"committed_bytes\":");
    buf_u64(b, ns.committed_bytes);
    buf_str(b, "}");
  }
  buf_str(b, "]}\n");
}

static void format_text(hak_buf_t *b, const hak_stats_t *s) {
  buf_str(b, "hakmem " HAKMEM_VERSION " statistics\n");
#define X(f)                                                                                       \
  buf_str(b, "  " #f);                                                                             \
  buf_pad(b, 28);                                                                                  \
  buf_u64(b, s->f);                                                                                \
  buf_str(b, "\n");
  FIELDS(X)
#undef X
}

HAK_EXPORT size_t hak_stats_json(char *out, size_t len) {
  hak_stats_t s;
  hak_stats_get(&s);
  hak_buf_t b = {out, 0, len};
  format_json(&b, &s);
  return b.len;
}

static void emit(int mode) {
  char mem[4096];
  hak_buf_t b = {mem, 0, sizeof mem};
  hak_stats_t s;
  hak_stats_get(&s);
  if (mode == STATS_JSON)
    format_json(&b, &s);
  else
    format_text(&b, &s);
  int fd = 2;
  if (hak_opt.stats_file[0]) {
    fd = open(hak_opt.stats_file, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
      hak_warn("cannot open HAKMEM_STATS_FILE=", hak_opt.stats_file, "; statistics go to stderr");
      fd = 2;
    }
  }
  buf_write(fd, &b);
  if (fd != 2) close(fd);
}

HAK_EXPORT void hak_stats_print(void) {
  emit(hak_opt.stats == STATS_JSON ? STATS_JSON : STATS_TEXT);
}

__attribute__((destructor)) static void stats_at_exit(void) {
  if (hak_opt.stats != STATS_OFF) emit(hak_opt.stats);
}
