/* Kernel sources and programs (program.c, sources.c) and their on-disk cache
 * (program_disk.c). */
#ifndef CLATTN_CORE_PROGRAM_H
#define CLATTN_CORE_PROGRAM_H

#include "core/context.h"

/* The text of cl/<name> (built in, or read from folder `dir`, the context's
 * CLATTN_KERNEL_DIR, when not ""). NULL if unknown. A source read from a folder is cached
 * for the process. */
const char *clattn__kernel_source(const char *dir, const char *name);

/* The kernel `kernel_name` from the program built from cl/prelude.cl + cl/<file> with
 * build options `options` (cached on ctx; the kernel is owned by the cache, do not
 * release). Build failures return CLATTN_ERROR_BUILD_FAILED with the log in last_error. */
clattn_status clattn__kernel_get(clattn_context *ctx, const char *file, const char *options,
                                 const char *kernel_name, cl_kernel *kernel);
void clattn__programs_free(clattn_context *ctx);

/* On-disk cache of program binaries (program_disk.c), keyed by a hash of the sources,
 * options, device name, driver and platform version. A load that finds nothing or a
 * damaged file sets *prog = NULL and returns success: the caller builds from source. */
clattn_status clattn__disk_cache_load(clattn_context *ctx, const char *file, const char *prelude,
                                      const char *body, const char *options, cl_program *prog);
/* FNV-1a of an OpenCL C source with its comments left out, continuing from h: the part
 * of the disk cache's key that a kernel file contributes. */
uint64_t clattn__code_hash(uint64_t h, const char *src);
/* A feature probe's answer (probe.c), kept beside the program binaries as
 * `<key>.probe`, the key made of the probe's source and options, the device and the
 * driver as a binary's is. load: false when there is none (or the cache is off). */
bool clattn__disk_probe_load(clattn_context *ctx, const char *source, const char *options, int *answer,
                             int *value);
void clattn__disk_probe_store(clattn_context *ctx, const char *source, const char *options, int answer,
                              int value);
void clattn__disk_cache_store(clattn_context *ctx, const char *file, const char *prelude,
                              const char *body, const char *options, cl_program prog);

/* Append printf-formatted text to an options buffer (truncation is reported). */
bool clattn__opts_add(char *buf, size_t cap, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 3, 4)))
#endif
    ;

#endif /* CLATTN_CORE_PROGRAM_H */
