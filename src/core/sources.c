/* Kernel sources: the copies of the files in cl/ built into the library, or, when a
 * context was created with CLATTN_KERNEL_DIR set, the files in that folder (read once per
 * process and folder and kept in a guarded cache, so kernels can be edited without
 * rebuilding the library). */
#include "core/common.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

extern const struct {
    const char *name;
    const char *text;
} clattn__embedded_sources[];

typedef struct loaded_source {
    char *dir;
    char *name;
    char *text;
    struct loaded_source *next;
} loaded_source;

static pthread_mutex_t loaded_lock = PTHREAD_MUTEX_INITIALIZER;
static loaded_source *loaded; /* never freed: the process may hold kernels built from it */

static char *read_file(const char *dir, const char *name)
{
    size_t n = strlen(dir) + strlen(name) + 2;
    char *path = malloc(n);
    if (!path) return NULL;
    snprintf(path, n, "%s/%s", dir, name);
    FILE *f = fopen(path, "rb");
    free(path);
    if (!f) return NULL;
    char *text = NULL;
    if (fseek(f, 0, SEEK_END) == 0) {
        long len = ftell(f);
        if (len >= 0 && fseek(f, 0, SEEK_SET) == 0 && (text = malloc((size_t)len + 1))) {
            if (fread(text, 1, (size_t)len, f) != (size_t)len) {
                free(text);
                text = NULL;
            } else {
                text[len] = '\0';
            }
        }
    }
    fclose(f);
    return text;
}

const char *clattn__kernel_source(const char *dir, const char *name)
{
    if (dir && *dir) {
        const char *found = NULL;
        pthread_mutex_lock(&loaded_lock);
        for (loaded_source *s = loaded; s; s = s->next)
            if (strcmp(s->dir, dir) == 0 && strcmp(s->name, name) == 0) found = s->text;
        if (!found) {
            loaded_source *s = calloc(1, sizeof *s);
            if (s && (s->dir = strdup(dir)) && (s->name = strdup(name)) &&
                (s->text = read_file(dir, name))) {
                s->next = loaded;
                loaded = s;
                found = s->text;
            } else if (s) {
                free(s->dir);
                free(s->name);
                free(s);
            }
        }
        pthread_mutex_unlock(&loaded_lock);
        if (found) return found;
        /* a file missing from the folder falls back to the built-in copy */
    }
    for (int i = 0; clattn__embedded_sources[i].name; i++)
        if (strcmp(clattn__embedded_sources[i].name, name) == 0)
            return clattn__embedded_sources[i].text;
    return NULL;
}
