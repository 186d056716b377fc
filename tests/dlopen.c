/* The dlopen-safe build: dlopen build/libhakmem-dlopen.so with RTLD_NOW |
 * RTLD_LOCAL and use hak_malloc/hak_free (found with dlsym) from several
 * threads, with blocks also freed by a thread other than their allocator.
 * Usage: dlopen [path-to-libhakmem-dlopen.so]; the default is found next to
 * this binary's build directory (build/tests/dlopen -> build/). */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <libgen.h>
#include <limits.h>
#include <pthread.h>
#include "check.h"
#include "hakmem.h"

#define THREADS 4
#define OPS 20000
#define LIVE 256

static void *(*p_malloc)(size_t);
static void (*p_free)(void *);
static void *(*p_realloc)(void *, size_t);
static size_t (*p_usable)(const void *);
static int (*p_owns)(const void *);

static void *handed[THREADS][LIVE];

static void *worker(void *arg) {
  int id = (int)(uintptr_t)arg;
  void *live[LIVE] = {0};
  size_t len[LIVE] = {0};
  uint64_t s = (uint64_t)(id + 1) * 0x9E3779B97F4A7C15ull;
  for (int i = 0; i < OPS; i++) {
    s ^= s << 13, s ^= s >> 7, s ^= s << 17;
    int k = (int)(s % LIVE);
    if (live[k]) {
      CHECK(check_pattern(live[k], len[k]) == SIZE_MAX, "block overwritten");
      p_free(live[k]);
    }
    len[k] = s % 16 ? 1 + (s >> 8) % 2000 : 1 + (s >> 8) % (1 << 20);
    live[k] = p_malloc(len[k]);
    CHECK(live[k], "hak_malloc(%zu) through dlsym failed", len[k]);
    CHECK(p_usable(live[k]) >= len[k], "usable size too small");
    CHECK(p_owns(live[k]), "hak_owns is false for its own block");
    fill_pattern(live[k], len[k]);
  }
  /* Grow half through realloc; hand all to the next thread to free. */
  for (int k = 0; k < LIVE; k += 2) {
    void *q = p_realloc(live[k], len[k] + 4000);
    CHECK(q, "hak_realloc failed");
    live[k] = q;
    len[k] += 4000;
    fill_pattern(q, len[k]);
  }
  for (int k = 0; k < LIVE; k++)
    handed[id][k] = live[k];
  return NULL;
}

static void *reaper(void *arg) {
  int id = (int)(uintptr_t)arg;
  for (int k = 0; k < LIVE; k++)
    p_free(handed[id][k]);
  return NULL;
}

static void *sym(void *h, const char *name) {
  void *f = dlsym(h, name);
  CHECK(f, "dlsym(%s): %s", name, dlerror());
  return f;
}

int main(int argc, char **argv) {
  char path[PATH_MAX];
  if (argc > 1) {
    snprintf(path, sizeof path, "%s", argv[1]);
  } else {
    char exe[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    CHECK(n > 0, "readlink /proc/self/exe failed");
    exe[n] = 0;
    snprintf(path, sizeof path, "%s/../libhakmem-dlopen.so", dirname(exe));
  }
  void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
  CHECK(h, "dlopen(%s): %s", path, dlerror());
  *(void **)&p_malloc = sym(h, "hak_malloc");
  *(void **)&p_free = sym(h, "hak_free");
  *(void **)&p_realloc = sym(h, "hak_realloc");
  *(void **)&p_usable = sym(h, "hak_malloc_usable_size");
  *(void **)&p_owns = sym(h, "hak_owns");
  void (*p_stats)(hak_stats_t *);
  *(void **)&p_stats = sym(h, "hak_stats_get");

  pthread_t t[THREADS];
  for (int i = 0; i < THREADS; i++)
    CHECK(pthread_create(&t[i], NULL, worker, (void *)(uintptr_t)i) == 0, "pthread_create");
  for (int i = 0; i < THREADS; i++)
    pthread_join(t[i], NULL);
  /* Free every thread's blocks from another thread (remote frees). */
  for (int i = 0; i < THREADS; i++)
    CHECK(pthread_create(&t[i], NULL, reaper, (void *)(uintptr_t)((i + 1) % THREADS)) == 0,
          "pthread_create");
  for (int i = 0; i < THREADS; i++)
    pthread_join(t[i], NULL);

  hak_stats_t st;
  p_stats(&st);
  CHECK(st.invalid_frees == 0, "the dlopen'd copy counted %llu invalid frees",
        (unsigned long long)st.invalid_frees);
  CHECK(st.pages_activated > 0, "the dlopen'd copy activated no page");
  return 0;
}
