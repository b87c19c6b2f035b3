/* Kernel programs: cl/prelude.cl + one kernel file, compiled with -D options for the
 * context's device and kept in a per-context cache keyed by (file, options), together
 * with the kernels created from them. The on-disk cache of binaries (program_disk.c)
 * sits beneath it, so a second process on the same device does not recompile. */
#include "core/program.h"
#include "core/faults.h"

#include <stdlib.h>
#include <string.h>

/* Options every program is built with. -cl-mad-enable only: fast-relaxed and
 * finite-math would break the -INFINITY semantics of masking. */
static const char base_options[] = "-cl-std=CL1.2 -cl-mad-enable";

bool clattn__opts_add(char *buf, size_t cap, const char *fmt, ...)
{
    size_t used = strlen(buf);
    if (used >= cap) return false;
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf + used, cap - used, fmt, ap);
    va_end(ap);
    return n >= 0 && (size_t)n < cap - used;
}

/* The files a program's body builds on, after the prelude (NULL-terminated): decode and
 * the KV-cache attention share the split-KV skeleton (cl/splitkv.cl: online softmax and
 * the merge kernel); both forms of the KV-cache attention (cl/kv_attn.cl, its GPU form
 * cl/kv_attn_gpu.cl) also share the stored formats' readers of cl/kv_read.cl. */
static const char *const *bases_of(const char *file)
{
    static const char *const none[] = {NULL}, *const splitkv[] = {"splitkv.cl", NULL},
                             *const kv[] = {"splitkv.cl", "kv_read.cl", NULL};
    if (strcmp(file, "decode.cl") == 0) return splitkv;
    if (strcmp(file, "kv_attn.cl") == 0 || strcmp(file, "kv_attn_gpu.cl") == 0) return kv;
    return none;
}

static clattn_status build_texts(clattn_context *ctx, const char *file, const char *prelude,
                                 const char *body, const char *options, cl_program *out);

static clattn_status build_program(clattn_context *ctx, const char *file, const char *options,
                                   cl_program *out)
{
    const char *prelude = clattn__kernel_source(ctx->env.kernel_dir, "prelude.cl");
    const char *body = clattn__kernel_source(ctx->env.kernel_dir, file);
    const char *const *bases = bases_of(file);
    size_t hlen = prelude ? strlen(prelude) + 1 : 0;
    const char *missing = !prelude ? "prelude.cl" : !body ? file : NULL;
    for (int i = 0; bases[i] && !missing; i++) {
        const char *text = clattn__kernel_source(ctx->env.kernel_dir, bases[i]);
        if (text) hlen += strlen(text) + 1;
        else missing = bases[i];
    }
    CLATTN_RETURN_IF(ctx, missing, CLATTN_ERROR_INTERNAL, "kernel source %s is missing from this build", missing);
    if (!bases[0]) return build_texts(ctx, file, prelude, body, options, out);
    /* the prelude and the bases as one text, so the disk cache's key covers them all */
    char *head = malloc(hlen);
    CLATTN_RETURN_IF(ctx, !head, CLATTN_ERROR_OUT_OF_MEMORY, "out of host memory");
    strcpy(head, prelude);
    for (int i = 0; bases[i]; i++) {
        strcat(head, "\n");
        strcat(head, clattn__kernel_source(ctx->env.kernel_dir, bases[i]));
    }
    clattn_status st = build_texts(ctx, file, head, body, options, out);
    free(head);
    return st;
}

static clattn_status build_texts(clattn_context *ctx, const char *file, const char *prelude,
                                 const char *body, const char *options, cl_program *out)
{
    size_t olen = strlen(base_options) + strlen(options) + 2;
    char *all_options = malloc(olen);
    CLATTN_RETURN_IF(ctx, !all_options, CLATTN_ERROR_OUT_OF_MEMORY, "out of host memory");
    snprintf(all_options, olen, "%s %s", base_options, options);

    if (clattn__fail_injected(ctx, CLATTN__FAIL_BUILD)) {
        free(all_options);
        return clattn__fail(ctx, CLATTN_ERROR_BUILD_FAILED,
                            "building cl/%s failed: CLATTN_FAIL_PATH asks path %s to fail", file,
                            clattn_path_name(clattn__running_path(ctx)));
    }
    cl_program prog = NULL;
    clattn_status st = clattn__disk_cache_load(ctx, file, prelude, body, all_options, &prog);
    if (st != CLATTN_SUCCESS || !prog) {
        const char *texts[3] = {prelude, "\n", body};
        cl_int err;
        prog = clCreateProgramWithSource(ctx->cl_ctx, 3, texts, NULL, &err);
        if (err != CL_SUCCESS) {
            free(all_options);
            return clattn__fail(ctx, (clattn_status)err, "clCreateProgramWithSource(%s): %s",
                                file, clattn_status_string(err));
        }
        clattn__log(ctx, "building %s with %s", file, all_options);
        err = clBuildProgram(prog, 1, &ctx->device, all_options, NULL, NULL);
        if (err != CL_SUCCESS) {
            char log[12000] = "";
            clGetProgramBuildInfo(prog, ctx->device, CL_PROGRAM_BUILD_LOG, sizeof log - 1, log,
                                  NULL);
            log[sizeof log - 1] = '\0';
            clReleaseProgram(prog);
            clattn__fail(ctx, CLATTN_ERROR_BUILD_FAILED,
                         "building cl/%s for %s failed (%s) with options '%s':\n%s", file,
                         ctx->props.name, clattn_status_string(err), all_options, log);
            free(all_options);
            return CLATTN_ERROR_BUILD_FAILED;
        }
        clattn__disk_cache_store(ctx, file, prelude, body, all_options, prog);
    }
    free(all_options);
    *out = prog;
    return CLATTN_SUCCESS;
}

clattn_status clattn__kernel_get(clattn_context *ctx, const char *file, const char *options,
                                 const char *kernel_name, cl_kernel *kernel)
{
    if (clattn__fault_check(ctx, CLATTN__FAULT_BUILD) != CL_SUCCESS)
        return clattn__fail(ctx, CLATTN_ERROR_BUILD_FAILED,
                            "building cl/%s (%s) for %s failed: injected fault", file, kernel_name,
                            ctx->props.name);
    size_t klen = strlen(file) + strlen(options) + 2;
    char *key = malloc(klen);
    CLATTN_RETURN_IF(ctx, !key, CLATTN_ERROR_OUT_OF_MEMORY, "out of host memory");
    snprintf(key, klen, "%s\n%s", file, options);

    clattn__program *entry = NULL;
    for (size_t i = 0; i < ctx->nprograms; i++)
        if (strcmp(ctx->programs[i].key, key) == 0) entry = &ctx->programs[i];
    if (!entry) {
        if (ctx->nprograms == ctx->cap_programs) {
            size_t cap = ctx->cap_programs ? 2 * ctx->cap_programs : 16;
            clattn__program *grown = realloc(ctx->programs, cap * sizeof *grown);
            if (!grown) {
                free(key);
                return clattn__fail(ctx, CLATTN_ERROR_OUT_OF_MEMORY, "out of host memory");
            }
            ctx->programs = grown;
            ctx->cap_programs = cap;
        }
        cl_program prog;
        clattn_status st = build_program(ctx, file, options, &prog);
        if (st != CLATTN_SUCCESS) {
            free(key);
            return st;
        }
        entry = &ctx->programs[ctx->nprograms++];
        memset(entry, 0, sizeof *entry);
        entry->key = key;
        entry->program = prog;
    } else {
        free(key);
    }

    for (int i = 0; i < entry->nkernels; i++)
        if (strcmp(entry->kernels[i].name, kernel_name) == 0) {
            *kernel = entry->kernels[i].kernel;
            return CLATTN_SUCCESS;
        }
    CLATTN_RETURN_IF(ctx, entry->nkernels == (int)(sizeof entry->kernels / sizeof entry->kernels[0]),
                     CLATTN_ERROR_INTERNAL, "too many kernels in cl/%s", file);
    CLATTN_RETURN_IF(ctx, strlen(kernel_name) >= sizeof entry->kernels[0].name,
                     CLATTN_ERROR_INTERNAL, "kernel name %s too long", kernel_name);
    cl_int err;
    cl_kernel k = clCreateKernel(entry->program, kernel_name, &err);
    if (err != CL_SUCCESS)
        return clattn__fail(ctx, (clattn_status)err, "clCreateKernel(%s in cl/%s): %s",
                            kernel_name, file, clattn_status_string(err));
    strcpy(entry->kernels[entry->nkernels].name, kernel_name);
    entry->kernels[entry->nkernels].kernel = k;
    entry->nkernels++;
    *kernel = k;
    return CLATTN_SUCCESS;
}

void clattn__programs_free(clattn_context *ctx)
{
    for (size_t i = 0; i < ctx->nprograms; i++) {
        for (int j = 0; j < ctx->programs[i].nkernels; j++)
            clReleaseKernel(ctx->programs[i].kernels[j].kernel);
        clReleaseProgram(ctx->programs[i].program);
        free(ctx->programs[i].key);
    }
    free(ctx->programs);
    ctx->programs = NULL;
    ctx->nprograms = ctx->cap_programs = 0;
}
