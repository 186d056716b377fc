/* runone: runs one benchmark process and records how it ended and what it cost.
 *
 * usage: runone [-t seconds] [-p preload.so] -o statfile -- command [args...]
 *   -t  kill the command (SIGKILL) after this many seconds (default 600)
 *   -p  LD_PRELOAD for the command only, so runone itself never runs on the
 *       allocator under test and survives its crashes
 *   -o  file that receives one line:
 *       status=ok|exit|signal|timeout code=N maxrss_kb=N minflt=N majflt=N
 *       wall_s=S user_s=S sys_s=S
 *
 * The command's stdout and stderr pass through. Peak RSS and faults come from
 * wait4's rusage, which covers exactly the child: /usr/bin/time is not
 * installed everywhere. Exit status is runone's own (0 unless it failed). */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static volatile sig_atomic_t timed_out;

static void on_alarm(int sig) {
  (void)sig;
  timed_out = 1;
}

static double tv_s(struct timeval tv) {
  return (double)tv.tv_sec + (double)tv.tv_usec * 1e-6;
}

static int usage(void) {
  fputs("usage: runone [-t seconds] [-p preload.so] -o statfile -- command [args...]\n", stderr);
  return 64;
}

int main(int argc, char **argv) {
  const char *preload = NULL, *statfile = NULL;
  unsigned timeout = 600;
  int opt;
  while ((opt = getopt(argc, argv, "t:p:o:")) != -1) {
    if (opt == 't')
      timeout = (unsigned)strtoul(optarg, NULL, 10);
    else if (opt == 'p')
      preload = optarg;
    else if (opt == 'o')
      statfile = optarg;
    else
      return usage();
  }
  if (!statfile || optind >= argc) return usage();

  struct timespec t0, t1;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  pid_t pid = fork();
  if (pid < 0) {
    perror("runone: fork");
    return 1;
  }
  if (pid == 0) {
    if (preload && *preload) setenv("LD_PRELOAD", preload, 1);
    execvp(argv[optind], &argv[optind]);
    perror("runone: exec");
    _exit(127);
  }

  /* No SA_RESTART: the alarm interrupts wait4, then the child is killed. */
  struct sigaction sa = {.sa_handler = on_alarm};
  sigaction(SIGALRM, &sa, NULL);
  alarm(timeout);
  int st = 0;
  struct rusage ru;
  while (wait4(pid, &st, 0, &ru) < 0) {
    if (errno != EINTR) {
      perror("runone: wait4");
      return 1;
    }
    if (timed_out) kill(pid, SIGKILL);
  }
  alarm(0);
  clock_gettime(CLOCK_MONOTONIC, &t1);

  const char *status = "ok";
  int code = 0;
  if (timed_out) {
    status = "timeout";
  } else if (WIFSIGNALED(st)) {
    status = "signal";
    code = WTERMSIG(st);
  } else if (WEXITSTATUS(st)) {
    status = "exit";
    code = WEXITSTATUS(st);
  }
  FILE *f = fopen(statfile, "w");
  if (!f) {
    perror("runone: statfile");
    return 1;
  }
  fprintf(
      f,
      "status=%s code=%d maxrss_kb=%ld minflt=%ld majflt=%ld wall_s=%.3f user_s=%.3f sys_s=%.3f\n",
      status, code, ru.ru_maxrss, ru.ru_minflt, ru.ru_majflt,
      (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) * 1e-9, tv_s(ru.ru_utime),
      tv_s(ru.ru_stime));
  fclose(f);
  return 0;
}
