/* --context-parallel on the command line, in any build: a build without MPI refuses it
 * with a message naming -DCLATTN_WITH_MPI=ON (run and bench); an MPI build refuses an
 * unknown scheme and the options it does not combine with. Nothing is computed and no
 * output file is left. (Runs under mpirun are tests/mpi/.) */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "test_exe.h"

#define ARGS(...) ((const char *const[]){__VA_ARGS__, NULL})

static char dir[256];

static const char *path_in(const char *name)
{
    static char buf[4][512];
    static int k;
    k = (k + 1) % 4;
    snprintf(buf[k], sizeof buf[k], "%s/%s", dir, name);
    return buf[k];
}

static void expect_usage_error(const char *needle, const char *const *args)
{
    test_exe_result r;
    test_run_clattn(dir, &r, args);
    if (r.status != 2 || !strstr(r.err, needle) || strchr(r.err, '\n') != r.err + strlen(r.err) - 1)
        fail_msg("status %d, stderr \"%s\" (want exit 2 and one line with \"%s\")", r.status, r.err, needle);
    struct stat st;
    if (stat(path_in("o.npy"), &st) == 0) fail_msg("o.npy was left behind");
}

static void test_context_parallel_is_refused_clearly_when_it_cannot_run(void **state)
{
    (void)state;
    const char *q = path_in("q.npy"), *o = path_in("o.npy");
#if CLATTN_WITH_MPI
    expect_usage_error("expected ring, zigzag or ulysses",
                       ARGS("run", "--q", q, "--k", q, "--v", q, "--out", o, "--context-parallel", "tree"));
    expect_usage_error("does not combine with --kv-quant",
                       ARGS("run", "--q", q, "--k", q, "--v", q, "--out", o, "--kv-quant", "int8",
                            "--context-parallel", "ring"));
    expect_usage_error("does not combine with --varlen",
                       ARGS("run", "--q", q, "--k", q, "--v", q, "--out", o, "--varlen", q,
                            "--context-parallel", "zigzag"));
    expect_usage_error("expected ring, zigzag or ulysses",
                       ARGS("bench", "--context-parallel", "star", "--shape", "1,1,1,8,8,8"));
#else
    expect_usage_error("built without MPI",
                       ARGS("run", "--q", q, "--k", q, "--v", q, "--out", o, "--context-parallel", "ring"));
    expect_usage_error("-DCLATTN_WITH_MPI=ON",
                       ARGS("bench", "--context-parallel", "zigzag", "--shape", "1,1,1,8,8,8"));
#endif
}

int main(void)
{
    const char *base = getenv("TMPDIR");
    snprintf(dir, sizeof dir, "%s/clattn-cpcli-XXXXXX", base && *base ? base : "/tmp");
    if (!mkdtemp(dir)) return 1;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_context_parallel_is_refused_clearly_when_it_cannot_run),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    rmdir(dir);
    return rc;
}
