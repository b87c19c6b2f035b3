/* libFuzzer target: the .npy reader (npy_parse, which npy_read uses for every file) on
 * arbitrary bytes. A file it accepts must be self-consistent: the element count is the
 * product of the shape, the byte count is count times the element size, and every byte
 * of the data can be read. */
#include "support/npy.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Where the data checksum goes, so the loop reading every byte is not optimised away. */
volatile unsigned fuzz_npy_sink;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    npy_array a;
    char err[512];
    memset(err, 'x', sizeof err);
    if (npy_parse(data, size, &a, err, sizeof err) == 0) {
        size_t count = 1;
        for (int i = 0; i < a.rank; i++) {
            if (a.shape[i] < 0) abort();
            count *= (size_t)a.shape[i];
        }
        const size_t es = clattn_dtype_size(a.dtype);
        if (a.rank < 0 || a.rank > NPY_MAX_RANK || count != a.count || es == 0 ||
            a.nbytes != a.count * es || a.data == NULL)
            abort();
        /* Touch every byte so ASan checks the allocation matches nbytes. */
        unsigned sum = 0;
        for (size_t i = 0; i < a.nbytes; i++) sum += ((const unsigned char *)a.data)[i];
        fuzz_npy_sink = sum;
        char shape[256];
        npy_shape_string(a.rank, a.shape, shape, sizeof shape);
        if (memchr(shape, '\0', sizeof shape) == NULL) abort();
        npy_free(&a);
        if (a.data != NULL) abort();
    } else {
        /* A refusal leaves the array empty and one terminated reason in err. */
        if (memchr(err, '\0', sizeof err) == NULL || err[0] == '\0' || a.data != NULL) abort();
        npy_free(&a);
    }
    return 0;
}
