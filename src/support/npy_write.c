/* Writing .npy files atomically (see npy.h): the file is written under a temporary name,
 * flushed to disk, and renamed over its final name only on commit. */
#include "support/npy_internal.h"

#include "core/common.h"

#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static char *dup_string(const char *s)
{
    size_t n = strlen(s) + 1;
    char *d = malloc(n);
    if (d) memcpy(d, s, n);
    return d;
}

/* The header numpy itself would write: the dict, padded with spaces so the data starts
 * on a 64-byte boundary, ending in '\n'. Returns the preamble + header length. */
static size_t build_header(unsigned char *buf, size_t cap, const char *descr, int rank,
                           const int64_t *shape)
{
    char shape_str[NPY_MAX_RANK * 22 + 8];
    npy_shape_string(rank, shape, shape_str, sizeof shape_str);
    char dict[sizeof shape_str + 96];
    int dlen = snprintf(dict, sizeof dict,
                        "{'descr': '%s', 'fortran_order': False, 'shape': %s, }", descr,
                        shape_str);
    size_t pre = 10; /* version 1.0: 2-byte length */
    size_t total = pre + (size_t)dlen + 1;
    total = (total + 63) / 64 * 64;
    if (total - pre > 65535) { /* version 2.0: 4-byte length */
        pre = 12;
        total = (pre + (size_t)dlen + 1 + 63) / 64 * 64;
    }
    if (total > cap) return 0;
    size_t hlen = total - pre;
    memcpy(buf, npy__magic, 6);
    buf[6] = pre == 10 ? 1 : 2;
    buf[7] = 0;
    for (size_t i = 0; i < pre - 8; i++) buf[8 + i] = (unsigned char)(hlen >> (8 * i));
    memcpy(buf + pre, dict, (size_t)dlen);
    memset(buf + pre + dlen, ' ', hlen - (size_t)dlen - 1);
    buf[total - 1] = '\n';
    return total;
}

/* Write the elements as little-endian file_dtype, converting through a staging buffer. */
static bool write_data(FILE *f, const void *data, size_t count, clattn_dtype data_dtype,
                       clattn_dtype file_dtype)
{
    size_t in_es = clattn_dtype_size(data_dtype);
    size_t out_es = clattn_dtype_size(file_dtype);
    bool little = npy__host_is_little_endian();
    if (data_dtype == file_dtype && little)
        return count == 0 || fwrite(data, out_es, count, f) == count;
    enum { CHUNK = 8192 };
    unsigned char stage[CHUNK * 4];
    const unsigned char *src = data;
    for (size_t done = 0; done < count;) {
        size_t n = count - done < CHUNK ? count - done : CHUNK;
        if (data_dtype == file_dtype) {
            memcpy(stage, src + done * in_es, n * in_es);
            npy__swap_bytes(stage, n, in_es);
        } else { /* F32 -> F16 */
            for (size_t i = 0; i < n; i++) {
                float v;
                memcpy(&v, src + (done + i) * in_es, sizeof v);
                uint16_t h = clattn__float_to_half(v);
                stage[2 * i] = (unsigned char)(h & 0xff);
                stage[2 * i + 1] = (unsigned char)(h >> 8);
            }
        }
        if (fwrite(stage, out_es, n, f) != n) return false;
        done += n;
    }
    return true;
}

int npy_write_begin(npy_pending *pw, const char *path, clattn_dtype file_dtype, int rank,
                    const int64_t *shape, const void *data, clattn_dtype data_dtype,
                    char *err, size_t errlen)
{
    if (!pw) return -1;
    pw->tmp_path = NULL;
    pw->final_path = NULL;
    if (!path || !*path) {
        npy__set_err(err, errlen, "empty output file name");
        return -1;
    }
    const char *descr = npy_descr(file_dtype);
    if (!descr) {
        npy__set_err(err, errlen, "%s: a .npy file cannot hold %s", path,
                     clattn_dtype_name(file_dtype));
        return -1;
    }
    if (data_dtype != file_dtype && !(data_dtype == CLATTN_F32 && file_dtype == CLATTN_F16)) {
        npy__set_err(err, errlen, "%s: cannot convert %s data to %s", path,
                     npy_dtype_label(data_dtype), npy_dtype_label(file_dtype));
        return -1;
    }
    if (rank < 0 || rank > NPY_MAX_RANK || (rank > 0 && !shape)) {
        npy__set_err(err, errlen, "%s: rank %d is outside 0..%d", path, rank, NPY_MAX_RANK);
        return -1;
    }
    size_t count = 1;
    for (int i = 0; i < rank; i++) {
        if (shape[i] < 0) {
            npy__set_err(err, errlen, "%s: negative dimension %lld", path, (long long)shape[i]);
            return -1;
        }
        uint64_t d = (uint64_t)shape[i];
        if (d != 0 && (d > SIZE_MAX || count > SIZE_MAX / 4 / d)) {
            npy__set_err(err, errlen, "%s: shape too large", path);
            return -1;
        }
        count *= (size_t)d;
    }
    if (count && !data) {
        npy__set_err(err, errlen, "%s: no data to write", path);
        return -1;
    }

    size_t tlen = strlen(path) + 32;
    char *tmp = malloc(tlen);
    char *final = dup_string(path);
    if (!tmp || !final) {
        free(tmp);
        free(final);
        npy__set_err(err, errlen, "%s: out of memory", path);
        return -1;
    }
    snprintf(tmp, tlen, "%s.tmp.%ld", path, (long)getpid());
    /* "x": never clobber a file we did not create (e.g. the other output of this run). */
    FILE *f = fopen(tmp, "wbx");
    if (!f) {
        npy__set_err(err, errlen, "%s: cannot create temporary file %s: %s", path, tmp,
                     strerror(errno));
        free(tmp);
        free(final);
        return -1;
    }
    unsigned char header[NPY_MAX_RANK * 22 + 256];
    size_t hsize = build_header(header, sizeof header, descr, rank, shape);
    bool ok = hsize > 0 && fwrite(header, 1, hsize, f) == hsize &&
              write_data(f, data, count, data_dtype, file_dtype);
    int saved = ok ? 0 : errno;
    if (ok && fflush(f) != 0) {
        ok = false;
        saved = errno;
    }
    /* Flush to disk before the rename, so a crash cannot leave a renamed but empty file.
     * Filesystems that cannot sync (EINVAL, ENOTSUP) are not an error. */
    if (ok && fsync(fileno(f)) != 0 && errno != EINVAL && errno != ENOTSUP) {
        ok = false;
        saved = errno;
    }
    if (fclose(f) != 0 && ok) {
        ok = false;
        saved = errno;
    }
    if (!ok) {
        remove(tmp);
        npy__set_err(err, errlen, "%s: write failed: %s", path, strerror(saved ? saved : EIO));
        free(tmp);
        free(final);
        return -1;
    }
    pw->tmp_path = tmp;
    pw->final_path = final;
    return 0;
}

int npy_write_commit(npy_pending *pw, char *err, size_t errlen)
{
    if (!pw || !pw->tmp_path) {
        npy__set_err(err, errlen, "nothing to commit");
        return -1;
    }
    int rc = 0;
    if (rename(pw->tmp_path, pw->final_path) != 0) {
        npy__set_err(err, errlen, "%s: cannot rename %s over it: %s", pw->final_path,
                     pw->tmp_path, strerror(errno));
        remove(pw->tmp_path);
        rc = -1;
    }
    free(pw->tmp_path);
    free(pw->final_path);
    pw->tmp_path = NULL;
    pw->final_path = NULL;
    return rc;
}

void npy_write_abort(npy_pending *pw)
{
    if (!pw) return;
    if (pw->tmp_path) remove(pw->tmp_path);
    free(pw->tmp_path);
    free(pw->final_path);
    pw->tmp_path = NULL;
    pw->final_path = NULL;
}

int npy_write(const char *path, clattn_dtype file_dtype, int rank, const int64_t *shape,
              const void *data, clattn_dtype data_dtype, char *err, size_t errlen)
{
    npy_pending pw;
    if (npy_write_begin(&pw, path, file_dtype, rank, shape, data, data_dtype, err, errlen))
        return -1;
    return npy_write_commit(&pw, err, errlen);
}
