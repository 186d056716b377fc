/* How much of our memory transparent huge pages back: the AnonHugePages
 * lines of /proc/self/smaps for our mappings. Read with read(2) into a stack
 * buffer: this runs inside the allocator, so no stdio and no malloc. */
#include "kmem_priv.h"

#include <fcntl.h>
#include <string.h>
#include <unistd.h>

static uintptr_t hex(const char **s) {
  uintptr_t v = 0;
  for (;; (*s)++) {
    char c = **s;
    int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
    if (d < 0) return v;
    v = v * 16 + (uintptr_t)d;
  }
}

static bool starts_with(const char *s, const char *prefix) {
  while (*prefix)
    if (*s++ != *prefix++) return false;
  return true;
}

uint64_t kmem_thp_bytes(bool (*is_ours)(uintptr_t start, uintptr_t end)) {
  int fd = open("/proc/self/smaps", O_RDONLY | O_CLOEXEC);
  if (fd < 0) return 0;
  char buf[8192];
  size_t have = 0;
  bool ours = false;
  uint64_t total = 0;
  for (;;) {
    ssize_t n = read(fd, buf + have, sizeof buf - 1 - have);
    if (n <= 0) break;
    have += (size_t)n;
    buf[have] = 0;
    char *line = buf, *nl;
    while ((nl = memchr(line, '\n', have - (size_t)(line - buf))) != NULL) {
      *nl = 0;
      const char *s = line;
      if (starts_with(s, "AnonHugePages:")) {
        if (ours) {
          s += 14;
          while (*s == ' ')
            s++;
          uint64_t kb = 0;
          while (*s >= '0' && *s <= '9')
            kb = kb * 10 + (uint64_t)(*s++ - '0');
          total += kb << 10;
        }
      } else {
        /* a mapping's first line: "start-end perms ..."; field lines have a ':' */
        const char *p = s;
        uintptr_t start = hex(&p);
        if (*p == '-' && p != s) {
          p++;
          uintptr_t end = hex(&p);
          if (*p == ' ') ours = is_ours(start, end);
        }
      }
      line = nl + 1;
    }
    have -= (size_t)(line - buf);
    memmove(buf, line, have);
    if (have == sizeof buf - 1) have = 0; /* a line longer than the buffer: skip it */
  }
  close(fd);
  return total;
}
