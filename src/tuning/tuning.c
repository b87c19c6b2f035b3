/* The tuning layer's per-context state (see tuning.h): the records of the tuning files
 * read at context creation, the row in force for a path and problem class (built-in
 * row, file record, candidate being timed by clattn tune, forced form), and the forms
 * that failed to build and their fallback. */
#include "tuning/tuning.h"

#include "core/context.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- Per context --------------------------------------------------------------------- */
static void report_log(void *arg, const char *msg)
{
    clattn__log((const clattn_context *)arg, "tuning: %s", msg);
}

/* Read one tuning file into ctx's records; a missing cache-folder file is not reported. */
static void load_file(clattn_context *ctx, const char *path, bool report_missing)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        if (report_missing) clattn__log(ctx, "tuning: cannot open %s; built-in rows", path);
        return;
    }
    char *text = malloc(CLATTN__TUNING_FILE_MAX + 1);
    size_t len = text ? fread(text, 1, CLATTN__TUNING_FILE_MAX + 1, f) : 0;
    fclose(f);
    if (!text) return;
    if (len > CLATTN__TUNING_FILE_MAX) {
        clattn__log(ctx, "tuning: %s is larger than %zu bytes; ignored", path, CLATTN__TUNING_FILE_MAX);
    } else {
        clattn__tuning *t = ctx->tuning;
        const size_t before = t->nrecords;
        if (clattn__tuning_parse(text, len, path, &t->dev, &t->records, &t->nrecords, report_log, ctx))
            clattn__log(ctx, "tuning: %s: %zu record(s) for this device", path, t->nrecords - before);
    }
    free(text);
}

clattn_status clattn__tuning_init(clattn_context *ctx)
{
    ctx->tuning = calloc(1, sizeof *ctx->tuning);
    if (!ctx->tuning) return CLATTN_ERROR_OUT_OF_MEMORY;
    clattn__tdevice_of(ctx->device, &ctx->props, &ctx->tuning->dev);
    /* CLATTN_TUNING_FILE first: on equally specific records, the earlier one wins */
    if (ctx->env.tuning_file[0]) load_file(ctx, ctx->env.tuning_file, true);
    if (ctx->env.cache_dir[0]) {
        char path[CLATTN__ENV_PATH_MAX + 32];
        int n = snprintf(path, sizeof path, "%s/clattn.tuning.json", ctx->env.cache_dir);
        if (n > 0 && (size_t)n < sizeof path) load_file(ctx, path, false);
    }
    return CLATTN_SUCCESS;
}

void clattn__tuning_free(clattn_context *ctx)
{
    if (!ctx->tuning) return;
    free(ctx->tuning->records);
    free(ctx->tuning);
    ctx->tuning = NULL;
}

static int head_bucket(int64_t D, int64_t Dv)
{
    const int64_t d = D > Dv ? D : Dv;
    return d <= 64 ? 64 : d <= 128 ? 128 : 256;
}

static int group_bucket(int64_t g)
{
    int b = 1;
    while (b < g && b < 16) b <<= 1;
    return b;
}

static const clattn__tdevice *dev_of(const clattn_context *ctx, clattn__tdevice *tmp)
{
    if (ctx->tuning) return &ctx->tuning->dev;
    /* a context whose tuning state could not be allocated still gets built-in rows */
    clattn__tdevice_of(ctx->device, &ctx->props, tmp);
    return tmp;
}

void clattn__tclass_of(const clattn_context *ctx, clattn__tpath path, const clattn__problem *p,
                       int kv_format, clattn__tclass *cls)
{
    clattn__tclass_make(ctx, path, (int)p->q->dtype, p->D, p->Dv, p->Lq, p->causal != CLATTN_CAUSAL_NONE,
                        p->group, kv_format, cls);
}

void clattn__tclass_make(const clattn_context *ctx, clattn__tpath path, int dtype, int64_t D, int64_t Dv,
                         int64_t Lq, bool causal, int64_t group, int kv_format, clattn__tclass *cls)
{
    cls->dtype = dtype;
    cls->head = head_bucket(D, Dv);
    cls->causal = causal;
    cls->group = group_bucket(group);
    cls->kv = kv_format;
    if (path == CLATTN__TP_DECODE || path == CLATTN__TP_KV) {
        cls->decode = 1;
    } else {
        /* the decode bound of the decode row for this problem decides the phase */
        clattn__tclass dc = *cls;
        dc.decode = 1;
        clattn__trow dr;
        clattn__tuning_row(ctx, CLATTN__TP_DECODE, &dc, &dr, NULL);
        cls->decode = Lq <= dr.max_lq;
    }
}

/* How many of a record's class fields are set, or -1 when one differs from cls. */
static int class_score(const clattn__tclass *rc, const clattn__tclass *cls)
{
    const int a[6] = {rc->dtype, rc->head, rc->decode, rc->causal, rc->group, rc->kv};
    const int b[6] = {cls->dtype, cls->head, cls->decode, cls->causal, cls->group, cls->kv};
    int score = 0;
    for (int i = 0; i < 6; i++) {
        if (a[i] == -2) continue;
        if (a[i] != b[i] && b[i] != -2) return -1; /* -2 in cls: any (devices --tuning) */
        score++;
    }
    return score;
}

void clattn__tuning_row(const clattn_context *ctx, clattn__tpath path, const clattn__tclass *cls,
                        clattn__trow *row, clattn__tsource *src)
{
    clattn__tdevice tmp;
    const clattn__tdevice *dev = dev_of(ctx, &tmp);
    const char *level;
    clattn__tuning_builtin(dev, path, row, &level);
    if (src) snprintf(src->text, sizeof src->text, "built-in %s", level);
    const clattn__tuning *t = ctx->tuning;
    if (t && t->have_candidate[path]) {
        *row = t->candidate[path];
        if (src) snprintf(src->text, sizeof src->text, "candidate");
    } else if (t) {
        const clattn__trecord *best = NULL;
        int best_score = -1;
        for (size_t i = 0; i < t->nrecords; i++) {
            if (t->records[i].path != path) continue;
            const int s = class_score(&t->records[i].cls, cls);
            if (s > best_score) {
                best_score = s;
                best = &t->records[i];
            }
        }
        if (best) {
            size_t np;
            const clattn__tparam_info *pi = clattn__tparams(&np);
            /* a record naming another form starts from that form's generic values */
            if ((best->given & 1u) && best->row.form != row->form)
                clattn__tuning_apply_form(path, best->row.form, row);
            for (size_t i = 0; i < np; i++)
                if (best->given & (1u << i))
                    *clattn__trow_field(row, &pi[i]) = *clattn__trow_field((clattn__trow *)&best->row, &pi[i]);
            if (src) clattn__copy_str(src->text, sizeof src->text, best->source);
        }
    }
    const int forced = clattn__tuning_forced_form(path);
    if (forced >= 0 && forced != row->form) {
        clattn__tuning_apply_form(path, forced, row);
        if (src) {
            char s[sizeof src->text];
            snprintf(s, sizeof s, "%.150s, form forced", src->text);
            clattn__copy_str(src->text, sizeof src->text, s);
        }
    }
}

void clattn__tuning_row_for(const clattn_context *ctx, clattn__tpath path, const clattn__problem *p,
                            int kv_format, clattn__trow *row, clattn__tsource *src)
{
    clattn__tclass cls;
    clattn__tclass_of(ctx, path, p, kv_format, &cls);
    clattn__tuning_row(ctx, path, &cls, row, src);
}

void clattn__tuning_set_candidate(clattn_context *ctx, clattn__tpath path, const clattn__trow *row)
{
    if (!ctx->tuning || (unsigned)path >= CLATTN__TP_COUNT) return;
    ctx->tuning->have_candidate[path] = row != NULL;
    if (row) ctx->tuning->candidate[path] = *row;
}

/* Forms that failed to build on this context, by problem class (the build options that
 * matter), so a later call goes straight to the next form. */
static void form_config(clattn__tpath path, const clattn__problem *p, int form, char *buf, size_t cap)
{
    snprintf(buf, cap, "%s %s D=%lld Dv=%lld dt=%d%d%d%d mask=%d cap=%d alibi=%d",
             clattn__tpath_name(path), clattn__tform_name(path, form), (long long)p->D, (long long)p->Dv,
             (int)p->q->dtype, (int)p->k->dtype, (int)p->v->dtype, (int)p->o->dtype,
             p->mask ? (int)p->mask->dtype + 1 : 0, p->softcap > 0, p->alibi != NULL);
}

static bool form_has_failed(const clattn_context *ctx, clattn__tpath path, const clattn__problem *p, int form)
{
    const clattn__tuning *t = ctx->tuning;
    if (!t) return false;
    char cfg[sizeof t->failed_forms[0]];
    form_config(path, p, form, cfg, sizeof cfg);
    for (int i = 0; i < t->nfailed_forms; i++)
        if (strcmp(t->failed_forms[i], cfg) == 0) return true;
    return false;
}

int clattn__tuning_form(const clattn_context *ctx, clattn__tpath path, const clattn__problem *p,
                        const clattn__trow *row)
{
    if (clattn__tuning_forced_form(path) >= 0) return row->form;
    const int n = clattn__tform_count(path);
    for (int k = 0; k < n; k++) {
        const int form = (row->form + k) % n;
        if (!form_has_failed(ctx, path, p, form)) return form;
    }
    return row->form; /* every form failed: the tuned one reports its error again */
}

bool clattn__tuning_form_failed(clattn_context *ctx, clattn__tpath path, const clattn__problem *p, int form)
{
    clattn__tuning *t = ctx->tuning;
    if (clattn__tuning_forced_form(path) >= 0 || !t) return false;
    const int cap = (int)(sizeof t->failed_forms / sizeof t->failed_forms[0]);
    if (t->nfailed_forms == cap) { /* keep the newest */
        memmove(&t->failed_forms[0], &t->failed_forms[1], (size_t)(cap - 1) * sizeof t->failed_forms[0]);
        t->nfailed_forms--;
    }
    form_config(path, p, form, t->failed_forms[t->nfailed_forms], sizeof t->failed_forms[0]);
    t->nfailed_forms++;
    clattn__log(ctx, "%s: form %s failed to build; trying the next form", clattn__tpath_name(path),
                clattn__tform_name(path, form));
    for (int k = 1; k < clattn__tform_count(path); k++)
        if (!form_has_failed(ctx, path, p, (form + k) % clattn__tform_count(path))) return true;
    return false;
}
