/* Huge blocks (past MAP_MIN, or aligned beyond 64 KiB): each its own
 * mapping. Its header sits on the 2 MiB boundary just below the block, so
 * region_of() finds it exactly as for regions; only the header's first OS
 * page is ever touched, so a block costs its own pages plus 4 KiB.
 *
 * A block that fits in 2 MiB (a UNIT: past MAP_MIN only the last pages
 * below 2 MiB, and blocks aligned beyond 64 KiB) gets a whole UNIT:
 * any freed one fits any later such request, so blocks of mixed sizes below
 * 2 MiB are reused with no system call. Only what blocks wrote is resident:
 * each mapping remembers how far it may be (res), and huge-page advice is
 * refused for these (a huge page would make the whole UNIT resident). A
 * block reusing a mapping that a longer one wrote keeps those pages (up to
 * the UNIT): giving them back would fault them in again at the next longer
 * block, which costs more than they do. Longer blocks get mappings of their
 * length.
 *
 * Freed mappings are cached and reused: a program that frees and allocates
 * big buffers in a loop must not pay an mmap and a fault per page every
 * time. The cache is sized from the heap: the memory kept resident beyond
 * what the live huge blocks asked for (cached mappings, and what blocks
 * longer than a UNIT made from them hold past their end) stays within half
 * the bytes the live huge blocks asked for, or 64 MiB if more; past it the
 * smallest cached mappings go first. A request past a UNIT takes the smallest cached piece
 * that fits (the rest of it, past the next UNIT boundary, stays cached as a
 * piece of its own), or else whole UNITs from the front of the longest
 * pieces, moved one after another into a new mapping by mremap, so only what
 * the cache lacks is faulted in. Each lands on a UNIT boundary as it lay:
 * the kernel moves whole page-table pages then (no entry-by-entry copy, no
 * fault), and a VM that shadows page tables keeps its work (hugereplace on
 * a PVM guest: 2.5x faster than moving pieces of any length). The last UNIT
 * may pass the block's end: the block keeps it if that is at most a quarter
 * of the block (so what live blocks keep that way stays within half the
 * budget, however the budget shrinks later), else that part is unmapped;
 * what a piece has left below a UNIT is unmapped. Cached memory unused for
 * HAKMEM_PURGE_DELAY_MS is unmapped (background thread, slow paths,
 * malloc_trim). A block made of several moved pieces spans several kernel
 * mappings: growing it where it lies fails and realloc copies instead. */
#include "internal.h"

#include <errno.h>
#include <string.h>

#define CACHE_SLOTS 64
#define SPARE_MIN ((size_t)64 << 20)
#define UNIT REGION_SIZE /* mappings start on it: a block's header goes there */

typedef struct cached_map {
  char *base;
  size_t len;
  size_t res; /* bytes from base that may be resident (len but for UNIT pieces) */
  uint64_t freed_ms;
  int node; /* its memory policy: reused only on the same node */
} cached_map_t;

/* all under cache_lock */
static pthread_mutex_t cache_lock = PTHREAD_MUTEX_INITIALIZER;
static cached_map_t cache[CACHE_SLOTS];
static size_t cache_bytes;  /* their res */
static size_t live_need;    /* mapping bytes the live huge blocks asked for */
static size_t live_slack;   /* their res beyond that (slack_of) */
static int cache_hi;        /* slots from here on are empty */
static uint64_t expired_ms; /* when cache_expire last looked at the ages */

/* committed_bytes counts what huge mappings may hold resident (res). */
static void unmap(char *base, size_t len, size_t res) {
  hak_committed_add(-(int64_t)res);
  kmem_unmap(base, len);
}

static size_t round_unit(size_t x) {
  return (x + UNIT - 1) & ~(UNIT - 1);
}

/* Resident bytes the huge blocks may hold beyond what they asked for. */
static size_t spare_budget(void) {
  size_t half = live_need / 2;
  return half > SPARE_MIN ? half : SPARE_MIN;
}

static size_t spare_bytes(void) {
  return cache_bytes + live_slack;
}

/* What a live block holds resident past its need, counted in the budget: a
 * UNIT mapping's is not (it is what makes reuse free; at most a UNIT). */
static size_t slack_of(size_t len, size_t need, size_t res) {
  return len == UNIT ? 0 : res - need;
}

/* Ranges unmapped once the lock is dropped. */
typedef struct victims {
  int n;
  char *base[CACHE_SLOTS + 2];
  size_t len[CACHE_SLOTS + 2], res[CACHE_SLOTS + 2];
} victims_t;

static void victim_add(victims_t *v, char *base, size_t len, size_t res) {
  v->base[v->n] = base;
  v->len[v->n] = len;
  v->res[v->n++] = res;
}

static void evict(cached_map_t *c, victims_t *v) {
  victim_add(v, c->base, c->len, c->res);
  cache_bytes -= c->res;
  c->base = NULL;
}

static size_t victims_unmap(victims_t *v) {
  size_t released = 0;
  for (int i = 0; i < v->n; i++) {
    unmap(v->base[i], v->len[i], v->res[i]);
    released += v->res[i];
  }
  v->n = 0;
  return released;
}

/* Cached mappings freed more than the purge delay ago (all if force; the
 * ages are looked at once a millisecond), then the smallest ones (never
 * `keep`) while the spare bytes exceed the budget. */
static void cache_expire(uint64_t now, bool force, const cached_map_t *keep, victims_t *v) {
  if (force || now != expired_ms) {
    expired_ms = now;
    for (int i = 0; i < cache_hi; i++) {
      cached_map_t *c = &cache[i];
      if (c->base && c != keep && (force || now - c->freed_ms >= hak_opt.purge_delay_ms))
        evict(c, v);
    }
  }
  while (spare_bytes() > spare_budget()) {
    cached_map_t *small = NULL;
    for (int i = 0; i < cache_hi; i++)
      if (cache[i].base && &cache[i] != keep && (!small || cache[i].res < small->res))
        small = &cache[i];
    if (!small) break;
    evict(small, v);
  }
  while (cache_hi && !cache[cache_hi - 1].base)
    cache_hi--;
}

typedef struct pieces {
  int n;
  char *base[CACHE_SLOTS];
  size_t len[CACHE_SLOTS], res[CACHE_SLOTS];
} pieces_t;

/* Takes bytes from a cached piece: all of it, or its first `len` (a multiple
 * of UNIT, from a piece whose res is its len), the rest staying cached. */
static void piece_take(cached_map_t *c, size_t len, pieces_t *pc) {
  size_t res = len == c->len ? c->res : len;
  pc->base[pc->n] = c->base;
  pc->len[pc->n] = len;
  pc->res[pc->n++] = res;
  cache_bytes -= res;
  if (len == c->len) {
    c->base = NULL;
  } else {
    c->base += len;
    c->len -= len;
    c->res -= len;
  }
}

/* A mapping of the node for a block that asks for need bytes (header page
 * included), made of cached memory, or NULL. A need of at most a UNIT takes
 * a cached UNIT mapping, the one whose resident part fits best (the least
 * past need, else the most): no system call. A longer need takes the
 * smallest cached piece that fits (the rest past the next UNIT boundary
 * stays cached, a tail up to the block's length kept while the budget
 * allows), or else whole UNITs of the longest pieces, moved into a new
 * mapping (the top of the file). *got: the
 * mapping's length, *res: what it may hold resident. */
static char *cache_take(size_t need, int node, size_t *got, size_t *res) {
  victims_t v;
  v.n = 0;
  pieces_t pc;
  pc.n = 0;
  pthread_mutex_lock(&cache_lock);
  cached_map_t *fit = NULL, *most = NULL;
  bool unit = need <= UNIT;
  for (int i = 0; i < cache_hi; i++) {
    cached_map_t *c = &cache[i];
    if (!c->base || c->node != node) continue;
    if (unit) {
      if (c->len != UNIT) continue;
      if (c->res >= need && (!fit || c->res < fit->res)) fit = c;
      if (!most || c->res > most->res) most = c;
    } else if (c->len >= need && (!fit || c->len < fit->len)) {
      fit = c;
    }
  }
  if (unit && !fit) fit = most;
  size_t keep = need, r = need, map_len = need;
  if (fit && unit) {
    piece_take(fit, UNIT, &pc);
    keep = UNIT;
    r = pc.res[0] > need ? pc.res[0] : need; /* what it holds past need stays */
  } else if (fit) {
    size_t cut = round_unit(need);
    piece_take(fit, fit->len >= cut + UNIT ? cut : fit->len, &pc);
    size_t slack = pc.len[0] - need;
    if (slack <= need && spare_bytes() + slack <= spare_budget()) keep = pc.len[0];
    r = keep;
  } else if (!unit) {
    /* whole UNITs of the longest pieces, each to a UNIT boundary (the top
     * of the file) */
    size_t filled = 0;
    while (filled < need) {
      cached_map_t *best = NULL;
      for (int i = 0; i < cache_hi; i++) {
        cached_map_t *c = &cache[i];
        if (c->base && c->node == node && c->len >= UNIT && c->res >= (c->len & ~(UNIT - 1)) &&
            (!best || c->len > best->len))
          best = c;
      }
      if (!best) break;
      size_t take = best->len & ~(UNIT - 1), room = round_unit(need - filled);
      if (take > room) take = room;
      filled += take;
      piece_take(best, take, &pc);
      if (best->base && best->len < UNIT) evict(best, &v); /* no UNIT of its own */
    }
    map_len = filled > need ? filled : need;
    if (map_len - need <= need / 4) keep = r = map_len; /* else unmapped after the moves */
  }
  if (pc.n) {
    live_need += need;
    live_slack += slack_of(keep, need, r);
  }
  cache_expire(hak_now_ms(), false, NULL, &v);
  pthread_mutex_unlock(&cache_lock);
  victims_unmap(&v);
  if (!pc.n) return NULL;
  char *base;
  if (fit && unit) {
    base = pc.base[0];
    if (r != pc.res[0]) hak_committed_add((int64_t)r - (int64_t)pc.res[0]);
  } else if (fit) {
    base = pc.base[0];
    if (keep < pc.len[0]) unmap(base + keep, pc.len[0] - keep, pc.len[0] - keep);
  } else {
    base = kmem_map_aligned(map_len, UNIT);
    if (base) {
      kmem_bind(base, map_len, node);
      hak_committed_add((int64_t)map_len);
    }
    size_t off = 0;
    for (int i = 0; i < pc.n; i++) {
      /* moved: its old place is gone and the new one counted already */
      if (base && kmem_move_fixed(pc.base[i], pc.len[i], base + off))
        hak_committed_add(-(int64_t)pc.res[i]);
      else
        unmap(pc.base[i], pc.len[i], pc.res[i]); /* refused: those pages come fresh */
      off += pc.len[i];
    }
    if (!base) {
      pthread_mutex_lock(&cache_lock);
      live_need -= need;
      live_slack -= slack_of(keep, need, r);
      pthread_mutex_unlock(&cache_lock);
      return NULL;
    }
    if (keep < map_len) unmap(base + keep, map_len - keep, map_len - keep);
  }
  atomic_fetch_add_explicit(&hak_gstats.huge_cache_hits, 1, memory_order_relaxed);
  *got = keep;
  *res = r;
  return base;
}

/* A freed block's mapping (asked for need bytes) into the cache, if
 * cacheable; false when it was not kept (then the caller unmaps it, unless
 * it went as a victim here). */
static bool cache_put(char *base, size_t len, size_t need, size_t res, int node, bool cacheable) {
  victims_t v;
  v.n = 0;
  bool kept = false;
  pthread_mutex_lock(&cache_lock);
  live_need -= need;
  live_slack -= slack_of(len, need, res);
  uint64_t now = hak_now_ms();
  if (cacheable && hak_opt.purge_delay_ms > 0) {
    cached_map_t *slot = NULL, *oldest = NULL;
    for (int i = 0; i < cache_hi && !slot; i++) {
      if (!cache[i].base)
        slot = &cache[i];
      else if (!oldest || cache[i].freed_ms < oldest->freed_ms)
        oldest = &cache[i];
    }
    if (!slot && cache_hi < CACHE_SLOTS) slot = &cache[cache_hi++];
    if (!slot) {
      evict(oldest, &v);
      slot = oldest;
    }
    *slot = (cached_map_t){base, len, res, now, node};
    cache_bytes += res;
    kept = true;
    cache_expire(now, false, slot, &v);
    size_t spare = spare_bytes(), budget = spare_budget();
    if (spare > budget) { /* alone past the budget: its tail goes */
      size_t excess = (spare - budget + 4095) & ~(size_t)4095;
      if (excess >= slot->len || len <= UNIT) {
        evict(slot, &v);
        kept = false;
      } else {
        victim_add(&v, slot->base + slot->len - excess, excess, excess);
        slot->len -= excess;
        slot->res -= excess;
        cache_bytes -= excess;
      }
    }
  }
  pthread_mutex_unlock(&cache_lock);
  victims_unmap(&v);
  return kept;
}

bool hak_huge_expire(void) {
  victims_t v;
  v.n = 0;
  pthread_mutex_lock(&cache_lock);
  cache_expire(hak_now_ms(), false, NULL, &v);
  bool cached = cache_hi > 0;
  pthread_mutex_unlock(&cache_lock);
  victims_unmap(&v);
  return cached;
}

size_t hak_huge_trim(void) {
  victims_t v;
  v.n = 0;
  pthread_mutex_lock(&cache_lock);
  cache_expire(0, true, NULL, &v);
  pthread_mutex_unlock(&cache_lock);
  return victims_unmap(&v);
}

static void *huge_setup(char *base, size_t len, size_t need, size_t res, size_t off, int node) {
  char *block = base + off;
  hak_region_t *r = region_of(block);
  r->kind = REGION_HUGE;
  r->map_base = base;
  r->map_len = len;
  r->huge_need = need;
  r->huge_res = res;
  r->huge_usable = len - off;
  r->node = (uint16_t)node;
  atomic_store_explicit(&hak_region_map[(uintptr_t)r >> REGION_SHIFT], REGION_HUGE,
                        memory_order_release);
  return block;
}

void *hak_huge_alloc(size_t size, size_t align, bool *zero) {
  if (atomic_load_explicit(&hak_init_state, memory_order_acquire) != 2) hak_init();
  size_t off = align > PAGE_SIZE ? align : PAGE_SIZE; /* header page before the block */
  /* a real block for size 0 too: it must lie inside its mapping, where free
   * and malloc_usable_size find it (and, aligned past 2 MiB, its header) */
  if (size == 0) size = 1;
  size_t map_align = align > UNIT ? align : UNIT;
  size_t ps = kmem_os_page_size();
  if (size > ((size_t)1 << VA_BITS) || off > ((size_t)1 << VA_BITS)) {
    errno = ENOMEM;
    return NULL;
  }
  size_t need = (off + size + ps - 1) & ~(ps - 1);
  atomic_fetch_add_explicit(&hak_gstats.huge_allocs, 1, memory_order_relaxed);
  hak_background_want(); /* freed mappings are cached until it expires them */
  size_t got, res;
  int node = hak_tls_heap->node;
  char *base = map_align == UNIT ? cache_take(need, node, &got, &res) : NULL;
  if (base) {
    *zero = false;
    return huge_setup(base, got, need, res, off, node);
  }
  size_t len = need <= UNIT && map_align == UNIT ? UNIT : need;
  base = kmem_map_aligned(len, map_align);
  if (!base) {
    errno = ENOMEM;
    return NULL;
  }
  kmem_bind(base, len, node);                     /* the caller's node, like its regions */
  if (len == UNIT) kmem_advise_nohuge(base, len); /* resident: what blocks write */
  hak_committed_add((int64_t)need);
  pthread_mutex_lock(&cache_lock);
  live_need += need;
  pthread_mutex_unlock(&cache_lock);
  *zero = true;
  return huge_setup(base, len, need, need, off, node);
}

void hak_huge_free(hak_region_t *r) {
  char *base = r->map_base;
  size_t len = r->map_len, need = r->huge_need, res = r->huge_res;
  bool cacheable = (char *)r == base; /* alignment beyond 2 MiB is not reused */
  atomic_store_explicit(&hak_region_map[(uintptr_t)r >> REGION_SHIFT], 0, memory_order_release);
  if (cache_put(base, len, need, res, r->node, cacheable))
    hak_background_want();
  else if (!cacheable || hak_opt.purge_delay_ms == 0)
    unmap(base, len, res);
}

/* A live block's mapping length, need and res changed, for the accounting. */
static void block_account(hak_region_t *r, size_t new_len, size_t new_need, size_t new_res) {
  pthread_mutex_lock(&cache_lock);
  live_need = live_need - r->huge_need + new_need;
  live_slack = live_slack - slack_of(r->map_len, r->huge_need, r->huge_res) +
               slack_of(new_len, new_need, new_res);
  pthread_mutex_unlock(&cache_lock);
  hak_committed_add((int64_t)new_res - (int64_t)r->huge_res);
  r->map_len = new_len;
  r->huge_need = new_need;
  r->huge_res = new_res;
}

/* realloc kept the block where it lies at a size of its usable bytes: the
 * mapping may be resident that far now. */
void hak_huge_resized(hak_region_t *r, size_t size) {
  size_t ps = kmem_os_page_size();
  size_t off = r->map_len - r->huge_usable;
  size_t need = (off + size + ps - 1) & ~(ps - 1);
  if (need > r->huge_res) block_account(r, r->map_len, need, need);
}

/* Grows a huge block: where it lies if the address space after it is free,
 * else by moving its pages to a larger mapping (the kernel moves page table
 * entries: no copy, no new faults). Returns the block, or NULL if neither
 * worked (the caller copies). */
void *hak_huge_grow(hak_region_t *r, size_t size) {
  size_t ps = kmem_os_page_size();
  size_t off = r->map_len - r->huge_usable;
  size_t len = (off + size + ps - 1) & ~(ps - 1);
  if ((char *)r != (char *)r->map_base || off + size < size) return NULL;
  size_t old_len = r->map_len;
  if (len <= old_len) { /* within its UNIT */
    hak_huge_resized(r, size);
    return (char *)r + off;
  }
  if (!kmem_resize_inplace(r->map_base, old_len, len)) {
    /* unmark before the move: once moved, another mapping may take the old
     * place and mark it */
    _Atomic(uint8_t) *mark = &hak_region_map[(uintptr_t)r >> REGION_SHIFT];
    atomic_store_explicit(mark, 0, memory_order_relaxed);
    hak_region_t *moved = kmem_move(r->map_base, old_len, len, UNIT);
    if (!moved) {
      atomic_store_explicit(mark, REGION_HUGE, memory_order_release);
      return NULL;
    }
    r = moved;
    r->map_base = moved;
    atomic_store_explicit(&hak_region_map[(uintptr_t)r >> REGION_SHIFT], REGION_HUGE,
                          memory_order_release);
  }
  block_account(r, len, len, len);
  r->huge_usable = len - off;
  return (char *)r + off;
}

/* Shrinks a huge block where it lies (realloc to a smaller size that still
 * wants a mapping of its own): the tail is unmapped (given back, in a UNIT
 * mapping), no copy. */
void *hak_huge_shrink(hak_region_t *r, size_t size) {
  size_t ps = kmem_os_page_size();
  size_t off = r->map_len - r->huge_usable;
  size_t len = (off + size + ps - 1) & ~(ps - 1);
  size_t old_len = r->map_len;
  if ((char *)r != (char *)r->map_base || len >= old_len) return NULL;
  if (old_len == UNIT) {
    if (r->huge_res > len) kmem_discard((char *)r + len, r->huge_res - len);
    block_account(r, UNIT, len, len);
    return (char *)r + off;
  }
  size_t keep = len <= UNIT ? UNIT : len; /* a block of a UNIT or less keeps one */
  if (r->huge_res > len && keep > len) kmem_discard((char *)r + len, keep - len);
  kmem_unmap((char *)r + keep, old_len - keep);
  block_account(r, keep, len, len);
  r->huge_usable = keep - off;
  return (char *)r + off;
}

void hak_huge_fork_prepare(void) {
  pthread_mutex_lock(&cache_lock);
}
void hak_huge_fork_release(void) {
  pthread_mutex_unlock(&cache_lock);
}
