/* exp(x - shift) for x - shift <= 0 to about 1 ulp, shared by every softmax variant (scores.c and
 * scores_softmax_avx512.c) so that all give bitwise equal results: Cody-Waite reduction x = k ln2 + r,
 * |r| <= ln2/2, Taylor polynomial of degree 13, scaling by 2^k through the exponent bits; results below 2^-1022 are
 * flushed to zero (they round to 0 in float32 anyway). Every file including this is compiled without FMA
 * contraction (-ffp-contract=off), so scalar and vector versions run the same roundings. */
#ifndef AUDIOKV_SCORES_EXP_H
#define AUDIOKV_SCORES_EXP_H

#include <stdint.h>
#include <string.h>

#define EXP_LOG2E 1.44269504088896338700e+00
#define EXP_LN2_HI 6.93147180369123816490e-01
#define EXP_LN2_LO 1.90821492927058770002e-10
#define EXP_ROUND 6755399441055744.0             /* 1.5 * 2^52 */
#define EXP_ROUND_BITS 0x4338000000000000LL
#define EXP_LIMIT (-708.0)
#define EXP_POLY(p, r) do { \
        p = r * 0.0 + 1.0 / 6227020800.0; p = p * r + 1.0 / 479001600.0; p = p * r + 1.0 / 39916800.0; \
        p = p * r + 1.0 / 3628800.0; p = p * r + 1.0 / 362880.0; p = p * r + 1.0 / 40320.0; \
        p = p * r + 1.0 / 5040.0; p = p * r + 1.0 / 720.0; p = p * r + 1.0 / 120.0; p = p * r + 1.0 / 24.0; \
        p = p * r + 1.0 / 6.0; p = p * r + 0.5; p = p * r + 1.0; p = p * r + 1.0; } while (0)

/* exp(v) for v <= 0 (scalar) */
static inline double akv_exp_nonpositive(double v) {
    const double vc = v < EXP_LIMIT ? EXP_LIMIT : v;
    double kd = vc * EXP_LOG2E + EXP_ROUND;
    int64_t kb;
    memcpy(&kb, &kd, sizeof kb);
    kd -= EXP_ROUND;
    double r = vc - kd * EXP_LN2_HI;
    r = r - kd * EXP_LN2_LO;
    double p;
    EXP_POLY(p, r);
    const uint64_t sb = (uint64_t) (kb - EXP_ROUND_BITS + 1023) << 52;
    double s;
    memcpy(&s, &sb, sizeof s);
    return v < EXP_LIMIT ? 0.0 : p * s;
}

/* The vector version for a GCC/Clang vector type VD of doubles with its int64 / uint64 twins VI / VU:
 * out = exp(v) lane by lane, the same operations as akv_exp_nonpositive. */
#define AKV_EXP_VECTOR(VD, VI, VU, v, out) do { \
        const VD lim_ = (VD) { 0 } + EXP_LIMIT; \
        const VI low_ = (v) < lim_;                                /* -1 where below the limit */ \
        const VD vc_ = (VD) (((VI) (v) & ~low_) | ((VI) lim_ & low_)); \
        VD kd_ = vc_ * EXP_LOG2E + EXP_ROUND; \
        const VI kb_ = (VI) kd_; \
        kd_ = kd_ - EXP_ROUND; \
        VD r_ = vc_ - kd_ * EXP_LN2_HI; \
        r_ = r_ - kd_ * EXP_LN2_LO; \
        VD p_; \
        EXP_POLY(p_, r_); \
        const VU sb_ = ((VU) (kb_ - EXP_ROUND_BITS + 1023)) << 52; \
        const VD e_ = p_ * (VD) sb_; \
        (out) = (VD) ((VI) e_ & ~low_); } while (0)

#endif
