/* `clattn run`'s command line: the usage text, the option table, and the decoding of
 * every option value before any file is read (cmd_run_parse). */
#include "clattn.h"
#include "cli_util.h"
#include "cmd_run.h"
#include "commands.h"
#include "cp_case.h"
#include "kv_case.h"
#include "paged_case.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *const CMD = "run";

void cmd_run_usage(FILE *f)
{
    fprintf(f,
            "usage: clattn run --q Q.npy --k K.npy --v V.npy --out O.npy [options]\n"
            "\n"
            "O = softmax(scale * Q K^T + mask) V on an OpenCL device (SPEC.md section 1).\n"
            "Q [B,Hq,Lq,D], K [B,Hkv,Lk,D], V [B,Hkv,Lk,Dv]: little-endian float32 (<f4) or\n"
            "float16 (<f2), C order; Hq must be a multiple of Hkv. O is [B,Hq,Lq,Dv].\n"
            "\n"
            "  --lse FILE.npy            also write the log-sum-exp [B,Hq,Lq], float32\n"
            "  --mask FILE.npy           bool (true = may attend) or float32 (added to the\n"
            "                            scores), rank 2..4, broadcast to [B,Hq,Lq,Lk]\n"
            "  --causal top-left|bottom-right\n"
            "                            top-left: key j > i excluded (PyTorch is_causal);\n"
            "                            bottom-right: j > i + Lk - Lq (FlashAttention)\n"
            "  --window LEFT,RIGHT       keys outside [i'-LEFT, i'+RIGHT] excluded; -1 =\n"
            "                            unbounded (i' = i + Lk - Lq)\n"
            "  --kv-lens FILE.npy        int32 [B]: keys j >= kv_lens[b] excluded (0..Lk)\n"
            "  --scale X                 score scale (default 1/sqrt(D))\n"
            "  --softcap X               s = X*tanh(s/X) when X > 0 (default 0 = off)\n"
            "  --alibi FILE.npy          float32 [Hq] ALiBi slopes\n"
            "  --layout bhld|blhd        layout of q, k, v and out (default bhld); blhd files\n"
            "                            are [B,L,H,D]; LSE is always [B,Hq,Lq]\n"
            "  --path auto|fused|unfused|clblast|decode   (default auto)\n"
            "  --device SPEC             index from `clattn devices`, a case-insensitive\n"
            "                            substring of the platform/device name, or cpu|gpu\n"
            "  --out-dtype f32|f16       storage type of O (default f32)\n"
            "  --kv-quant FORMAT         none (default), f32, f16, int8, int4, tq4, tq3, tq2: K\n"
            "                            and V go through a KV cache of that format (quantized\n"
            "                            on the device as a cache stores them), then attention;\n"
            "                            with --kv-lens, positions align to each batch entry's\n"
            "                            length, as in a cache; --path is not used\n"
            "  --grad-out dO.npy --dq DQ.npy --dk DK.npy --dv DV.npy\n"
            "                            the backward pass: with dO = dLoss/dO (shaped as O),\n"
            "                            write dLoss/dQ, dK and dV (shaped as q, k, v; in\n"
            "                            --out-dtype); the forward runs first for O and LSE;\n"
            "                            not with --kv-quant\n"
            "  --varlen CU.npy           packed ragged sequences: int32 cu_seqlens [n+1]\n"
            "                            (0, then each sequence's end); Q, K, V and O are\n"
            "                            [1,H,total,D] with sequence s at rows CU[s] ..\n"
            "                            CU[s+1]-1 of both queries and keys, attending only\n"
            "                            within itself (every option per sequence); fused\n"
            "                            path; not with --mask, --kv-lens, --kv-quant or\n"
            "                            --grad-out\n"
            "  --paged-kv PAGE_SIZE[,SEED]\n"
            "                            K and V go into a paged KV pool (pages of PAGE_SIZE\n"
            "                            tokens, a power of two 1..256) in the --kv-quant\n"
            "                            format (none: f32), the pages placed in an order\n"
            "                            shuffled by SEED (default 0: in order); batch entry\n"
            "                            b is a sequence of kv_lens[b] keys (--kv-lens) whose\n"
            "                            queries sit at its end, as in a cache (a --mask\n"
            "                            applies to entry b's rows and keys); not with\n"
            "                            --varlen, --grad-out or int4\n"
            "  --context-parallel ring|zigzag|ulysses\n"
            "                            under mpirun (a build with -DCLATTN_WITH_MPI=ON): rank 0\n"
            "                            reads the files and writes the same output; every rank\n"
            "                            computes its slice of the sequence (see clattn_mpi.h)\n"
            "  -h, --help                this text\n"
            "\n"
            "Options take their value as the next argument or after '=' (--window=-1,0).\n"
            "On success one line on stdout says what was written and which path ran.\n"
            "Exit status: 0 done, 1 the work failed, 2 bad command line.\n");
}

const struct option cmd_run_longopts[] = {
    {"q", required_argument, NULL, OPT_Q},
    {"k", required_argument, NULL, OPT_K},
    {"v", required_argument, NULL, OPT_V},
    {"out", required_argument, NULL, OPT_OUT},
    {"lse", required_argument, NULL, OPT_LSE},
    {"mask", required_argument, NULL, OPT_MASK},
    {"causal", required_argument, NULL, OPT_CAUSAL},
    {"window", required_argument, NULL, OPT_WINDOW},
    {"kv-lens", required_argument, NULL, OPT_KV_LENS},
    {"scale", required_argument, NULL, OPT_SCALE},
    {"softcap", required_argument, NULL, OPT_SOFTCAP},
    {"alibi", required_argument, NULL, OPT_ALIBI},
    {"layout", required_argument, NULL, OPT_LAYOUT},
    {"path", required_argument, NULL, OPT_PATH},
    {"device", required_argument, NULL, OPT_DEVICE},
    {"out-dtype", required_argument, NULL, OPT_OUT_DTYPE},
    {"kv-quant", required_argument, NULL, OPT_KV_QUANT},
    {"grad-out", required_argument, NULL, OPT_GRAD_OUT},
    {"dq", required_argument, NULL, OPT_DQ},
    {"dk", required_argument, NULL, OPT_DK},
    {"dv", required_argument, NULL, OPT_DV},
    {"varlen", required_argument, NULL, OPT_VARLEN},
    {"paged-kv", required_argument, NULL, OPT_PAGED_KV},
    {"context-parallel", required_argument, NULL, OPT_CONTEXT_PARALLEL},
    {"help", no_argument, NULL, 'h'},
    {NULL, 0, NULL, 0},
};
_Static_assert(NOPTS <= CMD_RUN_MAX_OPTS, "run_args.arg holds every option");

/* ---- Option values --------------------------------------------------------------- */

static int parse_options(run_args *a)
{
    char name[64];
    clattn_options_init(&a->opt);
    a->out_dtype = CLATTN_F32;

    if (ARGV_OF(a, OPT_KV_QUANT) && !kv_parse_quant(ARGV_OF(a, OPT_KV_QUANT), &a->kv_quant, &a->kv_format)) {
        cli_error(CMD, "--kv-quant %s: expected none, f32, f16, int8, int4, tq4, tq3 or tq2",
                  ARGV_OF(a, OPT_KV_QUANT));
        return -1;
    }
    static const int required[] = {OPT_Q, OPT_K, OPT_V, OPT_OUT};
    for (size_t i = 0; i < sizeof required / sizeof required[0]; i++)
        if (!ARGV_OF(a, required[i])) {
            cli_error(CMD, "missing %s (see clattn run --help)",
                      cli_option_name(cmd_run_longopts, required[i], name, sizeof name));
            return -1;
        }
    /* An empty value is never meaningful; "--q=" is a typo, not a file. */
    for (int id = OPT_Q; id < OPT_END_; id++)
        if (ARGV_OF(a, id) && ARGV_OF(a, id)[0] == '\0') {
            cli_error(CMD, "%s: empty value", cli_option_name(cmd_run_longopts, id, name, sizeof name));
            return -1;
        }

    const char *v;
    if ((v = ARGV_OF(a, OPT_CAUSAL)) != NULL) {
        if (strcmp(v, "top-left") == 0) {
            a->opt.causal = CLATTN_CAUSAL_TOP_LEFT;
        } else if (strcmp(v, "bottom-right") == 0) {
            a->opt.causal = CLATTN_CAUSAL_BOTTOM_RIGHT;
        } else {
            cli_error(CMD, "--causal %s: expected top-left or bottom-right", v);
            return -1;
        }
    }
    if ((v = ARGV_OF(a, OPT_WINDOW)) != NULL) {
        const char *comma = strchr(v, ',');
        char left[64], right[64];
        size_t ln = comma ? (size_t)(comma - v) : 0;
        int64_t l = 0, r = 0;
        bool ok = comma && ln < sizeof left && strlen(comma + 1) < sizeof right;
        if (ok) {
            memcpy(left, v, ln);
            left[ln] = '\0';
            strcpy(right, comma + 1);
            ok = cli_parse_int64(left, &l) && cli_parse_int64(right, &r) && l >= -1 && r >= -1;
        }
        if (!ok) {
            cli_error(CMD,
                      "--window %s: expected LEFT,RIGHT, two integers >= 0 or -1 for "
                      "unbounded (e.g. 128,0)",
                      v);
            return -1;
        }
        a->opt.window_left = l;
        a->opt.window_right = r;
    }
    if ((v = ARGV_OF(a, OPT_SCALE)) != NULL) {
        if (!cli_parse_float(v, &a->opt.scale)) {
            cli_error(CMD, "--scale %s: expected a finite number", v);
            return -1;
        }
    }
    if ((v = ARGV_OF(a, OPT_SOFTCAP)) != NULL) {
        if (!cli_parse_float(v, &a->opt.softcap) || a->opt.softcap < 0.0f) {
            cli_error(CMD, "--softcap %s: expected a finite number >= 0 (0 = off)", v);
            return -1;
        }
    }
    if ((v = ARGV_OF(a, OPT_LAYOUT)) != NULL) {
        if (strcmp(v, "bhld") == 0) {
            a->blhd = 0;
        } else if (strcmp(v, "blhd") == 0) {
            a->blhd = 1;
        } else {
            cli_error(CMD, "--layout %s: expected bhld or blhd", v);
            return -1;
        }
    }
    if ((v = ARGV_OF(a, OPT_PATH)) != NULL) {
        clattn_path p;
        if (clattn_path_from_name(v, &p) != CLATTN_SUCCESS) {
            cli_error(CMD, "--path %s: expected auto, fused, unfused, clblast or decode", v);
            return -1;
        }
        if (!clattn_path_available(p)) {
            cli_error(CMD, "--path %s: this build of clattn does not have that path", v);
            return -1;
        }
        a->opt.path = p;
    }
    if ((v = ARGV_OF(a, OPT_OUT_DTYPE)) != NULL) {
        if (strcmp(v, "f32") == 0) {
            a->out_dtype = CLATTN_F32;
        } else if (strcmp(v, "f16") == 0) {
            a->out_dtype = CLATTN_F16;
        } else {
            cli_error(CMD, "--out-dtype %s: expected f32 or f16", v);
            return -1;
        }
    }
    if (ARGV_OF(a, OPT_LSE) && strcmp(ARGV_OF(a, OPT_LSE), ARGV_OF(a, OPT_OUT)) == 0) {
        cli_error(CMD, "--out and --lse name the same file %s", ARGV_OF(a, OPT_OUT));
        return -1;
    }
    /* packed sequences: the library refuses masks and key lengths for them (no packed
     * layout), and neither the KV cache nor the backward pass takes packed sequences */
    if (ARGV_OF(a, OPT_VARLEN)) {
        const int no[4] = {OPT_MASK, OPT_KV_LENS, OPT_GRAD_OUT, OPT_KV_QUANT};
        for (int i = 0; i < 4; i++)
            if (ARGV_OF(a, no[i]) && (no[i] != OPT_KV_QUANT || a->kv_quant)) {
                char n1[64];
                cli_error(CMD, "--varlen does not combine with %s",
                          cli_option_name(cmd_run_longopts, no[i], n1, sizeof n1));
                return -1;
            }
    }
    /* --paged-kv: the pool takes the --kv-quant format; no packed sequences or backward
     * pass through it */
    if (ARGV_OF(a, OPT_PAGED_KV)) {
        int ps;
        unsigned long long seed;
        char err[128];
        if (!paged_parse(ARGV_OF(a, OPT_PAGED_KV), &ps, &seed, err, sizeof err)) {
            cli_error(CMD, "--paged-kv %s", err);
            return -1;
        }
        const int no[3] = {OPT_VARLEN, OPT_GRAD_OUT, OPT_CONTEXT_PARALLEL};
        for (int i = 0; i < 3; i++)
            if (ARGV_OF(a, no[i])) {
                char n1[64];
                cli_error(CMD, "--paged-kv does not combine with %s", cli_option_name(cmd_run_longopts, no[i], n1, sizeof n1));
                return -1;
            }
        if (a->kv_quant && a->kv_format == CLATTN_KV_INT4) {
            cli_error(CMD, "--paged-kv: int4 keys are not stored in pages; use int8 or tq4");
            return -1;
        }
    }
    if (ARGV_OF(a, OPT_CONTEXT_PARALLEL) &&
        cp_check_args(CMD, ARGV_OF(a, OPT_CONTEXT_PARALLEL), a->kv_quant, ARGV_OF(a, OPT_VARLEN),
                      ARGV_OF(a, OPT_GRAD_OUT)))
        return -1;
    /* the backward pass: all four of its options, or none */
    const int bwd[4] = {OPT_GRAD_OUT, OPT_DQ, OPT_DK, OPT_DV};
    int nbwd = 0;
    for (int i = 0; i < 4; i++) nbwd += ARGV_OF(a, bwd[i]) != NULL;
    if (nbwd != 0 && nbwd != 4) {
        cli_error(CMD, "the backward pass needs all of --grad-out, --dq, --dk and --dv");
        return -1;
    }
    if (nbwd == 4) {
        if (a->kv_quant) {
            cli_error(CMD, "--grad-out: the backward pass does not run through --kv-quant");
            return -1;
        }
        const int outs[5] = {OPT_OUT, OPT_LSE, OPT_DQ, OPT_DK, OPT_DV};
        for (int i = 0; i < 5; i++)
            for (int j = i + 1; j < 5; j++)
                if (ARGV_OF(a, outs[i]) && ARGV_OF(a, outs[j]) &&
                    strcmp(ARGV_OF(a, outs[i]), ARGV_OF(a, outs[j])) == 0) {
                    char n1[64], n2[64];
                    cli_error(CMD, "%s and %s name the same file %s",
                              cli_option_name(cmd_run_longopts, outs[i], n1, sizeof n1),
                              cli_option_name(cmd_run_longopts, outs[j], n2, sizeof n2),
                              ARGV_OF(a, outs[i]));
                    return -1;
                }
    }
    return 0;
}

int cmd_run_parse(int argc, char **argv, run_args *a, bool *help)
{
    memset(a, 0, sizeof *a);
    *help = false;
    char name[64];
    cli_getopt_reset();
    int c;
    while ((c = getopt_long(argc, argv, ":h", cmd_run_longopts, NULL)) != -1) {
        if (c == 'h') {
            *help = true;
            return CLI_EXIT_OK;
        }
        if (c < OPT_Q || c >= OPT_END_) {
            cli_getopt_error(CMD, c, argv, cmd_run_longopts);
            return CLI_EXIT_USAGE;
        }
        if (ARGV_OF(a, c)) {
            cli_error(CMD, "%s given twice", cli_option_name(cmd_run_longopts, c, name, sizeof name));
            return CLI_EXIT_USAGE;
        }
        ARGV_OF(a, c) = optarg;
    }
    if (cli_no_operands(CMD, argc, argv, " (options take the form --name VALUE)") != CLI_EXIT_OK)
        return CLI_EXIT_USAGE;
    if (parse_options(a)) return CLI_EXIT_USAGE;
    return CLI_EXIT_OK;
}
