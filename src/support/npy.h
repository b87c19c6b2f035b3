/* A strict reader and an atomic writer for NumPy .npy files (format versions 1.0, 2.0 and
 * 3.0), the exchange format of the clattn CLI and its tests. Nothing here prints: every
 * failure returns -1 with a one-line reason in the caller's buffer.
 *
 * Read: the header dict is parsed as the small Python-literal grammar numpy writes (keys in
 * any order, any whitespace, trailing commas, tuples like (3,) and ()), with exactly the
 * keys 'descr', 'fortran_order' and 'shape'. Accepted dtypes: '<f4' (CLATTN_F32), '<f2'
 * (CLATTN_F16), '|b1' (CLATTN_BOOL) and '<i4' (CLATTN_I32); everything else (big-endian,
 * float64, uint8, structured, ...) is refused with a hint. fortran_order True is refused
 * unless it cannot change the element order (at most one dimension above 1). The data must
 * be exactly as long as the shape says: a shorter file is "truncated", a longer one has
 * "unexpected data after the array" (refused too: it usually means a wrong header).
 *
 * Write: the file is written to "<path>.tmp.<pid>" and renamed over <path> only when every
 * byte is on disk, so a failure never leaves a partial or half-written output; on any error
 * the temporary file is removed. npy_write_begin/commit/abort let a caller that writes
 * several outputs rename them only once all of them were written. */
#ifndef CLATTN_NPY_H
#define CLATTN_NPY_H

#include "clattn.h"

#include <stddef.h>
#include <stdint.h>

/* numpy's own limit on dimensions is 32 (64 since numpy 2.0); nothing clattn reads needs
 * more than 4, so 32 only keeps unusual-but-valid files readable. */
#define NPY_MAX_RANK 32
/* Header dicts numpy writes are well under 1 KiB; the limit guards against a corrupt
 * length field making us allocate gigabytes. */
#define NPY_MAX_HEADER_BYTES (1u << 20)

typedef struct npy_array {
    clattn_dtype dtype;          /* F32, F16, BOOL or I32 */
    int rank;                    /* 0 .. NPY_MAX_RANK */
    int64_t shape[NPY_MAX_RANK]; /* C order, outermost first */
    size_t count;                /* number of elements (1 for rank 0) */
    size_t nbytes;               /* count * element size */
    void *data;                  /* malloc'd, little-endian values in host order; never NULL
                                    after a successful read, even when count is 0 */
} npy_array;

/* Read a whole .npy file. On error *out is left empty (safe to npy_free) and err holds
 * "<path>: <reason>". Returns 0 or -1. */
int npy_read(const char *path, npy_array *out, char *err, size_t errlen);
/* Same rules on a file image in memory (err holds only "<reason>"). */
int npy_parse(const void *buf, size_t len, npy_array *out, char *err, size_t errlen);
/* Release the data; *a becomes empty. NULL and empty arrays are fine. */
void npy_free(npy_array *a);

/* "(2, 3)" / "(3,)" / "()" like numpy's repr, for messages. Returns buf. */
const char *npy_shape_string(int rank, const int64_t *shape, char *buf, size_t len);
/* The descr string numpy uses for a dtype ("<f4"), or NULL when .npy cannot hold it. */
const char *npy_descr(clattn_dtype dtype);
/* A reader-friendly name: "float32", "float16", "bool", "int32". */
const char *npy_dtype_label(clattn_dtype dtype);

/* A file written under its temporary name, waiting for commit or abort. */
typedef struct npy_pending {
    char *tmp_path;   /* NULL when nothing is pending */
    char *final_path;
} npy_pending;

/* Write data (count = product of shape) to "<path>.tmp.<pid>". The file's dtype is
 * file_dtype; data holds data_dtype values, which must be the same dtype, or CLATTN_F32
 * when file_dtype is CLATTN_F16 (converted with round-to-nearest-even). On error nothing
 * is left on disk and *pw is empty. Returns 0 or -1. */
int npy_write_begin(npy_pending *pw, const char *path, clattn_dtype file_dtype, int rank,
                    const int64_t *shape, const void *data, clattn_dtype data_dtype,
                    char *err, size_t errlen);
/* Rename the temporary file over the final path. On error the temporary file is removed.
 * Either way *pw becomes empty. Returns 0 or -1. */
int npy_write_commit(npy_pending *pw, char *err, size_t errlen);
/* Remove the temporary file, if any; *pw becomes empty. */
void npy_write_abort(npy_pending *pw);

/* npy_write_begin followed by npy_write_commit. */
int npy_write(const char *path, clattn_dtype file_dtype, int rank, const int64_t *shape,
              const void *data, clattn_dtype data_dtype, char *err, size_t errlen);

#endif /* CLATTN_NPY_H */
