/* A device's own limits, measured as clpeak does: an FMA kernel for GFLOP/s and a copy
 * kernel for GB/s. `clattn devices --peak` prints them and `clattn bench --device all`
 * puts each result against its device's peak. Results are cached per device (platform,
 * device name and driver) next to the program cache, since a measurement takes a second. */
#ifndef CLATTN_CLI_PEAK_H
#define CLATTN_CLI_PEAK_H

#include "clattn.h"

#include <stdbool.h>
#include <stddef.h>

typedef struct cli_peak {
    double gflops; /* float32 multiply-adds, 2 FLOPs each */
    double gbps;   /* bytes read plus bytes written by a float4 copy */
    bool cached;   /* read from the cache rather than measured now */
} cli_peak;

/* The peak of ctx's device: from the cache when use_cache and an entry exists, else
 * measured (and stored when use_cache). On failure err says why. */
clattn_status cli_peak_get(clattn_context *ctx, bool use_cache, cli_peak *out, char *err, size_t errlen);

#endif
