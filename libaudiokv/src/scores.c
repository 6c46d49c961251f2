/* Window scores of one query head (docs/semantics.md, "Window scores"):
 *   z[i, j] = q_i . k_j / sqrt(d), causal inside the window; A = softmax over all N keys;
 *   out[j] = sum (or mean) over the w rows of A[i, j], j in the prefix [0, N - w).
 * Everything in double. The dot products run over tiles of TJ keys transposed into a small buffer, RI query rows
 * at a time, so that the inner loop is independent across keys and vectorises without reassociation. */
#include "internal.h"

#include <math.h>
#include <stdatomic.h>
#include <string.h>

#define TJ 8   /* keys per tile */
#define RI 4   /* query rows per block (padding of the query rows) */

/* acc[i][jj] = sum_t qd[i][t] * kt[t][jj] for i < wpad (a multiple of RI), jj < TJ. Every variant computes each
 * element with the same sequence of multiplications and additions in t order (no FMA: -ffp-contract=off), so all
 * give bitwise identical results; they differ only in how many elements they compute at once. */
static void tile_dots_plain(const double * qd, const double * kt, int32_t d, int64_t wpad, double * acc) {
    for (int64_t i = 0; i < wpad; ++i) {
        double a[TJ] = { 0, 0, 0, 0, 0, 0, 0, 0 };
        const double * q = qd + i * d;
        for (int32_t t = 0; t < d; ++t) {
            for (int jj = 0; jj < TJ; ++jj) a[jj] += q[t] * kt[(int64_t) t * TJ + jj];
        }
        memcpy(acc + i * TJ, a, sizeof a);
    }
}

#if defined(__GNUC__) || defined(__clang__)
/* GCC/Clang vector extensions (not intrinsics): 2 doubles map to SSE2 on x86-64 and NEON on ARM64. */
typedef double akv_v2d __attribute__((vector_size(16)));

static void tile_dots_v2(const double * qd, const double * kt, int32_t d, int64_t wpad, double * acc) {
    for (int64_t i0 = 0; i0 < wpad; i0 += 2) {
        akv_v2d a[2][4];
        for (int r = 0; r < 2; ++r) for (int u = 0; u < 4; ++u) a[r][u] = (akv_v2d) { 0.0, 0.0 };
        const double * q0 = qd + i0 * d;
        for (int32_t t = 0; t < d; ++t) {
            akv_v2d k[4];
            memcpy(k, kt + (int64_t) t * TJ, sizeof k);
            for (int r = 0; r < 2; ++r) {
                const double q = q0[(int64_t) r * d + t];
                const akv_v2d qv = { q, q };
                for (int u = 0; u < 4; ++u) a[r][u] += qv * k[u];
            }
        }
        memcpy(acc + i0 * TJ, a, sizeof a);
    }
}
#endif

#if (defined(__GNUC__) || defined(__clang__)) && (defined(__x86_64__) || defined(__i386__)) && \
    !defined(AUDIOKV_NO_AVX2)
#define AKV_AVX2_KERNEL 1
typedef double akv_v4d __attribute__((vector_size(32)));

/* the same kernel in 4-wide vectors, compiled for AVX2 and chosen at run time */
__attribute__((target("avx2")))
static void tile_dots_v4(const double * qd, const double * kt, int32_t d, int64_t wpad, double * acc) {
    for (int64_t i0 = 0; i0 < wpad; i0 += RI) {
        akv_v4d a[RI][2];
        for (int r = 0; r < RI; ++r) { a[r][0] = (akv_v4d) { 0, 0, 0, 0 }; a[r][1] = (akv_v4d) { 0, 0, 0, 0 }; }
        const double * q0 = qd + i0 * d;
        for (int32_t t = 0; t < d; ++t) {
            akv_v4d k0, k1;
            memcpy(&k0, kt + (int64_t) t * TJ, sizeof k0);
            memcpy(&k1, kt + (int64_t) t * TJ + 4, sizeof k1);
            for (int r = 0; r < RI; ++r) {
                const double q = q0[(int64_t) r * d + t];
                const akv_v4d qv = { q, q, q, q };
                a[r][0] += qv * k0;
                a[r][1] += qv * k1;
            }
        }
        memcpy(acc + i0 * TJ, a, sizeof a);
    }
}
#endif

static void tile_dots(const double * qd, const double * kt, int32_t d, int64_t wpad, double * acc) {
#if defined(AKV_AVX2_KERNEL) && defined(AUDIOKV_AVX512_KERNEL)
    static atomic_int avx512 = -1;   /* CPU check done once; every thread would store the same value */
    int have = atomic_load_explicit(&avx512, memory_order_relaxed);
    if (have < 0) {
        have = akv_have_avx512_kernel();
        atomic_store_explicit(&avx512, have, memory_order_relaxed);
    }
    if (have) { akv_tile_dots_avx512(qd, kt, d, wpad, acc); return; }
#endif
#if defined(AKV_AVX2_KERNEL)
    if (__builtin_cpu_supports("avx2")) { tile_dots_v4(qd, kt, d, wpad, acc); return; }
#endif
#if defined(__GNUC__) || defined(__clang__)
    tile_dots_v2(qd, kt, d, wpad, acc);
    (void) tile_dots_plain;
#else
    tile_dots_plain(qd, kt, d, wpad, acc);
#endif
}

static int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

/* exp(x - shift) for x - shift <= 0 to about 1 ulp; results below 2^-1022 are flushed to zero (they round to 0 in
 * float32 anyway). Cody-Waite reduction x = k ln2 + r, |r| <= ln2/2, Taylor polynomial of degree 13, scaling by 2^k
 * through the exponent bits. The scalar and the AVX2 vector versions run the same operations (bitwise equal). */
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

static double exp_one(double v) {
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

#if defined(AKV_AVX2_KERNEL)
typedef int64_t akv_v4i __attribute__((vector_size(32)));
typedef uint64_t akv_v4u __attribute__((vector_size(32)));

__attribute__((target("avx2")))
static int64_t exp_block_v4(double * x, int64_t n, double shift) {
    const akv_v4d sh = { shift, shift, shift, shift };
    const akv_v4d lim = { EXP_LIMIT, EXP_LIMIT, EXP_LIMIT, EXP_LIMIT };
    int64_t j = 0;
    for (; j + 4 <= n; j += 4) {
        akv_v4d v;
        memcpy(&v, x + j, sizeof v);
        v = v - sh;
        const akv_v4i low = v < lim;                            /* -1 where below the limit */
        const akv_v4d vc = (akv_v4d) (((akv_v4i) v & ~low) | ((akv_v4i) lim & low));
        akv_v4d kd = vc * EXP_LOG2E + EXP_ROUND;
        const akv_v4i kb = (akv_v4i) kd;
        kd = kd - EXP_ROUND;
        akv_v4d r = vc - kd * EXP_LN2_HI;
        r = r - kd * EXP_LN2_LO;
        akv_v4d p;
        EXP_POLY(p, r);
        const akv_v4u sb = ((akv_v4u) (kb - EXP_ROUND_BITS + 1023)) << 52;
        const akv_v4d e = p * (akv_v4d) sb;
        const akv_v4d out = (akv_v4d) ((akv_v4i) e & ~low);
        memcpy(x + j, &out, sizeof out);
    }
    return j;
}
#endif

static void exp_shifted(double * x, int64_t n, double shift) {
    int64_t j = 0;
#if defined(AKV_AVX2_KERNEL)
    if (__builtin_cpu_supports("avx2")) j = exp_block_v4(x, n, shift);
#endif
    for (; j < n; ++j) x[j] = exp_one(x[j] - shift);
}

/* one row of d elements of any supported type -> double; fbuf holds d floats (alignment-safe copies) */
static void load_row(const char * src, int32_t type, int32_t d, double * dst, float * fbuf,
                     audiokv_to_float_fn to_float, void * user_data, const float * f16) {
    switch (type) {
        case AUDIOKV_TYPE_F32:
            memcpy(fbuf, src, (size_t) d * sizeof(float));
            for (int32_t t = 0; t < d; ++t) dst[t] = (double) fbuf[t];
            break;
        case AUDIOKV_TYPE_F64:
            memcpy(dst, src, (size_t) d * sizeof(double));
            break;
        case AUDIOKV_TYPE_F16: {
            uint16_t * h = (uint16_t *) (void *) fbuf;
            memcpy(h, src, (size_t) d * sizeof(uint16_t));
            for (int32_t t = d - 1; t >= 0; --t) dst[t] = (double) f16[h[t]];
            break;
        }
        default:
            to_float(src, fbuf, d, user_data);
            for (int32_t t = 0; t < d; ++t) dst[t] = (double) fbuf[t];
            break;
    }
}

/* max of x[0..n), n >= 1, with 8 independent partial maxima (exact: the order of a max does not matter) */
static double row_max(const double * x, int64_t n) {
    double p[8];
    for (int u = 0; u < 8; ++u) p[u] = x[0];
    int64_t j = 0;
    for (; j + 8 <= n; j += 8) {
        for (int u = 0; u < 8; ++u) p[u] = x[j + u] > p[u] ? x[j + u] : p[u];
    }
    for (; j < n; ++j) p[0] = x[j] > p[0] ? x[j] : p[0];
    double m = p[0];
    for (int u = 1; u < 8; ++u) m = p[u] > m ? p[u] : m;
    return m;
}

int64_t akv_scores_scratch_len(int32_t n_heads, int32_t w, int64_t n_tokens, int32_t head_dim) {
    return n_heads * round_up(w, RI) * head_dim   /* queries as double */
         + (int64_t) head_dim * TJ                 /* transposed key tile */
         + (int64_t) n_heads * w * n_tokens        /* logits / probabilities */
         + 2 * (int64_t) head_dim                  /* one key row as double, and as float for to_float */
         + round_up(w, RI) * TJ;                   /* dot products of one tile */
}

int akv_window_scores(const struct akv_query_view * q, int32_t n_heads, const struct akv_key_view * k, int32_t w,
                      int64_t n_tokens, int32_t head_dim, int mean, double * out, int64_t out_stride,
                      double * scratch) {
    const int32_t d = head_dim;
    const int64_t N = n_tokens, n = N - w, wpad = round_up(w, RI);
    double * qd = scratch;
    double * kt = qd + n_heads * wpad * d;
    double * z = kt + (int64_t) d * TJ;
    double * krow = z + (int64_t) n_heads * w * N;
    float * fbuf = (float *) (krow + d);
    double * acc = krow + 2 * (int64_t) d;
    const float * f16 = akv_f16_table();
    const double sqrt_d = sqrt((double) d);

    for (int32_t h = 0; h < n_heads; ++h) {
        double * qh = qd + h * wpad * d;
        for (int32_t i = 0; i < w; ++i) {
            load_row(q[h].base + (size_t) i * q[h].nb_row, q[h].type, d, qh + (int64_t) i * d, fbuf, NULL, NULL, f16);
        }
        memset(qh + (int64_t) w * d, 0, (size_t) ((wpad - w) * d) * sizeof(double));
    }

    /* every key tile is converted once and serves the n_heads query heads that read this KV head */
    double chk[TJ] = { 0, 0, 0, 0, 0, 0, 0, 0 };   /* sums of z * 0: NaN once any logit is NaN or infinite */
    for (int64_t j0 = 0; j0 < N; j0 += TJ) {
        const int64_t nj = N - j0 < TJ ? N - j0 : TJ;
        for (int64_t jj = 0; jj < TJ; ++jj) {
            if (jj < nj) {
                load_row(k->base + (size_t) (j0 + jj) * k->nb_token, k->type, d, krow, fbuf, k->to_float,
                         k->user_data, f16);
                for (int32_t t = 0; t < d; ++t) kt[(int64_t) t * TJ + jj] = krow[t];
            } else {
                for (int32_t t = 0; t < d; ++t) kt[(int64_t) t * TJ + jj] = 0.0;
            }
        }
        for (int32_t h = 0; h < n_heads; ++h) {
            tile_dots(qd + h * wpad * d, kt, d, wpad, acc);
            for (int64_t i = 0; i < w; ++i) {
                double * zr = z + ((int64_t) h * w + i) * N + j0;
                const double * ar = acc + i * TJ;
                for (int64_t jj = 0; jj < nj; ++jj) {
                    const double v = ar[jj] / sqrt_d;
                    chk[jj] += v * 0.0;
                    zr[jj] = v;
                }
            }
        }
    }
    for (int jj = 0; jj < TJ; ++jj) {
        if (chk[jj] != 0.0) return AUDIOKV_ERR_NONFINITE;
    }

    for (int32_t h = 0; h < n_heads; ++h) {
        double * o = out + h * out_stride;
        for (int64_t j = 0; j < n; ++j) o[j] = 0.0;
        for (int32_t i = 0; i < w; ++i) {
            double * zr = z + ((int64_t) h * w + i) * N;
            const int64_t valid = n + i + 1;   /* keys 0 .. N - w + i */
            double m = row_max(zr, valid);
            exp_shifted(zr, valid, m);
            double part[8] = { 0, 0, 0, 0, 0, 0, 0, 0 };
            int64_t j = 0;
            for (; j + 8 <= valid; j += 8) {
                for (int u = 0; u < 8; ++u) part[u] += zr[j + u];
            }
            double sum = ((part[0] + part[1]) + (part[2] + part[3])) + ((part[4] + part[5]) + (part[6] + part[7]));
            for (; j < valid; ++j) sum += zr[j];
            const double inv = 1.0 / sum;
            for (int64_t c = 0; c < n; ++c) o[c] += zr[c] * inv;
        }
        if (mean) {
            for (int64_t j = 0; j < n; ++j) o[j] /= (double) w;
        }
    }
    return AUDIOKV_OK;
}
