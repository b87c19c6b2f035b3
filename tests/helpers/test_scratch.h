/* A scratch folder per test program and the files the CLI tests put in it: created in
 * the group setup, removed with everything in it in the group teardown. */
#ifndef CLATTN_TEST_SCRATCH_H
#define CLATTN_TEST_SCRATCH_H

#include "clattn.h"
#include "test_exe.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Create $TMPDIR/clattn-TAG-XXXXXX (or under /tmp); 0 on success. */
int test_scratch_create(const char *tag);
/* Remove the folder and the files in it; always 0, for a cmocka teardown. */
int test_scratch_remove(void **state);
const char *test_scratch_dir(void);
/* The path of `name` in the folder; 16 rotating buffers, so one call can build
 * several paths. */
const char *test_scratch_path(const char *name);
/* How many files in the folder are temporaries (".tmp." in their name). */
int test_scratch_tmp_files(void);

bool test_file_exists(const char *path);
/* Write an .npy file in the folder, stored as dtype from data of the same dtype; a
 * failure fails the test. */
void test_save_npy(const char *name, clattn_dtype dtype, int rank, const int64_t *shape,
                   const void *data);
void test_save_bytes(const char *name, const void *bytes, size_t len);

/* Deterministic values in [-1, 1) from a 32-bit LCG. */
float test_lcg_value(uint32_t *state);

/* [B, H, L, X] <-> [B, L, H, X]: to_blhd true goes from BHLD to BLHD. */
void test_swap_hl(const float *src, float *dst, int b, int h, int l, int x, bool to_blhd);

/* Run clattn in the folder and require a clean failure: exit 1 or 2 (not a crash),
 * exactly one stderr line starting "clattn" and containing needle, neither out nor lse
 * (each may be NULL; removed first) on disk afterwards, and no temporary file. */
void test_expect_cli_failure(const char *needle, const char *out, const char *lse,
                             const char *const *args, int line);

#define ARGS(...) ((const char *const[]){__VA_ARGS__, NULL})

#endif
