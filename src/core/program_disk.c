/* On-disk cache of compiled program binaries, so a second process on the same device
 * does not recompile. Files are named by a 64-bit FNV-1a hash of everything that affects
 * the binary (sources less their comments, build options, device name, driver and
 * platform version, clattn version), carry a header with a checksum, are written to a
 * temporary name of their own and renamed (atomic on POSIX), and are silently ignored
 * and rebuilt when damaged.
 * Folder: CLATTN_CACHE_DIR, else $XDG_CACHE_HOME/clattn, else ~/.cache/clattn;
 * CLATTN_CACHE_DIR=off disables it. */
#include "core/context.h"

#include <errno.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define MAGIC "CLATTNB1"
#define MAX_BINARY ((size_t)256 << 20)

typedef struct disk_header {
    char magic[8];
    uint64_t key;      /* the hash the name was made from (guards against a renamed file) */
    uint64_t size;     /* bytes of binary that follow */
    uint64_t checksum; /* FNV-1a of the binary */
} disk_header;

static uint64_t fnv1a(uint64_t h, const void *data, size_t n)
{
    const unsigned char *p = data;
    for (size_t i = 0; i < n; i++) {
        h ^= p[i];
        h *= 0x100000001b3ull;
    }
    return h;
}
static uint64_t fnv1a_str(uint64_t h, const char *s) { return fnv1a(h, s, strlen(s) + 1); }

uint64_t clattn__code_hash(uint64_t h, const char *src)
{
    /* Comments are skipped: the compiler never sees them, so editing one must not make
     * every cached program stale. A comment marker inside a string or character literal
     * is text, not a comment. */
    char quote = 0;
    for (const char *c = src; *c; c++) {
        if (quote) {
            if (*c == '\\' && c[1]) {
                h = fnv1a(h, c++, 2);
                continue;
            }
            if (*c == quote) quote = 0;
        } else if (c[0] == '/' && c[1] == '*') {
            const char *end = strstr(c + 2, "*/");
            if (!end) break;
            c = end + 1;
            h = fnv1a(h, " ", 1); /* a comment separates tokens */
            continue;
        } else if (c[0] == '/' && c[1] == '/') {
            while (c[1] && c[1] != '\n') c++;
            continue;
        } else if (*c == '"' || *c == '\'') {
            quote = *c;
        }
        h = fnv1a(h, c, 1);
    }
    return fnv1a(h, "", 1);
}

static uint64_t cache_key(const clattn_context *ctx, const char *file, const char *prelude,
                          const char *body, const char *options)
{
    uint64_t h = 0xcbf29ce484222325ull;
    h = fnv1a_str(h, clattn_version_string());
    h = fnv1a_str(h, file);
    h = clattn__code_hash(h, prelude);
    h = clattn__code_hash(h, body);
    h = fnv1a_str(h, options);
    h = fnv1a_str(h, ctx->props.name);
    h = fnv1a_str(h, ctx->props.vendor);
    h = fnv1a_str(h, ctx->props.driver_version);
    h = fnv1a_str(h, ctx->props.platform_name);
    h = fnv1a_str(h, ctx->props.platform_version);
    return h;
}

/* mkdir -p; true when the folder exists afterwards. */
static bool make_dirs(char *path)
{
    for (char *p = path + 1; *p; p++) {
        if (*p != '/') continue;
        *p = '\0';
        int r = mkdir(path, 0755);
        *p = '/';
        if (r != 0 && errno != EEXIST) return false;
    }
    return mkdir(path, 0755) == 0 || errno == EEXIST;
}

/* The cache folder (resolved from the environment when ctx was created, env.c), created
 * if needed; false when disabled or unusable. */
static bool cache_dir(const clattn_context *ctx, char *buf, size_t cap)
{
    if (!ctx->env.cache_dir[0]) return false;
    int n = snprintf(buf, cap, "%s", ctx->env.cache_dir);
    return n > 0 && (size_t)n < cap && make_dirs(buf);
}

static bool cache_path(const clattn_context *ctx, uint64_t key, char *buf, size_t cap)
{
    char dir[CLATTN__ENV_PATH_MAX];
    if (!cache_dir(ctx, dir, sizeof dir)) return false;
    int n = snprintf(buf, cap, "%s/%016llx.bin", dir, (unsigned long long)key);
    return n > 0 && (size_t)n < cap;
}

clattn_status clattn__disk_cache_load(clattn_context *ctx, const char *file, const char *prelude,
                                      const char *body, const char *options, cl_program *prog)
{
    *prog = NULL;
    uint64_t key = cache_key(ctx, file, prelude, body, options);
    char path[1100];
    if (!cache_path(ctx, key, path, sizeof path)) return CLATTN_SUCCESS;
    FILE *f = fopen(path, "rb");
    if (!f) return CLATTN_SUCCESS;
    disk_header hdr;
    unsigned char *bin = NULL;
    bool ok = fread(&hdr, sizeof hdr, 1, f) == 1 && memcmp(hdr.magic, MAGIC, 8) == 0 &&
              hdr.key == key && hdr.size > 0 && hdr.size <= MAX_BINARY &&
              (bin = malloc((size_t)hdr.size)) != NULL &&
              fread(bin, 1, (size_t)hdr.size, f) == hdr.size && fgetc(f) == EOF &&
              fnv1a(0xcbf29ce484222325ull, bin, (size_t)hdr.size) == hdr.checksum;
    fclose(f);
    if (ok) {
        size_t size = (size_t)hdr.size;
        const unsigned char *bins[1] = {bin};
        cl_int status = CL_SUCCESS, err;
        cl_program p =
            clCreateProgramWithBinary(ctx->cl_ctx, 1, &ctx->device, &size, bins, &status, &err);
        if (err == CL_SUCCESS && status == CL_SUCCESS &&
            clBuildProgram(p, 1, &ctx->device, options, NULL, NULL) == CL_SUCCESS) {
            *prog = p;
            clattn__log(ctx, "program cache hit: %s (%s with %s)", path, file, options);
        } else {
            if (err == CL_SUCCESS) clReleaseProgram(p);
            ok = false;
        }
    }
    if (!ok) {
        clattn__log(ctx, "program cache: %s is damaged or stale, rebuilding", path);
        remove(path);
    }
    free(bin);
    return CLATTN_SUCCESS;
}

/* Forward: the temporary files of the binary store serve the probe store too. */
static FILE *open_temp(const char *path, char *tmp, size_t cap);

static bool probe_path(const clattn_context *ctx, const char *source, const char *options, char *buf,
                       size_t cap)
{
    char dir[CLATTN__ENV_PATH_MAX];
    if (!cache_dir(ctx, dir, sizeof dir)) return false;
    const uint64_t key = cache_key(ctx, "probes.cl", "", source, options);
    int n = snprintf(buf, cap, "%s/%016llx.probe", dir, (unsigned long long)key);
    return n > 0 && (size_t)n < cap;
}

bool clattn__disk_probe_load(clattn_context *ctx, const char *source, const char *options, int *answer,
                             int *value)
{
    char path[1100];
    if (!probe_path(ctx, source, options, path, sizeof path)) return false;
    FILE *f = fopen(path, "rb");
    if (!f) return false;
    char line[64] = "";
    const bool got = fgets(line, sizeof line, f) != NULL;
    fclose(f);
    int a = -1, v = 0;
    if (!got || sscanf(line, "clattn-probe 1 %d %d", &a, &v) != 2 || (a != 1 && a != 2)) {
        clattn__log(ctx, "probe cache: %s is damaged, probing again", path);
        remove(path);
        return false;
    }
    *answer = a;
    *value = v;
    return true;
}

void clattn__disk_probe_store(clattn_context *ctx, const char *source, const char *options, int answer,
                              int value)
{
    char path[1100], tmp[1200];
    if (!probe_path(ctx, source, options, path, sizeof path)) return;
    FILE *f = open_temp(path, tmp, sizeof tmp);
    if (!f) return;
    bool ok = fprintf(f, "clattn-probe 1 %d %d\n", answer, value) > 0;
    if (fclose(f) != 0) ok = false;
    if (!(ok && rename(tmp, path) == 0)) remove(tmp);
}

/* Every store in the process gets a number of its own: two contexts (threads) storing the
 * same program must not write one temporary file, or one's rename publishes a file the
 * other is still truncating and writing. */
static atomic_uint_fast64_t temp_counter;

/* Create and open `<path>.tmp.<pid>.<n>` for writing, a name no other writer uses: the pid
 * tells processes apart, the counter stores within one, and O_EXCL passes over a file a
 * dead process with the same pid left. NULL when none could be created. */
static FILE *open_temp(const char *path, char *tmp, size_t cap)
{
    for (int attempt = 0; attempt < 16; attempt++) {
        const unsigned long long n = (unsigned long long)atomic_fetch_add(&temp_counter, 1);
        int len = snprintf(tmp, cap, "%s.tmp.%ld.%llu", path, (long)getpid(), n);
        if (len < 0 || (size_t)len >= cap) return NULL;
        int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL, 0644);
        if (fd < 0) {
            if (errno == EEXIST) continue;
            return NULL;
        }
        FILE *f = fdopen(fd, "wb");
        if (!f) {
            close(fd);
            remove(tmp);
        }
        return f;
    }
    return NULL;
}

void clattn__disk_cache_store(clattn_context *ctx, const char *file, const char *prelude,
                              const char *body, const char *options, cl_program prog)
{
    uint64_t key = cache_key(ctx, file, prelude, body, options);
    char path[1100], tmp[1200];
    if (!cache_path(ctx, key, path, sizeof path)) return;
    size_t size = 0;
    if (clGetProgramInfo(prog, CL_PROGRAM_BINARY_SIZES, sizeof size, &size, NULL) != CL_SUCCESS ||
        size == 0 || size > MAX_BINARY)
        return;
    unsigned char *bin = malloc(size);
    if (!bin) return;
    unsigned char *bins[1] = {bin};
    if (clGetProgramInfo(prog, CL_PROGRAM_BINARIES, sizeof bins, bins, NULL) == CL_SUCCESS) {
        disk_header hdr;
        memcpy(hdr.magic, MAGIC, 8);
        hdr.key = key;
        hdr.size = size;
        hdr.checksum = fnv1a(0xcbf29ce484222325ull, bin, size);
        FILE *f = open_temp(path, tmp, sizeof tmp);
        if (f) {
            bool ok = fwrite(&hdr, sizeof hdr, 1, f) == 1 && fwrite(bin, 1, size, f) == size;
            if (fclose(f) != 0) ok = false;
            /* a failed write or rename leaves no temporary file behind */
            if (ok && rename(tmp, path) == 0)
                clattn__log(ctx, "program cache: stored %s (%s)", path, file);
            else
                remove(tmp);
        }
    }
    free(bin);
}
