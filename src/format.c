#include "format.h"

#include <unistd.h>

static void put(hak_buf_t *b, char c) {
  if (b->len + 1 < b->cap) b->p[b->len] = c;
  b->len++;
  if (b->cap) b->p[b->len < b->cap ? b->len : b->cap - 1] = 0;
}

void buf_str(hak_buf_t *b, const char *s) {
  while (*s)
    put(b, *s++);
}

void buf_u64(hak_buf_t *b, uint64_t v) {
  char tmp[24];
  int n = 0;
  do
    tmp[n++] = (char)('0' + v % 10);
  while ((v /= 10) != 0);
  while (n)
    put(b, tmp[--n]);
}

void buf_hex(hak_buf_t *b, uintptr_t v) {
  char tmp[20];
  int n = 0;
  do
    tmp[n++] = "0123456789abcdef"[v & 15];
  while ((v >>= 4) != 0);
  buf_str(b, "0x");
  while (n)
    put(b, tmp[--n]);
}

void buf_pad(hak_buf_t *b, size_t col) {
  size_t start = b->len;
  while (start > 0 && start <= b->cap && b->p[start - 1] != '\n')
    start--;
  while (b->len - start < col)
    put(b, ' ');
}

void buf_write(int fd, const hak_buf_t *b) {
  size_t n = b->len < b->cap ? b->len : b->cap - 1, done = 0;
  while (done < n) {
    ssize_t w = write(fd, b->p + done, n - done);
    if (w <= 0) break;
    done += (size_t)w;
  }
}
