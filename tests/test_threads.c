/* Several threads, each with its own context on the default device and one shared on-disk
 * program cache, run attention and KV-cache calls at the same time (clattn.h: "different
 * contexts may be used concurrently; the device list and the on-disk program cache are
 * shared and guarded"). The cache folder is new and empty, so every thread builds and
 * stores the same programs at the same moment: the race this test exists for. Every result
 * is compared with the float64 reference, and afterwards every program must be in the
 * cache, whole, so that a new context builds nothing. Under ThreadSanitizer
 * (scripts/sanitize.sh) the same run must report no data race.
 *
 * The worker threads never call cmocka (its assertions longjmp, which is only safe on the
 * test's own thread): they record a message, and the main thread fails the test. */
#include "test_util.h"


#include <dirent.h>
#include <fcntl.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

enum { NTHREADS = 4, ROUNDS = 2 };

typedef struct worker {
    int id;
    pthread_barrier_t *start;   /* all threads create their contexts together */
    int failures;
    int calls;                  /* calls compared with the reference */
    char msg[1024];             /* the first failure */
} worker;

static void worker_fail(worker *w, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;
static void worker_fail(worker *w, const char *fmt, ...)
{
    if (w->failures++ == 0) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(w->msg, sizeof w->msg, fmt, ap);
        va_end(ap);
    }
}

/* Small cases that between them need the fused, decode and unfused programs, f32 and f16
 * storage, masks, per-batch key lengths, GQA and LSE: several different programs to race
 * on, each run in well under a second on a CPU device. */
static const attn_case cases[] = {
    {.name = "causal f32", .B = 1, .Hq = 2, .Hkv = 1, .Lq = 8, .Lk = 16, .D = 16,
     .dtype = CLATTN_F32, .out_dtype = CLATTN_F32, .causal = CLATTN_CAUSAL_TOP_LEFT, .seed = 11},
    {.name = "decode f16 kv_lens", .B = 3, .Hq = 4, .Hkv = 2, .Lq = 1, .Lk = 40, .D = 32,
     .dtype = CLATTN_F16, .out_dtype = CLATTN_F32, .kv_lens = 1, .lse = 1, .seed = 12},
    {.name = "bool mask blhd", .B = 1, .Hq = 2, .Hkv = 2, .Lq = 12, .Lk = 20, .D = 64,
     .dtype = CLATTN_F32, .out_dtype = CLATTN_F16, .blhd = 1, .mask_kind = ATTN_MASK_BOOL,
     .lse = 1, .seed = 13},
    {.name = "unfused float mask", .B = 1, .Hq = 2, .Hkv = 1, .Lq = 6, .Lk = 9, .D = 8,
     .dtype = CLATTN_F32, .out_dtype = CLATTN_F32, .mask_kind = ATTN_MASK_FLOAT,
     .softcap = 20.0f, .path = CLATTN_PATH_UNFUSED, .seed = 14},
};

static void run_attention_case(worker *w, clattn_context *ctx, const attn_case *c)
{
    attn_case_data *d = NULL;
    clattn_status st = attn_case_data_create(c, &d);
    if (st != CLATTN_SUCCESS) {
        worker_fail(w, "thread %d, %s: data: %s", w->id, c->name, clattn_status_string(st));
        return;
    }
    st = attn_case_run(ctx, c, d, NULL);
    if (st != CLATTN_SUCCESS) {
        worker_fail(w, "thread %d, %s: clattn_attention: %s: %s", w->id, c->name,
                    clattn_status_string(st), clattn_context_last_error(ctx));
        attn_case_data_free(d);
        return;
    }
    attn_case_result r;
    st = attn_case_compare(c, d, &r);
    attn_case_data_free(d);
    if (st != CLATTN_SUCCESS) {
        worker_fail(w, "thread %d, %s: compare: %s", w->id, c->name, clattn_status_string(st));
        return;
    }
    w->calls++;
    if (!r.ok) {
        char res[768];
        attn_case_result_format(&r, res, sizeof res);
        worker_fail(w, "thread %d, %s: %s", w->id, c->name, res);
    }
}

/* Deterministic data per thread (no shared generator state between threads). */
static float next_value(uint64_t *s)
{
    *s = *s * 6364136223846793005ull + 1442695040888963407ull;
    return (float)((double)(*s >> 40) / (double)(1ull << 24)) * 2.0f - 1.0f;
}

/* A KV cache in f16 (so the stored values are exactly the f16 roundings the host
 * quantizer gives): two appends, then decode attention with GQA, compared with the
 * reference on the rounded keys and values. */
static void run_kv_case(worker *w, clattn_context *ctx, uint64_t seed)
{
    enum { B = 1, HQ = 4, HKV = 2, N1 = 13, N2 = 7, N = N1 + N2, D = 32, LQ = 1 };
    float k[B * HKV * N * D], v[B * HKV * N * D], kh[B * HKV * N * D], vh[B * HKV * N * D];
    float q[B * HQ * LQ * D], o[B * HQ * LQ * D];
    double ref[B * HQ * LQ * D];
    for (size_t i = 0; i < sizeof k / sizeof k[0]; i++) {
        k[i] = next_value(&seed);
        v[i] = next_value(&seed);
    }
    for (size_t i = 0; i < sizeof q / sizeof q[0]; i++) q[i] = next_value(&seed);

    clattn_kv_cache *cache = NULL;
    clattn_status st =
        clattn_kv_cache_create(ctx, B, HKV, N + 4, D, D, CLATTN_KV_F16, CLATTN_KV_F16, &cache);
    if (st != CLATTN_SUCCESS) {
        worker_fail(w, "thread %d, kv: create: %s: %s", w->id, clattn_status_string(st),
                    clattn_context_last_error(ctx));
        return;
    }
    /* the first N1 positions of every head, then the other N2 (views with the full
     * stride, as a caller appending from a bigger buffer would pass them) */
    clattn_tensor tk = clattn_tensor_host(k, CLATTN_F32, B, HKV, N1, D);
    clattn_tensor tv = clattn_tensor_host(v, CLATTN_F32, B, HKV, N1, D);
    tk.nb[1] = tv.nb[1] = (int64_t)N * D * 4;
    tk.nb[0] = tv.nb[0] = (int64_t)HKV * N * D * 4;
    st = clattn_kv_cache_append(cache, &tk, &tv, NULL);
    if (st == CLATTN_SUCCESS) {
        tk.ne[2] = tv.ne[2] = N2;
        tk.offset = tv.offset = (size_t)N1 * D * 4;
        st = clattn_kv_cache_append(cache, &tk, &tv, NULL);
    }
    clattn_tensor tq = clattn_tensor_host(q, CLATTN_F32, B, HQ, LQ, D);
    clattn_tensor to = clattn_tensor_host(o, CLATTN_F32, B, HQ, LQ, D);
    if (st == CLATTN_SUCCESS) st = clattn_kv_cache_attention(ctx, cache, &tq, &to, NULL, NULL);
    if (st != CLATTN_SUCCESS) {
        worker_fail(w, "thread %d, kv: %s: %s", w->id, clattn_status_string(st),
                    clattn_context_last_error(ctx));
        clattn_kv_cache_free(cache);
        return;
    }
    clattn_kv_cache_free(cache);

    st = clattn_kv_quantize_host(CLATTN_KV_F16, CLATTN_KV_KEYS, k, B * HKV * N, D, kh, NULL);
    if (st == CLATTN_SUCCESS)
        st = clattn_kv_quantize_host(CLATTN_KV_F16, CLATTN_KV_VALUES, v, B * HKV * N, D, vh, NULL);
    clattn_tensor rk = clattn_tensor_host(kh, CLATTN_F32, B, HKV, N, D);
    clattn_tensor rv = clattn_tensor_host(vh, CLATTN_F32, B, HKV, N, D);
    clattn_options opt;
    clattn_options_init(&opt);
    opt.causal = CLATTN_CAUSAL_BOTTOM_RIGHT; /* what opt == NULL means for the cache */
    if (st == CLATTN_SUCCESS) st = clattn_reference_attention(&tq, &rk, &rv, &opt, ref, NULL);
    if (st != CLATTN_SUCCESS) {
        worker_fail(w, "thread %d, kv: reference: %s", w->id, clattn_status_string(st));
        return;
    }
    w->calls++;
    for (size_t i = 0; i < sizeof o / sizeof o[0]; i++) {
        const double tol = 2e-4 + 2e-3 * fabs(ref[i]); /* SPEC §1, f32 output */
        if (!(fabs((double)o[i] - ref[i]) <= tol)) {
            worker_fail(w, "thread %d, kv: o[%zu] = %.7g, reference %.7g", w->id, i,
                        (double)o[i], ref[i]);
            return;
        }
    }
}

static void *worker_main(void *arg)
{
    worker *w = arg;
    clattn_context *ctx = NULL;
    /* Wait for every thread before creating the context, so that all of them look into
     * the empty cache folder, miss, build and store at about the same time. */
    pthread_barrier_wait(w->start);
    clattn_status st = clattn_context_create(NULL, &ctx);
    if (st != CLATTN_SUCCESS) {
        worker_fail(w, "thread %d: clattn_context_create: %s", w->id, clattn_status_string(st));
        return NULL;
    }
    for (int round = 0; round < ROUNDS; round++) {
        for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
            run_attention_case(w, ctx, &cases[i]);
        run_kv_case(w, ctx, 1000u * (uint64_t)w->id + (uint64_t)round);
    }
    clattn_context_free(ctx);
    return NULL;
}

/* A file of the program cache must be whole: the 8-byte magic, three 64-bit fields (key,
 * binary size, FNV-1a of the binary) and exactly `size` bytes of binary with that checksum.
 * This is the layout src/core/program_disk.c writes; it is repeated here on purpose, so that a
 * file two threads wrote over each other is caught even though the library would only
 * rebuild it silently. */
static int cache_file_is_whole(const char *path, char *why, size_t whylen)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        snprintf(why, whylen, "cannot open");
        return 0;
    }
    char magic[8];
    uint64_t fields[3];
    int ok = fread(magic, 1, 8, f) == 8 && memcmp(magic, "CLATTNB1", 8) == 0 &&
             fread(fields, sizeof fields[0], 3, f) == 3;
    if (!ok) {
        snprintf(why, whylen, "bad header");
        fclose(f);
        return 0;
    }
    uint64_t h = 0xcbf29ce484222325ull, n = 0;
    int ch;
    while ((ch = fgetc(f)) != EOF) {
        h = (h ^ (uint64_t)(unsigned char)ch) * 0x100000001b3ull;
        n++;
    }
    fclose(f);
    if (n != fields[1]) {
        snprintf(why, whylen, "%llu bytes of binary, header says %llu", (unsigned long long)n,
                 (unsigned long long)fields[1]);
        return 0;
    }
    if (h != fields[2]) {
        snprintf(why, whylen, "checksum mismatch");
        return 0;
    }
    return 1;
}

/* Check every file of the cache folder, then remove them and the folder. Returns the
 * number of program files found; a damaged or leftover file fails the test. */
static int check_and_remove_cache(const char *dir)
{
    DIR *dp = opendir(dir);
    assert_non_null(dp);
    int programs = 0, bad = 0;
    char first_bad[1400] = "";
    struct dirent *e;
    while ((e = readdir(dp)) != NULL) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
        char path[1100], why[128];
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        const size_t len = strlen(e->d_name);
        if (len > 4 && strcmp(e->d_name + len - 4, ".bin") == 0) {
            if (cache_file_is_whole(path, why, sizeof why)) programs++;
            else if (bad++ == 0) snprintf(first_bad, sizeof first_bad, "%s: %s", path, why);
        } else if (bad++ == 0) {
            snprintf(first_bad, sizeof first_bad, "%s: left behind (not a program file)", path);
        }
        remove(path);
    }
    closedir(dp);
    rmdir(dir);
    if (bad)
        fail_msg("%d damaged or stray file(s) in the shared program cache after concurrent "
                 "stores; first: %s", bad, first_bad);
    return programs;
}

/* After the threads, every program they built must be in the cache, whole: a new
 * context running the same calls builds nothing. The library's log (CLATTN_PARAM_LOG, to
 * stderr) says "building" for each program it had to compile; stderr is sent to a file
 * for the duration. A lost or damaged store (two threads writing one temporary file, a
 * reader removing a half-written one) shows up here as a rebuild. */
static void expect_every_program_cached(void)
{
    char path[] = "/tmp/clattn-threads-log-XXXXXX";
    const int fd = mkstemp(path);
    assert_true(fd >= 0);
    fflush(stderr);
    const int saved = dup(2);
    assert_true(saved >= 0);
    assert_true(dup2(fd, 2) >= 0);

    worker w;
    memset(&w, 0, sizeof w);
    w.id = NTHREADS; /* the main thread, after the others */
    clattn_context *ctx = NULL;
    clattn_status st = clattn_context_create(NULL, &ctx);
    if (st == CLATTN_SUCCESS) st = clattn_context_set_param(ctx, CLATTN_PARAM_LOG, 1);
    if (st == CLATTN_SUCCESS) {
        for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
            run_attention_case(&w, ctx, &cases[i]);
        run_kv_case(&w, ctx, 77);
    }
    clattn_context_free(ctx);

    fflush(stderr);
    dup2(saved, 2);
    close(saved);
    close(fd);
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    char line[2048], first[2048] = "";
    int builds = 0, hits = 0;
    while (fgets(line, sizeof line, f)) {
        if (strstr(line, "program cache hit")) hits++;
        if (strstr(line, "clattn: building ") || strstr(line, "damaged or stale")) {
            if (builds++ == 0) snprintf(first, sizeof first, "%s", line);
        }
    }
    fclose(f);
    remove(path);
    assert_int_equal(st, CLATTN_SUCCESS);
    if (w.failures) fail_msg("%s", w.msg);
    if (builds)
        fail_msg("%d program(s) had to be built again after the threads stored them (%d cache "
                 "hits); first: %s", builds, hits, first);
    assert_true(hits > 0); /* the log is read: a silent log would make this check empty */
}

static void test_contexts_on_threads_share_the_disk_cache_and_match_reference(void **state)
{
    (void)state;
    /* The library reads the environment from every thread; set it once, before any thread
     * starts, to a fresh folder so that the threads race on building and storing. */
    char dir[] = "/tmp/clattn-threads-XXXXXX";
    assert_non_null(mkdtemp(dir));
    assert_int_equal(setenv("CLATTN_CACHE_DIR", dir, 1), 0);

    /* The device list is built once per process; make sure a device exists first so a
     * machine without one fails here with the reason. */
    clattn_context_free(test_context());

    pthread_barrier_t start;
    assert_int_equal(pthread_barrier_init(&start, NULL, NTHREADS), 0);
    worker w[NTHREADS];
    pthread_t th[NTHREADS];
    memset(w, 0, sizeof w);
    for (int i = 0; i < NTHREADS; i++) {
        w[i].id = i;
        w[i].start = &start;
        assert_int_equal(pthread_create(&th[i], NULL, worker_main, &w[i]), 0);
    }
    for (int i = 0; i < NTHREADS; i++) assert_int_equal(pthread_join(th[i], NULL), 0);
    pthread_barrier_destroy(&start);

    int failures = 0;
    const int expected = ROUNDS * (int)(sizeof cases / sizeof cases[0] + 1);
    for (int i = 0; i < NTHREADS; i++) {
        if (w[i].failures) print_error("%s (%d failure(s) on this thread)\n", w[i].msg, w[i].failures);
        else if (w[i].calls != expected)
            print_error("thread %d compared %d calls, expected %d\n", i, w[i].calls, expected);
        failures += w[i].failures + (w[i].calls != expected && !w[i].failures);
    }
    if (failures) {
        check_and_remove_cache(dir);
        fail_msg("%d failure(s) over %d threads", failures, NTHREADS);
    }
    expect_every_program_cached();
    const int programs = check_and_remove_cache(dir);
    /* Every thread built the same programs; at least one of each must have been stored. */
    assert_true(programs > 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_contexts_on_threads_share_the_disk_cache_and_match_reference),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
