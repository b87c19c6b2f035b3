/* The environment variables clattn reads, read in one place and once per context (at
 * clattn_context_create / create_from_cl): getenv while another thread calls setenv is a
 * data race in C, so no call after creation looks at the environment again. */
#include "core/context.h"

#include <stdlib.h>
#include <string.h>

/* Copy variable `name` into dst; an unset variable, or one too long for dst, reads as "".
 * A truncated path or spec would silently name something else, so it is dropped and
 * *too_long says so (the context logs it). */
static void read_var(const char *name, char *dst, size_t cap, bool *too_long)
{
    dst[0] = '\0';
    const char *v = getenv(name);
    if (!v) return;
    if (strlen(v) >= cap) {
        *too_long = true;
        return;
    }
    memcpy(dst, v, strlen(v) + 1);
}

void clattn__env_read(struct clattn__env *env)
{
    memset(env, 0, sizeof *env);
    bool too_long = false;
    read_var("CLATTN_DEVICE", env->device, sizeof env->device, &too_long);
    read_var("CLATTN_PATH", env->path, sizeof env->path, &too_long);
    read_var("CLATTN_LOG", env->log, sizeof env->log, &too_long);
    read_var("CLATTN_KERNEL_DIR", env->kernel_dir, sizeof env->kernel_dir, &too_long);
    read_var("CLATTN_WORKSPACE_BYTES", env->workspace_bytes, sizeof env->workspace_bytes, &too_long);
    read_var("CLATTN_FAIL_PATH", env->fail_path, sizeof env->fail_path, &too_long);
    read_var("CLATTN_FAULT", env->fault, sizeof env->fault, &too_long);
    read_var("CLATTN_TUNING_FILE", env->tuning_file, sizeof env->tuning_file, &too_long);
    /* The program cache folder, resolved now: CLATTN_CACHE_DIR ("off" disables it), else
     * $XDG_CACHE_HOME/clattn, else $HOME/.cache/clattn, else none. */
    char var[CLATTN__ENV_PATH_MAX];
    read_var("CLATTN_CACHE_DIR", var, sizeof var, &too_long);
    int n = 0;
    if (strcmp(var, "off") == 0) {
        env->cache_dir[0] = '\0';
    } else if (var[0]) {
        n = snprintf(env->cache_dir, sizeof env->cache_dir, "%s", var);
    } else {
        read_var("XDG_CACHE_HOME", var, sizeof var, &too_long);
        if (var[0]) {
            n = snprintf(env->cache_dir, sizeof env->cache_dir, "%s/clattn", var);
        } else {
            read_var("HOME", var, sizeof var, &too_long);
            if (var[0]) n = snprintf(env->cache_dir, sizeof env->cache_dir, "%s/.cache/clattn", var);
        }
    }
    if (n < 0 || (size_t)n >= sizeof env->cache_dir) {
        env->cache_dir[0] = '\0'; /* too long for any path buffer: no disk cache */
        too_long = true;
    }
    env->too_long = too_long;
}
