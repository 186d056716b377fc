/* Out of address space (tests/run.sh runs this under `ulimit -v`): malloc
 * returns NULL with ENOMEM instead of crashing, realloc and calloc fail
 * cleanly, and once everything is freed the memory can be had again, also
 * when several threads run out at the same time and another thread frees. */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <sys/resource.h>
#include "check.h"
#include "hakmem.h"

#define THREADS 4
#define MAXPTRS (1 << 19) /* per holder: far more than the limit allows */

struct held {
  void *p[MAXPTRS];
  int n;
  size_t bytes;
};

static struct held mine, theirs[THREADS];
static pthread_barrier_t go;

/* Allocates blocks of each size, biggest first, until malloc says no. */
static void fill_up(struct held *h) {
  static const size_t sizes[] = {1 << 20, 64 << 10, 4 << 10, 256};
  for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++) {
    for (;;) {
      CHECK(h->n < MAXPTRS, "malloc never returned NULL under the limit");
      errno = 0;
      char *p = malloc(sizes[s]);
      if (!p) {
        CHECK(errno == ENOMEM, "malloc(%zu) returned NULL with errno %d, not ENOMEM", sizes[s],
              errno);
        break;
      }
      p[0] = 1; /* the memory must be real */
      p[sizes[s] - 1] = 2;
      h->p[h->n++] = p;
      h->bytes += sizes[s];
    }
  }
}

static void free_all(struct held *h) {
  while (h->n)
    free(h->p[--h->n]);
  h->bytes = 0;
}

static void *thread_fill(void *arg) {
  pthread_barrier_wait(&go);
  fill_up(arg);
  return NULL;
}

int main(void) {
  struct rlimit rl;
  CHECK(getrlimit(RLIMIT_AS, &rl) == 0, "getrlimit failed");
  CHECK(rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur <= (4ull << 30),
        "run this under ulimit -v (tests/run.sh does): no address-space limit is set");

  /* The threads start now, while there is room for their stacks, and wait. */
  pthread_t t[THREADS];
  pthread_barrier_init(&go, NULL, THREADS + 1);
  for (int i = 0; i < THREADS; i++)
    CHECK(pthread_create(&t[i], NULL, thread_fill, &theirs[i]) == 0, "pthread_create failed");

  fill_up(&mine);
  size_t first = mine.bytes;
  CHECK(first >= 64u << 20, "only %zu bytes before NULL under a %llu-byte limit", first,
        (unsigned long long)rl.rlim_cur);

  /* Everything is taken: growing a block and calloc fail cleanly, or work. */
  char *keep = mine.p[0];
  errno = 0;
  char *grown = realloc(keep, 256 << 20);
  if (grown) {
    CHECK(grown[0] == 1, "realloc under memory pressure lost the contents");
    mine.p[0] = grown;
  } else {
    CHECK(errno == ENOMEM, "failed realloc: errno %d, not ENOMEM", errno);
    CHECK(keep[0] == 1 && keep[(1 << 20) - 1] == 2, "failed realloc changed the old block");
  }
  errno = 0;
  unsigned char *z = calloc(1, 64 << 20);
  if (z) {
    for (size_t i = 0; i < (64u << 20); i += 4096)
      CHECK(z[i] == 0, "calloc not zero");
    free(z);
  } else {
    CHECK(errno == ENOMEM, "failed calloc: errno %d, not ENOMEM", errno);
  }

  free_all(&mine);
  fill_up(&mine);
  size_t second = mine.bytes;
  free_all(&mine);

  /* Several threads run out together; main frees what they got. */
  pthread_barrier_wait(&go);
  size_t together = 0;
  for (int i = 0; i < THREADS; i++) {
    pthread_join(t[i], NULL);
    together += theirs[i].bytes;
  }
  for (int i = 0; i < THREADS; i++)
    free_all(&theirs[i]);

  fill_up(&mine);
  size_t last = mine.bytes;
  printf("limit %llu bytes: got %zu bytes, %zu after freeing all, %zu in %d threads, "
         "then %zu\n",
         (unsigned long long)rl.rlim_cur, first, second, together, THREADS, last);
  CHECK(second >= first / 4 * 3, "after freeing everything only %zu of %zu bytes came back", second,
        first);
  CHECK(together >= first / 4 * 3, "%d threads together got only %zu of %zu bytes", THREADS,
        together, first);
  CHECK(last >= first / 4 * 3, "after the threads' blocks were freed only %zu of %zu bytes", last,
        first);
  free_all(&mine);
  void *p = malloc(100);
  CHECK(p, "malloc(100) failed after freeing everything");
  free(p);
  return 0;
}
