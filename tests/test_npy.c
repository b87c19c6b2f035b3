/* Tests of the .npy reader and writer (src/support/npy*.c): round trips of every dtype, byte
 * equality with what numpy writes, each class of malformed file refused with its reason,
 * fuzz-style truncation and byte flips that must never crash, and the writer's promise
 * that a failed write leaves no file behind. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "reference/reference.h"
#include "support/npy.h"

#include <dirent.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

/* ---- Helpers --------------------------------------------------------------------- */

static char tmpdir[256];

static int make_tmpdir(void **state)
{
    (void)state;
    const char *base = getenv("TMPDIR");
    snprintf(tmpdir, sizeof tmpdir, "%s/clattn-npy-XXXXXX", base && *base ? base : "/tmp");
    return mkdtemp(tmpdir) ? 0 : -1;
}

/* Remove everything the tests made (flat files and one level of folders). */
static void remove_tree(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d) return;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
        char p[512];
        snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
        struct stat st;
        if (lstat(p, &st) == 0 && S_ISDIR(st.st_mode))
            remove_tree(p);
        else
            remove(p);
    }
    closedir(d);
    rmdir(dir);
}

static int drop_tmpdir(void **state)
{
    (void)state;
    remove_tree(tmpdir);
    return 0;
}

static void path_in_tmp(char *buf, size_t len, const char *name)
{
    snprintf(buf, len, "%s/%s", tmpdir, name);
}

/* Number of entries in a folder whose name contains needle (NULL: all entries). */
static int count_entries(const char *dir, const char *needle)
{
    DIR *d = opendir(dir);
    if (!d) return -1;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
        if (!needle || strstr(e->d_name, needle)) n++;
    }
    closedir(d);
    return n;
}

static bool file_exists(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0;
}

static void write_bytes(const char *path, const void *buf, size_t len)
{
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    if (len) assert_int_equal(fwrite(buf, 1, len, f), len);
    assert_int_equal(fclose(f), 0);
}

static unsigned char *read_bytes(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    unsigned char *buf = NULL;
    size_t cap = 0, n = 0;
    for (;;) {
        if (n == cap) {
            cap = cap ? cap * 2 : 4096;
            buf = realloc(buf, cap);
            assert_non_null(buf);
        }
        size_t got = fread(buf + n, 1, cap - n, f);
        n += got;
        if (got == 0) break;
    }
    fclose(f);
    *len = n;
    return buf;
}

/* A .npy image: magic, version major.0, the length field, the header text as given
 * (no padding added, so tests control every byte), then the data. */
static unsigned char *make_npy(unsigned major, const char *header, const void *data,
                               size_t datalen, size_t *len)
{
    size_t hlen = strlen(header);
    size_t lensize = major == 1 ? 2 : 4;
    size_t total = 8 + lensize + hlen + datalen;
    unsigned char *buf = malloc(total ? total : 1);
    assert_non_null(buf);
    memcpy(buf, "\x93NUMPY", 6);
    buf[6] = (unsigned char)major;
    buf[7] = 0;
    for (size_t i = 0; i < lensize; i++) buf[8 + i] = (unsigned char)(hlen >> (8 * i));
    memcpy(buf + 8 + lensize, header, hlen);
    if (datalen) memcpy(buf + 8 + lensize + hlen, data, datalen);
    *len = total;
    return buf;
}

/* Parse an image built from header + data; expect failure with a message containing
 * `needle`. */
static void expect_header_rejected(unsigned major, const char *header, size_t datalen,
                                   const char *needle)
{
    unsigned char data[64] = {0};
    assert_true(datalen <= sizeof data);
    size_t len;
    unsigned char *img = make_npy(major, header, data, datalen, &len);
    npy_array a;
    char err[512] = "";
    int rc = npy_parse(img, len, &a, err, sizeof err);
    if (rc == 0 || strstr(err, needle) == NULL)
        fail_msg("header %s: expected an error containing \"%s\", got rc=%d \"%s\"", header,
                 needle, rc, err);
    assert_null(a.data);
    assert_int_equal(strchr(err, '\n') == NULL, 1);
    free(img);
}

static void expect_header_accepted(unsigned major, const char *header, size_t datalen,
                                   clattn_dtype dtype, int rank, const int64_t *shape)
{
    unsigned char data[64];
    for (size_t i = 0; i < sizeof data; i++) data[i] = (unsigned char)i;
    assert_true(datalen <= sizeof data);
    size_t len;
    unsigned char *img = make_npy(major, header, data, datalen, &len);
    npy_array a;
    char err[512] = "";
    if (npy_parse(img, len, &a, err, sizeof err) != 0)
        fail_msg("header %s: unexpected error \"%s\"", header, err);
    assert_int_equal(a.dtype, dtype);
    assert_int_equal(a.rank, rank);
    for (int i = 0; i < rank; i++) assert_int_equal(a.shape[i], shape[i]);
    assert_int_equal(a.nbytes, datalen);
    assert_non_null(a.data);
    assert_memory_equal(a.data, data, datalen);
    npy_free(&a);
    free(img);
}

/* ---- Round trips ----------------------------------------------------------------- */

static void test_round_trip_every_dtype(void **state)
{
    (void)state;
    char path[512];
    char err[512];
    const int64_t shape4[4] = {2, 3, 1, 5};
    float f32[30];
    uint16_t f16[30];
    unsigned char b1[30];
    int32_t i4[30];
    for (int i = 0; i < 30; i++) {
        f32[i] = (float)i * 0.37f - 4.0f;
        f16[i] = clattn__float_to_half(f32[i]);
        b1[i] = (unsigned char)(i % 3 == 0);
        i4[i] = i * 1000 - 7;
    }
    struct {
        clattn_dtype dtype;
        const void *data;
    } cases[] = {{CLATTN_F32, f32}, {CLATTN_F16, f16}, {CLATTN_BOOL, b1}, {CLATTN_I32, i4}};
    for (size_t c = 0; c < 4; c++) {
        path_in_tmp(path, sizeof path, "rt.npy");
        assert_int_equal(npy_write(path, cases[c].dtype, 4, shape4, cases[c].data,
                                   cases[c].dtype, err, sizeof err),
                         0);
        npy_array a;
        if (npy_read(path, &a, err, sizeof err) != 0) fail_msg("%s", err);
        assert_int_equal(a.dtype, cases[c].dtype);
        assert_int_equal(a.rank, 4);
        assert_memory_equal(a.shape, shape4, sizeof shape4);
        assert_int_equal(a.count, 30);
        assert_int_equal(a.nbytes, 30 * clattn_dtype_size(cases[c].dtype));
        assert_memory_equal(a.data, cases[c].data, a.nbytes);
        size_t data_bytes = a.nbytes;
        npy_free(&a);
        assert_null(a.data);
        /* the header is padded so the data starts at a multiple of 64, like numpy */
        size_t len;
        unsigned char *raw = read_bytes(path, &len);
        assert_int_equal((len - data_bytes) % 64, 0);
        assert_int_equal(raw[len - data_bytes - 1], '\n');
        free(raw);
    }
    assert_int_equal(count_entries(tmpdir, ".tmp."), 0);
}

static void test_f32_data_written_as_f16_rounds_to_nearest_even(void **state)
{
    (void)state;
    char path[512], err[512];
    path_in_tmp(path, sizeof path, "half.npy");
    const float in[5] = {1.0f, -2.5f, 65504.0f, 1e6f, 1.0f + 1.0f / 4096.0f};
    const int64_t shape[1] = {5};
    assert_int_equal(npy_write(path, CLATTN_F16, 1, shape, in, CLATTN_F32, err, sizeof err), 0);
    npy_array a;
    assert_int_equal(npy_read(path, &a, err, sizeof err), 0);
    assert_int_equal(a.dtype, CLATTN_F16);
    const uint16_t *h = a.data;
    for (int i = 0; i < 5; i++) assert_int_equal(h[i], clattn__float_to_half(in[i]));
    assert_int_equal(h[3], 0x7c00); /* 1e6 overflows to +inf */
    assert_int_equal(h[4], 0x3c00); /* the tie rounds to even */
    npy_free(&a);
}

static void test_rank0_and_empty_arrays_round_trip(void **state)
{
    (void)state;
    char path[512], err[512];
    path_in_tmp(path, sizeof path, "scalar.npy");
    const float one = 42.0f;
    assert_int_equal(npy_write(path, CLATTN_F32, 0, NULL, &one, CLATTN_F32, err, sizeof err), 0);
    npy_array a;
    assert_int_equal(npy_read(path, &a, err, sizeof err), 0);
    assert_int_equal(a.rank, 0);
    assert_int_equal(a.count, 1);
    assert_true(*(float *)a.data == 42.0f);
    npy_free(&a);

    const int64_t shape[3] = {2, 0, 7};
    path_in_tmp(path, sizeof path, "empty.npy");
    assert_int_equal(npy_write(path, CLATTN_I32, 3, shape, NULL, CLATTN_I32, err, sizeof err), 0);
    assert_int_equal(npy_read(path, &a, err, sizeof err), 0);
    assert_int_equal(a.rank, 3);
    assert_int_equal(a.count, 0);
    assert_int_equal(a.nbytes, 0);
    assert_non_null(a.data);
    npy_free(&a);
}

/* What `np.save(f, np.arange(6, dtype='<f4').reshape(2, 3))` writes, byte for byte. */
static const char numpy_2x3_f32[] =
    "\x93NUMPY\x01\x00v\x00{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }"
    "                                                          \n"
    "\x00\x00\x00\x00\x00\x00\x80?\x00\x00\x00@\x00\x00@@\x00\x00\x80@\x00\x00\xa0@";

static void test_writer_output_is_byte_identical_to_numpy(void **state)
{
    (void)state;
    char path[512], err[512];
    path_in_tmp(path, sizeof path, "np.npy");
    const float v[6] = {0, 1, 2, 3, 4, 5};
    const int64_t shape[2] = {2, 3};
    assert_int_equal(npy_write(path, CLATTN_F32, 2, shape, v, CLATTN_F32, err, sizeof err), 0);
    size_t len;
    unsigned char *raw = read_bytes(path, &len);
    assert_int_equal(len, sizeof numpy_2x3_f32 - 1);
    assert_memory_equal(raw, numpy_2x3_f32, len);
    free(raw);

    npy_array a;
    assert_int_equal(npy_parse(numpy_2x3_f32, sizeof numpy_2x3_f32 - 1, &a, err, sizeof err), 0);
    assert_memory_equal(a.data, v, sizeof v);
    npy_free(&a);
}

/* ---- Header grammar -------------------------------------------------------------- */

static void test_header_variants_numpy_could_write_are_accepted(void **state)
{
    (void)state;
    const int64_t s23[2] = {2, 3}, s3[1] = {3}, s6[1] = {6};
    expect_header_accepted(1, "{'shape': (2, 3), 'fortran_order': False, 'descr': '<f4'}", 24,
                           CLATTN_F32, 2, s23);
    expect_header_accepted(1, "  {\"descr\":\"<f2\",\"fortran_order\":False,\"shape\":(2,3,),}\n",
                           12, CLATTN_F16, 2, s23);
    expect_header_accepted(1, "{ 'descr' : '|b1' ,\n 'fortran_order' : False ,\t'shape' : ( 3 , ) }"
                              "      \n",
                           3, CLATTN_BOOL, 1, s3);
    expect_header_accepted(1, "{'descr': '<i4', 'fortran_order': False, 'shape': (), }", 4,
                           CLATTN_I32, 0, NULL);
    /* Python 2 era files spell dimensions as longs */
    expect_header_accepted(1, "{'descr': '<f4', 'fortran_order': False, 'shape': (2L, 3L), }",
                           24, CLATTN_F32, 2, s23);
    /* versions 2.0 and 3.0 only widen the length field */
    expect_header_accepted(2, "{'descr': '<f4', 'fortran_order': False, 'shape': (3,), }", 12,
                           CLATTN_F32, 1, s3);
    expect_header_accepted(3, "{'descr': '<f4', 'fortran_order': False, 'shape': (3,), }", 12,
                           CLATTN_F32, 1, s3);
    /* column-major order changes nothing for a single non-trivial dimension */
    expect_header_accepted(1, "{'descr': '<f4', 'fortran_order': True, 'shape': (6,), }", 24,
                           CLATTN_F32, 1, s6);
}

static void test_malformed_headers_are_refused_with_the_reason(void **state)
{
    (void)state;
    expect_header_rejected(1, "['descr', '<f4']", 0, "header is not a dict");
    expect_header_rejected(1, "", 0, "header is not a dict");
    expect_header_rejected(1, "{'fortran_order': False, 'shape': (3,)}", 12, "no 'descr' key");
    expect_header_rejected(1, "{'descr': '<f4', 'shape': (3,)}", 12, "no 'fortran_order' key");
    expect_header_rejected(1, "{'descr': '<f4', 'fortran_order': False}", 12, "no 'shape' key");
    expect_header_rejected(1, "{'descr': '<f4', 'fortran_order': False, 'shape': (3,), 'x': 1}",
                           12, "unexpected key 'x'");
    expect_header_rejected(1, "{'descr': '<f4', 'descr': '<f4', 'fortran_order': False, "
                              "'shape': (3,)}",
                           12, "appears twice");
    expect_header_rejected(1, "{'descr': '>f4', 'fortran_order': False, 'shape': (3,)}", 12,
                           "big-endian dtype '>f4'");
    expect_header_rejected(1, "{'descr': '<f8', 'fortran_order': False, 'shape': (3,)}", 24,
                           "float64");
    expect_header_rejected(1, "{'descr': '|u1', 'fortran_order': False, 'shape': (3,)}", 3,
                           "unsupported dtype '|u1'");
    expect_header_rejected(1, "{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (3,)}",
                           12, "structured dtypes");
    expect_header_rejected(1, "{'descr': '<f4', 'fortran_order': True, 'shape': (2, 3)}", 24,
                           "fortran_order True");
    expect_header_rejected(1, "{'descr': '<f4', 'fortran_order': 0, 'shape': (3,)}", 12,
                           "True or False");
    expect_header_rejected(1, "{'descr': '<f4', 'fortran_order': False, 'shape': (2, -3)}", 0,
                           "negative dimension -3");
    expect_header_rejected(1, "{'descr': '<f4', 'fortran_order': False, "
                              "'shape': (99999999999999999999,)}",
                           0, "too large");
    expect_header_rejected(1, "{'descr': '<f4', 'fortran_order': False, "
                              "'shape': (4294967296, 4294967296, 4294967296)}",
                           0, "too large");
    expect_header_rejected(1, "{'descr': '<f4', 'fortran_order': False, 'shape': (3)}", 12,
                           "must be a tuple");
    expect_header_rejected(1, "{'descr': '<f4', 'fortran_order': False, 'shape': [3]}", 12,
                           "not a list");
    expect_header_rejected(1, "{'descr': '<f4', 'fortran_order': False, 'shape': (3,,)}", 12,
                           "malformed header");
    expect_header_rejected(1, "{'descr': '<f4', 'fortran_order': False, 'shape': (3,)} x", 12,
                           "only padding after the header dict");
    /* an unbalanced quote swallows text into the string: refused as the dtype it names */
    expect_header_rejected(1, "{'descr': '<f4, 'fortran_order': False, 'shape': (3,)}", 12,
                           "unsupported dtype '<f4, '");
    expect_header_rejected(1, "{'descr': '<f4', 'fortran_order' False, 'shape': (3,)}", 12,
                           "malformed header");
    expect_header_rejected(1, "{'descr': '<f4', 'fortran_order': False, 'shape': (3,)", 12,
                           "malformed header");
    expect_header_rejected(1, "{'descr': '<f4' 'fortran_order': False, 'shape': (3,)}", 12,
                           "malformed header");
    expect_header_rejected(1, "{'descr': '<\\x66', 'fortran_order': False, 'shape': (3,)}", 12,
                           "escape sequence");
}

/* Is every byte of s printable ASCII (no control bytes, nothing above 0x7e)? */
static bool printable_ascii(const char *s)
{
    for (; *s; s++)
        if ((unsigned char)*s < 0x20 || (unsigned char)*s > 0x7e) return false;
    return true;
}

/* Bytes of a damaged header reach messages only as \xNN: no escape sequence reaches the
 * terminal, no message is invalid UTF-8, and the message still names the problem. */
static void test_header_bytes_in_messages_are_quoted_as_printable_ascii(void **state)
{
    (void)state;
    static const struct {
        const char *header;
        size_t len; /* the header's bytes (it may hold 0x00) */
        const char *needle;
    } cases[] = {
#define HDR(s) s, sizeof s - 1
        {HDR("{'descr': '\x1b[2J<f4', 'fortran_order': False, 'shape': (3,)}"),
         "unsupported dtype '\\x1b[2J<f4'"},
        {HDR("{'descr': '>\xff\xfe', 'fortran_order': False, 'shape': (3,)}"),
         "big-endian dtype '>\\xff\\xfe' is not supported (convert with arr.astype('<\\xff\\xfe'))"},
        {HDR("{'de\x00scr': '<f4', 'fortran_order': False, 'shape': (3,)}"),
         "unexpected key 'de\\x00scr'"},
        {HDR("{'x\x1b]0;title\x07\x7f\x80': 1}"), "unexpected key 'x\\x1b]0;title\\x07\\x7f\\x80'"},
        {HDR("{'descr': '<f4\n', 'fortran_order': False, 'shape': (3,)}"), "line break inside a string"},
        {HDR("{'descr': '<f4',\n\x1b 'fortran_order': False, 'shape': (3,)}"), "byte 0x1b"},
#undef HDR
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        const size_t hlen = cases[c].len;
        unsigned char img[256] = {0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0, (unsigned char)hlen, 0};
        assert_true(10 + hlen + 12 <= sizeof img);
        memcpy(img + 10, cases[c].header, hlen);
        npy_array a;
        char err[512] = "";
        int rc = npy_parse(img, 10 + hlen + 12, &a, err, sizeof err);
        if (rc == 0 || !printable_ascii(err) || !strstr(err, cases[c].needle)) {
            char shown[2048] = "";
            for (const char *e = err; *e && strlen(shown) + 5 < sizeof shown; e++)
                snprintf(shown + strlen(shown), sizeof shown - strlen(shown),
                         (unsigned char)*e < 0x20 || (unsigned char)*e > 0x7e ? "<%02x>" : "%c",
                         (unsigned char)*e);
            fail_msg("case %zu: rc %d, want a printable message containing \"%s\", got \"%s\"", c,
                     rc, cases[c].needle, shown);
        }
        assert_null(a.data);
    }
}

static void test_bad_preamble_and_lengths_are_refused(void **state)
{
    (void)state;
    npy_array a;
    char err[512];
    const char *good = "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }\n";
    unsigned char data[24] = {0};
    size_t len;
    unsigned char *img = make_npy(1, good, data, sizeof data, &len);

    unsigned char *bad = malloc(len);
    memcpy(bad, img, len);
    bad[1] = 'X';
    assert_int_equal(npy_parse(bad, len, &a, err, sizeof err), -1);
    assert_non_null(strstr(err, "bad magic"));

    memcpy(bad, img, len);
    bad[6] = 4;
    assert_int_equal(npy_parse(bad, len, &a, err, sizeof err), -1);
    assert_non_null(strstr(err, "unsupported .npy format version 4.0"));
    memcpy(bad, img, len);
    bad[7] = 1;
    assert_int_equal(npy_parse(bad, len, &a, err, sizeof err), -1);
    assert_non_null(strstr(err, "version 1.1"));

    assert_int_equal(npy_parse(img, 0, &a, err, sizeof err), -1);
    assert_non_null(strstr(err, "empty file"));
    assert_int_equal(npy_parse(img, 7, &a, err, sizeof err), -1);
    assert_non_null(strstr(err, "truncated header"));
    assert_int_equal(npy_parse(img, 40, &a, err, sizeof err), -1);
    assert_non_null(strstr(err, "truncated header (expected"));

    assert_int_equal(npy_parse(img, len - 4, &a, err, sizeof err), -1);
    assert_string_equal(err, "truncated data (expected 24 bytes, found 20)");

    unsigned char *longer = malloc(len + 3);
    memcpy(longer, img, len);
    memset(longer + len, 0, 3);
    assert_int_equal(npy_parse(longer, len + 3, &a, err, sizeof err), -1);
    assert_non_null(strstr(err, "3 bytes of unexpected data after the array"));
    free(longer);

    /* a version 2.0 length field that claims 4 GiB of header */
    unsigned char huge[16] = {0x93, 'N', 'U', 'M', 'P', 'Y', 2, 0, 0xff, 0xff, 0xff, 0xff, '{'};
    assert_int_equal(npy_parse(huge, sizeof huge, &a, err, sizeof err), -1);
    assert_non_null(strstr(err, "exceeds"));

    free(bad);
    free(img);
}

/* ---- Fuzz-style robustness ------------------------------------------------------- */

static void test_every_truncation_is_refused_without_crashing(void **state)
{
    (void)state;
    const char *header = "{'descr': '<f2', 'fortran_order': False, 'shape': (2, 1, 3), }   \n";
    unsigned char data[12];
    for (size_t i = 0; i < sizeof data; i++) data[i] = (unsigned char)(i * 37);
    for (unsigned major = 1; major <= 3; major++) {
        size_t len;
        unsigned char *img = make_npy(major, header, data, sizeof data, &len);
        for (size_t cut = 0; cut < len; cut++) {
            /* a heap copy of exactly `cut` bytes, so a read past the end is an error
             * that sanitizers and valgrind see */
            unsigned char *part = malloc(cut ? cut : 1);
            memcpy(part, img, cut);
            npy_array a;
            char err[512] = "";
            if (npy_parse(part, cut, &a, err, sizeof err) != -1)
                fail_msg("version %u cut at %zu of %zu bytes was accepted", major, cut, len);
            assert_true(err[0] != '\0');
            assert_null(a.data);
            free(part);
        }
        npy_array a;
        char err[512];
        assert_int_equal(npy_parse(img, len, &a, err, sizeof err), 0);
        npy_free(&a);
        free(img);
    }
}

static void test_flipped_header_bytes_never_crash(void **state)
{
    (void)state;
    const char *header = "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }    \n";
    unsigned char data[24] = {0};
    size_t len;
    unsigned char *img = make_npy(1, header, data, sizeof data, &len);
    size_t header_end = len - sizeof data;
    static const unsigned char masks[] = {0x01, 0x02, 0x04, 0x08, 0x10, 0x20, 0x40, 0x80, 0xff};
    unsigned char *copy = malloc(len);
    int accepted = 0, refused = 0;
    for (size_t pos = 0; pos < header_end; pos++) {
        for (size_t m = 0; m < sizeof masks; m++) {
            memcpy(copy, img, len);
            copy[pos] ^= masks[m];
            npy_array a;
            char err[512] = "";
            if (npy_parse(copy, len, &a, err, sizeof err) == 0) {
                /* only harmless flips survive: padding, a digit that keeps the size... */
                assert_int_equal(a.nbytes, sizeof data);
                npy_free(&a);
                accepted++;
            } else {
                assert_true(err[0] != '\0');
                assert_null(strchr(err, '\n'));
                refused++;
            }
        }
    }
    assert_true(refused > accepted);
    /* random bytes in place of the header must not crash either */
    unsigned seed = 12345;
    for (int round = 0; round < 20000; round++) {
        memcpy(copy, img, len);
        for (int k = 0; k < 4; k++) {
            seed = seed * 1103515245u + 12345u;
            size_t pos = 10 + (seed >> 8) % (header_end - 10);
            seed = seed * 1103515245u + 12345u;
            copy[pos] = (unsigned char)(seed >> 16);
        }
        npy_array a;
        char err[512];
        if (npy_parse(copy, len, &a, err, sizeof err) == 0) npy_free(&a);
    }
    free(copy);
    free(img);
}

/* ---- Files ----------------------------------------------------------------------- */

static void test_read_errors_name_the_file(void **state)
{
    (void)state;
    char path[512], err[1024];
    npy_array a;
    path_in_tmp(path, sizeof path, "missing.npy");
    assert_int_equal(npy_read(path, &a, err, sizeof err), -1);
    assert_non_null(strstr(err, path));
    assert_non_null(strstr(err, "cannot open"));

    assert_int_equal(npy_read(tmpdir, &a, err, sizeof err), -1);
    assert_non_null(strstr(err, "is a directory"));

    /* a truncated file on disk: the size check before reading gives the same message */
    path_in_tmp(path, sizeof path, "short.npy");
    write_bytes(path, numpy_2x3_f32, sizeof numpy_2x3_f32 - 1 - 4);
    assert_int_equal(npy_read(path, &a, err, sizeof err), -1);
    char want[600];
    snprintf(want, sizeof want, "%s: truncated data (expected 24 bytes, found 20)", path);
    assert_string_equal(err, want);

    path_in_tmp(path, sizeof path, "long.npy");
    unsigned char longer[sizeof numpy_2x3_f32 + 7];
    memcpy(longer, numpy_2x3_f32, sizeof numpy_2x3_f32 - 1);
    memset(longer + sizeof numpy_2x3_f32 - 1, 0, 8);
    write_bytes(path, longer, sizeof longer);
    assert_int_equal(npy_read(path, &a, err, sizeof err), -1);
    assert_non_null(strstr(err, "8 bytes of unexpected data"));
}

/* Feed a FIFO from a child, so the reader takes its path for files of unknown size. */
static int read_through_fifo(const void *bytes, size_t len, npy_array *a, char *err,
                             size_t errlen)
{
    char fifo[512];
    path_in_tmp(fifo, sizeof fifo, "pipe.npy");
    remove(fifo);
    assert_int_equal(mkfifo(fifo, 0600), 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        signal(SIGPIPE, SIG_IGN);
        FILE *f = fopen(fifo, "wb");
        if (f) {
            fwrite(bytes, 1, len, f);
            fclose(f);
        }
        _exit(0);
    }
    int rc = npy_read(fifo, a, err, errlen);
    int status;
    waitpid(pid, &status, 0);
    remove(fifo);
    return rc;
}

static void test_streams_of_unknown_size_are_checked_too(void **state)
{
    (void)state;
    npy_array a;
    char err[1024];
    assert_int_equal(read_through_fifo(numpy_2x3_f32, sizeof numpy_2x3_f32 - 1, &a, err,
                                       sizeof err),
                     0);
    assert_int_equal(a.count, 6);
    npy_free(&a);
    assert_int_equal(read_through_fifo(numpy_2x3_f32, sizeof numpy_2x3_f32 - 3, &a, err,
                                       sizeof err),
                     -1);
    assert_non_null(strstr(err, "truncated data (expected 24 bytes, found 22)"));
    assert_int_equal(read_through_fifo(numpy_2x3_f32, sizeof numpy_2x3_f32, &a, err, sizeof err),
                     -1);
    assert_non_null(strstr(err, "unexpected data after the array"));
}

static void test_failed_writes_leave_no_file(void **state)
{
    (void)state;
    char path[512], err[1024];
    const float v[4] = {1, 2, 3, 4};
    const int64_t shape[1] = {4};

    /* a folder that does not exist */
    path_in_tmp(path, sizeof path, "no-such-dir/out.npy");
    assert_int_equal(npy_write(path, CLATTN_F32, 1, shape, v, CLATTN_F32, err, sizeof err), -1);
    assert_non_null(strstr(err, "cannot create temporary file"));
    assert_false(file_exists(path));

    /* the final name is a folder: the rename fails and the temporary file goes away */
    path_in_tmp(path, sizeof path, "a-folder");
    assert_int_equal(mkdir(path, 0700), 0);
    char inner[600];
    snprintf(inner, sizeof inner, "%s/keep", path);
    write_bytes(inner, "x", 1);
    assert_int_equal(npy_write(path, CLATTN_F32, 1, shape, v, CLATTN_F32, err, sizeof err), -1);
    assert_non_null(strstr(err, "cannot rename"));
    assert_int_equal(count_entries(tmpdir, ".tmp."), 0);

    /* refused arguments touch nothing, and an existing file keeps its content */
    path_in_tmp(path, sizeof path, "existing.npy");
    write_bytes(path, "old", 3);
    assert_int_equal(npy_write(path, CLATTN_F16, 1, shape, v, CLATTN_I32, err, sizeof err), -1);
    assert_non_null(strstr(err, "cannot convert"));
    assert_int_equal(npy_write(path, CLATTN_BF16, 1, shape, v, CLATTN_BF16, err, sizeof err), -1);
    const int64_t negative[1] = {-4};
    assert_int_equal(npy_write(path, CLATTN_F32, 1, negative, v, CLATTN_F32, err, sizeof err), -1);
    assert_non_null(strstr(err, "negative dimension"));
    size_t len;
    unsigned char *raw = read_bytes(path, &len);
    assert_int_equal(len, 3);
    assert_memory_equal(raw, "old", 3);
    free(raw);
    assert_int_equal(count_entries(tmpdir, ".tmp."), 0);
}

static void test_pending_writes_appear_only_on_commit(void **state)
{
    (void)state;
    char out[512], lse[512], err[1024];
    const float v[4] = {1, 2, 3, 4};
    const int64_t shape[2] = {2, 2};
    path_in_tmp(out, sizeof out, "pend-out.npy");
    path_in_tmp(lse, sizeof lse, "pend-lse.npy");

    npy_pending a, b;
    assert_int_equal(npy_write_begin(&a, out, CLATTN_F32, 2, shape, v, CLATTN_F32, err,
                                     sizeof err),
                     0);
    assert_false(file_exists(out));
    assert_int_equal(count_entries(tmpdir, "pend-out.npy.tmp."), 1);
    /* a second pending write to the same name is refused rather than clobbering */
    assert_int_equal(npy_write_begin(&b, out, CLATTN_F32, 2, shape, v, CLATTN_F32, err,
                                     sizeof err),
                     -1);
    assert_null(b.tmp_path);
    npy_write_abort(&a);
    assert_null(a.tmp_path);
    assert_int_equal(count_entries(tmpdir, ".tmp."), 0);
    assert_false(file_exists(out));
    npy_write_abort(&a); /* twice is harmless */

    assert_int_equal(npy_write_begin(&a, out, CLATTN_F32, 2, shape, v, CLATTN_F32, err,
                                     sizeof err),
                     0);
    assert_int_equal(npy_write_begin(&b, lse, CLATTN_F16, 2, shape, v, CLATTN_F32, err,
                                     sizeof err),
                     0);
    assert_int_equal(npy_write_commit(&a, err, sizeof err), 0);
    assert_int_equal(npy_write_commit(&b, err, sizeof err), 0);
    assert_true(file_exists(out));
    assert_true(file_exists(lse));
    assert_int_equal(count_entries(tmpdir, ".tmp."), 0);
    assert_int_equal(npy_write_commit(&a, err, sizeof err), -1); /* nothing pending */
}

static void test_shape_strings_match_numpy_repr(void **state)
{
    (void)state;
    char buf[64];
    const int64_t s[3] = {2, 3, 4};
    assert_string_equal(npy_shape_string(0, s, buf, sizeof buf), "()");
    assert_string_equal(npy_shape_string(1, s, buf, sizeof buf), "(2,)");
    assert_string_equal(npy_shape_string(3, s, buf, sizeof buf), "(2, 3, 4)");
    assert_string_equal(npy_descr(CLATTN_F16), "<f2");
    assert_null(npy_descr(CLATTN_BF16));
    assert_string_equal(npy_dtype_label(CLATTN_BOOL), "bool");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_round_trip_every_dtype),
        cmocka_unit_test(test_f32_data_written_as_f16_rounds_to_nearest_even),
        cmocka_unit_test(test_rank0_and_empty_arrays_round_trip),
        cmocka_unit_test(test_writer_output_is_byte_identical_to_numpy),
        cmocka_unit_test(test_header_variants_numpy_could_write_are_accepted),
        cmocka_unit_test(test_malformed_headers_are_refused_with_the_reason),
        cmocka_unit_test(test_header_bytes_in_messages_are_quoted_as_printable_ascii),
        cmocka_unit_test(test_bad_preamble_and_lengths_are_refused),
        cmocka_unit_test(test_every_truncation_is_refused_without_crashing),
        cmocka_unit_test(test_flipped_header_bytes_never_crash),
        cmocka_unit_test(test_read_errors_name_the_file),
        cmocka_unit_test(test_streams_of_unknown_size_are_checked_too),
        cmocka_unit_test(test_failed_writes_leave_no_file),
        cmocka_unit_test(test_pending_writes_appear_only_on_commit),
        cmocka_unit_test(test_shape_strings_match_numpy_repr),
    };
    return cmocka_run_group_tests(tests, make_tmpdir, drop_tmpdir);
}
