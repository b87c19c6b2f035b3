/* --context-parallel for `clattn run` and `clattn bench` (cp_case.h). Rank 0 reads the
 * .npy files, broadcasts the shapes and the option tensors, scatters each rank's slices
 * of Q, K and V (clattn_cp_slices), every rank computes through libclattn_mpi, and rank
 * 0 gathers O and LSE into the output a single-process run writes. */
#include "cp_case.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/resource.h>

#include "support/attn_case.h"
#include "cli_util.h"

#if CLATTN_WITH_MPI
#include "clattn_mpi.h"

int cp_check_args(const char *cmd, const char *scheme, bool kv_quant, bool varlen, bool backward)
{
    clattn_cp_scheme s;
    if (clattn_cp_scheme_from_name(scheme, &s) != CLATTN_SUCCESS) {
        cli_error(cmd, "--context-parallel %s: expected ring, zigzag or ulysses", scheme);
        return -1;
    }
    if (kv_quant || varlen || backward) {
        cli_error(cmd, "--context-parallel does not combine with %s",
                  kv_quant ? "--kv-quant" : varlen ? "--varlen" : "--grad-out");
        return -1;
    }
    return 0;
}

/* Whether this program started MPI (and so finalizes it). */
static bool cp_we_init;

static bool mpi_begin(int *rank, int *n, bool *we_init)
{
    int inited = 0;
    MPI_Initialized(&inited);
    *we_init = !inited || cp_we_init;
    if (!inited) {
        cp_we_init = true;
        int provided;
        if (MPI_Init_thread(NULL, NULL, MPI_THREAD_FUNNELED, &provided) != MPI_SUCCESS) return false;
    }
    MPI_Comm_rank(MPI_COMM_WORLD, rank);
    MPI_Comm_size(MPI_COMM_WORLD, n);
    return true;
}

/* Every rank's verdict: the exit status, the same everywhere. */
static int mpi_end(bool ok, bool we_init)
{
    int mine = ok ? 1 : 0, all = 0;
    MPI_Allreduce(&mine, &all, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
    if (we_init) MPI_Finalize();
    return all ? CLI_EXIT_OK : CLI_EXIT_FAILURE;
}

/* Rows `rank` holds of a [B, H, L, W] tensor, dense BHLD in t's dtype, appended at dst.
 * Returns the bytes written. */
static size_t pack_rows(const clattn_tensor *t, clattn_cp_scheme s, int rank, int n, unsigned char *dst)
{
    int64_t st[2], ln[2];
    int ns;
    clattn_cp_slices(s, t->ne[2], rank, n, st, ln, &ns);
    const size_t es = clattn_dtype_size(t->dtype);
    unsigned char *p = dst;
    for (int64_t a = 0; a < t->ne[0]; a++)
        for (int64_t b = 0; b < t->ne[1]; b++)
            for (int x = 0; x < ns; x++)
                for (int64_t i = st[x]; i < st[x] + ln[x]; i++)
                    for (int64_t d = 0; d < t->ne[3]; d++, p += es)
                        memcpy(p, (const unsigned char *)t->host + t->offset + a * t->nb[0] + b * t->nb[1] +
                                      i * t->nb[2] + d * t->nb[3], es);
    return (size_t)(p - dst);
}

static int64_t local_len(clattn_cp_scheme s, int64_t L, int rank, int n)
{
    int64_t st[2], ln[2];
    int ns;
    clattn_cp_slices(s, L, rank, n, st, ln, &ns);
    return ln[0] + ln[1];
}

/* Rank 0 scatters each rank's rows of t (dense, dtype dt); returns this rank's buffer. */
static unsigned char *scatter_rows(const clattn_tensor *t, clattn_cp_scheme s, int rank, int n,
                                   const int64_t *ne, clattn_dtype dt)
{
    const size_t es = clattn_dtype_size(dt), row = (size_t)ne[3] * es;
    int *counts = calloc((size_t)n, sizeof *counts), *displs = calloc((size_t)n, sizeof *displs);
    if (!counts || !displs) { /* a few ints: a machine this short of memory stops the run */
        fprintf(stderr, "clattn run: out of memory\n");
        MPI_Abort(MPI_COMM_WORLD, 1);
    }
    size_t total = 0;
    for (int r = 0; r < n; r++) {
        displs[r] = (int)total;
        counts[r] = (int)((size_t)(ne[0] * ne[1] * local_len(s, ne[2], r, n)) * row);
        total += (size_t)counts[r];
    }
    unsigned char *all = NULL, *mine = malloc((size_t)counts[rank] + 1);
    if (rank == 0) {
        all = malloc(total + 1);
        for (int r = 0; r < n && all; r++) pack_rows(t, s, r, n, all + displs[r]);
    }
    /* every rank must have its buffers before any enters the collective */
    int ok = mine && (rank != 0 || all), every = 0;
    MPI_Allreduce(&ok, &every, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
    if (every)
        MPI_Scatterv(all, counts, displs, MPI_BYTE, mine, counts[rank], MPI_BYTE, 0, MPI_COMM_WORLD);
    free(all), free(counts), free(displs);
    if (!every) {
        free(mine);
        return NULL; /* the same on every rank */
    }
    return mine;
}

int cp_begin(void)
{
    int rank, n;
    bool we_init;
    if (!mpi_begin(&rank, &n, &we_init)) {
        cli_error("run", "--context-parallel: MPI_Init failed");
        return -1;
    }
    return rank;
}

int cp_run_command(const run_args *a, const char *scheme_name, const char *device, bool loaded,
                   cp_io *io)
{
    const char *CMD = "run";
    clattn_cp_scheme scheme;
    clattn_cp_scheme_from_name(scheme_name, &scheme);
    int rank, n;
    bool we_init;
    if (!mpi_begin(&rank, &n, &we_init)) return CLI_EXIT_FAILURE; /* cp_begin said why */
    /* rank 0 read the files; the others learn whether that worked */
    int ok = loaded;
    MPI_Bcast(&ok, 1, MPI_INT, 0, MPI_COMM_WORLD);
    if (!ok) return mpi_end(false, we_init);

    /* shapes, dtypes and which option tensors exist */
    int64_t h[24] = {0};
    if (rank == 0) {
        const clattn_options *o = io->opt;
        const int64_t v[] = {io->q->ne[0], io->q->ne[1], io->k->ne[1], io->q->ne[2], io->k->ne[2],
                             io->q->ne[3], io->v->ne[3], io->q->dtype, io->k->dtype, io->v->dtype,
                             o->mask != NULL, o->mask ? o->mask->dtype : 0,
                             o->mask ? o->mask->ne[0] : 0, o->mask ? o->mask->ne[1] : 0,
                             o->mask ? o->mask->ne[2] : 0, o->mask ? o->mask->ne[3] : 0,
                             o->kv_lens != NULL, o->alibi != NULL, o->lse != NULL};
        memcpy(h, v, sizeof v);
    }
    MPI_Bcast(h, 24, MPI_INT64_T, 0, MPI_COMM_WORLD);
    const int64_t B = h[0], Hq = h[1], Hkv = h[2], Lq = h[3], Lk = h[4], D = h[5], Dv = h[6];
    const clattn_dtype qd = (clattn_dtype)h[7], kd = (clattn_dtype)h[8], vd = (clattn_dtype)h[9];
    /* the option tensors, whole on every rank (they are the whole problem's) */
    clattn_options opt = a->opt;
    clattn_tensor tm, tkl, tal, tl;
    void *mbuf = NULL, *klbuf = NULL, *albuf = NULL;
    const size_t mbytes = h[10] ? (size_t)(h[12] * h[13] * h[14] * h[15]) * clattn_dtype_size((clattn_dtype)h[11]) : 0;
    mbuf = h[10] ? malloc(mbytes + 1) : NULL;
    klbuf = h[16] ? malloc((size_t)B * 4 + 4) : NULL;
    albuf = h[17] ? malloc((size_t)Hq * 4 + 4) : NULL;
    int have = (!h[10] || mbuf) && (!h[16] || klbuf) && (!h[17] || albuf), every = 0;
    MPI_Allreduce(&have, &every, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
    if (!every) { /* the same on every rank: nobody enters a broadcast */
        if (rank == 0) cli_error(CMD, "out of memory for the option tensors on some rank");
        free(mbuf), free(klbuf), free(albuf);
        return mpi_end(false, we_init);
    }
    if (h[10]) {
        if (rank == 0) memcpy(mbuf, (const unsigned char *)io->opt->mask->host + io->opt->mask->offset, mbytes);
        MPI_Bcast(mbuf, (int)mbytes, MPI_BYTE, 0, MPI_COMM_WORLD);
        tm = clattn_tensor_host(mbuf, (clattn_dtype)h[11], h[12], h[13], h[14], h[15]);
        opt.mask = &tm;
    }
    if (h[16]) {
        if (rank == 0) memcpy(klbuf, io->opt->kv_lens->host, (size_t)B * 4);
        MPI_Bcast(klbuf, (int)B, MPI_INT32_T, 0, MPI_COMM_WORLD);
        tkl = clattn_tensor_host(klbuf, CLATTN_I32, B, 1, 1, 1);
        opt.kv_lens = &tkl;
    }
    if (h[17]) {
        if (rank == 0) memcpy(albuf, io->opt->alibi->host, (size_t)Hq * 4);
        MPI_Bcast(albuf, (int)Hq, MPI_FLOAT, 0, MPI_COMM_WORLD);
        tal = clattn_tensor_host(albuf, CLATTN_F32, Hq, 1, 1, 1);
        opt.alibi = &tal;
    }
    /* each rank's slices */
    const int64_t qne[4] = {B, Hq, Lq, D}, kne[4] = {B, Hkv, Lk, D}, vne[4] = {B, Hkv, Lk, Dv};
    /* a rank without memory makes all of them give up (NULL everywhere): the call then
     * fails validation on every rank, with the reason below */
    unsigned char *ql = scatter_rows(io->q, scheme, rank, n, qne, qd);
    unsigned char *kl = ql ? scatter_rows(io->k, scheme, rank, n, kne, kd) : NULL;
    unsigned char *vl = kl ? scatter_rows(io->v, scheme, rank, n, vne, vd) : NULL;
    if (!vl && rank == 0) cli_error(CMD, "out of memory scattering the inputs on some rank");
    const int64_t lq = local_len(scheme, Lq, rank, n), lk = local_len(scheme, Lk, rank, n);
    float *ol = malloc((size_t)(B * Hq * lq * Dv) * 4 + 4), *ll = malloc((size_t)(B * Hq * lq) * 4 + 4);
    clattn_tensor tq = clattn_tensor_host(ql, qd, B, Hq, lq, D), tk = clattn_tensor_host(kl, kd, B, Hkv, lk, D),
                  tv = clattn_tensor_host(vl, vd, B, Hkv, lk, Dv), to = clattn_tensor_host(ol, CLATTN_F32, B, Hq, lq, Dv);
    tl = clattn_tensor_host(ll, CLATTN_F32, B, Hq, lq, 1);
    opt.lse = &tl;

    clattn_context *ctx = NULL;
    clattn_status st = clattn_context_create(device, &ctx);
    char why[1200] = "";
    if (st != CLATTN_SUCCESS)
        snprintf(why, sizeof why, "rank %d: cannot create an OpenCL context on %s: %s", rank,
                 device ? device : "the default device", clattn_status_string(st));
    /* a rank without a context still takes part, with a call that fails validation */
    clattn_mpi_stats stats;
    clattn_status cst = clattn_mpi_attention(ctx, MPI_COMM_WORLD, scheme, &tq, &tk, &tv, &to, Lq, Lk, &opt, &stats);
    if (st == CLATTN_SUCCESS && cst != CLATTN_SUCCESS)
        snprintf(why, sizeof why, "%s: %s", clattn_status_string(cst), clattn_mpi_last_error());
    st = st != CLATTN_SUCCESS ? st : cst;
    if (st != CLATTN_SUCCESS && rank == 0) cli_error(CMD, "context-parallel attention failed: %s", why);

    /* rank 0 gathers O and LSE into the whole outputs */
    bool good = st == CLATTN_SUCCESS;
    if (good) {
        int *oc = calloc((size_t)n, sizeof *oc), *od = calloc((size_t)n, sizeof *od);
        int *lc = calloc((size_t)n, sizeof *lc), *ld = calloc((size_t)n, sizeof *ld);
        int64_t to_rows = 0;
        for (int r = 0; r < n; r++) {
            const int64_t l = local_len(scheme, Lq, r, n);
            od[r] = (int)(to_rows * Dv);
            oc[r] = (int)(B * Hq * l * Dv);
            ld[r] = (int)to_rows;
            lc[r] = (int)(B * Hq * l);
            to_rows += B * Hq * l;
        }
        float *oa = rank == 0 ? malloc((size_t)(to_rows * Dv) * 4 + 4) : NULL;
        float *la = rank == 0 ? malloc((size_t)to_rows * 4 + 4) : NULL;
        int gather_ok = rank != 0 || (oa && la);
        MPI_Bcast(&gather_ok, 1, MPI_INT, 0, MPI_COMM_WORLD);
        if (gather_ok) {
            MPI_Gatherv(ol, oc[rank], MPI_FLOAT, oa, oc, od, MPI_FLOAT, 0, MPI_COMM_WORLD);
            MPI_Gatherv(ll, lc[rank], MPI_FLOAT, la, lc, ld, MPI_FLOAT, 0, MPI_COMM_WORLD);
        } else {
            cli_error(CMD, "out of memory gathering the output on rank 0");
            good = false;
        }
        if (rank == 0 && gather_ok) {
            const clattn_tensor *O = io->o, *LSE = io->opt->lse;
            for (int r = 0; r < n; r++) {
                int64_t s0[2], sl[2];
                int ns;
                clattn_cp_slices(scheme, Lq, r, n, s0, sl, &ns);
                const int64_t l = sl[0] + sl[1];
                const float *src = oa + od[r], *lsrc = la + ld[r];
                for (int64_t b = 0; b < B; b++)
                    for (int64_t hh = 0; hh < Hq; hh++)
                        for (int x = 0, li = 0; x < ns; x++)
                            for (int64_t i = 0; i < sl[x]; i++, li++) {
                                const int64_t gi = s0[x] + i, row = (b * Hq + hh) * l + li;
                                unsigned char *dst = (unsigned char *)O->host + O->offset + b * O->nb[0] +
                                                     hh * O->nb[1] + gi * O->nb[2];
                                for (int64_t d = 0; d < Dv; d++) memcpy(dst + d * O->nb[3], src + row * Dv + d, 4);
                                if (LSE)
                                    memcpy((unsigned char *)LSE->host + LSE->offset + b * LSE->nb[0] +
                                               hh * LSE->nb[1] + gi * LSE->nb[2],
                                           lsrc + row, 4);
                            }
            }
            good = io->write(io->state) == 0;
            if (good) {
                clattn_device_props p;
                if (clattn_context_device_props(ctx, &p) != CLATTN_SUCCESS) snprintf(p.name, sizeof p.name, "?");
                printf("clattn run: wrote %s%s%s with context parallelism %s over %d ranks on %s (rank 0)\n",
                       io->out_name, io->opt->lse ? " and the LSE" : "", "", scheme_name, n, p.name);
            }
        }
        free(oa), free(la), free(oc), free(od), free(lc), free(ld);
    }
    clattn_context_free(ctx);
    free(mbuf), free(klbuf), free(albuf), free(ql), free(kl), free(vl), free(ol), free(ll);
    return mpi_end(good, we_init);
}

/* ---- bench ---------------------------------------------------------------------- */

/* CPU time of this process (every thread: a CPU device's workers too), seconds. With more
 * ranks than cores a rank's wall-clock compute includes waiting for a core; its CPU time
 * is the work it did. */
static double cpu_s(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + 1e-6 * (double)ru.ru_utime.tv_usec + (double)ru.ru_stime.tv_sec +
           1e-6 * (double)ru.ru_stime.tv_usec;
}

static int cmp_d(const void *x, const void *y)
{
    const double a = *(const double *)x, b = *(const double *)y;
    return a < b ? -1 : a > b;
}

/* The (query, key) pairs a rank computes, left by causal masking: the work the scheme
 * gives it, independent of how busy the machine is. */
static double rank_pairs(clattn_cp_scheme s, int64_t Lq, int64_t Lk, clattn_causal causal, int rank, int n)
{
    if (s == CLATTN_CP_ULYSSES) { /* whole sequences for 1/n of the heads */
        double all = 0;
        for (int64_t i = 0; i < Lq; i++) {
            const int64_t lim = causal == CLATTN_CAUSAL_NONE ? Lk - 1
                                : causal == CLATTN_CAUSAL_TOP_LEFT ? i : i + Lk - Lq;
            all += (double)(lim < 0 ? 0 : lim >= Lk ? Lk : lim + 1);
        }
        return all / n;
    }
    int64_t qs[2], ql[2];
    int nq;
    clattn_cp_slices(s, Lq, rank, n, qs, ql, &nq);
    double pairs = 0;
    for (int a = 0; a < nq; a++)
        for (int64_t i = qs[a]; i < qs[a] + ql[a]; i++) {
            const int64_t lim = causal == CLATTN_CAUSAL_NONE ? Lk - 1
                                : causal == CLATTN_CAUSAL_TOP_LEFT ? i : i + Lk - Lq;
            pairs += (double)(lim < 0 ? 0 : lim >= Lk ? Lk : lim + 1);
        }
    return pairs;
}

int cp_bench_command(const bench_args *o)
{
    const char *CMD = "bench";
    clattn_cp_scheme scheme;
    if (!o->have_shape) {
        cli_error(CMD, "--context-parallel needs --shape B,Hq,Hkv,Lq,Lk,D[,Dv]");
        return CLI_EXIT_USAGE;
    }
    clattn_cp_scheme_from_name(o->context_parallel, &scheme);
    int rank, n;
    bool we_init;
    if (!mpi_begin(&rank, &n, &we_init)) {
        cli_error(CMD, "--context-parallel: MPI_Init failed");
        return CLI_EXIT_FAILURE;
    }
    const attn_case *c = &o->spec.c;
    const int64_t B = c->B, Hq = c->Hq, Hkv = c->Hkv, Lq = c->Lq, Lk = c->Lk, D = c->D, Dv = attn_case_dv(c);
    const int64_t lq = local_len(scheme, Lq, rank, n), lk = local_len(scheme, Lk, rank, n);
    const clattn_dtype dt = c->dtype;
    const size_t es = clattn_dtype_size(dt);
    unsigned char *q = malloc((size_t)(B * Hq * lq * D) * es + 1), *k = malloc((size_t)(B * Hkv * lk * D) * es + 1),
                  *v = malloc((size_t)(B * Hkv * lk * Dv) * es + 1);
    float *out = malloc((size_t)(B * Hq * lq * Dv) * 4 + 4);
    bool ok = q && k && v && out;
    /* random data in [-1, 1) (as halves' bit patterns for 16-bit types: small values) */
    uint64_t x = 0x9e3779b97f4a7c15ULL * (uint64_t)(rank + 1);
    unsigned char *bufs[3] = {q, k, v};
    const size_t sizes[3] = {(size_t)(B * Hq * lq * D), (size_t)(B * Hkv * lk * D), (size_t)(B * Hkv * lk * Dv)};
    for (int bi = 0; ok && bi < 3; bi++)
        for (size_t i = 0; i < sizes[bi]; i++) {
            x = x * 6364136223846793005ULL + 1442695040888963407ULL;
            const float f = (float)((double)(x >> 11) / 9007199254740992.0 * 2 - 1);
            if (dt == CLATTN_F32) memcpy(bufs[bi] + i * 4, &f, 4);
            else {
                uint32_t u;
                memcpy(&u, &f, 4);
                const uint16_t hv = dt == CLATTN_BF16 ? (uint16_t)(u >> 16) : (uint16_t)(0x3000u | (x >> 54));
                memcpy(bufs[bi] + i * 2, &hv, 2);
            }
        }
    clattn_context *ctx = NULL;
    if (ok && clattn_context_create(o->device, &ctx) != CLATTN_SUCCESS) ok = false;
    clattn_tensor tq = clattn_tensor_host(q, dt, B, Hq, lq, D), tk = clattn_tensor_host(k, dt, B, Hkv, lk, D),
                  tv = clattn_tensor_host(v, dt, B, Hkv, lk, Dv), to = clattn_tensor_host(out, CLATTN_F32, B, Hq, lq, Dv);
    clattn_options opt;
    clattn_options_init(&opt);
    opt.causal = c->causal;
    const long runs = o->runs > 0 ? o->runs : 3, warmup = o->warmup >= 0 ? o->warmup : 1;
    double *tot = calloc((size_t)runs, 8), *cmp = calloc((size_t)runs, 8), *com = calloc((size_t)runs, 8),
           *wt = calloc((size_t)runs, 8), *sy = calloc((size_t)runs, 8), *cpu = calloc((size_t)runs, 8);
    clattn_status st = CLATTN_SUCCESS;
    int steps = 0;
    int64_t sent = 0;
    /* every rank runs the same number of collective calls, even without a context */
    for (long r = -warmup; r < runs; r++) {
        clattn_mpi_stats s;
        const double c0 = cpu_s();
        clattn_status rs = clattn_mpi_attention(ok ? ctx : NULL, MPI_COMM_WORLD, scheme, &tq, &tk, &tv, &to, Lq, Lk,
                                                &opt, &s);
        if (rs != CLATTN_SUCCESS) {
            st = rs;
            break; /* the status is agreed: every rank leaves here */
        }
        if (r >= 0)
            tot[r] = s.total_s, cmp[r] = s.compute_s, com[r] = s.comm_s, wt[r] = s.wait_s, sy[r] = s.sync_s,
            cpu[r] = cpu_s() - c0;
        steps = s.steps;
        sent = s.bytes_sent;
    }
    bool good = st == CLATTN_SUCCESS;
    if (!good && rank == 0) cli_error(CMD, "context-parallel attention failed: %s: %s", clattn_status_string(st), clattn_mpi_last_error());
    if (good) {
        /* medians per rank, gathered on rank 0 */
        double med[8];
        double *arrs[6] = {tot, cmp, com, wt, sy, cpu};
        for (int i = 0; i < 6; i++) {
            qsort(arrs[i], (size_t)runs, 8, cmp_d);
            med[i] = arrs[i][runs / 2];
        }
        med[7] = med[5]; /* CPU time */
        med[5] = (double)sent;
        med[6] = rank_pairs(scheme, Lq, Lk, c->causal, rank, n) * (double)(B * Hq) * 2.0 * (double)(D + Dv) / 1e9;
        double *all = rank == 0 ? malloc((size_t)n * sizeof med) : NULL;
        MPI_Gather(med, 8, MPI_DOUBLE, all, 8, MPI_DOUBLE, 0, MPI_COMM_WORLD);
        if (rank == 0) {
            clattn_device_props p;
            clattn_context_device_props(ctx, &p);
            printf("clattn bench --context-parallel %s: B=%lld Hq=%lld Hkv=%lld Lq=%lld Lk=%lld D=%lld Dv=%lld %s "
                   "causal=%s, %d ranks x %d steps on %s; medians of %ld runs\n",
                   o->context_parallel, (long long)B, (long long)Hq, (long long)Hkv, (long long)Lq, (long long)Lk,
                   (long long)D, (long long)Dv, clattn_dtype_name(dt),
                   c->causal == CLATTN_CAUSAL_NONE ? "none" : c->causal == CLATTN_CAUSAL_TOP_LEFT ? "top-left" : "bottom-right",
                   n, steps, p.name, runs);
            printf("%4s %10s %10s %10s %10s %10s %7s %8s %10s %8s %8s\n", "rank", "total_ms", "compute_ms", "comm_ms",
                   "wait_ms", "sync_ms", "wait%", "overlap", "sent_MiB", "GFLOP", "cpu_ms");
            double sum_c = 0, max_c = 0, sum_w = 0, max_w = 0, sum_u = 0, max_u = 0;
            FILE *jf = o->json ? fopen(o->json, "a") : NULL;
            for (int r = 0; r < n; r++) {
                const double *m = all + r * 8;
                double overlap = m[2] > 0 ? 1.0 - m[3] / m[2] : 1.0;
                if (overlap < 0.0) overlap = 0.0; /* wait and transfer are the same clock's */
                printf("%4d %10.2f %10.2f %10.2f %10.2f %10.2f %6.1f%% %7.1f%% %10.2f %8.3f %8.1f\n", r, m[0] * 1e3,
                       m[1] * 1e3, m[2] * 1e3, m[3] * 1e3, m[4] * 1e3, 100.0 * m[3] / m[0], 100.0 * overlap,
                       m[5] / 1048576.0, m[6], m[7] * 1e3);
                if (jf)
                    fprintf(jf,
                            "{\"context_parallel\": \"%s\", \"ranks\": %d, \"rank\": %d, \"device\": \"%s\", "
                            "\"shape\": {\"B\": %lld, \"Hq\": %lld, \"Hkv\": %lld, \"Lq\": %lld, \"Lk\": %lld, \"D\": %lld, "
                            "\"Dv\": %lld}, \"causal\": %d, \"dtype\": \"%s\", \"runs\": %ld, \"total_ms\": %.4f, "
                            "\"compute_ms\": %.4f, \"comm_ms\": %.4f, \"wait_ms\": %.4f, \"sync_ms\": %.4f, "
                            "\"overlap\": %.4f, \"bytes_sent\": %.0f, \"gflop\": %.6f, \"cpu_ms\": %.4f}\n",
                            o->context_parallel, n, r, p.name, (long long)B, (long long)Hq, (long long)Hkv, (long long)Lq,
                            (long long)Lk, (long long)D, (long long)Dv, (int)c->causal, clattn_dtype_name(dt), runs,
                            m[0] * 1e3, m[1] * 1e3, m[2] * 1e3, m[3] * 1e3, m[4] * 1e3, overlap, m[5], m[6], m[7] * 1e3);
                sum_c += m[1], sum_w += m[6], sum_u += m[7];
                if (m[7] > max_u) max_u = m[7];
                if (m[1] > max_c) max_c = m[1];
                if (m[6] > max_w) max_w = m[6];
            }
            if (jf) fclose(jf);
            printf("slowest rank's compute / mean: %.3f; largest rank's work (GFLOP) / mean: %.3f; "
                   "largest CPU time / mean: %.3f\n",
                   max_c / (sum_c / n), max_w / (sum_w / n), max_u / (sum_u / n));
        }
        free(all);
    }
    clattn_context_free(ctx);
    free(q), free(k), free(v), free(out), free(tot), free(cmp), free(com), free(wt), free(sy), free(cpu);
    return mpi_end(good, we_init);
}

#else /* no MPI in this build: the option is refused, and these are never reached */

static int refuse(const char *cmd)
{
    cli_error(cmd, "--context-parallel: this clattn was built without MPI (configure with "
                   "-DCLATTN_WITH_MPI=ON, then run under mpirun)");
    return -1;
}

int cp_check_args(const char *cmd, const char *scheme, bool kv_quant, bool varlen, bool backward)
{
    (void)scheme, (void)kv_quant, (void)varlen, (void)backward;
    return refuse(cmd);
}

int cp_begin(void) { return refuse("run"); }

int cp_run_command(const run_args *a, const char *scheme, const char *device, bool loaded,
                   cp_io *io)
{
    (void)a, (void)scheme, (void)device, (void)loaded, (void)io;
    refuse("run");
    return CLI_EXIT_USAGE;
}

int cp_bench_command(const bench_args *o)
{
    (void)o;
    refuse("bench");
    return CLI_EXIT_USAGE;
}
#endif
