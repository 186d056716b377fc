/* The standard allocation symbols, glibc's __libc_* aliases and the C++
 * operators, all on the hak_* paths. Only in builds that interpose malloc. */
#include "internal.h"

#include <errno.h>
#include <malloc.h>
#include <stdlib.h>
#include <string.h>

void *hak_calloc_impl(size_t n, size_t size);

HAK_EXPORT void *malloc(size_t n) {
  return hak_alloc_inline(n);
}
HAK_EXPORT void free(void *p) {
  hak_free_inline(p);
}
HAK_EXPORT void *calloc(size_t n, size_t s) {
  return hak_calloc_impl(n, s);
}
HAK_EXPORT void *realloc(void *p, size_t n) {
  return hak_realloc(p, n);
}
HAK_EXPORT void *reallocarray(void *p, size_t n, size_t s) {
  return hak_reallocarray(p, n, s);
}
HAK_EXPORT int posix_memalign(void **out, size_t a, size_t n) {
  return hak_posix_memalign(out, a, n);
}
HAK_EXPORT void *aligned_alloc(size_t a, size_t n) {
  return hak_aligned_alloc(a, n);
}
HAK_EXPORT void *memalign(size_t a, size_t n) {
  return hak_memalign(a, n);
}
HAK_EXPORT void *valloc(size_t n) {
  return hak_valloc(n);
}
HAK_EXPORT void *pvalloc(size_t n) {
  return hak_pvalloc(n);
}
HAK_EXPORT size_t malloc_usable_size(void *p) {
  return hak_malloc_usable_size(p);
}
HAK_EXPORT void free_sized(void *p, size_t n) {
  hak_free_sized(p, n);
}
HAK_EXPORT void free_aligned_sized(void *p, size_t a, size_t n) {
  hak_free_aligned_sized(p, a, n);
}
HAK_EXPORT void cfree(void *p) {
  hak_free_inline(p);
}
HAK_EXPORT int malloc_trim(size_t pad) {
  return hak_malloc_trim(pad);
}

/* Nothing to tune through mallopt: accept and ignore, as mimalloc does. */
HAK_EXPORT int mallopt(int param, int value) {
  (void)param;
  (void)value;
  return 1;
}

HAK_EXPORT struct mallinfo2 mallinfo2(void) {
  hak_stats_t s;
  hak_stats_get(&s);
  struct mallinfo2 mi;
  memset(&mi, 0, sizeof mi);
  mi.arena = s.committed_bytes;
  mi.uordblks = s.committed_bytes;
  mi.usmblks = s.peak_committed_bytes;
  return mi;
}

HAK_EXPORT struct mallinfo mallinfo(void) {
  struct mallinfo2 m2 = mallinfo2();
  struct mallinfo mi;
  memset(&mi, 0, sizeof mi);
  mi.arena = (int)m2.arena;
  mi.uordblks = (int)m2.uordblks;
  mi.usmblks = (int)m2.usmblks;
  return mi;
}

HAK_EXPORT void malloc_stats(void) {
  hak_stats_print();
}

/* glibc-internal names some programs and libraries call directly. */
HAK_EXPORT void *__libc_malloc(size_t n) {
  return hak_alloc_inline(n);
}
HAK_EXPORT void __libc_free(void *p) {
  hak_free_inline(p);
}
HAK_EXPORT void *__libc_calloc(size_t n, size_t s) {
  return hak_calloc_impl(n, s);
}
HAK_EXPORT void *__libc_realloc(void *p, size_t n) {
  return hak_realloc(p, n);
}
HAK_EXPORT void *__libc_memalign(size_t a, size_t n) {
  return hak_memalign(a, n);
}
HAK_EXPORT void *__libc_valloc(size_t n) {
  return hak_valloc(n);
}
HAK_EXPORT void *__libc_pvalloc(size_t n) {
  return hak_pvalloc(n);
}
HAK_EXPORT void __libc_cfree(void *p) {
  hak_free_inline(p);
}
HAK_EXPORT int __posix_memalign(void **out, size_t a, size_t n) {
  return hak_posix_memalign(out, a, n);
}

/* C++ operators. A failing throwing new calls the new-handler, then throws
 * std::bad_alloc through libstdc++ when it is loaded (weak), else aborts. */
typedef void (*new_handler_t)(void);
extern new_handler_t _ZSt15get_new_handlerv(void) __attribute__((weak));
extern void _ZSt17__throw_bad_allocv(void) __attribute__((weak, noreturn));

static void *new_failed(size_t n, size_t align) {
  for (;;) {
    new_handler_t h = _ZSt15get_new_handlerv ? _ZSt15get_new_handlerv() : NULL;
    if (!h) break;
    h();
    void *p = align ? hak_aligned_alloc(align, (n + align - 1) & ~(align - 1)) : hak_malloc(n);
    if (p) return p;
  }
  if (_ZSt17__throw_bad_allocv) _ZSt17__throw_bad_allocv();
  abort();
}

static inline void *new_impl(size_t n) {
  void *p = hak_alloc_inline(n);
  return likely(p != NULL) ? p : new_failed(n, 0);
}

static inline void *new_aligned_impl(size_t n, size_t a) {
  void *p = hak_memalign(a, n);
  return likely(p != NULL) ? p : new_failed(n, a);
}

static void *new_nothrow(size_t n) {
  return hak_alloc_inline(n);
}

HAK_EXPORT void *_Znwm(size_t n) {
  return new_impl(n);
}
HAK_EXPORT void *_Znam(size_t n) {
  return new_impl(n);
}
HAK_EXPORT void *_ZnwmRKSt9nothrow_t(size_t n, const void *t) {
  (void)t;
  return new_nothrow(n);
}
HAK_EXPORT void *_ZnamRKSt9nothrow_t(size_t n, const void *t) {
  (void)t;
  return new_nothrow(n);
}
HAK_EXPORT void *_ZnwmSt11align_val_t(size_t n, size_t a) {
  return new_aligned_impl(n, a);
}
HAK_EXPORT void *_ZnamSt11align_val_t(size_t n, size_t a) {
  return new_aligned_impl(n, a);
}
HAK_EXPORT void *_ZnwmSt11align_val_tRKSt9nothrow_t(size_t n, size_t a, const void *t) {
  (void)t;
  return hak_memalign(a, n);
}
HAK_EXPORT void *_ZnamSt11align_val_tRKSt9nothrow_t(size_t n, size_t a, const void *t) {
  (void)t;
  return hak_memalign(a, n);
}

HAK_EXPORT void _ZdlPv(void *p) {
  hak_free_inline(p);
}
HAK_EXPORT void _ZdaPv(void *p) {
  hak_free_inline(p);
}
HAK_EXPORT void _ZdlPvm(void *p, size_t n) {
  (void)n;
  hak_free_inline(p);
}
HAK_EXPORT void _ZdaPvm(void *p, size_t n) {
  (void)n;
  hak_free_inline(p);
}
HAK_EXPORT void _ZdlPvRKSt9nothrow_t(void *p, const void *t) {
  (void)t;
  hak_free_inline(p);
}
HAK_EXPORT void _ZdaPvRKSt9nothrow_t(void *p, const void *t) {
  (void)t;
  hak_free_inline(p);
}
HAK_EXPORT void _ZdlPvSt11align_val_t(void *p, size_t a) {
  (void)a;
  hak_free_inline(p);
}
HAK_EXPORT void _ZdaPvSt11align_val_t(void *p, size_t a) {
  (void)a;
  hak_free_inline(p);
}
HAK_EXPORT void _ZdlPvmSt11align_val_t(void *p, size_t n, size_t a) {
  (void)n;
  (void)a;
  hak_free_inline(p);
}
HAK_EXPORT void _ZdaPvmSt11align_val_t(void *p, size_t n, size_t a) {
  (void)n;
  (void)a;
  hak_free_inline(p);
}
HAK_EXPORT void _ZdlPvSt11align_val_tRKSt9nothrow_t(void *p, size_t a, const void *t) {
  (void)a;
  (void)t;
  hak_free_inline(p);
}
HAK_EXPORT void _ZdaPvSt11align_val_tRKSt9nothrow_t(void *p, size_t a, const void *t) {
  (void)a;
  (void)t;
  hak_free_inline(p);
}
