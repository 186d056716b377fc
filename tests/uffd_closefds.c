/* HAKMEM_UFFD=1 in a program that closes every descriptor (as daemons do)
 * and opens others, one of them under the userfaultfd's old number. The
 * handler thread must notice its file is gone and stop: not read the new
 * file (a pipe here, whose data it would eat), not hang the threads that
 * touch fresh memory, not crash; the kernel drops the registrations with
 * the file, so faults are demand paging again. */
#define _GNU_SOURCE
#include <dirent.h>
#include <fcntl.h>
#include <linux/close_range.h>
#include "uffd_util.h"

#define PAYLOAD "data the program wrote into its pipe, not for the allocator\n"

/* The number of the process's userfaultfd, or -1. */
static int find_uffd(void) {
  DIR *d = opendir("/proc/self/fd");
  CHECK(d, "cannot open /proc/self/fd");
  int found = -1;
  for (struct dirent *e; (e = readdir(d)) != NULL;) {
    char path[300], link[64];
    snprintf(path, sizeof path, "/proc/self/fd/%s", e->d_name);
    ssize_t n = readlink(path, link, sizeof link - 1);
    if (n < 0) continue;
    link[n] = 0;
    if (strcmp(link, "anon_inode:[userfaultfd]") == 0) found = atoi(e->d_name);
  }
  closedir(d);
  return found;
}

static void touch_fresh(size_t mib) {
  size_t n = mib * 32;
  for (size_t i = 0; i < n; i++) {
    char *p = malloc(32 << 10); /* kept: what comes next is fresh */
    CHECK(p, "malloc failed");
    memset(p, 0x5A, 32 << 10);
    CHECK(p[0] == 0x5A && p[(32 << 10) - 1] == 0x5A, "fresh block reads wrong");
  }
}

static void child(void) {
  if (!uffd_child_start()) SKIP("the allocator does not use userfaultfd here");
  int old = find_uffd();
  CHECK(old >= 0, "no userfaultfd among the open files");
  uint64_t faults_before = uffd_faults();
  fflush(stdout);
  CHECK(syscall(SYS_close_range, 3, ~0u, 0) == 0, "close_range failed");

  /* A pipe with data under the old number, and two files with content. */
  int p[2];
  CHECK(pipe(p) == 0, "pipe failed");
  CHECK(write(p[1], PAYLOAD, sizeof PAYLOAD - 1) == sizeof PAYLOAD - 1, "write to pipe failed");
  if (p[0] != old) {
    CHECK(dup2(p[0], old) == old, "dup2 to %d failed", old);
    close(p[0]);
  }
  char name[] = "/tmp/hak-uffd-closefds.XXXXXX";
  int f = mkstemp(name);
  CHECK(f >= 0, "mkstemp failed");
  unlink(name);
  CHECK(write(f, PAYLOAD, sizeof PAYLOAD - 1) == sizeof PAYLOAD - 1, "write failed");
  CHECK(lseek(f, 5, SEEK_SET) == 5, "lseek failed");

  /* Fresh memory: faults in registered regions, new regions registered. */
  touch_fresh(48);
  usleep(200 * 1000); /* time for a wrong handler to act */
  touch_fresh(16);

  int fl = fcntl(old, F_GETFL);
  CHECK(fl >= 0 && fcntl(old, F_SETFL, fl | O_NONBLOCK) == 0, "fcntl failed");
  char buf[256];
  ssize_t got = read(old, buf, sizeof buf);
  CHECK(got == sizeof PAYLOAD - 1 && memcmp(buf, PAYLOAD, (size_t)got) == 0,
        "the pipe under the userfaultfd's old number lost its data (read %zd bytes)", got);
  CHECK(lseek(f, 0, SEEK_CUR) == 5, "the file's offset moved");
  CHECK(pread(f, buf, sizeof buf, 0) == sizeof PAYLOAD - 1 && memcmp(buf, PAYLOAD, 10) == 0,
        "the file's content changed");
  printf("uffd was fd %d; %llu faults served before the close, %llu after\n", old,
         (unsigned long long)faults_before, (unsigned long long)(uffd_faults() - faults_before));
  _exit(0);
}

int main(int argc, char **argv) {
  if (argc > 1 && strcmp(argv[1], "child") == 0) child();
  struct child c;
  uffd_run_self("child", &c);
  return 0;
}
