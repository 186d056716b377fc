/* Purging: MADV_DONTNEED ranges, queued by kmem_purge_submit and sent in
 * batches by one of three engines (DESIGN.md, "Lazy zero, purge and huge
 * pages"):
 *  - uring: io_uring IORING_OP_MADVISE. The reaping thread only fills SQEs
 *    and submits; the kernel runs each madvise on an io-wq worker, and the
 *    range stays in flight until a reap sees its CQE.
 *  - vector: process_madvise on the own process, up to 128 ranges a call
 *    (any advice on self needs Linux 6.13+).
 *  - sync: one madvise per range.
 * The engine is chosen on the first reap, never at start-up (LD_PRELOAD init
 * stays cheap and the ring is set up outside every allocator lock), falling
 * back uring -> vector -> sync. An engine that fails a range which plain
 * madvise then purges is refused the same way.
 *
 * Locks: queue_lock guards only the queue, so submit (called under allocator
 * locks) never waits for a system call. reap_lock serializes the engines: the
 * engine choice, the ring and its in-flight table, the staging buffers.
 * Order: reap_lock, then queue_lock. done callbacks run with neither held. */
#define _GNU_SOURCE
#include "kmem_priv.h"

#include <errno.h>
#include <liburing.h>
#include <pthread.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

/* Same numbers on every architecture but alpha, for headers that lack them. */
#ifndef SYS_process_madvise
#define SYS_process_madvise 440
#endif
#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434
#endif
/* Linux 6.14+: a pidfd meaning the calling thread, no fd needed (fork-safe). */
#define PIDFD_SELF_THREAD -10000

#define QUEUE_MAX 128 /* purges submit accepts between reaps */
#define RING_MAX 256  /* purges in flight in the ring; its CQ holds twice that */
#define BATCH_MAX 128 /* ranges sent, or purges reported, per step */
#define STEPS_MAX 8   /* steps of a reap that does not wait */
/* Older kernels read an SQE's length as 32 bits. */
#define SQE_LEN_MAX ((size_t)UINT32_MAX & ~(size_t)4095)

typedef struct purge_req {
  void *p;
  size_t len;
  void *cookie;
  uint64_t seq; /* submission order, for reaps that wait */
} purge_req_t;

typedef struct purge_fin {
  void *cookie;
  bool ok;
} purge_fin_t;

static pthread_mutex_t queue_lock = PTHREAD_MUTEX_INITIALIZER;
/* Submitted, not sent. Past QUEUE_MAX it holds what a ring gives back: its
 * unsent SQEs when it breaks, its in-flight purges in a forked child. */
static purge_req_t queued[QUEUE_MAX + RING_MAX];
static size_t nqueued;
static uint64_t next_seq;

static pthread_mutex_t reap_lock = PTHREAD_MUTEX_INITIALIZER;
static _Atomic int engine = -1;       /* enum kmem_purge_engine; -1 before the first reap */
static int first_try = -1;            /* the engine to try first; -1: kmem_cfg's */
static purge_req_t staged[BATCH_MAX]; /* taken from the queue by this step */
static struct iovec iovs[BATCH_MAX];

static struct io_uring ring;
static bool ring_up;                 /* mapped; may outlive the uring engine until drained */
static bool ring_fd_ours;            /* false once io_uring_enter says the fd is not our ring */
static purge_req_t flight[RING_MAX]; /* by SQE user_data */
static bool in_ring[RING_MAX];
static uint16_t free_slots[RING_MAX];
static size_t nfree_slots, ring_inflight;

void kmem_purge_fork_child(void);

static int self_pidfd = -1; /* PIDFD_SELF_THREAD or our pidfd_open's fd */
static bool pidfd_ours;     /* an fd of ours: closed in a forked child */

static void count_purge(size_t len, _Atomic uint64_t *via) {
  kmem_count(&kmem_counters.purges, 1);
  kmem_count(&kmem_counters.purged_bytes, len);
  if (via) kmem_count(via, 1);
}

bool kmem_purge_now(void *p, size_t len) {
  if (madvise(p, len, MADV_DONTNEED) != 0) return false;
  count_purge(len, NULL);
  return true;
}

/* Says why engine `from` is left: "what: ENAME; trying vector" (no malloc). */
static void fallback(int from, const char *what, int err) {
  static const char *const feature[] = {"HAKMEM_PURGE_ENGINE=uring", "HAKMEM_PURGE_ENGINE=vector"};
  static const char *const next[] = {"; trying vector", "; using sync"};
  char why[160];
  const char *name = err ? strerrorname_np(err) : NULL;
  const char *parts[] = {what, name ? ": " : "", name ? name : "", next[from]};
  size_t n = 0;
  for (size_t i = 0; i < sizeof parts / sizeof *parts; i++)
    for (const char *s = parts[i]; *s && n + 1 < sizeof why; s++)
      why[n++] = *s;
  why[n] = 0;
  kmem_fallback(kmem_cfg.purge_engine_asked, feature[from], why);
}

/* Errors meaning the engine, not the range, is at fault (when plain madvise
 * then purges the same range). */
static bool refusal(int err) {
  return err == EINVAL || err == EPERM || err == ENOSYS || err == EOPNOTSUPP || err == EBADF ||
         err == ESRCH;
}

static size_t take(size_t max) {
  pthread_mutex_lock(&queue_lock);
  size_t k = nqueued < max ? nqueued : max;
  memcpy(staged, queued, k * sizeof *staged);
  memmove(queued, queued + k, (nqueued - k) * sizeof *queued);
  nqueued -= k;
  pthread_mutex_unlock(&queue_lock);
  return k;
}

/* Puts purges back at the head of the queue (room: see queued[]). */
static void requeue(const purge_req_t *reqs, size_t k) {
  pthread_mutex_lock(&queue_lock);
  memmove(queued + k, queued, nqueued * sizeof *queued);
  memcpy(queued, reqs, k * sizeof *queued);
  nqueued += k;
  pthread_mutex_unlock(&queue_lock);
}

static size_t queue_length(void) {
  pthread_mutex_lock(&queue_lock);
  size_t n = nqueued;
  pthread_mutex_unlock(&queue_lock);
  return n;
}

static size_t sync_send(size_t k, purge_fin_t *fin, size_t n) {
  for (size_t i = 0; i < k; i++)
    fin[n++] = (purge_fin_t){staged[i].cookie, kmem_purge_now(staged[i].p, staged[i].len)};
  return n;
}

/* ---- vector: process_madvise ---- */

static long process_madvise_self(const struct iovec *iov, size_t n) {
  return syscall(SYS_process_madvise, self_pidfd, iov, n, MADV_DONTNEED, 0);
}

/* Purges one resident page of our own with it: the kernel says yes only
 * where any advice on self is allowed. */
static bool vector_setup(void) {
  char *page = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (page == MAP_FAILED) {
    fallback(KMEM_PURGE_VECTOR, "mmap", errno);
    return false;
  }
  *(volatile char *)page = 1;
  struct iovec iov = {page, 4096};
  self_pidfd = PIDFD_SELF_THREAD;
  pidfd_ours = false;
  const char *what = "process_madvise";
  long r = process_madvise_self(&iov, 1);
  if (r < 0 && errno == EBADF) { /* before 6.14 */
    self_pidfd = (int)syscall(SYS_pidfd_open, getpid(), 0);
    pidfd_ours = self_pidfd >= 0;
    if (!pidfd_ours) what = "pidfd_open";
    r = pidfd_ours ? process_madvise_self(&iov, 1) : -1;
  }
  int err = r < 0 ? errno : 0;
  bool ok = r == 4096 && *(volatile char *)page == 0;
  munmap(page, 4096);
  if (ok) return true;
  if (pidfd_ours) close(self_pidfd);
  self_pidfd = -1;
  pidfd_ours = false;
  fallback(KMEM_PURGE_VECTOR, what, err);
  return false;
}

static void vector_refused(int err) {
  if (pidfd_ours) close(self_pidfd);
  self_pidfd = -1;
  pidfd_ours = false;
  atomic_store_explicit(&engine, KMEM_PURGE_SYNC, memory_order_relaxed);
  fallback(KMEM_PURGE_VECTOR, "process_madvise failed where madvise worked", err);
}

static size_t vector_send(size_t k, purge_fin_t *fin, size_t n) {
  for (size_t i = 0; i < k; i++)
    iovs[i] = (struct iovec){staged[i].p, staged[i].len};
  for (size_t i = 0; i < k;) {
    long r = -1;
    int err = 0;
    if (atomic_load_explicit(&engine, memory_order_relaxed) == KMEM_PURGE_VECTOR) {
      r = process_madvise_self(iovs + i, k - i);
      err = r < 0 ? errno : 0;
      if (err == EINTR) continue;
    }
    /* It answers with the bytes done, whole ranges first: resend the rest. */
    size_t did = r > 0 ? (size_t)r : 0;
    bool moved = false;
    for (; i < k && did >= iovs[i].iov_len; i++, moved = true) {
      did -= iovs[i].iov_len;
      count_purge(staged[i].len, &kmem_counters.purges_vector);
      fin[n++] = (purge_fin_t){staged[i].cookie, true};
    }
    if (did) {
      iovs[i].iov_base = (char *)iovs[i].iov_base + did;
      iovs[i].iov_len -= did;
      moved = true;
    }
    if (moved || i == k) continue;
    /* Range i failed (or the engine is gone): madvise tells whose fault. */
    bool ok = madvise(iovs[i].iov_base, iovs[i].iov_len, MADV_DONTNEED) == 0;
    if (ok) count_purge(staged[i].len, NULL);
    if (ok && r < 0 && refusal(err)) vector_refused(err);
    fin[n++] = (purge_fin_t){staged[i].cookie, ok};
    i++;
  }
  return n;
}

/* ---- uring: IORING_OP_MADVISE ---- */

/* Drops our view of the ring: unmaps it and closes our fd. Nothing is said to
 * the ring itself, which a forked parent may still be using. */
static void ring_forget(void) {
  munmap(ring.sq.sqes, ring.sq.ring_entries * sizeof(struct io_uring_sqe));
  munmap(ring.sq.ring_ptr, ring.sq.ring_sz);
  if (ring.cq.ring_ptr && ring.cq.ring_ptr != ring.sq.ring_ptr)
    munmap(ring.cq.ring_ptr, ring.cq.ring_sz);
  if (ring_fd_ours) close(ring.ring_fd);
  memset(&ring, 0, sizeof ring);
  ring_up = false;
  ring_inflight = 0;
}

/* The engine after uring: vector if the kernel has it, else sync. */
static void uring_leave(const char *what, int err) {
  fallback(KMEM_PURGE_URING, what, err);
  atomic_store_explicit(&engine, vector_setup() ? KMEM_PURGE_VECTOR : KMEM_PURGE_SYNC,
                        memory_order_relaxed);
}

static bool uring_setup(void) {
  int err = io_uring_queue_init(RING_MAX, &ring, 0);
  if (err < 0) {
    fallback(KMEM_PURGE_URING, "io_uring_setup", -err);
    return false;
  }
  /* Registering a probe allocates nothing (io_uring_get_probe would). */
  union {
    struct io_uring_probe probe;
    char room[sizeof(struct io_uring_probe) + 256 * sizeof(struct io_uring_probe_op)];
  } u;
  memset(&u, 0, sizeof u);
  err = io_uring_register_probe(&ring, &u.probe, 256);
  if (err < 0 || !io_uring_opcode_supported(&u.probe, IORING_OP_MADVISE)) {
    io_uring_queue_exit(&ring);
    fallback(KMEM_PURGE_URING, "IORING_OP_MADVISE not supported", err < 0 ? -err : 0);
    return false;
  }
  ring_up = ring_fd_ours = true;
  ring_inflight = 0;
  nfree_slots = RING_MAX;
  for (size_t i = 0; i < RING_MAX; i++)
    free_slots[i] = (uint16_t)(RING_MAX - 1 - i);
  return true;
}

static void slot_free(unsigned slot) {
  in_ring[slot] = false;
  free_slots[nfree_slots++] = (uint16_t)slot;
  ring_inflight--;
}

/* Hands what is in the SQ to the kernel. Short of memory it stays there for
 * the next step; if the fd is no longer our ring, what the kernel did not take
 * goes back to the queue for the next engine. */
static void uring_flush(void) {
  if (!io_uring_sq_ready(&ring)) return;
  int r = io_uring_submit(&ring);
  if (r >= 0 || r == -EAGAIN || r == -EBUSY || r == -EINTR) return;
  ring_fd_ours = r != -EBADF && r != -EOPNOTSUPP;
  unsigned head = *ring.sq.khead, left = io_uring_sq_ready(&ring);
  for (unsigned j = 0; j < left; j++) {
    unsigned slot = (unsigned)ring.sq.sqes[(head + j) & ring.sq.ring_mask].user_data;
    requeue(&flight[slot], 1);
    slot_free(slot);
  }
  ring.sq.sqe_tail = ring.sq.sqe_head = head; /* never submitted again */
  uring_leave("io_uring_enter", -r);
}

static size_t uring_harvest(purge_fin_t *fin, size_t n) {
  struct io_uring_cqe *cqe;
  while (n < BATCH_MAX && io_uring_peek_cqe(&ring, &cqe) == 0) {
    unsigned slot = (unsigned)cqe->user_data;
    int res = cqe->res;
    io_uring_cqe_seen(&ring, cqe);
    if (slot >= RING_MAX || !in_ring[slot]) continue; /* not ours: cannot happen */
    purge_req_t *q = &flight[slot];
    bool ok = res >= 0;
    if (ok) {
      count_purge(q->len, &kmem_counters.purges_uring);
    } else {
      /* -ECANCELED when the submitting thread exited, or a refusal. */
      ok = kmem_purge_now(q->p, q->len);
      if (ok && refusal(-res) &&
          atomic_load_explicit(&engine, memory_order_relaxed) == KMEM_PURGE_URING)
        uring_leave("IORING_OP_MADVISE failed where madvise worked", -res);
    }
    fin[n++] = (purge_fin_t){q->cookie, ok};
    slot_free(slot);
  }
  return n;
}

static size_t uring_send(purge_fin_t *fin, size_t n) {
  size_t room = RING_MAX - ring_inflight, sq_room = io_uring_sq_space_left(&ring);
  if (room > BATCH_MAX - n) room = BATCH_MAX - n; /* ranges too long for an SQE land in fin */
  if (room > sq_room) room = sq_room;
  size_t k = take(room);
  for (size_t i = 0; i < k; i++) {
    purge_req_t *q = &staged[i];
    if (q->len > SQE_LEN_MAX) {
      fin[n++] = (purge_fin_t){q->cookie, kmem_purge_now(q->p, q->len)};
      continue;
    }
    unsigned slot = free_slots[--nfree_slots];
    flight[slot] = *q;
    in_ring[slot] = true;
    ring_inflight++;
    struct io_uring_sqe *sqe = io_uring_get_sqe(&ring);
    io_uring_prep_madvise(sqe, q->p, (off_t)q->len, MADV_DONTNEED);
    sqe->user_data = slot;
  }
  uring_flush();
  return n;
}

/* Blocks until a CQE may be there (or briefly, when the kernel holds none of
 * ours: all still in the SQ, or the fd is gone). */
static void uring_wait(void) {
  uring_flush();
  struct io_uring_cqe *cqe;
  if (ring_inflight > io_uring_sq_ready(&ring) && ring_fd_ours) {
    int r = io_uring_wait_cqe(&ring, &cqe);
    if (r == 0 || r == -EINTR) return;
  }
  nanosleep(&(struct timespec){0, 50000}, NULL);
}

/* ---- the engine choice and one step of a reap ---- */

static void choose_engine(void) {
  int e = first_try >= 0 ? first_try : kmem_cfg.purge_engine;
  if (e < KMEM_PURGE_URING || e > KMEM_PURGE_SYNC) e = KMEM_PURGE_SYNC;
  if (e == KMEM_PURGE_URING && !uring_setup()) e = KMEM_PURGE_VECTOR;
  if (e == KMEM_PURGE_VECTOR && !vector_setup()) e = KMEM_PURGE_SYNC;
  atomic_store_explicit(&engine, e, memory_order_relaxed);
}

/* Sends what the engine can take, collects what finished; with block, waits
 * for at least one in-flight purge when nothing else finished. */
static size_t step(purge_fin_t *fin, bool block) {
  if (atomic_load_explicit(&engine, memory_order_relaxed) < 0) {
    if (!queue_length()) return 0; /* a process that never purges sets nothing up */
    choose_engine();
  }
  size_t n = ring_up ? uring_harvest(fin, 0) : 0;
  int e = atomic_load_explicit(&engine, memory_order_relaxed);
  if (e == KMEM_PURGE_URING) {
    n = uring_send(fin, n);
  } else if (n < BATCH_MAX) {
    size_t k = take(BATCH_MAX - n);
    n = e == KMEM_PURGE_VECTOR ? vector_send(k, fin, n) : sync_send(k, fin, n);
  }
  if (!ring_up) return n;
  if (n == 0 && ring_inflight > 0 && (block || queue_length() >= QUEUE_MAX)) {
    uring_wait(); /* the caller can do nothing but reap again */
    n = uring_harvest(fin, n);
  }
  if (ring_inflight == 0 && atomic_load_explicit(&engine, memory_order_relaxed) != KMEM_PURGE_URING)
    ring_forget();
  return n;
}

/* Whether a purge submitted before seq is still queued or in flight. */
static bool pending_before(uint64_t seq) {
  for (size_t i = 0; ring_up && i < RING_MAX; i++)
    if (in_ring[i] && flight[i].seq < seq) return true;
  bool found = false;
  pthread_mutex_lock(&queue_lock);
  for (size_t i = 0; i < nqueued && !found; i++)
    found = queued[i].seq < seq;
  pthread_mutex_unlock(&queue_lock);
  return found;
}

/* A reap that does not wait leaves the ring to a reap already running (one
 * that waits sends the queue too), unless the queue is full: then its caller
 * could only spin. The synchronous engines always take their turn. */
static bool lock_reap(bool wait) {
  if (!wait && pthread_mutex_trylock(&reap_lock) == 0) return true;
  if (!wait && atomic_load_explicit(&engine, memory_order_relaxed) == KMEM_PURGE_URING &&
      queue_length() < QUEUE_MAX)
    return false;
  pthread_mutex_lock(&reap_lock);
  return true;
}

bool kmem_purge_submit(void *p, size_t len, void *cookie) {
  pthread_mutex_lock(&queue_lock);
  bool ok = nqueued < QUEUE_MAX;
  if (ok) queued[nqueued++] = (purge_req_t){p, len, cookie, next_seq++};
  pthread_mutex_unlock(&queue_lock);
  return ok;
}

size_t kmem_purge_reap(kmem_purge_done_fn done, bool wait) {
  purge_fin_t fin[BATCH_MAX];
  size_t total = 0;
  uint64_t target = 0;
  if (wait) {
    pthread_mutex_lock(&queue_lock);
    target = next_seq;
    pthread_mutex_unlock(&queue_lock);
  }
  for (int steps = 1;; steps++) {
    if (!lock_reap(wait)) return total;
    size_t n = step(fin, wait);
    bool more = wait ? pending_before(target) : n == BATCH_MAX && steps < STEPS_MAX;
    pthread_mutex_unlock(&reap_lock);
    for (size_t i = 0; i < n; i++)
      done(fin[i].cookie, fin[i].ok);
    total += n;
    if (!more) return total;
  }
}

int kmem_purge_engine(void) {
  int e = atomic_load_explicit(&engine, memory_order_relaxed);
  if (e >= 0) return e;
  e = first_try >= 0 ? first_try : kmem_cfg.purge_engine;
  return e < KMEM_PURGE_URING || e > KMEM_PURGE_SYNC ? KMEM_PURGE_SYNC : e;
}

static pid_t fork_pid; /* who forks (reap_lock); 0: no prepare seen */

void kmem_purge_fork_prepare(void) {
  pthread_mutex_lock(&reap_lock);
  pthread_mutex_lock(&queue_lock);
  fork_pid = getpid();
}

/* In both processes; the child drops what it shares with the parent, so no
 * caller has to remember to. */
void kmem_purge_fork_release(void) {
  if (fork_pid && getpid() != fork_pid) kmem_purge_fork_child();
  pthread_mutex_unlock(&queue_lock);
  pthread_mutex_unlock(&reap_lock);
}

/* In a forked child (one thread), with kmem's locks held or not; more calls
 * do nothing. The ring's
 * memory and fd are shared with the parent: using them would consume the
 * parent's CQEs and have its io-wq purge the parent's pages. So the child
 * only unmaps and closes its copies, and purges again, with the next engine,
 * what was in flight (the parent's purges do not reach the child's pages).
 * An fd from pidfd_open names the parent: it is dropped too. */
void kmem_purge_fork_child(void) {
  if (ring_up) {
    for (size_t i = 0; i < RING_MAX; i++)
      if (in_ring[i]) {
        queued[nqueued++] = flight[i];
        in_ring[i] = false;
      }
    ring_forget();
    first_try = KMEM_PURGE_VECTOR;
    atomic_store_explicit(&engine, -1, memory_order_relaxed);
    if (kmem_cfg.verbose)
      kmem_say("HAKMEM_PURGE_ENGINE=uring", " not used in a forked child", "; trying vector");
  }
  if (pidfd_ours) {
    close(self_pidfd);
    self_pidfd = -1;
    pidfd_ours = false;
    if (atomic_load_explicit(&engine, memory_order_relaxed) == KMEM_PURGE_VECTOR) {
      first_try = KMEM_PURGE_VECTOR;
      atomic_store_explicit(&engine, -1, memory_order_relaxed);
    }
  }
}
