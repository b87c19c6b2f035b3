/* The comparison of an attention case's outputs with the float64 CPU reference: normalised
 * errors, NaNs, fully masked rows and clobbered padding (see attn_case_compare). */
#include "support/attn_case_internal.h"

#include "core/common.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Mark the bytes t's elements occupy in used[] (indexed from the allocation start). */
static void mark_elements(const clattn_tensor *t, unsigned char *used)
{
    const size_t es = clattn_dtype_size(t->dtype);
    for (int64_t a = 0; a < t->ne[0]; a++)
        for (int64_t b = 0; b < t->ne[1]; b++)
            for (int64_t i = 0; i < t->ne[2]; i++)
                for (int64_t j = 0; j < t->ne[3]; j++) {
                    size_t off = t->offset + (size_t)(a * t->nb[0] + b * t->nb[1] +
                                                      i * t->nb[2] + j * t->nb[3]);
                    memset(used + off, 1, es);
                }
}

/* Bytes of an output allocation outside its elements that lost the 0xff sentinel. */
static int64_t clobbered_bytes(const attn_case_data *d, int which, size_t *first)
{
    unsigned char *used = calloc(d->buf[which].bytes, 1);
    if (!used) return -1;
    mark_elements(&d->buf[which].t, used);
    int64_t n = 0;
    for (size_t i = 0; i < d->buf[which].bytes; i++)
        if (!used[i] && d->buf[which].host[i] != 0xff) {
            if (n == 0) *first = i;
            n++;
        }
    free(used);
    return n;
}

static clattn_status read_back(attn_case_data *d, int which)
{
    if (!d->buf[which].present || !d->buf[which].mem) return CLATTN_SUCCESS;
    cl_int err = clEnqueueReadBuffer(d->queue, d->buf[which].mem, CL_TRUE, d->buf[which].mem_off,
                                     d->buf[which].bytes, d->buf[which].host, 0, NULL, NULL);
    return err == CL_SUCCESS ? CLATTN_SUCCESS : (clattn_status)err;
}

#define NOTE(...) \
    do { \
        if (r->msg[0] == '\0') snprintf(r->msg, sizeof r->msg, __VA_ARGS__); \
    } while (0)

clattn_status attn_case_compare(const attn_case *c, attn_case_data *d, attn_case_result *r)
{
    if (!c || !d || !r) return CLATTN_ERROR_INVALID_ARGUMENT;
    memset(r, 0, sizeof *r);
    CLATTN_FORWARD(read_back(d, ATTN_BUF_O));
    CLATTN_FORWARD(read_back(d, ATTN_BUF_LSE));

    const int64_t B = c->B, Hq = c->Hq, Lq = c->Lq, Dv = attn_case_dv(c);
    const size_t rows = (size_t)(B * Hq * Lq);
    double *ref = malloc((rows * (size_t)Dv + 1) * sizeof *ref);
    double *ref_lse = malloc((rows + 1) * sizeof *ref_lse);
    if (!ref || !ref_lse) {
        free(ref);
        free(ref_lse);
        return CLATTN_ERROR_OUT_OF_MEMORY;
    }
    /* The reference reads the host copies, which are the exact inputs the device got. */
    clattn_options opt;
    attn_case__options_for(c, d, 0, &opt);
    clattn_status st =
        clattn_reference_attention(&d->buf[ATTN_BUF_Q].t, &d->buf[ATTN_BUF_K].t,
                                   &d->buf[ATTN_BUF_V].t, &opt, ref, ref_lse);
    if (st != CLATTN_SUCCESS) {
        free(ref);
        free(ref_lse);
        return st;
    }

    switch (c->out_dtype) {
    case CLATTN_F16: r->atol = 3e-3, r->rtol = 3e-3; break;
    case CLATTN_BF16: r->atol = 3e-3, r->rtol = 1e-2; break;
    default: r->atol = 2e-4, r->rtol = 2e-3; break;
    }

    const clattn_tensor *o = &d->buf[ATTN_BUF_O].t;
    const clattn_tensor *lse = c->lse ? &d->buf[ATTN_BUF_LSE].t : NULL;
    r->lse_checked = lse != NULL;
    for (int64_t b = 0; b < B; b++)
        for (int64_t h = 0; h < Hq; h++)
            for (int64_t i = 0; i < Lq; i++) {
                const int64_t row = (b * Hq + h) * Lq + i;
                const int masked = ref_lse[row] == -INFINITY;
                r->masked_rows += masked;
                for (int64_t e = 0; e < Dv; e++) {
                    const double got = clattn__host_get(o, b, h, i, e);
                    const double want = ref[row * Dv + e];
                    if (isnan(got)) {
                        NOTE("O[%lld,%lld,%lld,%lld] is NaN (reference %.6g)", (long long)b,
                             (long long)h, (long long)i, (long long)e, want);
                        r->nan_count++;
                        continue;
                    }
                    if (masked) {
                        if (got != 0.0) {
                            NOTE("fully masked row O[%lld,%lld,%lld,:] has %.6g at %lld, not 0",
                                 (long long)b, (long long)h, (long long)i, got, (long long)e);
                            r->masked_nonzero++;
                        }
                        continue;
                    }
                    const double err = fabs(got - want) / (r->atol + r->rtol * fabs(want));
                    if (err > r->max_err) {
                        r->max_err = err;
                        r->worst[0] = b, r->worst[1] = h, r->worst[2] = i, r->worst[3] = e;
                        r->worst_got = got;
                        r->worst_ref = want;
                    }
                }
                if (!lse) continue;
                const double got = clattn__host_get(lse, b, h, i, 0);
                const double want = ref_lse[row];
                double err;
                if (isnan(got)) {
                    NOTE("LSE[%lld,%lld,%lld] is NaN (reference %.6g)", (long long)b,
                         (long long)h, (long long)i, want);
                    r->nan_count++;
                    continue;
                }
                if (want == -INFINITY || got == -INFINITY)
                    err = got == want ? 0.0 : INFINITY;
                else
                    err = fabs(got - want) / (1e-3 + 1e-4 * fabs(want));
                if (err > r->lse_max_err) {
                    r->lse_max_err = err;
                    r->lse_worst[0] = b, r->lse_worst[1] = h, r->lse_worst[2] = i;
                    r->lse_worst_got = got;
                    r->lse_worst_ref = want;
                }
            }
    free(ref);
    free(ref_lse);

    static const int outs[2] = {ATTN_BUF_O, ATTN_BUF_LSE};
    for (int k = 0; k < 2; k++) {
        if (!d->buf[outs[k]].present) continue;
        size_t first = 0;
        int64_t n = clobbered_bytes(d, outs[k], &first);
        if (n < 0) return CLATTN_ERROR_OUT_OF_MEMORY;
        if (n > 0)
            NOTE("%lld padding bytes of %s changed (first at byte %zu)", (long long)n,
                 k == 0 ? "O" : "LSE", first);
        r->padding_clobbered += n;
    }

    if (r->max_err > 1.0)
        NOTE("O[%lld,%lld,%lld,%lld] = %.8g, reference %.8g (error %.3g x tolerance)",
             (long long)r->worst[0], (long long)r->worst[1], (long long)r->worst[2],
             (long long)r->worst[3], r->worst_got, r->worst_ref, r->max_err);
    if (r->lse_max_err > 1.0)
        NOTE("LSE[%lld,%lld,%lld] = %.8g, reference %.8g (error %.3g x tolerance)",
             (long long)r->lse_worst[0], (long long)r->lse_worst[1], (long long)r->lse_worst[2],
             r->lse_worst_got, r->lse_worst_ref, r->lse_max_err);
    r->ok = r->max_err <= 1.0 && r->lse_max_err <= 1.0 && r->nan_count == 0 &&
            r->masked_nonzero == 0 && r->padding_clobbered == 0;
    return CLATTN_SUCCESS;
}

int attn_case_result_format(const attn_case_result *r, char *buf, size_t n)
{
    char lse[96];
    if (r->lse_checked)
        snprintf(lse, sizeof lse, " lse_err=%.3g at [%lld,%lld,%lld]", r->lse_max_err,
                 (long long)r->lse_worst[0], (long long)r->lse_worst[1],
                 (long long)r->lse_worst[2]);
    else
        lse[0] = '\0';
    return snprintf(buf, n,
                    "%s: err=%.3g at [%lld,%lld,%lld,%lld] (got %.8g, ref %.8g; tol %.0e+%.0e|ref|)"
                    "%s nan=%lld masked_rows=%lld masked_nonzero=%lld padding_clobbered=%lld%s%s",
                    r->ok ? "ok" : "FAIL", r->max_err, (long long)r->worst[0],
                    (long long)r->worst[1], (long long)r->worst[2], (long long)r->worst[3],
                    r->worst_got, r->worst_ref, r->atol, r->rtol, lse, (long long)r->nan_count,
                    (long long)r->masked_rows, (long long)r->masked_nonzero,
                    (long long)r->padding_clobbered, r->msg[0] ? ": " : "", r->msg);
}
