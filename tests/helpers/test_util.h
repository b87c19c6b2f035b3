/* Helpers shared by the cmocka tests: a context on the default device that fails the test
 * loudly when there is no OpenCL device (CI must fail, not skip), and runners that check a
 * list of attention cases against the CPU reference and print each failing case. */
#ifndef CLATTN_TEST_UTIL_H
#define CLATTN_TEST_UTIL_H

#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "support/attn_case.h"
#include "clattn.h"

/* A context on the default device (CLATTN_DEVICE, else the first GPU, else the first
 * device). Fails the running test, with the reason, when none can be created. */
clattn_context *test_context(void);

/* One context shared by every test of a file (created on first use, through test_context,
 * so a missing device fails the test); pass test_shared_context_teardown as the group
 * teardown to free it. Sharing keeps each kernel build to once per file. */
clattn_context *test_shared_context(void);
int test_shared_context_teardown(void **state);

enum {
    TEST_ALLOW_UNSUPPORTED = 1, /* a forced path answering PATH_UNSUPPORTED is a skip */
    TEST_ON_DEVICE = 2,         /* pass cl_mem tensors (attn_case_data_upload) */
    TEST_ON_DEVICE_PACKED = 4   /* cl_mem tensors in one buffer at byte offsets
                                   (attn_case_data_upload_packed) */
};

/* Run every case with path forced (AUTO: the library's choice) and compare it with the
 * reference. Every failing case is printed with its parameters and result; the test fails
 * after all of them ran. Returns the number of cases that ran (not skipped). */
size_t test_run_cases(clattn_context *ctx, const attn_case *cases, size_t n,
                      clattn_path path, int flags);

/* The same for count random cases drawn from seeds first_seed, first_seed + 1, ... */
size_t test_run_random_cases(clattn_context *ctx, uint64_t first_seed, size_t count,
                             clattn_path path, int flags);

/* Create case c's data (a failure fails the test) and give its tensors and options. */
attn_case_data *test_case_prepare(const attn_case *c, clattn_tensor *q, clattn_tensor *k,
                                  clattn_tensor *v, clattn_tensor *o, clattn_options *opt);

/* Run case c through device group g and compare with the reference: 0 on a match, 1 on
 * a failure (printed with the case). *by_keys (may be NULL) gets how the call was split. */
int test_group_check_case(clattn_group *g, const attn_case *c, int *by_keys);

/* Compare a case's output with the reference; on a mismatch, false with the case's
 * result (its errors and where) in why. A failing comparison itself fails the test. */
bool test_case_matches(const attn_case *c, attn_case_data *d, char *why, size_t len);

/* CLATTN_TEST_CASES from the environment when set (to run more or fewer random cases),
 * else dflt. */
size_t test_case_count(size_t dflt);

#endif /* CLATTN_TEST_UTIL_H */
