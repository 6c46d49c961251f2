/* The window-score dot-product kernel for x86-64 CPUs with AVX-512F and FMA, in GCC/Clang vector extensions (no
 * intrinsics). This file alone is compiled with -mavx512f -mfma -ffp-contract=fast (CMakeLists.txt) and is called
 * only after a run-time CPU check. With FMA its dot products can differ from the portable kernels in the last bit;
 * plans do not (scores are ranked after rounding to float32, docs/semantics.md), and on one machine the result
 * still does not depend on the thread count. */
#include "internal.h"

#include <string.h>

#if (defined(__GNUC__) || defined(__clang__)) && defined(__x86_64__) && defined(__AVX512F__)

typedef double akv_v8d __attribute__((vector_size(64)));

/* acc[i][jj] = sum_t qd[i][t] * kt[t][jj], i < wpad (a multiple of 4), jj < 8 (the tile width) */
void akv_tile_dots_avx512(const double * qd, const double * kt, int32_t d, int64_t wpad, double * acc) {
    int64_t i0 = 0;
    for (; i0 + 8 <= wpad; i0 += 8) {
        akv_v8d a[8];
        for (int r = 0; r < 8; ++r) a[r] = (akv_v8d) { 0, 0, 0, 0, 0, 0, 0, 0 };
        const double * q0 = qd + i0 * d;
        for (int32_t t = 0; t < d; ++t) {
            akv_v8d k;
            memcpy(&k, kt + (int64_t) t * 8, sizeof k);
            for (int r = 0; r < 8; ++r) a[r] += q0[(int64_t) r * d + t] * k;
        }
        memcpy(acc + i0 * 8, a, sizeof a);
    }
    for (; i0 < wpad; i0 += 4) {
        akv_v8d a[4];
        for (int r = 0; r < 4; ++r) a[r] = (akv_v8d) { 0, 0, 0, 0, 0, 0, 0, 0 };
        const double * q0 = qd + i0 * d;
        for (int32_t t = 0; t < d; ++t) {
            akv_v8d k;
            memcpy(&k, kt + (int64_t) t * 8, sizeof k);
            for (int r = 0; r < 4; ++r) a[r] += q0[(int64_t) r * d + t] * k;
        }
        memcpy(acc + i0 * 8, a, sizeof a);
    }
}

int akv_have_avx512_kernel(void) {
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("fma");
}

#else

void akv_tile_dots_avx512(const double * qd, const double * kt, int32_t d, int64_t wpad, double * acc) {
    (void) qd; (void) kt; (void) d; (void) wpad; (void) acc;
}

int akv_have_avx512_kernel(void) { return 0; }

#endif
