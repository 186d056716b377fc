/* Two threads handing batches of blocks to each other through a ring per
 * direction (remote_stash, stash_steal). The includer defines struct item,
 * BATCH and QUEUE first. */
#include <pthread.h>
#include <stdbool.h>
#include <string.h>

struct pair {
  pthread_mutex_t lock;
  pthread_cond_t cond;
  struct item ring[2][QUEUE][BATCH]; /* ring[s]: side s's blocks to the other */
  int head[2], count[2];
};

/* Side me of q: waits until it can send its batch `mine` (*have) or has one
 * to take; sends it if there is room (clearing *have) and copies the other
 * side's oldest batch into theirs. Returns whether it took one. */
static bool pair_exchange(struct pair *q, int me, struct item *mine, bool *have,
                          struct item *theirs) {
  int other = !me;
  bool got = false;
  pthread_mutex_lock(&q->lock);
  while (!(*have && q->count[me] < QUEUE) && q->count[other] == 0)
    pthread_cond_wait(&q->cond, &q->lock);
  if (q->count[other] > 0) {
    memcpy(theirs, q->ring[other][q->head[other]], BATCH * sizeof *theirs);
    q->head[other] = (q->head[other] + 1) % QUEUE;
    q->count[other]--;
    got = true;
  }
  if (*have && q->count[me] < QUEUE) {
    memcpy(q->ring[me][(q->head[me] + q->count[me]) % QUEUE], mine, BATCH * sizeof *mine);
    q->count[me]++;
    *have = false;
  }
  pthread_cond_broadcast(&q->cond);
  pthread_mutex_unlock(&q->lock);
  return got;
}
