/* Status codes: names for clattn's own codes and OpenCL's, and the helpers that record
 * the detailed message of a failure on the context (or in a caller's buffer). */
#include "core/context.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

const char *clattn_status_string(int status)
{
    switch (status) {
    case CLATTN_SUCCESS: return "CLATTN_SUCCESS";
    case CLATTN_ERROR_INVALID_ARGUMENT: return "CLATTN_ERROR_INVALID_ARGUMENT";
    case CLATTN_ERROR_INVALID_SHAPE: return "CLATTN_ERROR_INVALID_SHAPE";
    case CLATTN_ERROR_INVALID_STRIDE: return "CLATTN_ERROR_INVALID_STRIDE";
    case CLATTN_ERROR_UNSUPPORTED_DTYPE: return "CLATTN_ERROR_UNSUPPORTED_DTYPE";
    case CLATTN_ERROR_NO_DEVICE: return "CLATTN_ERROR_NO_DEVICE";
    case CLATTN_ERROR_BUILD_FAILED: return "CLATTN_ERROR_BUILD_FAILED";
    case CLATTN_ERROR_PATH_UNAVAILABLE: return "CLATTN_ERROR_PATH_UNAVAILABLE";
    case CLATTN_ERROR_PATH_UNSUPPORTED: return "CLATTN_ERROR_PATH_UNSUPPORTED";
    case CLATTN_ERROR_OUT_OF_MEMORY: return "CLATTN_ERROR_OUT_OF_MEMORY";
    case CLATTN_ERROR_NO_USABLE_PATH: return "CLATTN_ERROR_NO_USABLE_PATH";
    case CLATTN_ERROR_IO: return "CLATTN_ERROR_IO";
    case CLATTN_ERROR_CAPACITY: return "CLATTN_ERROR_CAPACITY";
    case CLATTN_ERROR_INTERNAL: return "CLATTN_ERROR_INTERNAL";
#define CL_CODE(c) \
    case c: return #c;
    CL_CODE(CL_DEVICE_NOT_FOUND)
    CL_CODE(CL_DEVICE_NOT_AVAILABLE)
    CL_CODE(CL_COMPILER_NOT_AVAILABLE)
    CL_CODE(CL_MEM_OBJECT_ALLOCATION_FAILURE)
    CL_CODE(CL_OUT_OF_RESOURCES)
    CL_CODE(CL_OUT_OF_HOST_MEMORY)
    CL_CODE(CL_PROFILING_INFO_NOT_AVAILABLE)
    CL_CODE(CL_MEM_COPY_OVERLAP)
    CL_CODE(CL_IMAGE_FORMAT_MISMATCH)
    CL_CODE(CL_IMAGE_FORMAT_NOT_SUPPORTED)
    CL_CODE(CL_BUILD_PROGRAM_FAILURE)
    CL_CODE(CL_MAP_FAILURE)
    CL_CODE(CL_MISALIGNED_SUB_BUFFER_OFFSET)
    CL_CODE(CL_EXEC_STATUS_ERROR_FOR_EVENTS_IN_WAIT_LIST)
    CL_CODE(CL_COMPILE_PROGRAM_FAILURE)
    CL_CODE(CL_LINKER_NOT_AVAILABLE)
    CL_CODE(CL_LINK_PROGRAM_FAILURE)
    CL_CODE(CL_DEVICE_PARTITION_FAILED)
    CL_CODE(CL_KERNEL_ARG_INFO_NOT_AVAILABLE)
    CL_CODE(CL_INVALID_VALUE)
    CL_CODE(CL_INVALID_DEVICE_TYPE)
    CL_CODE(CL_INVALID_PLATFORM)
    CL_CODE(CL_INVALID_DEVICE)
    CL_CODE(CL_INVALID_CONTEXT)
    CL_CODE(CL_INVALID_QUEUE_PROPERTIES)
    CL_CODE(CL_INVALID_COMMAND_QUEUE)
    CL_CODE(CL_INVALID_HOST_PTR)
    CL_CODE(CL_INVALID_MEM_OBJECT)
    CL_CODE(CL_INVALID_IMAGE_FORMAT_DESCRIPTOR)
    CL_CODE(CL_INVALID_IMAGE_SIZE)
    CL_CODE(CL_INVALID_SAMPLER)
    CL_CODE(CL_INVALID_BINARY)
    CL_CODE(CL_INVALID_BUILD_OPTIONS)
    CL_CODE(CL_INVALID_PROGRAM)
    CL_CODE(CL_INVALID_PROGRAM_EXECUTABLE)
    CL_CODE(CL_INVALID_KERNEL_NAME)
    CL_CODE(CL_INVALID_KERNEL_DEFINITION)
    CL_CODE(CL_INVALID_KERNEL)
    CL_CODE(CL_INVALID_ARG_INDEX)
    CL_CODE(CL_INVALID_ARG_VALUE)
    CL_CODE(CL_INVALID_ARG_SIZE)
    CL_CODE(CL_INVALID_KERNEL_ARGS)
    CL_CODE(CL_INVALID_WORK_DIMENSION)
    CL_CODE(CL_INVALID_WORK_GROUP_SIZE)
    CL_CODE(CL_INVALID_WORK_ITEM_SIZE)
    CL_CODE(CL_INVALID_GLOBAL_OFFSET)
    CL_CODE(CL_INVALID_EVENT_WAIT_LIST)
    CL_CODE(CL_INVALID_EVENT)
    CL_CODE(CL_INVALID_OPERATION)
    CL_CODE(CL_INVALID_GL_OBJECT)
    CL_CODE(CL_INVALID_BUFFER_SIZE)
    CL_CODE(CL_INVALID_MIP_LEVEL)
    CL_CODE(CL_INVALID_GLOBAL_WORK_SIZE)
    CL_CODE(CL_INVALID_PROPERTY)
    CL_CODE(CL_INVALID_IMAGE_DESCRIPTOR)
    CL_CODE(CL_INVALID_COMPILER_OPTIONS)
    CL_CODE(CL_INVALID_LINKER_OPTIONS)
    CL_CODE(CL_INVALID_DEVICE_PARTITION_COUNT)
#undef CL_CODE
    case -1001: return "CL_PLATFORM_NOT_FOUND_KHR";
    default: return "unknown status";
    }
}

clattn_status clattn__failbuf(char *buf, size_t len, clattn_status status, const char *fmt,
                              ...)
{
    if (buf && len) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(buf, len, fmt, ap);
        va_end(ap);
    }
    return status;
}

clattn_status clattn__fail(clattn_context *ctx, clattn_status status, const char *fmt, ...)
{
    char msg[sizeof ctx->last_error];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (ctx) {
        snprintf(ctx->last_error, sizeof ctx->last_error, "%s", msg);
        clattn__log(ctx, "error %s: %s", clattn_status_string(status), msg);
    }
    return status;
}

void clattn__log(const clattn_context *ctx, const char *fmt, ...)
{
    if (!ctx || !ctx->log) return;
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "clattn: ");
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

const char *clattn_context_last_error(const clattn_context *ctx)
{
    return ctx ? ctx->last_error : "no context";
}
