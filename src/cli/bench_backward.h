/* `clattn bench --backward`: timing clattn_attention_backward on a case whose data is
 * already on the device, next to the forward figures. */
#ifndef CLATTN_BENCH_BACKWARD_H
#define CLATTN_BENCH_BACKWARD_H

#include "support/attn_case.h"
#include "clattn.h"

#include <stdbool.h>
#include <stddef.h>

typedef struct bench_backward_result {
    double median, min, max; /* ms */
    long runs;
    uint64_t device_bytes;   /* peak device memory the backward call allocated */
} bench_backward_result;

/* d must be uploaded (attn_case_data_upload) and have run the forward pass with LSE
 * (c->lse set), so O and LSE are the device's. dO is random, the gradients are f32
 * cl_mem buffers. warmup calls (at least one: kernel builds), then runs timed calls
 * (0: as many as fit in about 3 s, 3 to 30), each ended by clFinish. */
clattn_status bench_backward_measure(clattn_context *ctx, const attn_case *c, attn_case_data *d,
                                     long runs, long warmup, bench_backward_result *r);

/* Does the backward pass on ctx give the float64 reference's gradients (within 1e-2 of
 * each tensor's largest value) for case c? d holds c's host data, the forward pass with
 * LSE already run on it. The gradients are f32 host arrays; dO is random. On a
 * mismatch or failure, why says what happened. For clattn tune: c->path should be
 * fused, so a failing candidate is not hidden by the unfused fallback. */
bool bench_backward_check(clattn_context *ctx, const attn_case *c, attn_case_data *d, char *why,
                          size_t whylen);

#endif
