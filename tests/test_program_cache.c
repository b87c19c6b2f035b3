/* The on-disk program cache (src/core/program_disk.c): its key, which kernel comments must
 * not change (an edited comment must not invalidate every user's cached programs) while
 * any change the compiler sees must; and several contexts of one process on different
 * threads storing and loading the same program at the same time, which must never see a
 * damaged file and must leave no temporary files behind; and a binary the driver refuses
 * (as after a driver update) is rebuilt from source. */
#include "core/program.h"
#include "test_util.h"

#include <dirent.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static uint64_t code_hash(const char *src) { return clattn__code_hash(0xcbf29ce484222325ull, src); }

static void test_comment_edits_keep_the_cache_key(void **state)
{
    (void)state;
    const char *base = "/* header */\nkernel void f(global float *x) { x[0] = 1.0f; } // tail\n";
    const char *edited = "/* a longer header,\n * measured on a new machine */\n"
                         "kernel void f(global float *x) { x[0] = 1.0f; } // other tail\n";
    const char *none = " \nkernel void f(global float *x) { x[0] = 1.0f; } \n";
    assert_true(code_hash(base) == code_hash(edited));
    assert_true(code_hash(base) == code_hash(none));
}

static void test_code_edits_change_the_cache_key(void **state)
{
    (void)state;
    const char *base = "kernel void f(global float *x) { x[0] = 1.0f; }";
    assert_true(code_hash(base) != code_hash("kernel void f(global float *x) { x[0] = 2.0f; }"));
    /* a comment separates tokens: removing it must not join "a" and "b" into "ab" */
    assert_true(code_hash("int a/**/b;") != code_hash("int ab;"));
    /* comment markers inside literals are code */
    assert_true(code_hash("char *s = \"/* x */\";") != code_hash("char *s = \"/* y */\";"));
    assert_true(code_hash("char c = '/'; // x") != code_hash("char c = '*'; // x"));
    assert_true(code_hash("char *s = \"a\\\"/* x */\";") != code_hash("char *s = \"a\\\"/* y */\";"));
}

enum { THREADS = 4, ROUNDS = 60 };

/* Many kernels, so the binary is large (hundreds of KiB) and takes a while to write:
 * that is when concurrent writers of one temporary file would meet. */
enum { KERNELS = 100 };
static const char prelude[] = "/* race test prelude */\n";
static char body[KERNELS * 256];

static void make_body(void)
{
    size_t n = 0;
    for (int k = 0; k < KERNELS; k++)
        n += (size_t)snprintf(body + n, sizeof body - n,
                              "__kernel void race%d(__global float *x, int n) {\n"
                              "  int i = get_global_id(0); float a = x[i];\n"
                              "  for (int k = 0; k < n; k++) a = sin(a * %d.5f) + cos(a + (float)k);\n"
                              "  x[i] = a;\n}\n",
                              k, k);
}
static const char options[] = "-cl-std=CL1.2 -DRACE_TEST=1";

typedef struct worker {
    clattn_context *ctx;
    cl_program prog;
    pthread_barrier_t *barrier;
    int misses; /* loads right after a store that found no usable file */
} worker;

static void *work(void *arg)
{
    worker *w = arg;
    for (int r = 0; r < ROUNDS; r++) {
        pthread_barrier_wait(w->barrier);
        clattn__disk_cache_store(w->ctx, "race.cl", prelude, body, options, w->prog);
        cl_program got = NULL;
        clattn__disk_cache_load(w->ctx, "race.cl", prelude, body, options, &got);
        if (got)
            clReleaseProgram(got);
        else
            w->misses++;
    }
    return NULL;
}

static void test_concurrent_stores_of_one_program_never_damage_the_cache(void **state)
{
    (void)state;
    make_body();
    char dir[] = "/tmp/clattn-cache-race-XXXXXX";
    assert_non_null(mkdtemp(dir));
    assert_int_equal(setenv("CLATTN_CACHE_DIR", dir, 1), 0);

    worker w[THREADS];
    pthread_barrier_t barrier;
    assert_int_equal(pthread_barrier_init(&barrier, NULL, THREADS), 0);
    for (int t = 0; t < THREADS; t++) {
        memset(&w[t], 0, sizeof w[t]);
        w[t].ctx = test_context();
        w[t].barrier = &barrier;
        const char *texts[2] = {prelude, body};
        cl_int err;
        w[t].prog = clCreateProgramWithSource(clattn_context_cl_context(w[t].ctx), 2, texts, NULL, &err);
        assert_int_equal(err, CL_SUCCESS);
        cl_device_id dev = clattn_context_cl_device(w[t].ctx);
        assert_int_equal(clBuildProgram(w[t].prog, 1, &dev, options, NULL, NULL), CL_SUCCESS);
    }
    pthread_t th[THREADS];
    for (int t = 0; t < THREADS; t++) assert_int_equal(pthread_create(&th[t], NULL, work, &w[t]), 0);
    for (int t = 0; t < THREADS; t++) pthread_join(th[t], NULL);
    pthread_barrier_destroy(&barrier);

    /* the file left at the end loads, and nothing else is in the folder */
    cl_program got = NULL;
    clattn__disk_cache_load(w[0].ctx, "race.cl", prelude, body, options, &got);
    const bool final_loads = got != NULL;
    if (got) clReleaseProgram(got);
    int files = 0, others = 0;
    DIR *d = opendir(dir);
    assert_non_null(d);
    for (struct dirent *e; (e = readdir(d)) != NULL;) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
        const size_t n = strlen(e->d_name);
        if (n > 4 && strcmp(e->d_name + n - 4, ".bin") == 0) {
            files++;
        } else {
            others++;
            print_error("left in the cache folder: %s\n", e->d_name);
        }
        char path[512];
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        remove(path);
    }
    closedir(d);
    rmdir(dir);

    int misses = 0;
    for (int t = 0; t < THREADS; t++) {
        misses += w[t].misses;
        clReleaseProgram(w[t].prog);
        clattn_context_free(w[t].ctx);
    }
    if (misses || !final_loads || files != 1 || others)
        fail_msg("%d of %d loads right after a store found a damaged or missing file; final file "
                 "%s; %d cache file(s), %d other file(s)",
                 misses, THREADS * ROUNDS, final_loads ? "loads" : "does not load", files, others);
}

/* The cache files of one folder (names ending in .bin), at most 64. */
static int cache_files(const char *dir, char names[][512])
{
    int n = 0;
    DIR *d = opendir(dir);
    assert_non_null(d);
    for (struct dirent *e; (e = readdir(d)) != NULL && n < 64;) {
        const size_t len = strlen(e->d_name);
        if (len > 4 && strcmp(e->d_name + len - 4, ".bin") == 0)
            snprintf(names[n++], 512, "%s/%s", dir, e->d_name);
    }
    closedir(d);
    return n;
}

static uint64_t fnv1a64(const unsigned char *p, size_t n)
{
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < n; i++) {
        h ^= p[i];
        h *= 0x100000001b3ull;
    }
    return h;
}

/* After a driver update the cached binaries are intact files (header, checksum) that the
 * driver no longer accepts: each is rebuilt from source, the call's results are right,
 * and the file is replaced by the new driver's binary. Simulated by rewriting every
 * cached binary as bytes no driver accepts, under a valid header and checksum. */
static void test_a_binary_the_driver_refuses_is_rebuilt_from_source(void **state)
{
    (void)state;
    char dir[] = "/tmp/clattn-cache-refused-XXXXXX";
    assert_non_null(mkdtemp(dir));
    assert_int_equal(setenv("CLATTN_CACHE_DIR", dir, 1), 0);
    const attn_case c = {.B = 1, .Hq = 2, .Hkv = 1, .Lq = 9, .Lk = 21, .D = 16, .Dv = 16,
                         .causal = CLATTN_CAUSAL_BOTTOM_RIGHT, .lse = 1, .seed = 77};
    clattn_context *ctx = test_context();
    test_run_cases(ctx, &c, 1, CLATTN_PATH_FUSED, 0);
    clattn_context_free(ctx);

    static char names[64][512];
    const int n = cache_files(dir, names);
    assert_true(n >= 1);
    static const unsigned char junk[] = "not a program binary of any driver: rebuilt from source";
    for (int i = 0; i < n; i++) {
        FILE *f = fopen(names[i], "r+b");
        assert_non_null(f);
        struct {
            char magic[8];
            uint64_t key, size, checksum;
        } hdr;
        assert_int_equal(fread(&hdr, sizeof hdr, 1, f), 1);
        hdr.size = sizeof junk;
        hdr.checksum = fnv1a64(junk, sizeof junk);
        fclose(f);
        f = fopen(names[i], "wb");
        assert_non_null(f);
        assert_int_equal(fwrite(&hdr, sizeof hdr, 1, f), 1);
        assert_int_equal(fwrite(junk, 1, sizeof junk, f), sizeof junk);
        fclose(f);
    }

    ctx = test_context();
    test_run_cases(ctx, &c, 1, CLATTN_PATH_FUSED, 0); /* fails the test on a wrong result */
    clattn_context_free(ctx);
    /* every file now holds a binary the driver accepts again (bigger than the junk) */
    const int m = cache_files(dir, names);
    int refused = 0;
    for (int i = 0; i < m; i++) {
        FILE *f = fopen(names[i], "rb");
        assert_non_null(f);
        fseek(f, 0, SEEK_END);
        if (ftell(f) <= (long)(32 + sizeof junk)) refused++;
        fclose(f);
        remove(names[i]);
    }
    rmdir(dir);
    if (m != n || refused) fail_msg("%d cache files before, %d after, %d still the refused bytes", n, m, refused);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_comment_edits_keep_the_cache_key),
        cmocka_unit_test(test_code_edits_change_the_cache_key),
        cmocka_unit_test(test_concurrent_stores_of_one_program_never_damage_the_cache),
        cmocka_unit_test(test_a_binary_the_driver_refuses_is_rebuilt_from_source),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
