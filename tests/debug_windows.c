/* The windows of the remote-free protocol, forced with the checked build's
 * hooks (linked against build/debug/libhakmem.so): a thread is stopped at a
 * named protocol point while the test runs another through the window.
 *
 * freeing: a remote freer delivers a block of a parked page to the owner's
 *   delayed list and stops before it resets the page's state. Meanwhile the
 *   owner drains, allocates and parks pages. Then the freer finishes and
 *   frees the page's other blocks: the owner must get them back. (When the
 *   owner used to take the block at once and park the page again while the
 *   freer was still in FREEING, the freer's late reset left a parked page
 *   that no remote free notified: every later block was stranded.)
 * freeing_chain: the same with a freer that has a heap, so its frees wait
 *   in its stash: the eighth 1 KiB block hands the page's chain over, and
 *   the whole chain is what waits on the delayed list in the window.
 * rotate: a freer's eighth 1 KiB block into one page fills its stash
 *   entry's chain, which goes over while the entry keeps the page for the
 *   next frees. Stopped after it read the cut, before it moves it, while
 *   another thread takes the chain (hakmem_flush takes every stash): the
 *   freer must not hand it over a second time, and its next chain of the
 *   same entry must end where it starts. The owner gets every block of the
 *   page back exactly once.
 * exit: a thread exiting is stopped in the middle of taking its heap apart
 *   (an empty page just went back); there it allocates and frees, as a
 *   background thread's start or another TLS destructor would. That must
 *   not touch the heap being taken apart: the checked build verifies every
 *   list afterwards, the blocks keep their patterns, malloc_trim ends. */
#include <malloc.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "check.h"
#include "hakmem.h"

#define BS 1024 /* a class with 64 blocks a 64 KiB page */
#define PAGE_OF(p) ((uintptr_t)(p) & ~(uintptr_t)0xFFFF)

static _Atomic int stage; /* freeing: 1 in the window, 2 let go, 3 free the rest */
static pthread_t freer_thread;
static __thread bool in_freer, in_exiting; /* which thread a hook runs in */

/* A hook's stop: the first time only, until the test moves *s past 1. */
static void stop_once(_Atomic int *s) {
  int zero = 0;
  if (!atomic_compare_exchange_strong(s, &zero, 1)) return;
  while (atomic_load(s) == 1)
    sched_yield();
}

static void freeing_hook(int point) {
  if (point == HAK_HOOK_FREEING && in_freer) stop_once(&stage);
}

static void *page_blocks[64];
static int npage_blocks;

/* Four pages' worth of BS blocks, so that the first is full (and parked):
 * its blocks into page_blocks. Returns that page. */
static uintptr_t fill_first_page(void) {
  enum { N = 64 * 4 };
  static void *b[N];
  for (int i = 0; i < N; i++)
    b[i] = malloc(BS);
  uintptr_t p = PAGE_OF(b[0]);
  for (int i = 0; i < N; i++)
    if (PAGE_OF(b[i]) == p) page_blocks[npage_blocks++] = b[i];
  CHECK(npage_blocks >= 32, "only %d blocks of %d B on the first page", npage_blocks, BS);
  return p;
}
static int chain; /* blocks the freer frees before the window: 8 KiB (remote.c's STASH_BYTES) */

static void *freer(void *arg) {
  (void)arg;
  if (chain > 1) {
    void *volatile own = malloc(3000); /* a heap of its own: its frees are stashed */
    free(own);
  }
  in_freer = true;
  for (int i = 0; i < chain; i++)
    free(page_blocks[i]); /* the last one stops in the window */
  while (atomic_load(&stage) != 3)
    sched_yield();
  for (int i = chain; i < npage_blocks; i++)
    free(page_blocks[i]);
  hakmem_flush(); /* what is still stashed */
  return NULL;
}

static int freeing(int blocks_first) {
  chain = blocks_first;
  uintptr_t p = fill_first_page(); /* P, parked as full */
  hak_debug_set_hook(freeing_hook);
  CHECK(pthread_create(&freer_thread, NULL, freer, NULL) == 0, "pthread_create");
  while (atomic_load(&stage) != 1)
    sched_yield();
  /* In the window: the owner drains its delayed list and allocates until
   * the block comes back (it must not) or far past it, parking pages. */
  hakmem_flush();
  static void *more[4096];
  int got_back = 0, n = 0;
  for (; n < 4096 && !got_back; n++) {
    more[n] = malloc(BS);
    got_back = more[n] == page_blocks[0];
  }
  printf("in the window: %d mallocs, the delivered block %s\n", n,
         got_back ? "came back (page taken back during FREEING)" : "waited");
  /* taken back: fill the page again, so the next malloc parks it */
  while (got_back && n < 4096) {
    more[n] = malloc(BS);
    if (PAGE_OF(more[n++]) != p) break;
  }
  atomic_store(&stage, 2);
  atomic_store(&stage, 3);
  pthread_join(freer_thread, NULL);
  hak_debug_set_hook(NULL);
  /* Every block of P is free now: the owner's next mallocs must find them. */
  int from_p = 0;
  static void *again[8192];
  for (int i = 0; i < 8192; i++) {
    again[i] = malloc(BS);
    if (PAGE_OF(again[i]) == p) from_p++;
  }
  hak_debug_check();
  hak_stats_t s;
  hak_stats_get(&s);
  printf(
      "after the window: %d of %d freed blocks of the page reused; remote_blocks_collected %llu\n",
      from_p, npage_blocks - (got_back ? 1 : 0), (unsigned long long)s.remote_blocks_collected);
  CHECK(from_p >= npage_blocks - 1,
        "the page whose remote free was in FREEING was not revisited: %d of its %d freed blocks "
        "came back in 8192 mallocs",
        from_p, npage_blocks);
  return 0;
}

/* ---- rotate ---- */

static _Atomic int rotate_stage; /* 1 in the window, 2 let go */

static void rotate_hook(int point) {
  if (point == HAK_HOOK_ROTATE && in_freer) stop_once(&rotate_stage);
}

static void *rotate_freer(void *arg) {
  (void)arg;
  void *volatile own = malloc(3000); /* a heap of its own: its frees are stashed */
  free(own);
  in_freer = true;
  for (int i = 0; i < npage_blocks; i++)
    free(page_blocks[i]); /* the eighth stops in the window */
  hakmem_flush();
  return NULL;
}

static int cmp_ptr(const void *a, const void *b) {
  uintptr_t x = (uintptr_t) * (void *const *)a, y = (uintptr_t) * (void *const *)b;
  return x < y ? -1 : x > y;
}

static int rotate_window(void) {
  uintptr_t p = fill_first_page();
  hak_debug_set_hook(rotate_hook);
  CHECK(pthread_create(&freer_thread, NULL, rotate_freer, NULL) == 0, "pthread_create");
  while (atomic_load(&rotate_stage) != 1)
    sched_yield();
  hakmem_flush(); /* takes the full chain under the freer */
  atomic_store(&rotate_stage, 2);
  pthread_join(freer_thread, NULL);
  hak_debug_set_hook(NULL);
  static void *again[8192];
  int from_p = 0;
  for (int i = 0; i < 8192; i++) {
    void *q = malloc(BS);
    if (PAGE_OF(q) == p) again[from_p++] = q;
  }
  hak_debug_check();
  qsort(again, (size_t)from_p, sizeof *again, cmp_ptr);
  int twice = 0;
  for (int i = 1; i < from_p; i++)
    twice += again[i] == again[i - 1];
  printf("rotate: %d blocks of the page freed, %d came back, %d of them twice\n", npage_blocks,
         from_p, twice);
  CHECK(from_p == npage_blocks && twice == 0,
        "a full chain taken while its freer handed it over: %d of %d blocks came back, %d "
        "twice",
        from_p, npage_blocks, twice);
  return 0;
}

/* ---- exit ---- */

#define KEEP 512
static void *kept[KEEP];
static size_t kept_size[KEEP];
static _Atomic int hook_calls;
static pthread_t exiting_thread;

static void exit_hook(int point) {
  if (point != HAK_HOOK_ABANDON || !in_exiting) return;
  int k = atomic_fetch_add(&hook_calls, 1);
  /* what a thread start or a TLS destructor does: allocate, some of it in
   * the classes of the pages being taken apart, and free */
  for (int i = 0; i < 64; i++) {
    size_t n = 16 + (size_t)((i * 37 + k * 11) % 64) * 16;
    void *p = malloc(n);
    fill_pattern(p, n);
    int slot = (k * 64 + i) % KEEP;
    if (kept[slot]) {
      expect_pattern(kept[slot], kept_size[slot]);
      free(kept[slot]);
    }
    kept[slot] = p;
    kept_size[slot] = n;
  }
}

static void *exiting(void *arg) {
  (void)arg;
  in_exiting = true;
  enum { N = 20000 };
  static void *b[N];
  for (int i = 0; i < N; i++)
    b[i] = malloc(16 + (size_t)(i % 64) * 16);
  for (int i = 0; i < N; i++) /* whole pages empty, some pages still live */
    if (i % 64 < 60) free(b[i]);
  return NULL;
}

static int exit_window(void) {
  hak_debug_set_hook(exit_hook);
  for (int round = 0; round < 20; round++) {
    CHECK(pthread_create(&exiting_thread, NULL, exiting, NULL) == 0, "pthread_create");
    pthread_join(exiting_thread, NULL);
  }
  hak_debug_set_hook(NULL);
  CHECK(atomic_load(&hook_calls) > 0, "the exit hook never ran: no empty page went back at exit");
  for (int i = 0; i < KEEP; i++)
    if (kept[i]) expect_pattern(kept[i], kept_size[i]);
  hak_debug_check();
  alarm(20); /* a cycle in a list spins malloc_trim forever */
  malloc_trim(0);
  alarm(0);
  hak_debug_check();
  printf("exit: %d allocations inside exits mid-dismantle, lists and blocks intact\n",
         atomic_load(&hook_calls) * 64);
  return 0;
}

int main(int argc, char **argv) {
  if (argc > 1 && !strcmp(argv[1], "freeing")) return freeing(1);
  if (argc > 1 && !strcmp(argv[1], "freeing_chain")) return freeing(8192 / BS);
  if (argc > 1 && !strcmp(argv[1], "exit")) return exit_window();
  if (argc > 1 && !strcmp(argv[1], "rotate")) return rotate_window();
  FAIL("usage: debug_windows freeing|freeing_chain|exit|rotate");
}
