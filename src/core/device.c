/* Device discovery: every device of every OpenCL platform, with its properties, listed
 * once per process (a guarded cache: the set of devices does not change while a process
 * runs), the resolution of a device spec (index, name substring, cpu or gpu), and a
 * device's key (vendor, architecture, name, limits) that tuning rows and probes go by. */
#include "core/device.h"
#include "core/context.h"

#include <ctype.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_DEVICES 64

static pthread_once_t list_once = PTHREAD_ONCE_INIT;
static clattn__device_entry entries[MAX_DEVICES];
static size_t nentries;
static cl_int list_error = CL_SUCCESS;

static void get_str(cl_device_id d, cl_device_info what, char *buf, size_t cap)
{
    buf[0] = '\0';
    if (clGetDeviceInfo(d, what, cap - 1, buf, NULL) != CL_SUCCESS) buf[0] = '\0';
    buf[cap - 1] = '\0';
}

static void fill_props(cl_platform_id plat, cl_device_id d, size_t index, clattn_device_props *p)
{
    memset(p, 0, sizeof *p);
    p->index = index;
    if (clGetPlatformInfo(plat, CL_PLATFORM_NAME, sizeof p->platform_name - 1, p->platform_name,
                          NULL) != CL_SUCCESS)
        p->platform_name[0] = '\0';
    if (clGetPlatformInfo(plat, CL_PLATFORM_VERSION, sizeof p->platform_version - 1,
                          p->platform_version, NULL) != CL_SUCCESS)
        p->platform_version[0] = '\0';
    get_str(d, CL_DEVICE_NAME, p->name, sizeof p->name);
    get_str(d, CL_DEVICE_VENDOR, p->vendor, sizeof p->vendor);
    get_str(d, CL_DRIVER_VERSION, p->driver_version, sizeof p->driver_version);
    get_str(d, CL_DEVICE_OPENCL_C_VERSION, p->opencl_c_version, sizeof p->opencl_c_version);

    cl_device_type type = 0;
    clGetDeviceInfo(d, CL_DEVICE_TYPE, sizeof type, &type, NULL);
    p->type = (type & CL_DEVICE_TYPE_GPU)           ? CLATTN_DEVICE_GPU
              : (type & CL_DEVICE_TYPE_CPU)         ? CLATTN_DEVICE_CPU
              : (type & CL_DEVICE_TYPE_ACCELERATOR) ? CLATTN_DEVICE_ACCELERATOR
                                                    : CLATTN_DEVICE_OTHER;
    cl_uint u = 0;
    cl_ulong ul = 0;
    size_t sz = 0;
    if (clGetDeviceInfo(d, CL_DEVICE_MAX_COMPUTE_UNITS, sizeof u, &u, NULL) == CL_SUCCESS)
        p->compute_units = u;
    if (clGetDeviceInfo(d, CL_DEVICE_MAX_CLOCK_FREQUENCY, sizeof u, &u, NULL) == CL_SUCCESS)
        p->max_clock_mhz = u;
    if (clGetDeviceInfo(d, CL_DEVICE_GLOBAL_MEM_SIZE, sizeof ul, &ul, NULL) == CL_SUCCESS)
        p->global_mem_bytes = ul;
    if (clGetDeviceInfo(d, CL_DEVICE_MAX_MEM_ALLOC_SIZE, sizeof ul, &ul, NULL) == CL_SUCCESS)
        p->max_alloc_bytes = ul;
    if (clGetDeviceInfo(d, CL_DEVICE_LOCAL_MEM_SIZE, sizeof ul, &ul, NULL) == CL_SUCCESS)
        p->local_mem_bytes = ul;
    cl_device_local_mem_type lt = CL_GLOBAL;
    if (clGetDeviceInfo(d, CL_DEVICE_LOCAL_MEM_TYPE, sizeof lt, &lt, NULL) == CL_SUCCESS)
        p->local_mem_is_dedicated = lt == CL_LOCAL;
    if (clGetDeviceInfo(d, CL_DEVICE_MAX_WORK_GROUP_SIZE, sizeof sz, &sz, NULL) == CL_SUCCESS)
        p->max_work_group_size = sz;

    size_t extlen = 0;
    if (clGetDeviceInfo(d, CL_DEVICE_EXTENSIONS, 0, NULL, &extlen) == CL_SUCCESS && extlen) {
        char *ext = malloc(extlen + 1);
        if (ext && clGetDeviceInfo(d, CL_DEVICE_EXTENSIONS, extlen, ext, NULL) == CL_SUCCESS) {
            ext[extlen] = '\0';
            p->has_fp16 = strstr(ext, "cl_khr_fp16") != NULL;
            p->has_subgroups =
                strstr(ext, "cl_khr_subgroups") != NULL || strstr(ext, "cl_intel_subgroups") != NULL;
        }
        free(ext);
    }
}

static void list_devices(void)
{
    cl_uint nplat = 0;
    cl_int err = clGetPlatformIDs(0, NULL, &nplat);
    if (err == -1001 /* CL_PLATFORM_NOT_FOUND_KHR: an ICD loader with no driver */ || nplat == 0)
        return;
    if (err != CL_SUCCESS) {
        list_error = err;
        return;
    }
    cl_platform_id plats[16];
    if (nplat > 16) nplat = 16;
    if ((err = clGetPlatformIDs(nplat, plats, NULL)) != CL_SUCCESS) {
        list_error = err;
        return;
    }
    for (cl_uint i = 0; i < nplat; i++) {
        cl_uint ndev = 0;
        if (clGetDeviceIDs(plats[i], CL_DEVICE_TYPE_ALL, 0, NULL, &ndev) != CL_SUCCESS) continue;
        cl_device_id devs[MAX_DEVICES];
        if (ndev > MAX_DEVICES) ndev = MAX_DEVICES;
        if (clGetDeviceIDs(plats[i], CL_DEVICE_TYPE_ALL, ndev, devs, NULL) != CL_SUCCESS) continue;
        for (cl_uint j = 0; j < ndev && nentries < MAX_DEVICES; j++) {
            clattn__device_entry *e = &entries[nentries];
            e->platform = plats[i];
            e->device = devs[j];
            fill_props(plats[i], devs[j], nentries, &e->props);
            nentries++;
        }
    }
}

static cl_int ensure_list(void)
{
    pthread_once(&list_once, list_devices);
    return list_error;
}

void clattn__device_props_of(cl_device_id device, clattn_device_props *props)
{
    if (ensure_list() == CL_SUCCESS)
        for (size_t i = 0; i < nentries; i++)
            if (entries[i].device == device) {
                *props = entries[i].props;
                return;
            }
    /* not in the list (a sub-device, or a platform listed after ours): read it directly */
    cl_platform_id plat = NULL;
    clGetDeviceInfo(device, CL_DEVICE_PLATFORM, sizeof plat, &plat, NULL);
    fill_props(plat, device, (size_t)-1, props);
}

const clattn__device_entry *clattn__device_entry_get(size_t index)
{
    if (ensure_list() != CL_SUCCESS || index >= nentries) return NULL;
    return &entries[index];
}

clattn_status clattn_device_count(size_t *count)
{
    if (!count) return CLATTN_ERROR_INVALID_ARGUMENT;
    cl_int err = ensure_list();
    *count = nentries;
    return err == CL_SUCCESS ? CLATTN_SUCCESS : (clattn_status)err;
}

clattn_status clattn_device_get_props(size_t index, clattn_device_props *props)
{
    if (!props) return CLATTN_ERROR_INVALID_ARGUMENT;
    const clattn__device_entry *e = clattn__device_entry_get(index);
    if (!e) return CLATTN_ERROR_NO_DEVICE;
    *props = e->props;
    return CLATTN_SUCCESS;
}

static bool contains_nocase(const char *hay, const char *needle)
{
    size_t n = strlen(needle);
    for (; *hay; hay++) {
        size_t i = 0;
        while (i < n && hay[i] && tolower((unsigned char)hay[i]) == tolower((unsigned char)needle[i]))
            i++;
        if (i == n) return true;
    }
    return n == 0;
}

clattn_status clattn__device_find(const char *spec, const char *env_device, size_t *index,
                                  char *err, size_t errlen)
{
    if (!index) return CLATTN_ERROR_INVALID_ARGUMENT;
    cl_int lerr = ensure_list();
    if (lerr != CL_SUCCESS)
        return clattn__failbuf(err, errlen, (clattn_status)lerr,
                               "listing OpenCL platforms failed: %s", clattn_status_string(lerr));
    if (nentries == 0)
        return clattn__failbuf(err, errlen, CLATTN_ERROR_NO_DEVICE,
                               "no OpenCL device found (is an OpenCL driver such as "
                               "pocl-opencl-icd installed?)");
    if (!spec || !*spec) spec = env_device;
    if (!spec || !*spec) {
        for (size_t i = 0; i < nentries; i++)
            if (entries[i].props.type == CLATTN_DEVICE_GPU) {
                *index = i;
                return CLATTN_SUCCESS;
            }
        *index = 0;
        return CLATTN_SUCCESS;
    }
    char *end;
    long v = strtol(spec, &end, 10);
    if (*end == '\0' && end != spec) {
        if (v < 0 || (size_t)v >= nentries)
            return clattn__failbuf(err, errlen, CLATTN_ERROR_NO_DEVICE,
                                   "device index %s is out of range (there are %zu devices)", spec,
                                   nentries);
        *index = (size_t)v;
        return CLATTN_SUCCESS;
    }
    clattn_device_type want = 0;
    if (clattn__ieq(spec, "cpu")) want = CLATTN_DEVICE_CPU;
    if (clattn__ieq(spec, "gpu")) want = CLATTN_DEVICE_GPU;
    for (size_t i = 0; i < nentries; i++) {
        const clattn_device_props *p = &entries[i].props;
        if (want ? p->type == want
                 : contains_nocase(p->name, spec) || contains_nocase(p->platform_name, spec)) {
            *index = i;
            return CLATTN_SUCCESS;
        }
    }
    return clattn__failbuf(err, errlen, CLATTN_ERROR_NO_DEVICE,
                           "no OpenCL device matches '%s' (run `clattn devices` to list them)",
                           spec);
}

clattn_status clattn_device_find(const char *spec, size_t *index)
{
    struct clattn__env env;
    clattn__env_read(&env);
    return clattn__device_find(spec, env.device, index, NULL, 0);
}

bool clattn__device_has_extension(cl_device_id d, const char *ext)
{
    size_t n = 0;
    if (clGetDeviceInfo(d, CL_DEVICE_EXTENSIONS, 0, NULL, &n) != CL_SUCCESS || n == 0) return false;
    char *s = malloc(n + 1);
    if (!s) return false;
    bool found = false;
    if (clGetDeviceInfo(d, CL_DEVICE_EXTENSIONS, n, s, NULL) == CL_SUCCESS) {
        s[n] = '\0';
        const size_t len = strlen(ext);
        for (const char *p = strstr(s, ext); p && !found; p = strstr(p + 1, ext))
            found = (p == s || p[-1] == ' ') && (p[len] == ' ' || p[len] == '\0');
    }
    free(s);
    return found;
}

/* ---- Device keys: the identity the tuning lookup and the feature probes go by ---- */
#define CL_DEVICE_COMPUTE_CAPABILITY_MAJOR_NV 0x4000
#define CL_DEVICE_COMPUTE_CAPABILITY_MINOR_NV 0x4001
#define CL_DEVICE_GFXIP_MAJOR_AMD 0x404A
#define CL_DEVICE_GFXIP_MINOR_AMD 0x404B
#define CL_DEVICE_ID_INTEL 0x4251

void clattn__tdevice_of(cl_device_id device, const clattn_device_props *props, clattn__tdevice *out)
{
    memset(out, 0, sizeof *out);
    clattn__copy_str(out->name, sizeof out->name, props->name);
    out->type = props->type;
    out->max_wg = props->max_work_group_size;
    out->local_mem = props->local_mem_bytes;
    cl_uint vid = 0;
    if (device && clGetDeviceInfo(device, CL_DEVICE_VENDOR_ID, sizeof vid, &vid, NULL) == CL_SUCCESS)
        out->vendor_id = vid;
    if (!device) return;
    cl_uint a = 0, b = 0;
    if (clattn__device_has_extension(device, "cl_nv_device_attribute_query") &&
        clGetDeviceInfo(device, CL_DEVICE_COMPUTE_CAPABILITY_MAJOR_NV, sizeof a, &a, NULL) == CL_SUCCESS &&
        clGetDeviceInfo(device, CL_DEVICE_COMPUTE_CAPABILITY_MINOR_NV, sizeof b, &b, NULL) == CL_SUCCESS) {
        snprintf(out->arch, sizeof out->arch, "sm_%u%u", a, b);
    } else if (strncmp(props->name, "gfx", 3) == 0) {
        /* AMD's driver names its devices by their gfx target */
        size_t i = 0;
        while (i + 1 < sizeof out->arch && isalnum((unsigned char)props->name[i])) {
            out->arch[i] = props->name[i];
            i++;
        }
        out->arch[i] = '\0';
    } else if (clattn__device_has_extension(device, "cl_amd_device_attribute_query") &&
               clGetDeviceInfo(device, CL_DEVICE_GFXIP_MAJOR_AMD, sizeof a, &a, NULL) == CL_SUCCESS &&
               clGetDeviceInfo(device, CL_DEVICE_GFXIP_MINOR_AMD, sizeof b, &b, NULL) == CL_SUCCESS) {
        snprintf(out->arch, sizeof out->arch, "gfx%u%u", a, b);
    } else if (clattn__device_has_extension(device, "cl_intel_device_attribute_query") &&
               clGetDeviceInfo(device, CL_DEVICE_ID_INTEL, sizeof a, &a, NULL) == CL_SUCCESS) {
        snprintf(out->arch, sizeof out->arch, "intel:0x%x", a);
    }
}
