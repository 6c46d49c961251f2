/* The window-score logits kernel for x86-64 CPUs with AVX-512F and FMA, in GCC/Clang vector extensions (no
 * intrinsics). This file alone is compiled with -mavx512f -mfma -ffp-contract=fast (CMakeLists.txt) and is called
 * only after a run-time CPU check. With FMA its dot products can differ from the portable kernels in the last bit;
 * plans do not (scores are ranked after rounding to float32, docs/semantics.md), and on one machine the result
 * still does not depend on the thread count.
 *
 * Micro-tile: 8 query rows x 24 keys in 24 accumulators (of 32 zmm registers). Per head-dim step t it loads 3
 * vectors of keys and broadcasts 8 query values from one cache line of the packed queries, for 24 FMAs. */
#include "internal.h"

#include <math.h>
#include <string.h>

#if (defined(__GNUC__) || defined(__clang__)) && defined(__x86_64__) && defined(__AVX512F__)

typedef double akv_v8d __attribute__((vector_size(64)));
typedef int64_t akv_v8i __attribute__((vector_size(64)));

#define MR AKV_AVX512_MR
#define NR AKV_AVX512_NR
#define NV (NR / 8)

/* max over the 8 lanes (exact in any order) */
static double lane_max(akv_v8d v) {
    double m = v[0];
    for (int l = 1; l < 8; ++l) m = v[l] > m ? v[l] : m;
    return m;
}

/* y / s correctly rounded, from r = RN(1/s) (Markstein): y0 = RN(y r) is faithful, e = y - y0 s is exact with
 * FMA, RN(y0 + e r) = RN(y / s). A vdivpd costs as much as a quarter of the tile's FMAs; these 3 operations do
 * not. Non-finite y gives NaN or inf, which the caller's check rejects either way. */
static akv_v8d div_by(akv_v8d y, akv_v8d s, akv_v8d r) {
    const akv_v8d y0 = y * r;
    const akv_v8d e = y - y0 * s;
    return y0 + e * r;
}

void akv_logits_avx512(const double * qpack, int64_t n_blocks, const double * kpack, int32_t d, double sqrt_d,
                       int64_t nmax, double * z, int64_t ldz, double * rowmax, double * chk) {
    const akv_v8d s = (akv_v8d) { 0 } + sqrt_d, r = (akv_v8d) { 0 } + 1.0 / sqrt_d;
    const akv_v8d ninf = (akv_v8d) { 0 } + (double) -INFINITY;
    const akv_v8d lane = { 0, 1, 2, 3, 4, 5, 6, 7 };
    akv_v8i keep[NV];   /* -1 on the columns that count for the row maxima (j < nmax) */
    for (int c = 0; c < NV; ++c) keep[c] = lane + (double) (8 * c) < (akv_v8d) { 0 } + (double) nmax;
    akv_v8d ck = { 0 };
    for (int64_t b = 0; b < n_blocks; ++b) {
        akv_v8d a[MR][NV];
        for (int i = 0; i < MR; ++i) for (int c = 0; c < NV; ++c) a[i][c] = (akv_v8d) { 0 };
        const double * q = qpack + b * (int64_t) d * MR;
        for (int32_t t = 0; t < d; ++t) {
            akv_v8d k0, k1, k2;
            memcpy(&k0, kpack + (int64_t) t * NR, sizeof k0);
            memcpy(&k1, kpack + (int64_t) t * NR + 8, sizeof k1);
            memcpy(&k2, kpack + (int64_t) t * NR + 16, sizeof k2);
            for (int i = 0; i < MR; ++i) {
                const double qi = q[(int64_t) t * MR + i];
                a[i][0] += qi * k0;
                a[i][1] += qi * k1;
                a[i][2] += qi * k2;
            }
        }
        for (int i = 0; i < MR; ++i) {
            double * zr = z + (b * MR + i) * ldz;
            akv_v8d m = ninf;
            for (int c = 0; c < NV; ++c) {
                const akv_v8d v = div_by(a[i][c], s, r);
                ck += v - v;
                memcpy(zr + 8 * c, &v, sizeof v);
                const akv_v8d vm = (akv_v8d) (((akv_v8i) v & keep[c]) | ((akv_v8i) ninf & ~keep[c]));
                const akv_v8i gt = vm > m;
                m = (akv_v8d) (((akv_v8i) vm & gt) | ((akv_v8i) m & ~gt));
            }
            const double mm = lane_max(m);
            double * rm = rowmax + b * MR + i;
            if (mm > *rm) *rm = mm;
        }
    }
    double c = 0.0;
    for (int l = 0; l < 8; ++l) c += ck[l];
    *chk += c;
}

int akv_have_avx512_kernel(void) {
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("fma");
}

#else

void akv_logits_avx512(const double * qpack, int64_t n_blocks, const double * kpack, int32_t d, double sqrt_d,
                       int64_t nmax, double * z, int64_t ldz, double * rowmax, double * chk) {
    (void) qpack; (void) n_blocks; (void) kpack; (void) d; (void) sqrt_d; (void) nmax; (void) z; (void) ldz;
    (void) rowmax; (void) chk;
}

int akv_have_avx512_kernel(void) { return 0; }

#endif
