/* Internal declarations shared by the libaudiokv sources (not installed). */
#ifndef AUDIOKV_INTERNAL_H
#define AUDIOKV_INTERNAL_H

#include "audiokv.h"

#include <stddef.h>
#include <stdint.h>

/* ---- complex FFT of any length (fft.c) ---- */
typedef struct { double re, im; } akv_cpx;

typedef struct akv_fft_plan akv_fft_plan;

/* Plan a forward complex FFT of length n >= 1; NULL when out of memory or n too large. */
akv_fft_plan * akv_fft_plan_new(int64_t n);
void           akv_fft_plan_free(akv_fft_plan * plan);
/* Scratch (in complex numbers) needed by akv_fft_forward / akv_rfft_exec / akv_irfft_exec. */
int64_t        akv_fft_scratch_len(const akv_fft_plan * plan);
/* out[k] = sum_j in[j] exp(-2 pi i j k / n); in and out distinct, neither inside scratch. */
void           akv_fft_forward(const akv_fft_plan * plan, const akv_cpx * in, akv_cpx * out, akv_cpx * scratch);
/* Real FFT: x[n] -> X[n/2 + 1] (numpy.fft.rfft). */
void           akv_rfft_exec(const akv_fft_plan * plan, const double * x, akv_cpx * X, akv_cpx * scratch);
/* Inverse real FFT: X[n/2 + 1] -> x[n] (numpy.fft.irfft(X, n)); x may not alias X. */
void           akv_irfft_exec(const akv_fft_plan * plan, const akv_cpx * X, double * x, akv_cpx * scratch);

/* ---- smoothing (sss.c, pool.c) ---- */
/* Scratch (in complex numbers) akv_sss_exec needs for a row of n, beside the plan's own. */
int64_t akv_sss_scratch_len(int64_t n);
/* SSS of one row; plan for length n (NULL allowed when n <= 1); out may equal x. */
void    akv_sss_exec(const akv_fft_plan * plan, const double * x, int64_t n, double alpha, double gamma,
                     double taper, double * out, akv_cpx * scratch);
/* Round a smoothed row to the absolute grid q = 2^(e - 24), max|x| = f 2^e, f in [0.5, 1) (docs/semantics.md):
 * FFT round-off (about 1e-16 max|x|) then cannot rank tokens whose smoothed score is about zero. */
void    akv_snap_to_row_grid(double * x, int64_t n);
/* Pooling; out must not alias x. */
void    akv_pool_exec(const double * x, int64_t n, int32_t kernel, int32_t pool_type, double * out);

/* ---- selection and integerisation (select.c, integerise.c) ---- */
/* Ranking key of a score: float32 rounding, larger key = ranked first; NaN lowest; ties by lower index. */
uint64_t akv_rank_key(double score, uint32_t index);
/* Indices of the k largest keys, written ascending to out; keys is scratch (reordered). */
void     akv_select_top_exec(const double * scores, int64_t n, int64_t k, int32_t * out, uint64_t * keys);
/* Count, per row, how many of the top k of the concatenated rows (row r has row_len[r] entries; flat index = the
 * earlier rows' lengths + j, below 2^32) fall in row r. keys: scratch of sum(row_len). */
void     akv_select_top_rows(const double * scores, int64_t n_rows, const int64_t * row_len, int64_t k,
                             int64_t * counts, uint64_t * keys);
/* Largest remainder; returns AUDIOKV_OK or AUDIOKV_ERR_SIZE. hi_each: per-entry upper bounds [n], or NULL for hi.
 * Scratch: frac [n], order [n], tmp [n]. */
int      akv_integerise_exec(const double * r, int64_t n, int64_t total, int64_t lo, int64_t hi,
                             const int64_t * hi_each, int64_t * b, double * frac, int64_t * order, int64_t * tmp);

/* ---- f16 (f16.c) ---- */
double akv_f16_to_double(uint16_t h);
/* 65536-entry binary16 -> float table (built once, thread safe). */
const float * akv_f16_table(void);

/* ---- window scores (scores.c) ---- */
/* Per-thread scratch of the window-score kernel for n_heads query heads at once, in doubles. */
int64_t akv_scores_scratch_len(int32_t n_heads, int32_t w, int64_t n_tokens, int32_t head_dim);
/* Column scores of n_heads query heads reading the same KV head: out[h * out_stride + j] = sum (or mean) over
 * the w window rows of the causal softmax, j in [0, n_tokens - w). Returns AUDIOKV_OK or AUDIOKV_ERR_NONFINITE. */
struct akv_key_view {
    const char * base;            /* token 0 of this KV head */
    size_t nb_token;
    int32_t type;
    audiokv_to_float_fn to_float;
    void * user_data;
};
struct akv_query_view {
    const char * base;            /* row 0 of this query head */
    size_t nb_row;
    int32_t type;
};
int akv_window_scores(const struct akv_query_view * q, int32_t n_heads, const struct akv_key_view * k, int32_t w,
                      int64_t n_tokens, int32_t head_dim, int mean, double * out, int64_t out_stride,
                      double * scratch);

/* ---- window-score kernels (scores.c dispatches; scores_avx512.c, scores_softmax_avx512.c: stubs elsewhere) ----
 * Logits of one tile of nr keys for all packed query rows: queries packed [n_blocks][d][mr] (block b holds rows
 * b*mr .. b*mr + mr - 1, element t of row i at b*d*mr + t*mr + i), keys packed [d][nr]. For every row r and tile
 * column j < nr: z[r*ldz + j] = (sum over t in order of q[r][t] k[j][t]) / sqrt_d (the nr columns are always
 * written); rowmax[r] = max(rowmax[r], z[r][j] for j < nmax); *chk += sum of (z - z) (NaN once a logit is not
 * finite). */
typedef void (*akv_logits_fn)(const double * qpack, int64_t n_blocks, const double * kpack, int32_t d,
                              double sqrt_d, int64_t nmax, double * z, int64_t ldz, double * rowmax, double * chk);
#define AKV_AVX512_MR 8
#define AKV_AVX512_NR 24
/* AVX-512F + FMA logits kernel, mr = AKV_AVX512_MR, nr = AKV_AVX512_NR */
void   akv_logits_avx512(const double * qpack, int64_t n_blocks, const double * kpack, int32_t d, double sqrt_d,
                         int64_t nmax, double * z, int64_t ldz, double * rowmax, double * chk);
int    akv_have_avx512_kernel(void);
/* z[j] = exp(z[j] - shift) for j < n (all z[j] - shift <= 0); returns sum z[j] over 8 interleaved partial sums
 * of the full blocks of 8, combined ((0+1)+(2+3))+((4+5)+(6+7)), then the tail in order. AVX-512F, no FMA. */
double akv_exp_sum_avx512(double * z, int64_t n, double shift);
/* o[c] += e[r][c] * inv[r] for r = 0 .. count - 1 in order, c < n (mul then add: the bits of the row-by-row loop).
 * AVX-512F, no FMA. */
void   akv_accumulate_rows_avx512(double * o, int64_t n, const double * const * e, const double * inv, int count);

/* ---- budgets (budgets.c) ---- */
struct akv_budget_input {
    int32_t method;
    int32_t n_layer, n_head_kv;
    int64_t n_tokens, w, C;         /* n_tokens = positions seen; C = per-head uniform budget, w < C < n_tokens */
    const struct audiokv_params * params;
    const double * profile;         /* [n_layer * n_head_kv] or NULL */
    const double * scores;          /* smoothed prefix rows, concatenated in (l, h) row-major order (adakv) */
    const int64_t * caps;           /* [n_layer * n_head_kv] entries each head holds (n_tokens in a uniform cache) */
    const int64_t * row_len;        /* [n_layer * n_head_kv] prefix lengths caps - w */
};
/* Cap real budgets at caps and share the surplus among the never-capped entries, by weights (NULL or all zero:
 * equally), until none exceeds its cap or all are capped (docs/semantics.md, ragged "Caps"). clipped: scratch [n]. */
void akv_cap_and_share(double * real, int64_t n, const int64_t * caps, const double * weights, int64_t * clipped);
/* Writes b[n_layer * n_head_kv]; scratch: dscratch 3 * L * Hkv doubles, iscratch 3 * L * Hkv + Hkv int64, keys
 * the longest layer's sum of row_len (adakv). */
int akv_budgets(const struct akv_budget_input * in, int64_t * b, double * dscratch, int64_t * iscratch,
                uint64_t * keys);

/* ---- threads (threads.c) ---- */
typedef int (*akv_task_fn)(void * arg, int64_t task, int thread);
/* Run tasks 0..n_tasks-1 on n_threads threads (thread index 0..n_threads-1 passed to fn); first error wins
 * (the error of the lowest failing task). Returns AUDIOKV_OK, the task's error, or AUDIOKV_ERR_THREAD. */
int akv_parallel_for(int n_threads, int64_t n_tasks, akv_task_fn fn, void * arg);
int akv_online_cores(void);

/* ---- logging (log.c) ---- */
void akv_log(enum audiokv_log_level level, const char * fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;

/* ---- params (params.c) ---- */
int akv_params_check(const struct audiokv_params * p);

#endif
