/* Window scores of one query head group (docs/semantics.md, "Window scores"):
 *   z[i, j] = q_i . k_j / sqrt(d), causal inside the window; A = softmax over all N keys;
 *   out[j] = sum (or mean) over the w rows of A[i, j], j in the prefix [0, N - w).
 * Everything in double. The g query heads reading one KV head form one matrix of g*w rows, packed once; the keys
 * are converted to double one tile at a time and the tile serves every row (a small matrix product in register
 * tiles, the logits kernel). The kernel also divides by sqrt(d), checks finiteness and keeps the running maximum
 * of each row over the prefix, so the softmax needs one more pass: exp and sum, then the scaled accumulation.
 *
 * Kernels (internal.h, akv_logits_fn): AVX-512F+FMA (scores_avx512.c), AVX2, 2-wide vectors (SSE2 / NEON) and
 * plain C. The portable ones compute every element with the same multiplications and additions in t order (no
 * FMA: -ffp-contract=off), so they give bitwise identical results; they differ only in how many elements they
 * compute at once. The environment variable AUDIOKV_SCORE_KERNEL=avx512|avx2|v2|plain (read once) picks a
 * kernel this CPU supports, for tests and benchmarks. */
#include "internal.h"
#include "scores_exp.h"

#include <math.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#define MR_MAX 8    /* the largest rows per block of any kernel (the packing pads rows to it) */
#define NR_MAX 24   /* the largest keys per tile; the logit rows are padded to a multiple of it */
#define ACC_ROWS 4  /* probability rows added to the output in one pass */

struct logits_kernel {
    akv_logits_fn fn;
    int32_t mr, nr;
    const char * name;
};

/* One row's epilogue for the portable kernels: a[jj] for jj < nr -> z row, running max over jj < nmax, check. */
static inline void store_row(const double * a, int nr, double sqrt_d, int64_t nmax, double * zr, double * rowmax,
                             double * chk) {
    for (int jj = 0; jj < nr; ++jj) {
        const double v = a[jj] / sqrt_d;
        chk[jj] += v - v;
        zr[jj] = v;
    }
    double m = *rowmax;
    for (int64_t jj = 0; jj < nmax && jj < nr; ++jj) m = zr[jj] > m ? zr[jj] : m;
    *rowmax = m;
}

/* plain C: 4 rows x 8 keys */
static void logits_plain(const double * qpack, int64_t n_blocks, const double * kpack, int32_t d, double sqrt_d,
                         int64_t nmax, double * z, int64_t ldz, double * rowmax, double * chk) {
    double ck[8] = { 0, 0, 0, 0, 0, 0, 0, 0 };
    for (int64_t b = 0; b < n_blocks; ++b) {
        double a[4][8];
        memset(a, 0, sizeof a);
        const double * q = qpack + b * (int64_t) d * 4;
        for (int32_t t = 0; t < d; ++t) {
            const double * k = kpack + (int64_t) t * 8;
            for (int i = 0; i < 4; ++i) {
                for (int jj = 0; jj < 8; ++jj) a[i][jj] += q[(int64_t) t * 4 + i] * k[jj];
            }
        }
        for (int i = 0; i < 4; ++i) store_row(a[i], 8, sqrt_d, nmax, z + (b * 4 + i) * ldz, rowmax + b * 4 + i, ck);
    }
    for (int jj = 0; jj < 8; ++jj) *chk += ck[jj];
}

#if defined(__GNUC__) || defined(__clang__)
/* GCC/Clang vector extensions (not intrinsics): 2 doubles map to SSE2 on x86-64 and NEON on ARM64; 4 rows x 4
 * keys in 8 accumulators (x86-64 has 16 vector registers). */
typedef double akv_v2d __attribute__((vector_size(16)));

static void logits_v2(const double * qpack, int64_t n_blocks, const double * kpack, int32_t d, double sqrt_d,
                      int64_t nmax, double * z, int64_t ldz, double * rowmax, double * chk) {
    double ck[4] = { 0, 0, 0, 0 };
    for (int64_t b = 0; b < n_blocks; ++b) {
        akv_v2d a[4][2];
        for (int i = 0; i < 4; ++i) { a[i][0] = (akv_v2d) { 0.0, 0.0 }; a[i][1] = (akv_v2d) { 0.0, 0.0 }; }
        const double * q = qpack + b * (int64_t) d * 4;
        for (int32_t t = 0; t < d; ++t) {
            akv_v2d k0, k1;
            memcpy(&k0, kpack + (int64_t) t * 4, sizeof k0);
            memcpy(&k1, kpack + (int64_t) t * 4 + 2, sizeof k1);
            for (int i = 0; i < 4; ++i) {
                const double qi = q[(int64_t) t * 4 + i];
                const akv_v2d qv = { qi, qi };
                a[i][0] += qv * k0;
                a[i][1] += qv * k1;
            }
        }
        for (int i = 0; i < 4; ++i) {
            double row[4];
            memcpy(row, a[i], sizeof row);
            store_row(row, 4, sqrt_d, nmax, z + (b * 4 + i) * ldz, rowmax + b * 4 + i, ck);
        }
    }
    for (int jj = 0; jj < 4; ++jj) *chk += ck[jj];
}
#endif

#if (defined(__GNUC__) || defined(__clang__)) && (defined(__x86_64__) || defined(__i386__)) && \
    !defined(AUDIOKV_NO_AVX2)
#define AKV_AVX2_KERNEL 1
typedef double akv_v4d __attribute__((vector_size(32)));

/* 4-wide vectors compiled for AVX2 (no FMA) and chosen at run time: 4 rows x 8 keys */
__attribute__((target("avx2")))
static void logits_v4(const double * qpack, int64_t n_blocks, const double * kpack, int32_t d, double sqrt_d,
                      int64_t nmax, double * z, int64_t ldz, double * rowmax, double * chk) {
    double ck[8] = { 0, 0, 0, 0, 0, 0, 0, 0 };
    for (int64_t b = 0; b < n_blocks; ++b) {
        akv_v4d a[4][2];
        for (int i = 0; i < 4; ++i) { a[i][0] = (akv_v4d) { 0, 0, 0, 0 }; a[i][1] = (akv_v4d) { 0, 0, 0, 0 }; }
        const double * q = qpack + b * (int64_t) d * 4;
        for (int32_t t = 0; t < d; ++t) {
            akv_v4d k0, k1;
            memcpy(&k0, kpack + (int64_t) t * 8, sizeof k0);
            memcpy(&k1, kpack + (int64_t) t * 8 + 4, sizeof k1);
            for (int i = 0; i < 4; ++i) {
                const double qi = q[(int64_t) t * 4 + i];
                const akv_v4d qv = { qi, qi, qi, qi };
                a[i][0] += qv * k0;
                a[i][1] += qv * k1;
            }
        }
        for (int i = 0; i < 4; ++i) {
            double row[8];
            memcpy(row, a[i], sizeof row);
            store_row(row, 8, sqrt_d, nmax, z + (b * 4 + i) * ldz, rowmax + b * 4 + i, ck);
        }
    }
    for (int jj = 0; jj < 8; ++jj) *chk += ck[jj];
}

typedef int64_t akv_v4i __attribute__((vector_size(32)));
typedef uint64_t akv_v4u __attribute__((vector_size(32)));

/* exp and sum of one row in 4-wide vectors (AVX2, no FMA): the operations of exp_sum_plain, bitwise equal */
__attribute__((target("avx2")))
static double exp_sum_v4(double * z, int64_t n, double shift) {
    akv_v4d p0 = { 0, 0, 0, 0 }, p1 = { 0, 0, 0, 0 };   /* partial sums of lanes 0-3 and 4-7 of each block of 8 */
    int64_t j = 0;
    for (; j + 8 <= n; j += 8) {
        akv_v4d v0, v1, e0, e1;
        memcpy(&v0, z + j, sizeof v0);
        memcpy(&v1, z + j + 4, sizeof v1);
        v0 = v0 - shift;
        v1 = v1 - shift;
        AKV_EXP_VECTOR(akv_v4d, akv_v4i, akv_v4u, v0, e0);
        AKV_EXP_VECTOR(akv_v4d, akv_v4i, akv_v4u, v1, e1);
        memcpy(z + j, &e0, sizeof e0);
        memcpy(z + j + 4, &e1, sizeof e1);
        p0 += e0;
        p1 += e1;
    }
    double sum = ((p0[0] + p0[1]) + (p0[2] + p0[3])) + ((p1[0] + p1[1]) + (p1[2] + p1[3]));
    for (; j < n; ++j) {
        z[j] = akv_exp_nonpositive(z[j] - shift);
        sum += z[j];
    }
    return sum;
}
#endif

/* z[j] = exp(z[j] - shift), j < n; the sum over 8 interleaved partial sums of the full blocks of 8, combined
 * pairwise, then the tail in order (internal.h, akv_exp_sum_avx512: every version gives the same bits) */
static double exp_sum_plain(double * z, int64_t n, double shift) {
    double part[8] = { 0, 0, 0, 0, 0, 0, 0, 0 };
    int64_t j = 0;
    for (; j + 8 <= n; j += 8) {
        for (int u = 0; u < 8; ++u) {
            z[j + u] = akv_exp_nonpositive(z[j + u] - shift);
            part[u] += z[j + u];
        }
    }
    double sum = ((part[0] + part[1]) + (part[2] + part[3])) + ((part[4] + part[5]) + (part[6] + part[7]));
    for (; j < n; ++j) {
        z[j] = akv_exp_nonpositive(z[j] - shift);
        sum += z[j];
    }
    return sum;
}

/* o[c] += e[r][c] * inv[r], rows r in order (one pass over o for several rows; same bits as row by row) */
static void accumulate_rows_plain(double * o, int64_t n, const double * const * e, const double * inv, int count) {
    for (int64_t c = 0; c < n; ++c) {
        double acc = o[c];
        for (int r = 0; r < count; ++r) acc += e[r][c] * inv[r];
        o[c] = acc;
    }
}

typedef double (*exp_sum_fn)(double * z, int64_t n, double shift);
typedef void (*accumulate_fn)(double * o, int64_t n, const double * const * e, const double * inv, int count);

struct score_kernels {
    struct logits_kernel logits;
    exp_sum_fn exp_sum;
    accumulate_fn accumulate;
};

static int cpu_has(const char * name) {
#if defined(AKV_AVX2_KERNEL) && defined(AUDIOKV_AVX512_KERNEL)
    if (strcmp(name, "avx512") == 0) return akv_have_avx512_kernel();
#endif
#if defined(AKV_AVX2_KERNEL)
    if (strcmp(name, "avx2") == 0) return __builtin_cpu_supports("avx2");
#endif
#if defined(__GNUC__) || defined(__clang__)
    if (strcmp(name, "v2") == 0) return 1;
#endif
    return strcmp(name, "plain") == 0;
}

static struct score_kernels kernels_named(const char * name) {
    struct score_kernels k = { { logits_plain, 4, 8, "plain" }, exp_sum_plain, accumulate_rows_plain };
#if defined(AKV_AVX2_KERNEL) && defined(AUDIOKV_AVX512_KERNEL)
    if (strcmp(name, "avx512") == 0) {
        k.logits = (struct logits_kernel) { akv_logits_avx512, AKV_AVX512_MR, AKV_AVX512_NR, "avx512" };
        k.exp_sum = akv_exp_sum_avx512;
        k.accumulate = akv_accumulate_rows_avx512;
        return k;
    }
#endif
#if defined(AKV_AVX2_KERNEL)
    if (strcmp(name, "avx2") == 0) {
        k.logits = (struct logits_kernel) { logits_v4, 4, 8, "avx2" };
        k.exp_sum = exp_sum_v4;
        return k;
    }
#endif
#if defined(__GNUC__) || defined(__clang__)
    if (strcmp(name, "v2") == 0) k.logits = (struct logits_kernel) { logits_v2, 4, 4, "v2" };
#endif
    return k;
}

/* the best kernel this CPU runs, or the one AUDIOKV_SCORE_KERNEL names (if this CPU runs it) */
static int choose_kernels(void) {
    static const char * const names[] = { "avx512", "avx2", "v2", "plain" };
    const char * want = getenv("AUDIOKV_SCORE_KERNEL");
    for (int i = 0; i < 4; ++i) {
        if (want && strcmp(want, names[i]) == 0) {
            if (cpu_has(names[i])) return i;
            akv_log(AUDIOKV_LOG_WARN, "AUDIOKV_SCORE_KERNEL=%s: not available on this CPU or build", want);
            break;
        }
    }
    if (want && *want && strcmp(want, "avx512") != 0 && strcmp(want, "avx2") != 0 && strcmp(want, "v2") != 0 &&
        strcmp(want, "plain") != 0) {
        akv_log(AUDIOKV_LOG_WARN, "AUDIOKV_SCORE_KERNEL=%s: unknown (avx512, avx2, v2, plain)", want);
    }
    for (int i = 0; i < 4; ++i) {
        if (cpu_has(names[i])) return i;
    }
    return 3;
}

static struct score_kernels score_kernels(void) {
    static const char * const names[] = { "avx512", "avx2", "v2", "plain" };
    static atomic_int chosen = -1;   /* chosen once; every thread would store the same value */
    int c = atomic_load_explicit(&chosen, memory_order_relaxed);
    if (c < 0) {
        c = choose_kernels();
        atomic_store_explicit(&chosen, c, memory_order_relaxed);
    }
    return kernels_named(names[c]);
}


static int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

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

int64_t akv_scores_scratch_len(int32_t n_heads, int32_t w, int64_t n_tokens, int32_t head_dim) {
    const int64_t rows = round_up((int64_t) n_heads * w, MR_MAX), ldz = round_up(n_tokens, NR_MAX);
    return rows * head_dim              /* packed queries */
         + (int64_t) head_dim * NR_MAX  /* packed key tile */
         + rows * ldz                   /* logits, then probabilities */
         + rows                         /* row maxima */
         + 2 * (int64_t) head_dim;      /* one row as double, and as float for to_float */
}

int akv_window_scores(const struct akv_query_view * q, int32_t n_heads, const struct akv_key_view * k, int32_t w,
                      int64_t n_tokens, int32_t head_dim, int mean, double * out, int64_t out_stride,
                      double * scratch) {
    const struct score_kernels kern = score_kernels();
    const int32_t d = head_dim, mr = kern.logits.mr, nr = kern.logits.nr;
    const int64_t N = n_tokens, n = N - w, ldz = round_up(N, NR_MAX);
    const int64_t n_rows = (int64_t) n_heads * w, rows = round_up(n_rows, MR_MAX);
    double * qpack = scratch;
    double * kpack = qpack + rows * d;
    double * z = kpack + (int64_t) d * NR_MAX;
    double * rowmax = z + rows * ldz;
    double * row = rowmax + rows;
    float * fbuf = (float *) (row + d);
    const float * f16 = akv_f16_table();
    const double sqrt_d = sqrt((double) d);

    /* queries: row r = h * w + i, packed in blocks of mr rows; padding rows are zero */
    memset(qpack, 0, (size_t) (rows * d) * sizeof(double));
    for (int64_t r = 0; r < n_rows; ++r) {
        const struct akv_query_view * qh = &q[r / w];
        load_row(qh->base + (size_t) (r % w) * qh->nb_row, qh->type, d, row, fbuf, NULL, NULL, f16);
        double * dst = qpack + (r / mr) * (int64_t) d * mr + r % mr;
        for (int32_t t = 0; t < d; ++t) dst[(int64_t) t * mr] = row[t];
    }
    for (int64_t r = 0; r < rows; ++r) rowmax[r] = -INFINITY;

    /* logits, one key tile at a time: each tile is converted once and serves every query row */
    double chk = 0.0;   /* NaN once any logit is NaN or infinite */
    const int64_t n_blocks = rows / mr;
    for (int64_t j0 = 0; j0 < N; j0 += nr) {
        const int64_t nj = N - j0 < nr ? N - j0 : nr;
        for (int64_t jj = 0; jj < nr; ++jj) {
            if (jj < nj) {
                load_row(k->base + (size_t) (j0 + jj) * k->nb_token, k->type, d, row, fbuf, k->to_float,
                         k->user_data, f16);
                for (int32_t t = 0; t < d; ++t) kpack[(int64_t) t * nr + jj] = row[t];
            } else {
                for (int32_t t = 0; t < d; ++t) kpack[(int64_t) t * nr + jj] = 0.0;
            }
        }
        const int64_t nmax = n - j0 < 0 ? 0 : (n - j0 < nr ? n - j0 : nr);   /* prefix columns of the tile */
        kern.logits.fn(qpack, n_blocks, kpack, d, sqrt_d, nmax, z + j0, ldz, rowmax, &chk);
    }
    if (chk != 0.0) return AUDIOKV_ERR_NONFINITE;

    /* softmax of each row over its valid keys 0 .. N - w + i, accumulated over the w rows of each head */
    for (int32_t h = 0; h < n_heads; ++h) {
        double * o = out + h * out_stride;
        for (int64_t j = 0; j < n; ++j) o[j] = 0.0;
        for (int32_t i0 = 0; i0 < w; i0 += ACC_ROWS) {
            const double * rows_e[ACC_ROWS];
            double inv[ACC_ROWS];
            const int count = w - i0 < ACC_ROWS ? (int) (w - i0) : ACC_ROWS;
            for (int u = 0; u < count; ++u) {
                const int64_t r = (int64_t) h * w + i0 + u, valid = n + i0 + u + 1;
                double * zr = z + r * ldz;
                double m = rowmax[r];
                for (int64_t j = n; j < valid; ++j) m = zr[j] > m ? zr[j] : m;
                inv[u] = 1.0 / kern.exp_sum(zr, valid, m);
                rows_e[u] = zr;
            }
            kern.accumulate(o, n, rows_e, inv, count);
        }
        if (mean) {
            for (int64_t j = 0; j < n; ++j) o[j] /= (double) w;
        }
    }
    return AUDIOKV_OK;
}
