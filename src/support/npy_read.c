/* Reading .npy files (see npy.h for the rules). The reader works on a FILE or on a memory
 * image through one "source", so the fuzz-style tests exercise the same code the CLI
 * runs. */
#include "support/npy_internal.h"

#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>

/* Where the bytes come from: a memory image or an open file. size is the total length
 * when known (memory, regular files), -1 otherwise (pipes). */
typedef struct source {
    const unsigned char *mem;
    size_t memlen;
    FILE *f;
    size_t pos;
    long long size;
} source;

static size_t src_read(source *s, void *dst, size_t n)
{
    size_t got;
    if (s->f) {
        got = n ? fread(dst, 1, n, s->f) : 0;
    } else {
        size_t avail = s->memlen - s->pos;
        got = n < avail ? n : avail;
        if (got) memcpy(dst, s->mem + s->pos, got);
    }
    s->pos += got;
    return got;
}

enum { PART_HEADER, PART_DATA };

/* Read the next n bytes of s into a new buffer: the header with room for a closing NUL,
 * the data never as a zero-byte allocation. Returns NULL, with the reason in err, when
 * memory or the source runs out. */
static void *read_part(source *s, size_t n, int part, char *err, size_t errlen)
{
    void *buf = malloc(part == PART_HEADER ? n + 1 : (n ? n : 1));
    if (!buf) {
        if (part == PART_HEADER)
            npy__set_err(err, errlen, "out of memory reading a %zu-byte header", n);
        else
            npy__set_err(err, errlen, "out of memory reading %zu bytes of data", n);
        return NULL;
    }
    size_t got = src_read(s, buf, n);
    if (got < n) {
        free(buf);
        if (part == PART_HEADER)
            npy__set_err(err, errlen,
                         "truncated header (expected %zu header bytes, found %zu)", n, got);
        else if (s->f && ferror(s->f))
            npy__set_err(err, errlen, "read error: %s", strerror(errno));
        else
            npy__set_err(err, errlen, "truncated data (expected %zu bytes, found %zu)", n,
                         got);
        return NULL;
    }
    return buf;
}

static int read_source(source *s, npy_array *out, char *err, size_t errlen)
{
    unsigned char pre[12];
    size_t got = src_read(s, pre, 8);
    if (got == 0) {
        npy__set_err(err, errlen, "empty file, not a .npy file");
        return -1;
    }
    if (memcmp(pre, npy__magic, got < 6 ? got : 6) != 0) {
        npy__set_err(err, errlen, "not a .npy file (bad magic bytes)");
        return -1;
    }
    if (got < 8) {
        npy__set_err(err, errlen, "truncated header (the file is only %zu bytes)", got);
        return -1;
    }
    unsigned major = pre[6], minor = pre[7];
    if (major < 1 || major > 3 || minor != 0) {
        npy__set_err(err, errlen,
                     "unsupported .npy format version %u.%u (known: 1.0, 2.0, 3.0)", major,
                     minor);
        return -1;
    }
    size_t lensize = major == 1 ? 2 : 4;
    got = src_read(s, pre + 8, lensize);
    if (got < lensize) {
        npy__set_err(err, errlen, "truncated header (the file is only %zu bytes)", 8 + got);
        return -1;
    }
    size_t hlen = (size_t)pre[8] | (size_t)pre[9] << 8;
    if (lensize == 4) hlen |= (size_t)pre[10] << 16 | (size_t)pre[11] << 24;
    if (hlen > NPY_MAX_HEADER_BYTES) {
        npy__set_err(err, errlen, "header length %zu exceeds the %u-byte limit", hlen,
                     NPY_MAX_HEADER_BYTES);
        return -1;
    }
    char *header = read_part(s, hlen, PART_HEADER, err, errlen);
    if (!header) return -1;
    header[hlen] = '\0';
    int rc = npy__parse_header(header, hlen, out, err, errlen);
    free(header);
    if (rc) return -1;

    char shape_str[128];
    npy_shape_string(out->rank, out->shape, shape_str, sizeof shape_str);
    size_t es = clattn_dtype_size(out->dtype);
    size_t count = 1;
    bool overflow = false;
    for (int i = 0; i < out->rank; i++) {
        uint64_t d = (uint64_t)out->shape[i];
        if (d > SIZE_MAX) overflow = true;
        else if (d != 0 && count > SIZE_MAX / d) overflow = true;
        else count *= (size_t)d;
    }
    /* A zero dimension makes the array empty whatever the others say, except that the
     * dimensions themselves were already refused above if they overflow int64. */
    for (int i = 0; i < out->rank; i++)
        if (out->shape[i] == 0) {
            overflow = false;
            count = 0;
        }
    if (overflow || count > (SIZE_MAX / 2) / es) {
        npy__set_err(err, errlen, "shape %s of %s is too large for this machine", shape_str,
                     npy_dtype_label(out->dtype));
        return -1;
    }
    size_t nbytes = count * es;
    size_t data_start = 8 + lensize + hlen;
    if (s->size >= 0) {
        /* Check the length before allocating, so a corrupt shape cannot ask for
         * gigabytes that the file does not hold. */
        size_t avail = (unsigned long long)s->size > data_start
                           ? (size_t)((unsigned long long)s->size - data_start)
                           : 0;
        if (avail < nbytes) {
            npy__set_err(err, errlen, "truncated data (expected %zu bytes, found %zu)", nbytes,
                         avail);
            return -1;
        }
        if (avail > nbytes) {
            npy__set_err(err, errlen,
                         "%zu bytes of unexpected data after the array (shape %s, %s: %zu "
                         "bytes)",
                         avail - nbytes, shape_str, npy_dtype_label(out->dtype), nbytes);
            return -1;
        }
    }
    void *data = read_part(s, nbytes, PART_DATA, err, errlen);
    if (!data) return -1;
    if (s->size < 0) {
        unsigned char extra;
        if (src_read(s, &extra, 1) == 1) {
            free(data);
            npy__set_err(err, errlen, "unexpected data after the array (shape %s, %s)",
                         shape_str, npy_dtype_label(out->dtype));
            return -1;
        }
    }
    if (!npy__host_is_little_endian()) npy__swap_bytes(data, count, es);
    out->data = data;
    out->count = count;
    out->nbytes = nbytes;
    return 0;
}

static void clear_array(npy_array *a)
{
    memset(a, 0, sizeof *a);
}

int npy_parse(const void *buf, size_t len, npy_array *out, char *err, size_t errlen)
{
    if (!out) return -1;
    clear_array(out);
    if (!buf && len) {
        npy__set_err(err, errlen, "no data");
        return -1;
    }
    source s = {buf, len, NULL, 0, (long long)len};
    if (read_source(&s, out, err, errlen)) {
        clear_array(out);
        return -1;
    }
    return 0;
}

int npy_read(const char *path, npy_array *out, char *err, size_t errlen)
{
    if (!out) return -1;
    clear_array(out);
    if (!path || !*path) {
        npy__set_err(err, errlen, "empty file name");
        return -1;
    }
    FILE *f = fopen(path, "rb");
    if (!f) {
        npy__set_err(err, errlen, "%s: cannot open: %s", path, strerror(errno));
        return -1;
    }
    source s = {NULL, 0, f, 0, -1};
    struct stat st;
    if (fstat(fileno(f), &st) == 0) {
        if (S_ISDIR(st.st_mode)) {
            fclose(f);
            npy__set_err(err, errlen, "%s: is a directory", path);
            return -1;
        }
        if (S_ISREG(st.st_mode)) s.size = (long long)st.st_size;
    }
    char reason[512];
    int rc = read_source(&s, out, reason, sizeof reason);
    fclose(f);
    if (rc) {
        clear_array(out);
        npy__set_err(err, errlen, "%s: %s", path, reason);
        return -1;
    }
    return 0;
}

void npy_free(npy_array *a)
{
    if (!a) return;
    free(a->data);
    clear_array(a);
}
