/* The data of one backward case for the device tests (test_backward, test_rusticl): an
 * attn_case's inputs, O and LSE from the float64 forward reference (rounded to their
 * storage, so no forward kernel is built), a random dO, and gradients to check against
 * the float64 backward reference. Tolerances: see check_backward in the .c file. */
#ifndef CLATTN_TEST_BACKWARD_UTIL_H
#define CLATTN_TEST_BACKWARD_UTIL_H

#include "test_util.h"

typedef struct bwd_data {
    attn_case c;
    attn_case_data *d;
    clattn_tensor q, k, v, o, lse, d_o, dq, dk, dv, dmask;
    clattn_options opt;
    void *do_buf, *dq_buf, *dk_buf, *dv_buf;
    float *dmask_buf;
    int64_t nq, nk, nv, no, nm;
} bwd_data;

/* Build b for case c0 (with the float mask's gradient when with_dmask). */
void bwd_data_make(const attn_case *c0, int with_dmask, bwd_data *b);
void bwd_data_free(bwd_data *b);
/* Bytes of n gradient elements of dtype dt. */
size_t grad_bytes(int64_t n, clattn_dtype dt);
/* clattn_attention_backward on b's tensors. */
clattn_status run_backward(clattn_context *ctx, bwd_data *b);
/* Run it and compare with the reference; prints failures, returns the failing count. */
int check_backward(clattn_context *ctx, bwd_data *b);
/* check_backward on each of n cases (with the float mask's gradient when with_dmask);
 * returns how many differ. */
int check_backward_cases(clattn_context *ctx, const attn_case *cases, size_t n, int with_dmask);

#endif
