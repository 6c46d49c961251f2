/*
 * audiokv.h - libaudiokv: per-head KV-cache keep plans (AudioKV, arXiv 2604.06694, and its baselines).
 *
 * The library scores the cached tokens of one sequence from the queries of its last w tokens (the observation
 * window), smooths the scores (pooling or Spectral Score Smoothing), sizes a budget per (layer, KV head) and selects
 * the tokens each head keeps. It follows docs/semantics.md token for token, like the NumPy reference
 * (audiokv_edge.plan, backend="numpy").
 *
 * Usage
 * -----
 *     struct audiokv_params p = audiokv_default_params(AUDIOKV_METHOD_AUDIOKV);
 *     p.n_threads = 0;                                    // all cores
 *     struct audiokv_context * ctx = NULL;
 *     if (audiokv_init(&p, n_layer, n_head, n_head_kv, head_dim, n_tokens, &ctx) != AUDIOKV_OK) { ... }
 *     int32_t w = audiokv_window(ctx);                   // = min(p.window, n_tokens) query rows per head
 *     for (int32_t il = 0; il < n_layer; ++il) {          // in any order, e.g. from an eval callback
 *         // q: [n_head][w][head_dim] f32 (byte strides per head and per row);
 *         // k: token-major cache rows, element type AUDIOKV_TYPE_F32 / _F16 / _F64 / _OTHER (+ to_float)
 *         audiokv_add_layer(ctx, il, q, AUDIOKV_TYPE_F32, q_nb_head, q_nb_row,
 *                           k, AUDIOKV_TYPE_F16, k_nb_token, k_nb_head, NULL, NULL);
 *     }
 *     int64_t cap = audiokv_plan_capacity(ctx);           // n_layer * n_head_kv * n_tokens, always enough
 *     int32_t * counts = malloc(n_layer * n_head_kv * sizeof *counts);
 *     int32_t * idx    = malloc(cap * sizeof *idx);
 *     int64_t   total  = 0;
 *     if (audiokv_plan(ctx, 0.4, profile, n_layer, n_head_kv, counts, idx, cap, &total) != AUDIOKV_OK) { ... }
 *     // head (l, h) keeps the sorted tokens idx[off .. off + counts[l*n_head_kv + h]), off = sum of earlier counts
 *     audiokv_free(ctx);
 *
 * Thread safety
 * -------------
 * A context is not thread safe: calls on ONE context must not overlap. Distinct contexts may be used from
 * different threads at the same time. audiokv_add_layer and audiokv_plan run up to params.n_threads worker threads
 * internally (pthreads) and return after joining them. Results are bitwise identical for any n_threads.
 * The free functions (audiokv_default_params, audiokv_status_string, audiokv_rfft, audiokv_irfft, audiokv_sss,
 * audiokv_pool, audiokv_select_top, audiokv_integerise) are thread safe. audiokv_log_set is not (call it once at
 * start-up).
 *
 * Memory
 * ------
 * audiokv_init allocates everything (scores [n_layer][n_head_kv][n_tokens - w] doubles plus per-thread scratch of
 * about (w + 4) * n_tokens doubles); audiokv_init_ragged the same for the heads' own prefix rows (sum of
 * n_entries - w doubles, scratch for the longest head) plus, for audiokv with SSS, one FFT plan per distinct prefix
 * length; audiokv_set_audio_mask one FFT plan per distinct length of its audio runs; add_layer and plan allocate
 * nothing. Output buffers belong to the caller.
 *
 * Status codes: every function returning int returns AUDIOKV_OK (0) or one negative enum audiokv_status value;
 * on error no output is written unless the function says otherwise, and the context stays usable.
 */
#ifndef AUDIOKV_H
#define AUDIOKV_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(_WIN32) && defined(AUDIOKV_SHARED)
#  ifdef AUDIOKV_BUILD
#    define AUDIOKV_API __declspec(dllexport)
#  else
#    define AUDIOKV_API __declspec(dllimport)
#  endif
#elif defined(__GNUC__)
#  define AUDIOKV_API __attribute__((visibility("default")))
#else
#  define AUDIOKV_API
#endif

#define AUDIOKV_VERSION_MAJOR 0
#define AUDIOKV_VERSION_MINOR 1

/* Status codes (int). */
enum audiokv_status {
    AUDIOKV_OK              =  0,
    AUDIOKV_ERR_NULL        = -1,  /* a required pointer argument is NULL */
    AUDIOKV_ERR_SIZE        = -2,  /* a size, count, index or stride is zero, negative, out of range or too large */
    AUDIOKV_ERR_KEEP        = -3,  /* keep ratio outside (0, 1] or NaN */
    AUDIOKV_ERR_PROFILE     = -4,  /* head profile of the wrong shape, negative, non-finite or all zero */
    AUDIOKV_ERR_PARAM       = -5,  /* a field of struct audiokv_params is invalid (unknown method, even pool kernel ...) */
    AUDIOKV_ERR_TYPE        = -6,  /* unknown key element type, or AUDIOKV_TYPE_OTHER without a to_float function */
    AUDIOKV_ERR_CAPACITY    = -7,  /* the caller's index buffer is too small (counts and *n_total are still written) */
    AUDIOKV_ERR_NOMEM       = -8,  /* allocation failed (only audiokv_init and the building-block helpers allocate) */
    AUDIOKV_ERR_STATE       = -9,  /* a layer's scores are missing when audiokv_plan needs them */
    AUDIOKV_ERR_THREAD      = -10, /* a worker thread could not be started */
    AUDIOKV_ERR_NONFINITE   = -11, /* NaN in the scores (from NaN/inf in queries or keys, or given scores) */
};

/* Methods, as in docs/semantics.md. */
enum audiokv_method {
    AUDIOKV_METHOD_FULL         = 0,
    AUDIOKV_METHOD_STREAMINGLLM = 1,
    AUDIOKV_METHOD_H2O          = 2,
    AUDIOKV_METHOD_SNAPKV       = 3,
    AUDIOKV_METHOD_PYRAMIDKV    = 4,
    AUDIOKV_METHOD_ADAKV        = 5,
    AUDIOKV_METHOD_AUDIOKV      = 6,
    AUDIOKV_METHOD_COUNT        = 7,
};

enum audiokv_pool_type  { AUDIOKV_POOL_AVG = 0, AUDIOKV_POOL_MAX = 1 };
enum audiokv_gqa_reduce { AUDIOKV_GQA_MEAN = 0, AUDIOKV_GQA_MAX = 1 };

/* Element type of cached keys. */
/* Element type of queries and cached keys (queries: F32, F16 or F64). */
enum audiokv_type {
    AUDIOKV_TYPE_F32   = 0,  /* IEEE binary32 */
    AUDIOKV_TYPE_F16   = 1,  /* IEEE binary16 (ggml_fp16_t) */
    AUDIOKV_TYPE_F64   = 2,  /* IEEE binary64 */
    AUDIOKV_TYPE_OTHER = 3,  /* keys only, any other layout (e.g. ggml quantized rows): converted by to_float */
};

/* Converts one row of n elements starting at src to n floats in dst (e.g. ggml type_traits->to_float, which has
 * this signature apart from user_data: wrap it). Called from worker threads: must be thread safe. */
typedef void (*audiokv_to_float_fn)(const void * src, float * dst, int64_t n, void * user_data);

/* Log levels and sink. The default sink writes warnings and errors to stderr. */
enum audiokv_log_level { AUDIOKV_LOG_DEBUG = 0, AUDIOKV_LOG_INFO = 1, AUDIOKV_LOG_WARN = 2, AUDIOKV_LOG_ERROR = 3 };
typedef void (*audiokv_log_fn)(enum audiokv_log_level level, const char * text, void * user_data);

/* Method parameters. Get them from audiokv_default_params(method) and change fields; unused fields are ignored. */
struct audiokv_params {
    int32_t method;         /* enum audiokv_method */
    int32_t window;         /* observation window in tokens (>= 1); the window used is min(window, n_tokens). 32 */
    int32_t pool_kernel;    /* odd >= 1, tokens; 1 = no pooling. snapkv/pyramidkv/adakv 5, others 1 */
    int32_t pool_type;      /* enum audiokv_pool_type. AVG */
    int32_t gqa_reduce;     /* enum audiokv_gqa_reduce: query heads -> KV head. MEAN */
    int32_t n_sink;         /* streamingllm: first tokens always kept (>= 0). 4 */
    int32_t n_threads;      /* worker threads for add_layer and plan (>= 0); 0 = all online cores. 0 */
    double  beta;           /* pyramidkv: ratio of the deepest layer's budget to the first's, > 0. 20 */
    double  safeguard;      /* adakv: share of B' = C - w every head gets, in [0, 1]. 0.2 */
    double  sss_alpha;      /* audiokv SSS blend in [0, 1]; 0 = off (pooling applies). audiokv 0.5, others 0 */
    double  sss_gamma;      /* audiokv SSS cumulative spectral energy kept, in (0, 1]. 0.7 */
    double  sss_taper;      /* audiokv SSS cosine taper width as a share of the n/2 + 1 bins, in [0, 1]; 0 = hard
                               cut after k*. 0.05 */
    double  uniform_share;  /* audiokv: share of base = C - w given uniformly, in [0, 1]. 0.5 */
    bool    redistribute_surplus; /* audiokv: budgets above n_tokens are clipped and their surplus shared by the
                                     other heads (true), or dropped as SparseMM does (false; the plan then keeps
                                     fewer than the uniform total). true */
};

/* Defaults of one method (an unknown method gets snapkv's scoring defaults and fails in audiokv_init). */
AUDIOKV_API struct audiokv_params audiokv_default_params(int32_t method);

/* Name of a status code ("AUDIOKV_OK", ...); "unknown status" for anything else. Never NULL. */
AUDIOKV_API const char * audiokv_status_string(int status);

/* Name of a method ("audiokv", "snapkv", ...) or NULL; and the method of a name or -1. */
AUDIOKV_API const char * audiokv_method_name(int32_t method);
AUDIOKV_API int32_t      audiokv_method_from_name(const char * name);

/* Replace the log sink (NULL restores the default). Not thread safe. */
AUDIOKV_API void audiokv_log_set(audiokv_log_fn fn, void * user_data);

/* ---- context ---------------------------------------------------------------------------------------------- */

struct audiokv_context;

/* Create a context for one sequence of n_tokens cached tokens (the window's own tokens last).
 * n_head % n_head_kv == 0. Errors: NULL (params, out), SIZE (any size < 1, n_tokens > INT32_MAX - 1),
 * PARAM (invalid params), NOMEM. *out is set to NULL on error. */
AUDIOKV_API int audiokv_init(const struct audiokv_params * params, int32_t n_layer, int32_t n_head,
                             int32_t n_head_kv, int32_t head_dim, int64_t n_tokens, struct audiokv_context ** out);

/* Free a context (NULL is a no-op). */
AUDIOKV_API void audiokv_free(struct audiokv_context * ctx);

/* Window length w = min(params.window, n_tokens) of a context (query rows per head that add_layer expects);
 * -1 for NULL. */
AUDIOKV_API int32_t audiokv_window(const struct audiokv_context * ctx);

/* Upper bound of the number of indices any plan of this context writes: n_layer * n_head_kv * n_tokens (ragged:
 * the sum of n_entries); -1 for NULL. */
AUDIOKV_API int64_t audiokv_plan_capacity(const struct audiokv_context * ctx);

/* Score layer il from its window queries and cached keys (methods snapkv, pyramidkv, adakv, audiokv; h2o when no
 * accumulated scores are given; full and streamingllm ignore scores and do not need this call).
 *   q:         queries, post-RoPE, of q_type F32, F16 or F64; row i of query head h at
 *              (const char *) q + h*q_nb_head + i*q_nb_row, head_dim contiguous elements; i = 0 .. w-1 are the
 *              last w tokens in order.
 *   k:         cached keys, post-RoPE; token j of KV head kh at (const char *) k + j*k_nb_token + kh*k_nb_head,
 *              head_dim contiguous elements of k_type; j = 0 .. n_tokens-1.
 *              llama.cpp's K cache of layer il: k = tensor data, k_nb_token = nb[1], k_nb_head = row size of
 *              head_dim elements (ggml_row_size(type, head_dim)).
 *   to_float:  required for AUDIOKV_TYPE_OTHER (converts head_dim elements), ignored otherwise.
 * Calling it again for the same layer replaces that layer's scores.
 * Errors: NULL (ctx, q, k), SIZE (il out of range, a stride < 1), TYPE, NONFINITE, THREAD. */
AUDIOKV_API int audiokv_add_layer(struct audiokv_context * ctx, int32_t il,
                                  const void * q, int32_t q_type, size_t q_nb_head, size_t q_nb_row,
                                  const void * k, int32_t k_type, size_t k_nb_token, size_t k_nb_head,
                                  audiokv_to_float_fn to_float, void * to_float_user_data);

/* Set layer il's scores directly, e.g. H2O's accumulated attention column sums.
 *   scores: n_rows rows of at least n_tokens doubles, row r at scores + r*row_stride (elements);
 *           n_rows == n_head (reduced to KV heads by params.gqa_reduce) or n_head_kv. Only the prefix
 *           [0, n_tokens - w) of each row is used.
 * Errors: NULL, SIZE (il, n_rows not n_head or n_head_kv, row_stride < n_tokens), NONFINITE (NaN),
 * STATE (a ragged context where a head holds fewer than n_positions entries: accumulated scores of an evicted
 * cache are not defined). */
AUDIOKV_API int audiokv_set_layer_scores(struct audiokv_context * ctx, int32_t il, const double * scores,
                                         int32_t n_rows, int64_t row_stride);

/* Compute the keep plan for keep ratio `keep` in (0, 1].
 *   profile:   audiokv head profile [profile_n_layer][profile_n_head_kv] doubles (row-major), non-negative, finite,
 *              not all zero; must match the context's (n_layer, n_head_kv). NULL = no profile: audiokv falls back
 *              to uniform budgets and logs one warning per process. Ignored by the other methods.
 *   counts:    out [n_layer * n_head_kv]: tokens kept by head (l, h) at counts[l*n_head_kv + h] (window included).
 *   indices:   out [capacity]: the kept token indices of every head, heads in (l, h) row-major order, each head's
 *              indices sorted ascending.
 *   n_total:   out (may be NULL): sum of counts.
 * Needs every layer's scores (add_layer or set_layer_scores) unless the plan needs no scores (full,
 * streamingllm, or a budget that keeps everything or only the window). The scores are not changed: plan may be
 * called again with another keep.
 * Ragged contexts (audiokv_init_ragged): indices are entry indices of each head; budgets are capped at the entries
 * a head holds (docs/semantics.md, "Re-planning a ragged cache").
 * Errors: NULL (ctx, counts, indices), SIZE (capacity < 1; a scoring plan of a ragged context where a head holds
 * fewer than w entries), KEEP, PROFILE, STATE, THREAD, CAPACITY (counts and *n_total are written, indices are not). */
AUDIOKV_API int audiokv_plan(struct audiokv_context * ctx, double keep,
                             const double * profile, int32_t profile_n_layer, int32_t profile_n_head_kv,
                             int32_t * counts, int32_t * indices, int64_t capacity, int64_t * n_total);

/* Restrict Spectral Score Smoothing to the audio tokens (docs/semantics.md, "SSS restricted to the audio tokens").
 *   mask:        [n_positions] bytes, mask[p] != 0: position p holds an audio token; n_positions must be
 *                audiokv_n_positions(ctx) (copied into runs: the caller may free it after the call).
 *   positions:   the position of every entry: NULL when entry e of every head is position e (a context from
 *                audiokv_init, or a ragged one whose heads all hold n_positions entries); else [n_layer * n_head_kv]
 *                pointers, head (l, h)'s at positions[l * n_head_kv + h]: its n_entries non-decreasing positions in
 *                [0, n_positions) (llama_kv_evict_head.pos).
 * With a mask, audiokv's SSS (sss_alpha > 0) smooths each maximal run of consecutive audio entries of a head's prefix
 * on its own (its own FFT, alpha, gamma, taper, 24-bit grid); every other prefix entry, and a run of one entry,
 * keeps its raw window score. A ragged head's runs are consecutive in its entry order (evicted positions between
 * two audio entries do not split a run). Without a mask (the default) SSS smooths each whole prefix row. The mask
 * is checked for every method but only changes audiokv with sss_alpha > 0 (pooling and the other methods ignore
 * it). Calling it again replaces the mask; it applies to every later audiokv_plan.
 * Memory: allocates the runs and one FFT plan per distinct run length (and grows the per-thread scratch when a run
 * length needs more FFT scratch than the heads' rows).
 * Errors: NULL (ctx, mask; positions NULL while some head holds fewer than n_positions entries; a NULL
 * positions[i]), SIZE (n_positions != audiokv_n_positions(ctx), a position outside [0, n_positions) or below the
 * one before it), NOMEM. On error the earlier mask (or none) stays. */
AUDIOKV_API int audiokv_set_audio_mask(struct audiokv_context * ctx, const uint8_t * mask, int64_t n_positions,
                                       const int32_t * const * positions);

/* Remove the audio mask: SSS smooths whole prefix rows again. Errors: NULL. */
AUDIOKV_API int audiokv_clear_audio_mask(struct audiokv_context * ctx);

/* ---- ragged caches: re-planning after an eviction (docs/semantics.md, "Re-planning a ragged cache") -------
 *
 * After a per-head eviction every (layer, KV head) holds its own entries (ascending positions; new tokens are
 * appended to every head, and every plan keeps the window, so the last w entries of every head are the window
 * tokens). A ragged context plans such a cache again:
 *     int32_t n_entries[n_layer * n_head_kv];             // llama_kv_evict_head.n_kv of head (l, h)
 *     audiokv_init_ragged(&p, n_layer, n_head, n_head_kv, head_dim, n_entries, n_positions, &ctx);
 *     for each layer: audiokv_add_layer_ragged(ctx, il, q, AUDIOKV_TYPE_F32, q_nb_head, q_nb_row,
 *                                              k_heads, k_type, k_nb_entry, to_float, user_data);
 *     audiokv_plan(ctx, keep, profile, ...);               // indices are ENTRY indices of each head
 * audiokv_add_layer, audiokv_plan, audiokv_window and audiokv_plan_capacity work on both kinds of context; a context
 * from audiokv_init is the ragged context whose heads all hold n_tokens entries (n_positions = n_tokens), and a
 * ragged context whose heads all hold n_positions entries plans exactly (bitwise) like it. */

/* Create a context for a ragged cache.
 *   n_entries:   [n_layer * n_head_kv] entries held by head (l, h) at n_entries[l*n_head_kv + h], each in
 *                [1, n_positions]. The window used is w = min(params.window, n_positions); a plan that scores (not
 *                full, not a budget that keeps everything or only the last entries) needs every head to hold at
 *                least w entries, its last w being the window tokens (the caller's guarantee).
 *   n_positions: tokens the sequence has seen (the n_tokens it would hold without eviction); sizes the budgets:
 *                C = max(1, floor(keep * n_positions + 0.5)) per head on average, each head capped at its entries.
 * Memory: as audiokv_init with n_tokens = n_positions at most (scores of sum_h (n_entries - w) prefix entries).
 * Errors: NULL (params, n_entries, out), SIZE (a size < 1, an n_entries outside [1, n_positions], n_positions >
 * INT32_MAX - 1, n_head % n_head_kv != 0), PARAM, NOMEM. *out is set to NULL on error. */
AUDIOKV_API int audiokv_init_ragged(const struct audiokv_params * params, int32_t n_layer, int32_t n_head,
                                    int32_t n_head_kv, int32_t head_dim, const int32_t * n_entries,
                                    int64_t n_positions, struct audiokv_context ** out);

/* Score layer il from its window queries and each KV head's own entries (any context).
 *   q, q_type, q_nb_head, q_nb_row, to_float: as audiokv_add_layer.
 *   k:           [n_head_kv] pointers: entry e of KV head kh at (const char *) k[kh] + e*k_nb_entry[kh], head_dim
 *                contiguous elements of k_type, e = 0 .. n_entries(il, kh) - 1 (llama_kv_evict_head.k, .nb_entry).
 *   k_nb_entry:  [n_head_kv] byte strides (>= 1).
 * The window query i (i = 0 .. w-1) sees the entries e <= n_entries - w + i of each head (causal).
 * Heads holding fewer than w entries are not scored. Calling it again for the same layer replaces its scores.
 * Errors: NULL (ctx, q, k, k_nb_entry, a k[kh]), SIZE (il out of range, a stride < 1), TYPE, NONFINITE, THREAD. */
AUDIOKV_API int audiokv_add_layer_ragged(struct audiokv_context * ctx, int32_t il,
                                         const void * q, int32_t q_type, size_t q_nb_head, size_t q_nb_row,
                                         const void * const * k, int32_t k_type, const size_t * k_nb_entry,
                                         audiokv_to_float_fn to_float, void * to_float_user_data);

/* Entries held by head (il, kv_head): n_entries of audiokv_init_ragged, n_tokens of audiokv_init; -1 for NULL or
 * an index out of range. */
AUDIOKV_API int64_t audiokv_n_entries(const struct audiokv_context * ctx, int32_t il, int32_t kv_head);

/* Positions the sequence has seen: n_positions of audiokv_init_ragged, n_tokens of audiokv_init; -1 for NULL. */
AUDIOKV_API int64_t audiokv_n_positions(const struct audiokv_context * ctx);

/* ---- building blocks (the steps of audiokv_plan, exposed for tests and other callers) -------------------- */

/* Real FFT of n >= 1 doubles (any n: mixed radix 2/3/4/5/7, Bluestein otherwise), unnormalised like numpy.fft.rfft.
 *   out: n/2 + 1 complex numbers as interleaved (re, im) doubles, 2*(n/2 + 1) doubles.
 * Errors: NULL, SIZE (n < 1 or too large), NOMEM. Allocates its plan (not for hot loops). */
AUDIOKV_API int audiokv_rfft(const double * x, int64_t n, double * out);

/* Inverse of audiokv_rfft (numpy.fft.irfft(X, n)): in has n/2 + 1 interleaved complex numbers, out n doubles.
 * The imaginary parts of bin 0 (and of bin n/2 for even n) are ignored. Errors as audiokv_rfft. */
AUDIOKV_API int audiokv_irfft(const double * in, int64_t n, double * out);

/* Spectral Score Smoothing of one row of n doubles (docs/semantics.md), in place allowed (out == x). This is the
 * smoothing alone; audiokv_plan also rounds the smoothed row to its 24-bit grid (docs/semantics.md).
 * Errors: NULL, SIZE (n < 0), PARAM (alpha or taper outside [0, 1], gamma outside (0, 1], NaN), NOMEM. */
AUDIOKV_API int audiokv_sss(const double * x, int64_t n, double alpha, double gamma, double taper, double * out);

/* 1-D pooling of n doubles, stride 1, padding kernel/2 (avg: zero padding, divide by kernel; max: -inf padding).
 * out must not alias x. Errors: NULL, SIZE (n < 0), PARAM (kernel even or < 1, unknown pool_type). */
AUDIOKV_API int audiokv_pool(const double * x, int64_t n, int32_t kernel, int32_t pool_type, double * out);

/* The shared selection: mark the k largest of n scores after rounding to float32 (ties: lower index first; NaN
 * ranks lowest) and write their indices ascending to out (k ints). 0 <= k <= n.
 * Errors: NULL, SIZE, NOMEM. Allocates scratch (not for hot loops; audiokv_plan uses preallocated scratch). */
AUDIOKV_API int audiokv_select_top(const double * scores, int64_t n, int64_t k, int32_t * out);

/* Largest-remainder integerisation (audiokv_edge.reference.select.largest_remainder): b = clip(floor(r), lo, hi); the
 * total - sum(b) leftover tokens go one each, in rounds, to the entries with the largest fractional part (ties: lower
 * index) that are below hi; a negative leftover takes one each from the smallest fractional parts (ties: higher
 * index) above lo. Errors: NULL, SIZE (n < 1, lo * n <= total <= hi * n violated, r not finite), NOMEM. */
AUDIOKV_API int audiokv_integerise(const double * r, int64_t n, int64_t total, int64_t lo, int64_t hi, int64_t * b);

#ifdef __cplusplus
}
#endif

#endif /* AUDIOKV_H */
