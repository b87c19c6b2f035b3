/* Fault injection for tests of the error paths. Every device allocation, enqueue,
 * read-back and kernel get in clattn calls clattn__fault_check once, so a test can make
 * the n-th one of a kind fail as a driver would and check that the call then either
 * succeeds another way or fails leaving its outputs and the KV cache untouched. Armed
 * from tests through clattn__fault_arm, or for the CLI by CLATTN_FAULT at context
 * creation. With nothing armed a check is two increments and a compare.
 * CLATTN_FAIL_PATH ("fused:build,unfused:launch") is parsed once into a table of the
 * stages each path fails at, so a build or launch asks one table entry. */
#include "core/context.h"

#include <stdlib.h>
#include <string.h>

void clattn__fault_arm(clattn_context *ctx, clattn__fault_kind kind, uint64_t n)
{
    if (!ctx || kind < 0 || kind >= CLATTN__FAULT_KINDS) return;
    ctx->faults.arm[kind] = n;
    memset(ctx->faults.sites, 0, sizeof ctx->faults.sites);
    ctx->faults.fired = 0;
}

uint64_t clattn__fault_sites(const clattn_context *ctx, clattn__fault_kind kind)
{
    return ctx && kind >= 0 && kind < CLATTN__FAULT_KINDS ? ctx->faults.sites[kind] : 0;
}

uint64_t clattn__fault_fired(const clattn_context *ctx) { return ctx ? ctx->faults.fired : 0; }

cl_int clattn__fault_check(clattn_context *ctx, clattn__fault_kind kind)
{
    clattn__faults *f = &ctx->faults;
    f->sites[kind]++;
    if (f->arm[kind] == 0 || f->sites[kind] != f->arm[kind]) return CL_SUCCESS;
    f->arm[kind] = 0; /* once: a retry or the next path meets a working device */
    f->fired++;
    clattn__log(ctx, "injected fault: %s site %llu fails",
                kind == CLATTN__FAULT_ALLOC     ? "allocation"
                : kind == CLATTN__FAULT_ENQUEUE ? "enqueue"
                : kind == CLATTN__FAULT_MAP     ? "read-back"
                : kind == CLATTN__FAULT_PROBE   ? "probe"
                                                : "kernel get",
                (unsigned long long)f->sites[kind]);
    switch (kind) {
    case CLATTN__FAULT_ALLOC: return CL_MEM_OBJECT_ALLOCATION_FAILURE;
    case CLATTN__FAULT_ENQUEUE: return CL_OUT_OF_RESOURCES;
    case CLATTN__FAULT_MAP: return CL_MAP_FAILURE;
    case CLATTN__FAULT_PROBE: return CL_INVALID_VALUE;
    default: return (cl_int)CLATTN_ERROR_BUILD_FAILED;
    }
}

bool clattn__fault_parse(clattn_context *ctx, const char *spec)
{
    static const char *const names[CLATTN__FAULT_KINDS] = {"alloc", "enqueue", "map", "build", "probe"};
    uint64_t arm[CLATTN__FAULT_KINDS] = {0};
    for (const char *s = spec; *s;) {
        const char *end = strchr(s, ',');
        const size_t len = end ? (size_t)(end - s) : strlen(s);
        int kind = -1;
        for (int k = 0; k < CLATTN__FAULT_KINDS; k++) {
            const size_t nl = strlen(names[k]);
            if (len > nl + 1 && strncmp(s, names[k], nl) == 0 && s[nl] == ':') kind = k;
        }
        if (kind < 0) return false;
        const char *num = s + strlen(names[kind]) + 1;
        char *stop;
        unsigned long long n = strtoull(num, &stop, 10);
        if (stop != s + len || n == 0 || *num == '-' || *num == '+') return false;
        arm[kind] = n;
        s += len + (end ? 1 : 0);
    }
    memset(&ctx->faults, 0, sizeof ctx->faults);
    memcpy(ctx->faults.arm, arm, sizeof arm);
    return true;
}

/* The stages CLATTN_FAIL_PATH's text names: each comma-separated entry that is exactly
 * "NAME:STAGE", with NAME a path's name and STAGE "build" or "launch", sets that path's
 * stage; every other entry is ignored, as it always was. */
static void fail_path_parse(clattn__fail_paths *fp, const char *spec)
{
    static const char *const stage_names[CLATTN__FAIL_STAGES] = {"build", "launch"};
    memset(fp->stages, 0, sizeof fp->stages);
    for (const char *s = spec; *s;) {
        const char *end = strchr(s, ',');
        const size_t len = end ? (size_t)(end - s) : strlen(s);
        for (int p = CLATTN_PATH_AUTO + 1; p < CLATTN_PATH_COUNT_; p++) {
            const char *name = clattn_path_name((clattn_path)p);
            const size_t nl = strlen(name);
            for (int st = 0; st < CLATTN__FAIL_STAGES; st++) {
                const size_t sl = strlen(stage_names[st]);
                if (len == nl + 1 + sl && strncmp(s, name, nl) == 0 && s[nl] == ':' &&
                    strncmp(s + nl + 1, stage_names[st], sl) == 0)
                    fp->stages[p] |= (unsigned char)(1u << st);
            }
        }
        s += len + (end ? 1 : 0);
    }
}

void clattn__faults_init(clattn_context *ctx)
{
    if (ctx->env.fault[0] && !clattn__fault_parse(ctx, ctx->env.fault))
        clattn__log(ctx, "ignoring CLATTN_FAULT=%s (need alloc:N, enqueue:N, map:N, build:N or probe:N, "
                    "comma separated, N >= 1)", ctx->env.fault);
    fail_path_parse(&ctx->fail_paths, ctx->env.fail_path);
    ctx->fail_paths.running = CLATTN_PATH_AUTO;
}

void clattn__fail_path_set(clattn_context *ctx, const char *spec)
{
    clattn__copy_str(ctx->env.fail_path, sizeof ctx->env.fail_path, spec ? spec : "");
    fail_path_parse(&ctx->fail_paths, ctx->env.fail_path);
}

void clattn__running_path_set(clattn_context *ctx, clattn_path path) { ctx->fail_paths.running = path; }

clattn_path clattn__running_path(const clattn_context *ctx) { return ctx->fail_paths.running; }

bool clattn__fail_injected(const clattn_context *ctx, clattn__fail_stage stage)
{
    const clattn_path path = ctx->fail_paths.running;
    if ((unsigned)path >= CLATTN_PATH_COUNT_) return false;
    return (ctx->fail_paths.stages[path] >> stage) & 1u;
}
