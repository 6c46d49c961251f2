/* The softmax numerator of one logit row, and the accumulation of probability rows, for x86-64 CPUs with
 * AVX-512F, in GCC/Clang vector extensions (no intrinsics). Compiled with -mavx512f and WITHOUT FMA contraction
 * (CMakeLists.txt), it runs exactly the operations of the scalar and AVX2 versions in scores.c (scores_exp.h), so
 * its results are bitwise equal to theirs; called only after a run-time CPU check. */
#include "internal.h"
#include "scores_exp.h"

#if (defined(__GNUC__) || defined(__clang__)) && defined(__x86_64__) && defined(__AVX512F__)

typedef double akv_v8d __attribute__((vector_size(64)));
typedef int64_t akv_v8i __attribute__((vector_size(64)));
typedef uint64_t akv_v8u __attribute__((vector_size(64)));

double akv_exp_sum_avx512(double * z, int64_t n, double shift) {
    akv_v8d part = { 0 };
    int64_t j = 0;
    for (; j + 8 <= n; j += 8) {
        akv_v8d v, e;
        memcpy(&v, z + j, sizeof v);
        v = v - shift;
        AKV_EXP_VECTOR(akv_v8d, akv_v8i, akv_v8u, v, e);
        memcpy(z + j, &e, sizeof e);
        part += e;
    }
    double sum = ((part[0] + part[1]) + (part[2] + part[3])) + ((part[4] + part[5]) + (part[6] + part[7]));
    for (; j < n; ++j) {
        z[j] = akv_exp_nonpositive(z[j] - shift);
        sum += z[j];
    }
    return sum;
}

void akv_accumulate_rows_avx512(double * o, int64_t n, const double * const * e, const double * inv, int count) {
    int64_t c = 0;
    for (; c + 8 <= n; c += 8) {
        akv_v8d acc, v;
        memcpy(&acc, o + c, sizeof acc);
        for (int r = 0; r < count; ++r) {
            memcpy(&v, e[r] + c, sizeof v);
            acc = acc + v * inv[r];
        }
        memcpy(o + c, &acc, sizeof acc);
    }
    for (; c < n; ++c) {
        for (int r = 0; r < count; ++r) o[c] += e[r][c] * inv[r];
    }
}

#else

double akv_exp_sum_avx512(double * z, int64_t n, double shift) {
    (void) z; (void) n; (void) shift;
    return 0.0;
}

void akv_accumulate_rows_avx512(double * o, int64_t n, const double * const * e, const double * inv, int count) {
    (void) o; (void) n; (void) e; (void) inv; (void) count;
}

#endif
