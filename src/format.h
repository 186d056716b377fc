/* Formatting into a fixed buffer without stdio (which may call malloc). */
#ifndef HAK_FORMAT_H
#define HAK_FORMAT_H

#include <stddef.h>
#include <stdint.h>

typedef struct hak_buf {
  char *p;
  size_t len, cap; /* len may exceed cap: it counts what was wanted */
} hak_buf_t;

void buf_str(hak_buf_t *b, const char *s);
void buf_u64(hak_buf_t *b, uint64_t v);
void buf_hex(hak_buf_t *b, uintptr_t v);
void buf_pad(hak_buf_t *b, size_t col); /* spaces up to column col of the line */
void buf_write(int fd, const hak_buf_t *b);

#endif
