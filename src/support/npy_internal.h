/* What the .npy reader, header parser and writer share (support/npy*.c only): the magic
 * bytes, the error-message setter, byte order, and the header dict parser. */
#ifndef CLATTN_NPY_INTERNAL_H
#define CLATTN_NPY_INTERNAL_H

#include "support/npy.h"

#include <stdbool.h>
#include <stddef.h>

extern const unsigned char npy__magic[6];

/* printf into err (nothing when err is NULL or errlen 0). */
void npy__set_err(char *err, size_t errlen, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 3, 4)))
#endif
    ;

bool npy__host_is_little_endian(void);
/* .npy data is little-endian; a big-endian host swaps each element in place. */
void npy__swap_bytes(void *data, size_t count, size_t es);

/* Parse the header dict s[0..n) into out's dtype, rank and shape (npy_header.c).
 * Returns 0, or -1 with the reason in err. */
int npy__parse_header(const char *s, size_t n, npy_array *out, char *err, size_t errlen);

#endif /* CLATTN_NPY_INTERNAL_H */
