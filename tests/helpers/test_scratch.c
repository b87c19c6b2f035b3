#include "test_scratch.h"

#include "support/npy.h"

#include <dirent.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

static char scratch[256];

int test_scratch_create(const char *tag)
{
    const char *base = getenv("TMPDIR");
    snprintf(scratch, sizeof scratch, "%s/clattn-%s-XXXXXX", base && *base ? base : "/tmp", tag);
    return mkdtemp(scratch) ? 0 : -1;
}

int test_scratch_remove(void **state)
{
    (void)state;
    if (!scratch[0]) return 0;
    DIR *d = opendir(scratch);
    if (d) {
        struct dirent *e;
        while ((e = readdir(d)) != NULL) {
            if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
            char p[768];
            snprintf(p, sizeof p, "%s/%s", scratch, e->d_name);
            remove(p);
        }
        closedir(d);
    }
    rmdir(scratch);
    return 0;
}

const char *test_scratch_dir(void) { return scratch; }

const char *test_scratch_path(const char *name)
{
    static char bufs[16][512];
    static int next;
    char *b = bufs[next++ % 16];
    snprintf(b, sizeof bufs[0], "%s/%s", scratch, name);
    return b;
}

int test_scratch_tmp_files(void)
{
    DIR *d = opendir(scratch);
    assert_non_null(d);
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL)
        if (strstr(e->d_name, ".tmp.")) n++;
    closedir(d);
    return n;
}

bool test_file_exists(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0;
}

void test_save_npy(const char *name, clattn_dtype dtype, int rank, const int64_t *shape,
                   const void *data)
{
    char err[1024];
    if (npy_write(test_scratch_path(name), dtype, rank, shape, data, dtype, err, sizeof err) != 0)
        fail_msg("%s", err);
}

void test_save_bytes(const char *name, const void *bytes, size_t len)
{
    FILE *f = fopen(test_scratch_path(name), "wb");
    assert_non_null(f);
    if (len) assert_int_equal(fwrite(bytes, 1, len, f), len);
    assert_int_equal(fclose(f), 0);
}

float test_lcg_value(uint32_t *state)
{
    *state = *state * 1664525u + 1013904223u;
    return (float)(*state >> 8) / (float)(1u << 23) - 1.0f;
}

void test_swap_hl(const float *src, float *dst, int b, int h, int l, int x, bool to_blhd)
{
    for (int i0 = 0; i0 < b; i0++)
        for (int i1 = 0; i1 < h; i1++)
            for (int i2 = 0; i2 < l; i2++)
                for (int i3 = 0; i3 < x; i3++) {
                    const int bhld = ((i0 * h + i1) * l + i2) * x + i3;
                    const int blhd = ((i0 * l + i2) * h + i1) * x + i3;
                    if (to_blhd) dst[blhd] = src[bhld];
                    else dst[bhld] = src[blhd];
                }
}

void test_expect_cli_failure(const char *needle, const char *out, const char *lse,
                             const char *const *args, int line)
{
    const char *absent[2] = {out, lse};
    for (int a = 0; a < 2; a++)
        if (absent[a]) remove(absent[a]);
    test_exe_result r;
    test_run_clattn(scratch, &r, args);
    char cmd[1024] = "";
    for (const char *const *a = args; *a; a++) {
        strncat(cmd, " ", sizeof cmd - strlen(cmd) - 1);
        strncat(cmd, *a, sizeof cmd - strlen(cmd) - 1);
    }
    if (r.status != 1 && r.status != 2)
        fail_msg("line %d: clattn%s: exit status %d (want 1 or 2); stderr: %s", line, cmd,
                 r.status, r.err);
    int lines = 0;
    for (const char *s = r.err; *s; s++) lines += *s == '\n';
    const size_t len = strlen(r.err);
    if (lines != 1 || len == 0 || r.err[len - 1] != '\n')
        fail_msg("line %d: clattn%s: want exactly one stderr line, got: \"%s\"", line, cmd, r.err);
    if (strncmp(r.err, "clattn", 6) != 0 || !strstr(r.err, needle))
        fail_msg("line %d: clattn%s: stderr \"%s\" lacks \"%s\"", line, cmd, r.err, needle);
    for (int a = 0; a < 2; a++)
        if (absent[a] && test_file_exists(absent[a]))
            fail_msg("line %d: clattn%s left %s behind", line, cmd, absent[a]);
    if (test_scratch_tmp_files() != 0)
        fail_msg("line %d: clattn%s left a temporary file", line, cmd);
}
