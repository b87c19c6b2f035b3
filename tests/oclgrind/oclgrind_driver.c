/* Runs every kernel of the named paths on small cases that together switch on every
 * build option (dtypes, mask kinds, causal both ways, window, key lengths, softcap, ALiBi,
 * LSE, GQA, odd D), so that run under oclgrind each kernel variant is checked for
 * out-of-bounds accesses, races and API misuse. Results are also compared with the CPU
 * reference. Usage: oclgrind_driver PATH... ; "own" names every path of this build whose
 * kernels are clattn's own (all but clblast). Exit status 0 when every case matched. */
#define _POSIX_C_SOURCE 200809L /* setenv */
#include "support/attn_case.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const attn_case cases[] = {
    {.name = "plain-f32", .B = 1, .Hq = 2, .Hkv = 1, .Lq = 3, .Lk = 5, .D = 3, .Dv = 5, .lse = 1},
    {.name = "bool-mask-causal-tl", .B = 2, .Hq = 2, .Hkv = 2, .Lq = 4, .Lk = 3, .D = 8,
     .mask_kind = ATTN_MASK_BOOL, .mask_rank = 3, .causal = CLATTN_CAUSAL_TOP_LEFT, .lse = 1},
    {.name = "float-mask-br-window", .B = 1, .Hq = 4, .Hkv = 2, .Lq = 3, .Lk = 7, .D = 5,
     .Dv = 4, .mask_kind = ATTN_MASK_FLOAT, .causal = CLATTN_CAUSAL_BOTTOM_RIGHT, .window = 1,
     .win_left = 2, .win_right = 1},
    {.name = "f16-kvlens-softcap-alibi", .B = 3, .Hq = 2, .Hkv = 1, .Lq = 2, .Lk = 6, .D = 17,
     .Dv = 9, .dtype = CLATTN_F16, .out_dtype = CLATTN_F16, .kv_lens = 1, .softcap = 3.0f,
     .alibi = 1, .lse = 1},
    {.name = "bf16-blhd-padded", .B = 1, .Hq = 3, .Hkv = 3, .Lq = 1, .Lk = 9, .D = 16,
     .dtype = CLATTN_BF16, .out_dtype = CLATTN_BF16, .blhd = 1, .padded = 2, .lse = 1},
    {.name = "decode-gqa", .B = 2, .Hq = 4, .Hkv = 1, .Lq = 1, .Lk = 11, .D = 7, .Dv = 6,
     .causal = CLATTN_CAUSAL_BOTTOM_RIGHT, .kv_lens = 1, .lse = 1},
};

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: oclgrind_driver PATH...\n");
        return 2;
    }
    setvbuf(stdout, NULL, _IONBF, 0); /* keep case lines in order with oclgrind's reports */
    /* kernels must be built here, under the checker, not loaded from an earlier cache */
    setenv("CLATTN_CACHE_DIR", "off", 1);
    clattn_context *ctx;
    clattn_status st = clattn_context_create(NULL, &ctx);
    if (st != CLATTN_SUCCESS) {
        printf("no OpenCL device: %s\n", clattn_status_string(st));
        return 1;
    }
    clattn_context_free(ctx);
    clattn_path paths[CLATTN_PATH_COUNT_ * 4];
    int npaths = 0, failures = 0;
    for (int a = 1; a < argc && npaths < CLATTN_PATH_COUNT_ * 3; a++) {
        if (strcmp(argv[a], "own") == 0) {
            for (int p = 1; p < CLATTN_PATH_COUNT_; p++)
                if (p != CLATTN_PATH_CLBLAST && clattn_path_available((clattn_path)p))
                    paths[npaths++] = (clattn_path)p;
        } else if (clattn_path_from_name(argv[a], &paths[npaths]) == CLATTN_SUCCESS &&
                   clattn_path_available(paths[npaths])) {
            npaths++;
        } else {
            printf("path %s is not in this build\n", argv[a]);
            failures++;
        }
    }
    for (int a = 0; a < npaths; a++) {
        const clattn_path path = paths[a];
        const char *pname = clattn_path_name(path);
        for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
            attn_case c = cases[i];
            c.path = path;
            c.seed = 1000 + i;
            char line[512];
            attn_case_format(&c, line, sizeof line);
            /* A fresh context per case: oclgrind 21.10's --uninitialized reports false
             * "uninitialized value written" errors when a kernel object runs a second
             * time with new buffers (the same case in two fresh contexts is clean). */
            attn_case_data *d = NULL;
            st = clattn_context_create(NULL, &ctx);
            if (st == CLATTN_SUCCESS) st = attn_case_data_create(&c, &d);
            if (st == CLATTN_SUCCESS) st = attn_case_run(ctx, &c, d, NULL);
            if (st == CLATTN_ERROR_PATH_UNSUPPORTED) {
                printf("%-8s %-26s not supported by this path\n", pname, c.name);
                attn_case_data_free(d);
                clattn_context_free(ctx);
                continue;
            }
            attn_case_result r;
            if (st == CLATTN_SUCCESS) st = attn_case_compare(&c, d, &r);
            if (st != CLATTN_SUCCESS || !r.ok) {
                printf("FAIL %s: %s %s\n  %s\n", pname, clattn_status_string(st),
                       st ? clattn_context_last_error(ctx) : r.msg, line);
                failures++;
            } else {
                printf("%-8s %-26s ok (max err %.3g)\n", pname, c.name, r.max_err);
            }
            attn_case_data_free(d);
            clattn_context_free(ctx);
        }
    }
    return failures ? 1 : 0;
}
