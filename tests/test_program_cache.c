/* The on-disk program cache (src/program_disk.c): its key, which kernel comments must
 * not change (an edited comment must not invalidate every user's cached programs) while
 * any change the compiler sees must; and several contexts of one process on different
 * threads storing and loading the same program at the same time, which must never see a
 * damaged file and must leave no temporary files behind. */
#include "context.h" /* clattn__disk_cache_store / _load */
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

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_comment_edits_keep_the_cache_key),
        cmocka_unit_test(test_code_edits_change_the_cache_key),
        cmocka_unit_test(test_concurrent_stores_of_one_program_never_damage_the_cache),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
