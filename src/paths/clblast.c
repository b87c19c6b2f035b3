/* The CLBlast path: QKᵀ and P·V as CLBlast batched GEMMs, with the unfused path's own
 * scale + mask and softmax kernels between them, so every SPEC §1 rule is applied by the
 * same code as there. It exists for devices where a tuned BLAS beats clattn's kernels, and
 * as the fallback between the fused and the unfused paths. Compiled only with CLBlast. */
#if CLATTN_WITH_CLBLAST

#include "core/program.h"
#include "core/faults.h"
#include "core/kernel_args.h"
#include "paths/path.h"

#include <clblast_c.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* Work is split into chunks of query rows so the float32 score buffer stays within
 * ctx->workspace_bytes: whole (b, h) pairs when a pair's Lq x Lk scores fit, else blocks
 * of queries inside one pair. Either way a chunk is a contiguous range of the flattened
 * rows of [B, Hq, Lq], which is what the scale + mask and softmax kernels take.
 *
 * CLBlast reads float32 matrices with a unit stride along one of their two dimensions.
 * A tensor in f16/bf16, or laid out with no usable unit stride (e.g. stride 2 along D), is
 * copied to dense float32 by cl/convert.cl: K and V whole, once per call (their float32
 * size in extra device memory, checked against the largest allocation); Q and O one chunk
 * at a time, through row buffers counted in the workspace bound. Half-precision GEMMs
 * (CLBlastHgemm*) are not used: the scores would be rounded to half before the softmax,
 * beyond SPEC §1's tolerance for long rows, and SPEC §1 says arithmetic is float32. */

/* ---- Matrix forms ------------------------------------------------------------------ */
/* Is a rows x cols matrix with element (r, c) at r*rs + c*cs stored row by row (unit
 * stride along columns), and with which leading dimension? A dimension of extent 1 has
 * no stride that matters. */
static bool row_stored(cl_long rows, cl_long cols, cl_long rs, cl_long cs, size_t *ld)
{
    const cl_long l = rows == 1 ? cols : rs;
    if ((cols != 1 && cs != 1) || l < cols || l < 1) return false;
    *ld = (size_t)l;
    return true;
}

static bool col_stored(cl_long rows, cl_long cols, cl_long rs, cl_long cs, size_t *ld)
{
    return row_stored(cols, rows, cs, rs, ld);
}

/* The transpose flag and leading dimension that make CLBlast read the matrix in layout. */
static bool operand_form(CLBlastLayout layout, cl_long rows, cl_long cols, cl_long rs, cl_long cs,
                         CLBlastTranspose *t, size_t *ld)
{
    const bool rm = layout == CLBlastLayoutRowMajor;
    if (rm ? row_stored(rows, cols, rs, cs, ld) : col_stored(rows, cols, rs, cs, ld)) {
        *t = CLBlastTransposeNo;
        return true;
    }
    if (rm ? col_stored(rows, cols, rs, cs, ld) : row_stored(rows, cols, rs, cs, ld)) {
        *t = CLBlastTransposeYes;
        return true;
    }
    return false;
}

static bool any_form(cl_long rows, cl_long cols, cl_long rs, cl_long cs)
{
    size_t ld;
    return row_stored(rows, cols, rs, cs, &ld) || col_stored(rows, cols, rs, cs, &ld);
}

/* Element strides as staging computes them (0 along extents of 1). */
static void elem_strides(const clattn_tensor *t, cl_long st[4])
{
    const cl_long es = (cl_long)clattn_dtype_size(t->dtype);
    for (int i = 0; i < 4; i++) st[i] = t->ne[i] == 1 ? 0 : t->nb[i] / es;
}

/* ---- The plan of one problem ------------------------------------------------------- */
typedef struct clblast_plan {
    bool gather_q, gather_k, gather_v; /* read through dense float32 copies */
    bool scatter_o;                    /* P·V into float32 rows, then copied into O */
    CLBlastLayout pv_layout;           /* row-major, or column-major when O is stored so */
    cl_long ldS;                       /* leading dimension of the score buffer */
    cl_long row_bytes;                 /* workspace per query row of a chunk */
    bool sizes_ok;                     /* row_bytes did not overflow (Lk may be any size
                                          with stride-0, broadcast K and V views) */
} clblast_plan;

static void make_plan(const clattn__problem *p, clblast_plan *pl)
{
    cl_long qs[4], ks[4], vs[4], os[4];
    elem_strides(p->q, qs);
    elem_strides(p->k, ks);
    elem_strides(p->v, vs);
    elem_strides(p->o, os);
    memset(pl, 0, sizeof *pl);
    pl->gather_q = p->q->dtype != CLATTN_F32 || !any_form(p->Lq, p->D, qs[2], qs[3]);
    /* with no keys the GEMMs are skipped and K, V are never read */
    pl->gather_k = p->Lk > 0 && (p->k->dtype != CLATTN_F32 || !any_form(p->Lk, p->D, ks[2], ks[3]));
    pl->gather_v = p->Lk > 0 && (p->v->dtype != CLATTN_F32 || !any_form(p->Lk, p->Dv, vs[2], vs[3]));
    size_t ld;
    pl->pv_layout = CLBlastLayoutRowMajor;
    if (p->o->dtype != CLATTN_F32 || p->Lk == 0) {
        pl->scatter_o = true; /* with no keys O is zeros, written by the scatter */
    } else if (!row_stored(p->Lq, p->Dv, os[2], os[3], &ld)) {
        if (col_stored(p->Lq, p->Dv, os[2], os[3], &ld))
            pl->pv_layout = CLBlastLayoutColMajor;
        else
            pl->scatter_o = true;
    }
    pl->ldS = p->Lk > 0 ? p->Lk : 1;
    /* D and Dv are at most 256 each */
    pl->sizes_ok = pl->ldS <= INT64_MAX - 512 &&
                   clattn__mul_ok(pl->ldS + (pl->gather_q ? p->D : 0) + (pl->scatter_o ? p->Dv : 0),
                                  (int64_t)sizeof(float), &pl->row_bytes);
}

/* CLBlast's kernels index buffers with 32-bit ints: every element it addresses must sit
 * below INT_MAX, or its offsets would wrap. */
static bool int_addressable(const clattn_tensor *t)
{
    size_t span = 0;
    clattn__tensor_span(t, &span);
    return (t->offset + span) / clattn_dtype_size(t->dtype) <= (size_t)INT_MAX;
}

static bool clblast_supports(const clattn_context *ctx, const clattn__problem *p, const char **why)
{
    clblast_plan pl;
    make_plan(p, &pl);
    /* B x Hkv x Lk keys, as float32 copies of K and V: checked, so a broadcast view's huge
     * extents are refused here instead of wrapping into small sizes below */
    int64_t kv_i = 0, kv_bytes = 0;
    if (!pl.sizes_ok || !clattn__mul_ok(p->B, p->Hkv, &kv_i) || !clattn__mul_ok(kv_i, p->Lk, &kv_i) ||
        !clattn__mul_ok(kv_i, (p->D > p->Dv ? p->D : p->Dv) * (int64_t)sizeof(float), &kv_bytes)) {
        *why = "Lk scores per row, or B x Hkv x Lk keys, overflow 64-bit sizes";
        return false;
    }
    if (pl.row_bytes > ctx->workspace_bytes) {
        *why = "one row of Lk scores exceeds the workspace bound";
        return false;
    }
    const uint64_t max = clattn__alloc_cap(ctx);
    const uint64_t kv = (uint64_t)kv_i;
    if ((pl.gather_k && kv * (uint64_t)p->D * sizeof(float) > max) ||
        (pl.gather_v && kv * (uint64_t)p->Dv * sizeof(float) > max)) {
        *why = "a float32 copy of K or V (f16/bf16, or no unit stride) exceeds the device's "
               "largest allocation";
        return false;
    }
    if ((!pl.gather_q && !int_addressable(p->q)) || (!pl.gather_k && !int_addressable(p->k)) ||
        (!pl.gather_v && !int_addressable(p->v)) || (!pl.scatter_o && !int_addressable(p->o)) ||
        kv * (uint64_t)(p->D > p->Dv ? p->D : p->Dv) > (uint64_t)INT_MAX) {
        *why = "a tensor spans more than 2^31 elements, past CLBlast's 32-bit indexing";
        return false;
    }
    return true;
}

/* ---- CLBlast calls ----------------------------------------------------------------- */
static const char *clblast_code_name(CLBlastStatusCode s)
{
    switch (s) {
    case CLBlastNotImplemented: return "CLBlastNotImplemented";
    case CLBlastInvalidMatrixA: return "CLBlastInvalidMatrixA";
    case CLBlastInvalidMatrixB: return "CLBlastInvalidMatrixB";
    case CLBlastInvalidMatrixC: return "CLBlastInvalidMatrixC";
    case CLBlastInvalidDimension: return "CLBlastInvalidDimension";
    case CLBlastInvalidLeadDimA: return "CLBlastInvalidLeadDimA";
    case CLBlastInvalidLeadDimB: return "CLBlastInvalidLeadDimB";
    case CLBlastInvalidLeadDimC: return "CLBlastInvalidLeadDimC";
    case CLBlastInsufficientMemoryA: return "CLBlastInsufficientMemoryA";
    case CLBlastInsufficientMemoryB: return "CLBlastInsufficientMemoryB";
    case CLBlastInsufficientMemoryC: return "CLBlastInsufficientMemoryC";
    case CLBlastInsufficientMemoryTemp: return "CLBlastInsufficientMemoryTemp";
    case CLBlastInvalidBatchCount: return "CLBlastInvalidBatchCount";
    case CLBlastInvalidLocalMemUsage: return "CLBlastInvalidLocalMemUsage";
    case CLBlastNoHalfPrecision: return "CLBlastNoHalfPrecision";
    case CLBlastDatabaseError: return "CLBlastDatabaseError";
    case CLBlastUnknownError: return "CLBlastUnknownError";
    case CLBlastUnexpectedError: return "CLBlastUnexpectedError";
    default: return clattn_status_string((int)s); /* OpenCL's codes, or "unknown" */
    }
}

/* A CLBlast failure as a clattn status, with a message naming the routine. OpenCL codes
 * pass through (a compile failure becomes BUILD_FAILED as for clattn's own kernels);
 * CLBlast's own codes (-1024..-1007, -2050..-2039) map to the nearest clattn status. */
static clattn_status clblast_fail(clattn_context *ctx, CLBlastStatusCode s, const char *routine)
{
    clattn_status st;
    switch (s) {
    case CLBlastOpenCLCompilerNotAvailable:
    case CLBlastOpenCLBuildProgramFailure:
    case CLBlastInvalidBinary:
    case CLBlastInvalidBuildOptions:
    case CLBlastInvalidProgram:
    case CLBlastInvalidProgramExecutable: st = CLATTN_ERROR_BUILD_FAILED; break;
    case CLBlastInsufficientMemoryTemp: st = CLATTN_ERROR_OUT_OF_MEMORY; break;
    case CLBlastNotImplemented:
    case CLBlastInvalidLocalMemUsage:
    case CLBlastNoHalfPrecision: st = CLATTN_ERROR_PATH_UNSUPPORTED; break;
    default:
        if ((s >= -1024 && s <= -1007) || (s >= -2050 && s <= -2039))
            st = CLATTN_ERROR_INTERNAL;
        else
            st = (clattn_status)s;
    }
    return clattn__fail(ctx, st, "%s on %s failed: %s (CLBlast status %d)", routine,
                        ctx->props.name, clblast_code_name(s), (int)s);
}

enum { WARM_STRIDED = 1, WARM_BATCHED = 2 };

static double seconds_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* CLBlast compiles a routine's kernels on its first call for a cl_context (seconds; a
 * minute or more cold on a busy CPU device). Do it once per context and routine with a
 * 1x1x1 product, so a compiler failure shows as this path's build failure, the cost is
 * logged, and no real call pays it. Only the routines a problem uses are warmed. */
static clattn_status clblast_warm(clattn_context *ctx, unsigned which)
{
    if (ctx->clblast_warm & which) return CLATTN_SUCCESS;
    const char *routine = which == WARM_STRIDED ? "CLBlastSgemmStridedBatched" : "CLBlastSgemmBatched";
    if (clattn__fault_check(ctx, CLATTN__FAULT_BUILD) != CL_SUCCESS)
        return clattn__fail(ctx, CLATTN_ERROR_BUILD_FAILED, "compiling %s's kernels failed: injected fault",
                            routine);
    if (clattn__fail_injected(ctx, CLATTN__FAIL_BUILD))
        return clattn__fail(ctx, CLATTN_ERROR_BUILD_FAILED,
                            "compiling %s's kernels failed: CLATTN_FAIL_PATH asks path %s to fail",
                            routine, clattn_path_name(clattn__running_path(ctx)));
    clattn__log(ctx, "CLBlast: compiling %s's kernels for %s (once per context)", routine,
                ctx->props.name);
    const float zeros[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    cl_mem buf;
    CLATTN_FORWARD(clattn__buffer_create_copy(ctx, sizeof zeros, zeros, &buf));
    const double t0 = seconds_now();
    CLBlastStatusCode s = (CLBlastStatusCode)clattn__fault_check(ctx, CLATTN__FAULT_ENQUEUE);
    if (s != CLBlastSuccess) {
        /* an injected enqueue failure: as if CLBlast's first launch failed */
    } else if (which == WARM_STRIDED) {
        s = CLBlastSgemmStridedBatched(CLBlastLayoutRowMajor, CLBlastTransposeNo,
                                       CLBlastTransposeNo, 1, 1, 1, 1.0f, buf, 0, 1, 1, buf, 1,
                                       1, 1, 0.0f, buf, 2, 1, 1, 1, &ctx->queue, NULL);
    } else {
        const size_t ao = 0, bo = 1, co = 2;
        const float alpha = 1.0f, beta = 0.0f;
        s = CLBlastSgemmBatched(CLBlastLayoutRowMajor, CLBlastTransposeNo, CLBlastTransposeNo,
                                1, 1, 1, &alpha, buf, &ao, 1, buf, &bo, 1, &beta, buf, &co, 1, 1,
                                &ctx->queue, NULL);
    }
    /* released while the product may still be queued: OpenCL keeps it until done */
    clattn__buffer_release(ctx, buf);
    if (s != CLBlastSuccess) return clblast_fail(ctx, s, routine);
    ctx->clblast_warm |= which;
    clattn__log(ctx, "CLBlast: %s ready after %.1f s", routine, seconds_now() - t0);
    return CLATTN_SUCCESS;
}

/* Do the offsets step by one non-negative stride? One entry gets stride 1: CLBlast
 * rejects a zero C stride (InvalidDimension), and with one entry the stride is unused. */
static bool even_steps(const size_t *offs, size_t count, size_t *stride)
{
    *stride = 1;
    if (count < 2) return true;
    if (offs[1] < offs[0]) return false;
    *stride = offs[1] - offs[0];
    for (size_t e = 2; e < count; e++)
        if (offs[e] < offs[e - 1] || offs[e] - offs[e - 1] != *stride) return false;
    return true;
}

/* One GEMM operand over a batch: a buffer, each entry's element offset, and how the
 * matrix is stored (rows x cols, element strides). */
typedef struct gemm_operand {
    cl_mem mem;
    size_t *offs;
    cl_long rows, cols, rs, cs;
} gemm_operand;

/* C_e = A_e · B_e for every entry e < count (alpha 1, beta 0: C is only written).
 * CLBlastSgemmStridedBatched when every operand's offsets step evenly (dense BHLD,
 * MHA); CLBlastSgemmBatched with per-entry offsets otherwise (GQA's shared KV heads,
 * chunks across batches of a layout whose batch stride is not Hq head strides). */
static clattn_status gemm(clattn_context *ctx, CLBlastLayout layout, const gemm_operand *a,
                          const gemm_operand *b, const gemm_operand *c, size_t count,
                          float *alphas, float *betas, cl_event *event)
{
    const size_t m = (size_t)a->rows, k = (size_t)a->cols, n = (size_t)b->cols;
    CLBlastTranspose ta, tb, tc;
    size_t lda, ldb, ldc;
    const bool ok = operand_form(layout, a->rows, a->cols, a->rs, a->cs, &ta, &lda) &&
                    operand_form(layout, b->rows, b->cols, b->rs, b->cs, &tb, &ldb) &&
                    operand_form(layout, c->rows, c->cols, c->rs, c->cs, &tc, &ldc) &&
                    tc == CLBlastTransposeNo;
    CLATTN_RETURN_IF(ctx, !ok, CLATTN_ERROR_INTERNAL,
                     "clblast: an operand's layout does not fit the planned GEMM form");
    size_t sa, sb, sc;
    const bool strided = even_steps(a->offs, count, &sa) && even_steps(b->offs, count, &sb) &&
                         even_steps(c->offs, count, &sc) && sc > 0;
    CLATTN_FORWARD(clblast_warm(ctx, strided ? WARM_STRIDED : WARM_BATCHED));
    cl_int err = clattn__fault_check(ctx, CLATTN__FAULT_ENQUEUE);
    if (err == CL_SUCCESS && clattn__fail_injected(ctx, CLATTN__FAIL_LAUNCH)) err = CL_OUT_OF_RESOURCES;
    if (err != CL_SUCCESS)
        return clattn__fail(ctx, (clattn_status)err, "launching %s on %s failed: %s",
                            strided ? "CLBlastSgemmStridedBatched" : "CLBlastSgemmBatched",
                            ctx->props.name, clattn_status_string(err));
    CLBlastStatusCode s;
    if (strided) {
        s = CLBlastSgemmStridedBatched(layout, ta, tb, m, n, k, 1.0f, a->mem, a->offs[0], lda,
                                       sa, b->mem, b->offs[0], ldb, sb, 0.0f, c->mem,
                                       c->offs[0], ldc, sc, count, &ctx->queue, event);
    } else {
        for (size_t e = 0; e < count; e++) {
            alphas[e] = 1.0f;
            betas[e] = 0.0f;
        }
        s = CLBlastSgemmBatched(layout, ta, tb, m, n, k, alphas, a->mem, a->offs, lda, b->mem,
                                b->offs, ldb, betas, c->mem, c->offs, ldc, count, &ctx->queue,
                                event);
    }
    if (s != CLBlastSuccess)
        return clblast_fail(ctx, s, strided ? "CLBlastSgemmStridedBatched" : "CLBlastSgemmBatched");
    return CLATTN_SUCCESS;
}

/* ---- Copies through cl/convert.cl -------------------------------------------------- */
/* Rows [row0, row0 + nrows) of a [*, H, L, X] tensor to or from dense float32 rows. */
static clattn_status convert_rows(clattn_context *ctx, cl_kernel k, bool gather,
                                  const clattn__dev_tensor *t, cl_mem dense, cl_long ld,
                                  cl_long row0, cl_long nrows, cl_long H, cl_long L, cl_long X,
                                  cl_event *event)
{
    cl_uint a = 0;
    if (gather) {
        CLATTN_FORWARD(clattn__set_tensor_args(ctx, k, &a, t));
        CLATTN_FORWARD(CLATTN_ARG(ctx, k, &a, dense));
        CLATTN_FORWARD(CLATTN_ARG(ctx, k, &a, ld));
    } else {
        CLATTN_FORWARD(CLATTN_ARG(ctx, k, &a, dense));
        CLATTN_FORWARD(CLATTN_ARG(ctx, k, &a, ld));
        CLATTN_FORWARD(clattn__set_tensor_args(ctx, k, &a, t));
    }
    CLATTN_FORWARD(CLATTN_ARG(ctx, k, &a, row0));
    CLATTN_FORWARD(CLATTN_ARG(ctx, k, &a, nrows));
    CLATTN_FORWARD(CLATTN_ARG(ctx, k, &a, H));
    CLATTN_FORWARD(CLATTN_ARG(ctx, k, &a, L));
    CLATTN_FORWARD(CLATTN_ARG(ctx, k, &a, X));
    size_t g[2] = {(size_t)X, (size_t)nrows};
    return clattn__enqueue(ctx, k, 2, g, NULL, event);
}

static clattn_status convert_kernel(clattn_context *ctx, bool gather, clattn_dtype dt, cl_kernel *k)
{
    char opts[64];
    snprintf(opts, sizeof opts, "-DIN_DT=%d -DOUT_DT=%d", gather ? (int)dt : 0, gather ? 0 : (int)dt);
    return clattn__kernel_get(ctx, "convert.cl", opts,
                              gather ? "convert_gather_rows" : "convert_scatter_rows", k);
}

/* A whole K or V as a dense float32 copy [B, H, L, X]; *dense describes it. */
static clattn_status gather_whole(clattn_context *ctx, const clattn__dev_tensor *t, cl_long B,
                                  cl_long H, cl_long L, cl_long X, cl_mem *mem,
                                  clattn__dev_tensor *dense)
{
    cl_kernel k;
    CLATTN_FORWARD(convert_kernel(ctx, true, t->dtype, &k));
    CLATTN_FORWARD(clattn__buffer_create(ctx, (size_t)(B * H * L * X) * sizeof(float), mem));
    memset(dense, 0, sizeof *dense);
    dense->mem = *mem;
    dense->dtype = CLATTN_F32;
    dense->st[0] = H * L * X;
    dense->st[1] = L * X;
    dense->st[2] = X;
    dense->st[3] = 1;
    return convert_rows(ctx, k, true, t, *mem, X, 0, B * H * L, H, L, X, NULL);
}

/* ---- The path ---------------------------------------------------------------------- */
static clattn_status clblast_run(clattn_context *ctx, const clattn__dev_problem *dp, cl_event *event)
{
    const clattn__problem *p = dp->p;
    clblast_plan pl;
    make_plan(p, &pl);
    const cl_long pairs = p->B * p->Hq, Hq = p->Hq, Lq = p->Lq, Lk = p->Lk, D = p->D,
                  Dv = p->Dv, group = p->group, ldS = pl.ldS;
    /* rows per chunk: the workspace bound, and CLBlast's 32-bit indexing of the buffers */
    cl_long cap = ctx->workspace_bytes / pl.row_bytes;
    const cl_long widest = ldS > D ? (ldS > Dv ? ldS : Dv) : (D > Dv ? D : Dv);
    if (cap > INT_MAX / widest) cap = INT_MAX / widest;
    CLATTN_RETURN_IF(ctx, cap < 1, CLATTN_ERROR_OUT_OF_MEMORY,
                     "clblast: a row of %lld scores does not fit the %lld-byte workspace",
                     (long long)Lk, (long long)ctx->workspace_bytes);
    /* whole (b, h) pairs per chunk when a pair fits, else query blocks of one pair */
    const cl_long qblock = cap >= Lq ? Lq : cap;
    const cl_long per_chunk = cap >= Lq ? (cap / Lq < pairs ? cap / Lq : pairs) : 1;
    const cl_long chunk_rows = per_chunk * qblock;

    /* Kernels first: the same build options as the unfused path (only what each kernel
     * reads), so the programs are shared with it in the context's cache. */
    clattn__softmax_kernels ksm;
    cl_kernel kq = NULL, ko = NULL;
    CLATTN_FORWARD(clattn__softmax_kernels_get(ctx, dp, &ksm));
    if (pl.gather_q) CLATTN_FORWARD(convert_kernel(ctx, true, p->q->dtype, &kq));
    if (pl.scatter_o) CLATTN_FORWARD(convert_kernel(ctx, false, p->o->dtype, &ko));

    /* Host arrays for the batched calls: offsets of A, B, C, and alphas, betas. */
    const size_t ne = (size_t)per_chunk;
    size_t *offs = malloc(3 * ne * sizeof *offs);
    float *scalars = malloc(2 * ne * sizeof *scalars);
    if (!offs || !scalars) {
        free(offs);
        free(scalars);
        return clattn__fail(ctx, CLATTN_ERROR_OUT_OF_MEMORY, "clblast: out of host memory");
    }

    cl_mem S = NULL, Qs = NULL, Os = NULL, Kd = NULL, Vd = NULL;
    clattn__dev_tensor kt = dp->k, vt = dp->v;
    clattn_status st = clattn__buffer_create(ctx, (size_t)(chunk_rows * ldS) * sizeof(float), &S);
#define TRY(x)                                                                             \
    if (st == CLATTN_SUCCESS) st = (x)
    if (pl.gather_q) TRY(clattn__buffer_create(ctx, (size_t)(chunk_rows * D) * sizeof(float), &Qs));
    if (pl.scatter_o) TRY(clattn__buffer_create(ctx, (size_t)(chunk_rows * Dv) * sizeof(float), &Os));
    if (pl.gather_k) TRY(gather_whole(ctx, &dp->k, p->B, p->Hkv, Lk, D, &Kd, &kt));
    if (pl.gather_v) TRY(gather_whole(ctx, &dp->v, p->B, p->Hkv, Lk, Dv, &Vd, &vt));

    /* O and LSE are written per chunk, and LSE (softmax) before O: unless one chunk
     * without LSE does it all, the caller's cl_mem outputs are shadowed (staging.c). */
    clattn__dev_problem sp;
    clattn__shadow sh;
    memset(&sh, 0, sizeof sh);
    const bool one_chunk = per_chunk >= pairs && qblock >= Lq;
    TRY(clattn__shadow_begin(ctx, dp, !one_chunk || p->lse, &sp, &sh));
    cl_event *last_event = sh.active ? NULL : event;
    const clattn__dev_tensor *q = &dp->q, *o = &sp.o;
    for (cl_long pair0 = 0; pair0 < pairs && st == CLATTN_SUCCESS; pair0 += per_chunk) {
        const cl_long np = pairs - pair0 < per_chunk ? pairs - pair0 : per_chunk;
        for (cl_long i0 = 0; i0 < Lq && st == CLATTN_SUCCESS; i0 += qblock) {
            const cl_long m = Lq - i0 < qblock ? Lq - i0 : qblock;
            const cl_long row0 = pair0 * Lq + i0, n = np * m;
            const bool last = pair0 + np >= pairs && i0 + m >= Lq;
            size_t *ao = offs, *bo = offs + ne, *co = offs + 2 * ne;

            /* S = Q Kᵀ, raw dot products of this chunk's rows */
            if (pl.gather_q) TRY(convert_rows(ctx, kq, true, q, Qs, D, row0, n, Hq, Lq, D, NULL));
            if (Lk > 0) {
                for (cl_long e = 0; e < np; e++) {
                    const cl_long pair = pair0 + e, b = pair / Hq, h = pair - b * Hq;
                    ao[e] = (size_t)(pl.gather_q ? e * m * D
                                                 : q->off + b * q->st[0] + h * q->st[1] + i0 * q->st[2]);
                    bo[e] = (size_t)(kt.off + b * kt.st[0] + (h / group) * kt.st[1]);
                    co[e] = (size_t)(e * m * ldS);
                }
                gemm_operand A = {pl.gather_q ? Qs : q->mem, ao, m, D,
                                  pl.gather_q ? D : q->st[2], pl.gather_q ? 1 : q->st[3]};
                /* Kᵀ: element (d, j) is K[j, d] */
                gemm_operand Bm = {kt.mem, bo, D, Lk, kt.st[3], kt.st[2]};
                gemm_operand C = {S, co, m, Lk, ldS, 1};
                TRY(gemm(ctx, CLBlastLayoutRowMajor, &A, &Bm, &C, (size_t)np, scalars, scalars + ne, NULL));
            }

            /* scale, soft cap, ALiBi, masks; then softmax and LSE: as the unfused path */
            TRY(clattn__softmax_enqueue(ctx, &sp, &ksm, S, ldS, row0, n));

            /* O = P V, into O itself or into float32 rows copied out after */
            if (Lk > 0) {
                for (cl_long e = 0; e < np; e++) {
                    const cl_long pair = pair0 + e, b = pair / Hq, h = pair - b * Hq;
                    ao[e] = (size_t)(e * m * ldS);
                    bo[e] = (size_t)(vt.off + b * vt.st[0] + (h / group) * vt.st[1]);
                    co[e] = (size_t)(pl.scatter_o ? e * m * Dv
                                                  : o->off + b * o->st[0] + h * o->st[1] + i0 * o->st[2]);
                }
                gemm_operand A = {S, ao, m, Lk, ldS, 1};
                gemm_operand Bm = {vt.mem, bo, Lk, Dv, vt.st[2], vt.st[3]};
                gemm_operand C = {pl.scatter_o ? Os : o->mem, co, m, Dv,
                                  pl.scatter_o ? Dv : o->st[2], pl.scatter_o ? 1 : o->st[3]};
                TRY(gemm(ctx, pl.scatter_o ? CLBlastLayoutRowMajor : pl.pv_layout, &A, &Bm, &C,
                         (size_t)np, scalars, scalars + ne, last && !pl.scatter_o ? last_event : NULL));
            } else {
                /* no keys: every row is fully masked and O is zeros */
                const cl_float zero = 0.0f;
                TRY(clattn__enqueue_fill(ctx, Os, &zero, sizeof zero, 0, (size_t)(n * Dv) * sizeof(float)));
            }
            if (pl.scatter_o)
                TRY(convert_rows(ctx, ko, false, o, Os, Dv, row0, n, Hq, Lq, Dv, last ? last_event : NULL));
        }
    }
    TRY(clattn__shadow_commit(ctx, &sh, event));
    clattn__shadow_release(ctx, &sh);
#undef TRY
    /* Releasing buffers while work is queued is safe: OpenCL keeps them until it is done. */
    cl_mem all[] = {S, Qs, Os, Kd, Vd};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) clattn__buffer_release(ctx, all[i]);
    free(offs);
    free(scalars);
    return st;
}

const clattn__path_impl clattn__path_clblast = {CLATTN_PATH_CLBLAST, clblast_supports, clblast_run};

#endif /* CLATTN_WITH_CLBLAST */
