/* The allocator entry points of the tests that run both ways: the program's
 * malloc (hakmem, linked) in the plain build, hakmem's own hak_* entry
 * points when tests/run.sh builds them with -DSTRESS_HAK against a
 * sanitizer build of the allocator (which does not replace malloc). */
#ifndef HAK_TESTS_T_ALLOC_H
#define HAK_TESTS_T_ALLOC_H

#include <malloc.h>
#include <stdlib.h>
#include "hakmem.h"

#ifdef STRESS_HAK
#define T_MALLOC hak_malloc
#define T_FREE hak_free
#define T_CALLOC hak_calloc
#define T_REALLOC hak_realloc
#define T_MEMALIGN hak_posix_memalign
#define T_USABLE hak_malloc_usable_size
#define T_TRIM hak_malloc_trim
#else
#define T_MALLOC malloc
#define T_FREE free
#define T_CALLOC calloc
#define T_REALLOC realloc
#define T_MEMALIGN posix_memalign
#define T_USABLE malloc_usable_size
#define T_TRIM malloc_trim
#endif

#endif
