/* `clattn tune`'s output: the tuning file written under a temporary name, with the old
 * records of other devices, paths and classes kept, and renamed over its name. */
#include "tune.h"

#include "cli_util.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const char *const CMD = "tune";

typedef struct keep_ctx {
    FILE *f;
    const tuner *t;
    const clattn__tdevice *dev;
    int written;
} keep_ctx;

/* Keep an old record unless a new one has its device, path and class (compared as the
 * text the writer makes, which is what an earlier run wrote). */
static void keep_old(void *arg, const char *rec, size_t n)
{
    keep_ctx *k = arg;
    for (size_t i = 0; i < k->t->nrecords; i++) {
        const char *nr = k->t->records[i], *pp = strstr(nr, "\"params\"");
        const size_t key = pp ? (size_t)(pp - nr) : 0;
        if (key && n > key && memcmp(rec, nr, key) == 0) return;
    }
    fprintf(k->f, "%s\n  %.*s", k->written++ ? "," : "", (int)n, rec);
}

bool tune_write_file(const tuner *t, const char *out)
{
    char *old = NULL;
    size_t old_len = 0;
    FILE *f = fopen(out, "rb");
    if (f) {
        old = malloc(CLATTN__TUNING_FILE_MAX + 1);
        if (old) old_len = fread(old, 1, CLATTN__TUNING_FILE_MAX + 1, f);
        fclose(f);
        if (old_len > CLATTN__TUNING_FILE_MAX) old_len = 0;
    }
    char tmp[4200];
    snprintf(tmp, sizeof tmp, "%s.tmp%ld", out, (long)getpid());
    f = fopen(tmp, "wb");
    if (!f) {
        free(old);
        cli_error(CMD, "cannot write %s: %s", tmp, strerror(errno));
        return false;
    }
    keep_ctx k = {f, t, &t->ctx->tuning->dev, 0};
    fprintf(f, "{\"clattn_tuning\": 1, \"records\": [");
    if (old && old_len) clattn__tuning_record_spans(old, old_len, keep_old, &k);
    for (size_t i = 0; i < t->nrecords; i++) fprintf(f, "%s\n  %s", k.written++ ? "," : "", t->records[i]);
    fprintf(f, "\n]}\n");
    free(old);
    bool ok = fflush(f) == 0 && !ferror(f);
    ok = fclose(f) == 0 && ok;
    if (!ok || rename(tmp, out) != 0) {
        remove(tmp);
        cli_error(CMD, "writing %s failed", out);
        return false;
    }
    return true;
}
