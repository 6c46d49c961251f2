/* Window scores of one query head (docs/semantics.md, "Window scores"):
 *   z[i, j] = q_i . k_j / sqrt(d), causal inside the window; A = softmax over all N keys;
 *   out[j] = sum (or mean) over the w rows of A[i, j], j in the prefix [0, N - w).
 * Everything in double. The dot products run over tiles of TJ keys transposed into a small buffer, RI query rows
 * at a time, so that the inner loop is independent across keys and vectorises without reassociation. */
#include "internal.h"

#include <math.h>
#include <string.h>

#define TJ 8   /* keys per tile */
#define RI 4   /* query rows per register block */

static int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

int64_t akv_scores_scratch_len(int32_t w, int64_t n_tokens, int32_t head_dim) {
    return round_up(w, RI) * head_dim      /* queries as double */
         + (int64_t) head_dim * TJ          /* transposed key tile */
         + (int64_t) w * n_tokens           /* logits / probabilities */
         + 2 * (int64_t) head_dim;          /* one key row as double, and as float for to_float */
}

/* exp(x) for x <= 0 to about 1 ulp; results below 2^-1022 are flushed to zero (they round to 0 in float32 anyway).
 * Plain C written to vectorise: Cody-Waite reduction x = k ln2 + r, |r| <= ln2/2, Taylor polynomial of degree 13,
 * scaling by 2^k through the exponent bits. */
static void exp_shifted(double * x, int64_t n, double shift) {
    const double log2e = 1.44269504088896338700e+00;
    const double ln2_hi = 6.93147180369123816490e-01, ln2_lo = 1.90821492927058770002e-10;
    const double round_shift = 6755399441055744.0; /* 1.5 * 2^52 */
    const uint64_t round_shift_bits = 0x4338000000000000ULL;
    for (int64_t j = 0; j < n; ++j) {
        const double v = x[j] - shift;
        const double vc = v < -708.0 ? -708.0 : v;
        double kd = vc * log2e + round_shift;
        uint64_t kb;
        memcpy(&kb, &kd, sizeof kb);
        kd -= round_shift;
        double r = vc - kd * ln2_hi;
        r = r - kd * ln2_lo;
        double p = 1.0 / 6227020800.0;
        p = p * r + 1.0 / 479001600.0;
        p = p * r + 1.0 / 39916800.0;
        p = p * r + 1.0 / 3628800.0;
        p = p * r + 1.0 / 362880.0;
        p = p * r + 1.0 / 40320.0;
        p = p * r + 1.0 / 5040.0;
        p = p * r + 1.0 / 720.0;
        p = p * r + 1.0 / 120.0;
        p = p * r + 1.0 / 24.0;
        p = p * r + 1.0 / 6.0;
        p = p * r + 0.5;
        p = p * r + 1.0;
        p = p * r + 1.0;
        const uint64_t sb = (kb - round_shift_bits + 1023u) << 52;
        double s;
        memcpy(&s, &sb, sizeof s);
        x[j] = v < -708.0 ? 0.0 : p * s;
    }
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

int akv_window_scores(const struct akv_query_view * q, const struct akv_key_view * k, int32_t w, int64_t n_tokens,
                      int32_t head_dim, int mean, double * out, double * scratch) {
    const int32_t d = head_dim;
    const int64_t N = n_tokens, n = N - w, wpad = round_up(w, RI);
    double * qd = scratch;
    double * kt = qd + wpad * d;
    double * z = kt + (int64_t) d * TJ;
    double * krow = z + (int64_t) w * N;
    float * fbuf = (float *) (krow + d);
    const float * f16 = akv_f16_table();
    const double sqrt_d = sqrt((double) d);

    for (int32_t i = 0; i < w; ++i) {
        load_row(q->base + (size_t) i * q->nb_row, q->type, d, qd + (int64_t) i * d, fbuf, NULL, NULL, f16);
    }
    memset(qd + (int64_t) w * d, 0, (size_t) ((wpad - w) * d) * sizeof(double));

    int finite = 1;
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
        for (int64_t i0 = 0; i0 < wpad; i0 += RI) {
            double acc[RI][TJ];
            memset(acc, 0, sizeof acc);
            const double * q0 = qd + i0 * d;
            for (int32_t t = 0; t < d; ++t) {
                const double * kv = kt + (int64_t) t * TJ;
                for (int r = 0; r < RI; ++r) {
                    const double qv = q0[(int64_t) r * d + t];
                    for (int jj = 0; jj < TJ; ++jj) acc[r][jj] += qv * kv[jj];
                }
            }
            for (int r = 0; r < RI; ++r) {
                const int64_t i = i0 + r;
                if (i >= w) break;
                double * zr = z + i * N + j0;
                for (int64_t jj = 0; jj < nj; ++jj) {
                    const double v = acc[r][jj] / sqrt_d;
                    finite &= isfinite(v) != 0;
                    zr[jj] = v;
                }
            }
        }
    }
    if (!finite) return AUDIOKV_ERR_NONFINITE;

    for (int64_t j = 0; j < n; ++j) out[j] = 0.0;
    for (int32_t i = 0; i < w; ++i) {
        double * zr = z + (int64_t) i * N;
        const int64_t valid = n + i + 1;   /* keys 0 .. N - w + i */
        double m = zr[0];
        for (int64_t j = 1; j < valid; ++j) m = zr[j] > m ? zr[j] : m;
        exp_shifted(zr, valid, m);
        double part[8] = { 0, 0, 0, 0, 0, 0, 0, 0 };
        int64_t j = 0;
        for (; j + 8 <= valid; j += 8) {
            for (int u = 0; u < 8; ++u) part[u] += zr[j + u];
        }
        double sum = ((part[0] + part[1]) + (part[2] + part[3])) + ((part[4] + part[5]) + (part[6] + part[7]));
        for (; j < valid; ++j) sum += zr[j];
        const double inv = 1.0 / sum;
        for (int64_t c = 0; c < n; ++c) out[c] += zr[c] * inv;
    }
    if (mean) {
        for (int64_t j = 0; j < n; ++j) out[j] /= (double) w;
    }
    return AUDIOKV_OK;
}
