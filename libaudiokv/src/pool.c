/* 1-D pooling along tokens, stride 1, padding kernel/2 (SnapKV avg pool, AdaKV max pool; docs/semantics.md). */
#include "internal.h"

#include <math.h>

void akv_pool_exec(const double * x, int64_t n, int32_t kernel, int32_t pool_type, double * out) {
    const int64_t half = kernel / 2;
    for (int64_t j = 0; j < n; ++j) {
        const int64_t lo = j - half < 0 ? 0 : j - half;
        const int64_t hi = j + half >= n ? n - 1 : j + half;
        if (pool_type == AUDIOKV_POOL_MAX) {
            double m = -INFINITY;
            for (int64_t t = lo; t <= hi; ++t) m = x[t] > m ? x[t] : m;
            out[j] = m;
        } else {
            double s = 0.0;
            for (int64_t t = lo; t <= hi; ++t) s += x[t];
            out[j] = s / (double) kernel;   /* zero padding counted (count_include_pad) */
        }
    }
}

int audiokv_pool(const double * x, int64_t n, int32_t kernel, int32_t pool_type, double * out) {
    if (!x || !out) return AUDIOKV_ERR_NULL;
    if (n < 0) return AUDIOKV_ERR_SIZE;
    if (kernel < 1 || kernel % 2 == 0) return AUDIOKV_ERR_PARAM;
    if (pool_type != AUDIOKV_POOL_AVG && pool_type != AUDIOKV_POOL_MAX) return AUDIOKV_ERR_PARAM;
    if (kernel == 1) {
        for (int64_t j = 0; j < n; ++j) out[j] = x[j];
        return AUDIOKV_OK;
    }
    akv_pool_exec(x, n, kernel, pool_type, out);
    return AUDIOKV_OK;
}
