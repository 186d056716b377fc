/* Size classes: 16-byte steps up to 128 B, then four classes per power of two
 * up to 128 KiB, so internal waste stays under 25%. */
#include "internal.h"

uint8_t hak_class_direct[DIRECT_MAX / MIN_ALIGN + 1];
uint32_t hak_class_size[NUM_CLASSES];
uint8_t hak_class_pages[NUM_CLASSES];
uint64_t hak_class_inverse[NUM_CLASSES];

static unsigned class_of_size(size_t size) {
  if (size <= 128) return size <= MIN_ALIGN ? 0 : (unsigned)((size - 1) / MIN_ALIGN);
  return class_of_large(size);
}

void hak_classes_init(void) {
  for (unsigned c = 0; c < NUM_CLASSES; c++) {
    size_t bs;
    if (c < LINEAR_CLASSES) {
      bs = (c + 1) * MIN_ALIGN;
    } else {
      unsigned b = 7 + (c - LINEAR_CLASSES) / 4, q = (c - LINEAR_CLASSES) % 4;
      bs = ((size_t)1 << b) + (q + 1) * ((size_t)1 << (b - 2));
    }
    hak_class_size[c] = (uint32_t)bs;
    hak_class_inverse[c] = (((uint64_t)1 << CLASS_INVERSE_SHIFT) + bs - 1) / bs;
    /* at least 8 blocks per span keeps span churn low for mid sizes */
    unsigned k = 1;
    while (k * PAGE_SIZE / bs < 4)
      k *= 2;
    hak_class_pages[c] = (uint8_t)k;
  }
  for (size_t i = 0; i <= DIRECT_MAX / MIN_ALIGN; i++)
    hak_class_direct[i] = (uint8_t)class_of_size(i * MIN_ALIGN);
}
