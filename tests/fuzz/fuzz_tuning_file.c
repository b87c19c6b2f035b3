/* libFuzzer target: the tuning-file reader (clattn__tuning_parse, which every context runs
 * on CLATTN_TUNING_FILE and the cache folder's clattn.tuning.json) on arbitrary bytes, for
 * a made-up GPU whose name the seed corpus uses. Whatever the input, every record it keeps
 * must be for the path it names, legal on the device as it would be used (the built-in row,
 * the record's form, its values), and carry a terminated source; a refusal is reported. */
#include "tuning/tuning.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int reports;
static void count_report(void *arg, const char *msg)
{
    (void)arg;
    if (memchr(msg, '\0', 1024) == NULL) abort();
    reports++;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    clattn__tdevice dev;
    memset(&dev, 0, sizeof dev);
    dev.vendor_id = 0x10de;
    strcpy(dev.arch, "sm_90");
    strcpy(dev.name, "Fuzz GPU");
    dev.type = CLATTN_DEVICE_GPU;
    dev.max_wg = 1024;
    dev.local_mem = 48 * 1024;
    /* the text without a terminator, as read from a file */
    char *text = malloc(size ? size : 1);
    if (!text) return 0;
    if (size) memcpy(text, data, size);
    clattn__trecord *recs = NULL;
    size_t n = 0;
    reports = 0;
    const bool ok = clattn__tuning_parse(text, size, "fuzz", &dev, &recs, &n, count_report, NULL);
    if (!ok && (n != 0 || reports == 0)) abort();
    size_t np;
    const clattn__tparam_info *pi = clattn__tparams(&np);
    for (size_t i = 0; i < n; i++) {
        const clattn__trecord *r = &recs[i];
        if ((unsigned)r->path >= CLATTN__TP_COUNT || memchr(r->source, '\0', sizeof r->source) == NULL) abort();
        clattn__trow row;
        clattn__tuning_builtin(&dev, r->path, &row, NULL);
        if ((r->given & 1u) && r->row.form != row.form) clattn__tuning_apply_form(r->path, r->row.form, &row);
        for (size_t k = 0; k < np; k++) {
            if (!(r->given & (1u << k))) continue;
            if (!(pi[k].paths & (1u << r->path))) abort(); /* a parameter of another path */
            *clattn__trow_field(&row, &pi[k]) = *clattn__trow_field((clattn__trow *)&r->row, &pi[k]);
        }
        char why[160];
        if (!clattn__tuning_legal(&dev, r->path, &row, r->cls.head, why, sizeof why)) abort();
        /* the row as clattn tune writes it reads back as one record */
        char line[1024], file[1200];
        if (!clattn__tuning_format_record(&dev, r->path, &r->cls, &row, 1.0, 2.0, line, sizeof line)) abort();
        int len = snprintf(file, sizeof file, "{\"clattn_tuning\": 1, \"records\": [%s]}", line);
        if (len <= 0 || (size_t)len >= sizeof file) abort();
        clattn__trecord *again = NULL;
        size_t m = 0;
        if (!clattn__tuning_parse(file, (size_t)len, "again", &dev, &again, &m, count_report, NULL) || m != 1 ||
            again[0].path != r->path)
            abort();
        free(again);
    }
    free(recs);
    free(text);
    return 0;
}
