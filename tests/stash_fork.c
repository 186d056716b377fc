/* fork while another thread's stash holds blocks of the forking thread's
 * page: in the child those blocks are gone for good.
 *
 * The main thread fills a page of 1 KiB blocks (64). A worker with a heap
 * of its own frees 4 of them (4 KiB: below the stash's 8 KiB, so they wait
 * in its stash) and stays alive, idle. The main thread frees the other 60
 * and forks. Every block of the page was freed before the fork, all of
 * them into the page or, for the worker's, "into" the page as far as the
 * program can tell. The child (only the forking thread, which owns the
 * page) allocates 1 KiB blocks: it must get all 64 blocks of its page back.
 *
 * Before the stash (4e3fd0f) the worker's 4 frees were on the page's remote
 * list when fork copied it, and the child collected them. With the stash
 * they are in the worker's heap struct, a thread that does not exist in
 * the child: the page keeps 4 used blocks forever there (never reused, the
 * page never goes back). The loss is bounded (8 KiB per class per thread
 * that was alive at the fork) but it is memory the parent had freed.
 * Usage: stash_fork */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdatomic.h>
#include <sys/wait.h>
#include "check.h"
#include "hakmem.h"

#define BS 1024
#define PAGE_OF(p) ((uintptr_t)(p) & ~(uintptr_t)0xFFFF)

static void *page_blocks[64];
static int npage;
static int node0; /* the main thread's: a free from another node takes the mailbox */
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cond = PTHREAD_COND_INITIALIZER;
static int freed, go_exit;

static void *worker(void *arg) {
  (void)arg;
  CHECK(hakmem_thread_set_node(node0) == 0, "hakmem_thread_set_node");
  void *volatile own = malloc(3000); /* a heap of its own: its remote frees are stashed */
  free(own);
  for (int i = 0; i < 4; i++)
    free(page_blocks[i]);
  pthread_mutex_lock(&lock);
  freed = 1;
  pthread_cond_broadcast(&cond);
  while (!go_exit)
    pthread_cond_wait(&cond, &lock);
  pthread_mutex_unlock(&lock);
  return NULL;
}

int main(void) {
  node0 = hakmem_thread_node();
  enum { N = 64 * 3 };
  static void *b[N];
  for (int i = 0; i < N; i++)
    b[i] = malloc(BS);
  uintptr_t p = PAGE_OF(b[N / 2]); /* a page in the middle: full, not page 0 of a region */
  for (int i = 0; i < N; i++)
    if (PAGE_OF(b[i]) == p) {
      page_blocks[npage++] = b[i];
      b[i] = NULL;
    }
  CHECK(npage >= 32, "only %d blocks of %d B on one page", npage, BS);
  pthread_t t;
  CHECK(pthread_create(&t, NULL, worker, NULL) == 0, "pthread_create");
  pthread_mutex_lock(&lock);
  while (!freed)
    pthread_cond_wait(&cond, &lock);
  pthread_mutex_unlock(&lock);
  for (int i = 4; i < npage; i++)
    free(page_blocks[i]);
  pid_t pid = fork();
  CHECK(pid >= 0, "fork");
  if (pid == 0) {
    int back = 0;
    static void *again[4096];
    for (int i = 0; i < 4096; i++) {
      again[i] = malloc(BS);
      if (PAGE_OF(again[i]) == p) back++;
    }
    if (back < npage) {
      fprintf(stderr,
              "FAIL: child: %d of the %d blocks of its page came back in 4096 mallocs; the "
              "other %d were freed before the fork by a thread whose stash held them\n",
              back, npage, npage - back);
      _exit(1);
    }
    fprintf(stderr, "child: all %d blocks of the page came back\n", back);
    _exit(0);
  }
  int status;
  CHECK(waitpid(pid, &status, 0) == pid, "waitpid");
  pthread_mutex_lock(&lock);
  go_exit = 1;
  pthread_cond_broadcast(&cond);
  pthread_mutex_unlock(&lock);
  pthread_join(t, NULL);
  CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0, "the child failed (status %d)", status);
  for (int i = 0; i < N; i++)
    free(b[i]);
  return 0;
}
