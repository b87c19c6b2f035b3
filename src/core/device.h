/* Internal view of the process-wide device list (device.c). */
#ifndef CLATTN_DEVICE_H
#define CLATTN_DEVICE_H

#include "core/common.h"

typedef struct clattn__device_entry {
    cl_platform_id platform;
    cl_device_id device;
    clattn_device_props props;
} clattn__device_entry;

/* NULL when index is out of range or listing failed. */
const clattn__device_entry *clattn__device_entry_get(size_t index);
/* Properties of any device; index is (size_t)-1 when it is not in the list. */
void clattn__device_props_of(cl_device_id device, clattn_device_props *props);
/* clattn_device_find with a message naming what did not match; env_device (the
 * CLATTN_DEVICE value read with the rest of the environment) stands in for an empty spec. */
clattn_status clattn__device_find(const char *spec, const char *env_device, size_t *index,
                                  char *err, size_t errlen);

/* ASCII case-insensitive equality (no locale). */
static inline bool clattn__ieq(const char *a, const char *b)
{
    for (; *a && *b; a++, b++) {
        char x = (*a >= 'A' && *a <= 'Z') ? (char)(*a + 32) : *a;
        char y = (*b >= 'A' && *b <= 'Z') ? (char)(*b + 32) : *b;
        if (x != y) return false;
    }
    return *a == *b;
}

/* Does device d list extension ext (a whole word of CL_DEVICE_EXTENSIONS)? */
bool clattn__device_has_extension(cl_device_id d, const char *ext);

/* The device's key: what the tuning lookup matches its rows against and what the feature
 * probes ask (tests fill it with made-up values). */
typedef struct clattn__tdevice {
    uint32_t vendor_id; /* CL_DEVICE_VENDOR_ID */
    char arch[64];      /* "sm_90", "gfx1100", "intel:0x56a0"; "" where unknown */
    char name[128];
    clattn_device_type type;
    size_t max_wg;
    uint64_t local_mem;
} clattn__tdevice;

/* The device key of a real device. */
void clattn__tdevice_of(cl_device_id device, const clattn_device_props *props, clattn__tdevice *out);

#endif
