/* The context: per-layer score accumulation (add_layer, set_layer_scores) and the keep plan (smoothing, budgets,
 * the shared selection), following docs/semantics.md. All memory is allocated in audiokv_init. */
#include "internal.h"

#include <math.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

struct audiokv_context {
    struct audiokv_params p;
    int32_t L, H, Hkv, d, w;
    int64_t N, n;                 /* n = N - w prefix tokens */
    int n_threads;
    int32_t heads_per_task;       /* query heads of one KV head scored together (share the key conversion) */
    double * scores;              /* [L][Hkv][n] GQA-reduced raw scores */
    unsigned char * have;         /* [L] layer scored */
    double * qscores;             /* [H][n] query-head scores of the layer being added */
    double * smooth;              /* [L][Hkv][n] smoothed scores of the last plan */
    double * thread_scratch;      /* [n_threads][thread_len] */
    int64_t thread_len;
    akv_fft_plan * fft;           /* length n, audiokv with SSS only */
    int64_t * budgets;            /* [L * Hkv] */
    int64_t * offsets;            /* [L * Hkv] */
    double * dscratch;            /* [3 * L * Hkv] */
    int64_t * iscratch;           /* [3 * L * Hkv] (at least Hkv) */
    uint64_t * keys;              /* [Hkv * n] adakv global ranking */
};

static atomic_int g_warned_no_profile = 0;

static int64_t max64(int64_t a, int64_t b) { return a > b ? a : b; }

void audiokv_free(struct audiokv_context * ctx) {
    if (!ctx) return;
    free(ctx->scores);
    free(ctx->have);
    free(ctx->qscores);
    free(ctx->smooth);
    free(ctx->thread_scratch);
    akv_fft_plan_free(ctx->fft);
    free(ctx->budgets);
    free(ctx->offsets);
    free(ctx->dscratch);
    free(ctx->iscratch);
    free(ctx->keys);
    free(ctx);
}

static void * alloc_array(int64_t count, size_t size) {
    if (count < 1) count = 1;
    if ((uint64_t) count > SIZE_MAX / size) return NULL;
    return malloc((size_t) count * size);
}

int audiokv_init(const struct audiokv_params * params, int32_t n_layer, int32_t n_head, int32_t n_head_kv,
                 int32_t head_dim, int64_t n_tokens, struct audiokv_context ** out) {
    if (!out) return AUDIOKV_ERR_NULL;
    *out = NULL;
    if (!params) return AUDIOKV_ERR_NULL;
    if (n_layer < 1 || n_head < 1 || n_head_kv < 1 || head_dim < 1 || n_tokens < 1) return AUDIOKV_ERR_SIZE;
    if (n_tokens > INT32_MAX - 1 || n_head % n_head_kv != 0 || head_dim > (1 << 20)) return AUDIOKV_ERR_SIZE;
    int rc = akv_params_check(params);
    if (rc != AUDIOKV_OK) return rc;
    const int64_t w = params->window < n_tokens ? params->window : n_tokens;
    const int64_t n = n_tokens - w;
    if ((uint64_t) n_head_kv * (uint64_t) n >= ((uint64_t) 1 << 32)) return AUDIOKV_ERR_SIZE; /* flat rank index */
    const int64_t lh = (int64_t) n_layer * n_head_kv;
    if ((double) lh * (double) n_tokens > 9.0e15 || (double) lh * (double) n > 4.0e11) return AUDIOKV_ERR_SIZE;

    struct audiokv_context * ctx = (struct audiokv_context *) calloc(1, sizeof *ctx);
    if (!ctx) return AUDIOKV_ERR_NOMEM;
    ctx->p = *params;
    ctx->L = n_layer; ctx->H = n_head; ctx->Hkv = n_head_kv; ctx->d = head_dim;
    ctx->w = (int32_t) w; ctx->N = n_tokens; ctx->n = n;
    ctx->n_threads = params->n_threads > 0 ? params->n_threads : akv_online_cores();
    if (ctx->n_threads > 256) ctx->n_threads = 256;

    const int use_sss = params->method == AUDIOKV_METHOD_AUDIOKV && params->sss_alpha > 0.0 && n > 1;
    /* query heads per scoring task: all g heads of a KV head share one key conversion, unless that leaves
     * threads idle or the logits buffer would exceed 64 MiB per thread */
    const int32_t g = n_head / n_head_kv;
    int64_t hpt = g;
    const int64_t per_head = (int64_t) ctx->w * n_tokens * (int64_t) sizeof(double);
    if (per_head > 0 && hpt * per_head > ((int64_t) 64 << 20)) hpt = ((int64_t) 64 << 20) / per_head;
    while (hpt > 1 && (int64_t) n_head_kv * ((g + hpt - 1) / hpt) < ctx->n_threads) --hpt;
    if (hpt < 1) hpt = 1;
    ctx->heads_per_task = (int32_t) hpt;
    int64_t len = akv_scores_scratch_len(ctx->heads_per_task, ctx->w, n_tokens, head_dim);
    if (use_sss) {
        ctx->fft = akv_fft_plan_new(n);
        if (!ctx->fft) { audiokv_free(ctx); return AUDIOKV_ERR_NOMEM; }
        len = max64(len, 2 * (akv_sss_scratch_len(n) + akv_fft_scratch_len(ctx->fft)));
    }
    len = max64(len, n);   /* selection keys */
    ctx->thread_len = len;
    ctx->scores = (double *) alloc_array(lh * n, sizeof(double));
    ctx->smooth = (double *) alloc_array(lh * n, sizeof(double));
    ctx->have = (unsigned char *) calloc((size_t) n_layer, 1);
    ctx->qscores = (double *) alloc_array((int64_t) n_head * n, sizeof(double));
    ctx->thread_scratch = (double *) alloc_array(len * ctx->n_threads, sizeof(double));
    ctx->budgets = (int64_t *) alloc_array(lh, sizeof(int64_t));
    ctx->offsets = (int64_t *) alloc_array(lh, sizeof(int64_t));
    ctx->dscratch = (double *) alloc_array(3 * lh, sizeof(double));
    ctx->iscratch = (int64_t *) alloc_array(3 * lh + n_head_kv, sizeof(int64_t));
    ctx->keys = (uint64_t *) alloc_array((int64_t) n_head_kv * n, sizeof(uint64_t));
    if (!ctx->scores || !ctx->smooth || !ctx->have || !ctx->qscores || !ctx->thread_scratch || !ctx->budgets ||
        !ctx->offsets || !ctx->dscratch || !ctx->iscratch || !ctx->keys) {
        audiokv_free(ctx);
        return AUDIOKV_ERR_NOMEM;
    }
    *out = ctx;
    return AUDIOKV_OK;
}

int32_t audiokv_window(const struct audiokv_context * ctx) { return ctx ? ctx->w : -1; }

int64_t audiokv_plan_capacity(const struct audiokv_context * ctx) {
    return ctx ? (int64_t) ctx->L * ctx->Hkv * ctx->N : -1;
}

/* ---- scoring ---------------------------------------------------------------------------------------------- */

struct layer_job {
    struct audiokv_context * ctx;
    const char * q; int32_t q_type; size_t q_nb_head, q_nb_row;
    const char * k; int32_t k_type; size_t k_nb_token, k_nb_head;
    audiokv_to_float_fn to_float; void * user_data;
};

/* task t: KV head t / tasks_per_kv, query heads [first, first + count) of its group */
static int score_query_heads(void * arg, int64_t task, int thread) {
    struct layer_job * job = (struct layer_job *) arg;
    struct audiokv_context * ctx = job->ctx;
    const int32_t g = ctx->H / ctx->Hkv, hpt = ctx->heads_per_task;
    const int32_t tasks_per_kv = (g + hpt - 1) / hpt;
    const int32_t kv = (int32_t) (task / tasks_per_kv);
    const int32_t first = kv * g + (int32_t) (task % tasks_per_kv) * hpt;
    const int32_t count = first + hpt <= (kv + 1) * g ? hpt : (kv + 1) * g - first;
    struct akv_query_view qv[64];
    struct akv_query_view * views = count <= 64 ? qv : NULL;
    if (!views) return AUDIOKV_ERR_SIZE;
    for (int32_t h = 0; h < count; ++h) {
        views[h].base = job->q + (size_t) (first + h) * job->q_nb_head;
        views[h].nb_row = job->q_nb_row;
        views[h].type = job->q_type;
    }
    struct akv_key_view kview = { job->k + (size_t) kv * job->k_nb_head, job->k_nb_token, job->k_type,
                                  job->to_float, job->user_data };
    return akv_window_scores(views, count, &kview, ctx->w, ctx->N, ctx->d, ctx->p.method != AUDIOKV_METHOD_H2O,
                             ctx->qscores + (int64_t) first * ctx->n, ctx->n,
                             ctx->thread_scratch + (int64_t) thread * ctx->thread_len);
}

/* rows [n_rows][stride] -> scores of layer il; n_rows == H reduces the g query heads of each KV head */
static void reduce_rows(struct audiokv_context * ctx, int32_t il, const double * rows, int32_t n_rows,
                        int64_t stride) {
    const int64_t n = ctx->n;
    double * dst = ctx->scores + (int64_t) il * ctx->Hkv * n;
    if (n_rows == ctx->Hkv) {
        for (int32_t h = 0; h < ctx->Hkv; ++h) memcpy(dst + h * n, rows + h * stride, (size_t) n * sizeof(double));
        return;
    }
    const int32_t g = ctx->H / ctx->Hkv;
    for (int32_t h = 0; h < ctx->Hkv; ++h) {
        double * out = dst + h * n;
        const double * first = rows + (int64_t) h * g * stride;
        memcpy(out, first, (size_t) n * sizeof(double));
        for (int32_t q = 1; q < g; ++q) {
            const double * row = first + (int64_t) q * stride;
            if (ctx->p.gqa_reduce == AUDIOKV_GQA_MAX) {
                for (int64_t j = 0; j < n; ++j) out[j] = row[j] > out[j] ? row[j] : out[j];
            } else {
                for (int64_t j = 0; j < n; ++j) out[j] += row[j];
            }
        }
        if (ctx->p.gqa_reduce != AUDIOKV_GQA_MAX) {
            for (int64_t j = 0; j < n; ++j) out[j] /= (double) g;
        }
    }
}

int audiokv_add_layer(struct audiokv_context * ctx, int32_t il,
                      const void * q, int32_t q_type, size_t q_nb_head, size_t q_nb_row,
                      const void * k, int32_t k_type, size_t k_nb_token, size_t k_nb_head,
                      audiokv_to_float_fn to_float, void * to_float_user_data) {
    if (!ctx || !q || !k) return AUDIOKV_ERR_NULL;
    if (il < 0 || il >= ctx->L) return AUDIOKV_ERR_SIZE;
    if (q_type != AUDIOKV_TYPE_F32 && q_type != AUDIOKV_TYPE_F16 && q_type != AUDIOKV_TYPE_F64) {
        return AUDIOKV_ERR_TYPE;
    }
    if (k_type < AUDIOKV_TYPE_F32 || k_type > AUDIOKV_TYPE_OTHER) return AUDIOKV_ERR_TYPE;
    if (k_type == AUDIOKV_TYPE_OTHER && !to_float) return AUDIOKV_ERR_TYPE;
    if (q_nb_row < 1 || k_nb_token < 1 || (ctx->H > 1 && q_nb_head < 1) || (ctx->Hkv > 1 && k_nb_head < 1)) {
        return AUDIOKV_ERR_SIZE;
    }
    ctx->have[il] = 0;
    if (ctx->n == 0) { ctx->have[il] = 1; return AUDIOKV_OK; }
    struct layer_job job = { ctx, (const char *) q, q_type, q_nb_head, q_nb_row, (const char *) k, k_type,
                             k_nb_token, k_nb_head, to_float, to_float_user_data };
    const int32_t g = ctx->H / ctx->Hkv;
    const int64_t n_tasks = (int64_t) ctx->Hkv * ((g + ctx->heads_per_task - 1) / ctx->heads_per_task);
    int rc = akv_parallel_for(ctx->n_threads, n_tasks, score_query_heads, &job);
    if (rc != AUDIOKV_OK) return rc;
    reduce_rows(ctx, il, ctx->qscores, ctx->H, ctx->n);
    ctx->have[il] = 1;
    return AUDIOKV_OK;
}

int audiokv_set_layer_scores(struct audiokv_context * ctx, int32_t il, const double * scores, int32_t n_rows,
                             int64_t row_stride) {
    if (!ctx || !scores) return AUDIOKV_ERR_NULL;
    if (il < 0 || il >= ctx->L) return AUDIOKV_ERR_SIZE;
    if ((n_rows != ctx->H && n_rows != ctx->Hkv) || row_stride < ctx->N) return AUDIOKV_ERR_SIZE;
    for (int32_t r = 0; r < n_rows; ++r) {
        for (int64_t j = 0; j < ctx->n; ++j) {
            if (isnan(scores[r * row_stride + j])) return AUDIOKV_ERR_NONFINITE;
        }
    }
    reduce_rows(ctx, il, scores, n_rows, row_stride);
    ctx->have[il] = 1;
    return AUDIOKV_OK;
}

/* ---- plan ------------------------------------------------------------------------------------------------- */

struct plan_job {
    struct audiokv_context * ctx;
    int32_t * indices;
};

static int smooth_row(void * arg, int64_t row, int thread) {
    struct plan_job * job = (struct plan_job *) arg;
    struct audiokv_context * ctx = job->ctx;
    const int64_t n = ctx->n;
    const double * src = ctx->scores + row * n;
    double * dst = ctx->smooth + row * n;
    const struct audiokv_params * p = &ctx->p;
    if (p->method == AUDIOKV_METHOD_STREAMINGLLM) {
        for (int64_t j = 0; j < n; ++j) dst[j] = j < p->n_sink ? INFINITY : (double) j;
        return AUDIOKV_OK;
    }
    for (int64_t j = 0; j < n; ++j) {
        if (isnan(src[j])) return AUDIOKV_ERR_NONFINITE;
    }
    if (p->method == AUDIOKV_METHOD_H2O) {
        memcpy(dst, src, (size_t) n * sizeof(double));
    } else if (p->method == AUDIOKV_METHOD_AUDIOKV && p->sss_alpha > 0.0) {
        for (int64_t j = 0; j < n; ++j) {
            if (!isfinite(src[j])) return AUDIOKV_ERR_NONFINITE;
        }
        akv_cpx * scratch = (akv_cpx *) (void *) (ctx->thread_scratch + (int64_t) thread * ctx->thread_len);
        akv_sss_exec(ctx->fft, src, n, p->sss_alpha, p->sss_gamma, p->sss_taper, dst, scratch);
        akv_snap_to_row_grid(dst, n);
    } else if (p->pool_kernel > 1) {
        akv_pool_exec(src, n, p->pool_kernel, p->pool_type, dst);
    } else {
        memcpy(dst, src, (size_t) n * sizeof(double));
    }
    return AUDIOKV_OK;
}

static int select_row(void * arg, int64_t row, int thread) {
    struct plan_job * job = (struct plan_job *) arg;
    struct audiokv_context * ctx = job->ctx;
    const int64_t n = ctx->n, b = ctx->budgets[row];
    int32_t * out = job->indices + ctx->offsets[row];
    uint64_t * keys = (uint64_t *) (void *) (ctx->thread_scratch + (int64_t) thread * ctx->thread_len);
    akv_select_top_exec(ctx->smooth + row * n, n, b - ctx->w, out, keys);
    for (int64_t j = 0; j < ctx->w; ++j) out[b - ctx->w + j] = (int32_t) (n + j);
    return AUDIOKV_OK;
}

static int needs_scores(int32_t method) {
    return method != AUDIOKV_METHOD_FULL && method != AUDIOKV_METHOD_STREAMINGLLM;
}

int audiokv_plan(struct audiokv_context * ctx, double keep,
                 const double * profile, int32_t profile_n_layer, int32_t profile_n_head_kv,
                 int32_t * counts, int32_t * indices, int64_t capacity, int64_t * n_total) {
    if (!ctx || !counts || !indices) return AUDIOKV_ERR_NULL;
    if (capacity < 1) return AUDIOKV_ERR_SIZE;
    if (!(keep > 0.0 && keep <= 1.0)) return AUDIOKV_ERR_KEEP;
    const int32_t method = ctx->p.method;
    const int64_t lh = (int64_t) ctx->L * ctx->Hkv, N = ctx->N, w = ctx->w;
    if (profile && method == AUDIOKV_METHOD_AUDIOKV) {
        if (profile_n_layer != ctx->L || profile_n_head_kv != ctx->Hkv) return AUDIOKV_ERR_PROFILE;
        double sum = 0.0;
        for (int64_t i = 0; i < lh; ++i) {
            if (!isfinite(profile[i]) || profile[i] < 0.0) return AUDIOKV_ERR_PROFILE;
            sum += profile[i];
        }
        if (!(sum > 0.0) || !isfinite(sum)) return AUDIOKV_ERR_PROFILE;
    }
    const double cr = floor(keep * (double) N + 0.5);
    const int64_t C = cr < 1.0 ? 1 : (int64_t) cr;

    int mode; /* 0 keep all, 1 keep last C, 2 method */
    if (method == AUDIOKV_METHOD_FULL || C >= N || N <= ctx->p.window) mode = 0;
    else if (C <= w) mode = 1;
    else mode = 2;

    if (mode == 2 && needs_scores(method)) {
        for (int32_t l = 0; l < ctx->L; ++l) {
            if (!ctx->have[l]) return AUDIOKV_ERR_STATE;
        }
    }
    struct plan_job job = { ctx, indices };
    if (mode == 2) {
        int rc = akv_parallel_for(ctx->n_threads, lh, smooth_row, &job);
        if (rc != AUDIOKV_OK) return rc;
        if (method == AUDIOKV_METHOD_AUDIOKV && !profile &&
            atomic_exchange(&g_warned_no_profile, 1) == 0) {
            akv_log(AUDIOKV_LOG_WARN, "audiokv: no head profile given; using uniform budgets");
        }
        struct akv_budget_input in = { method, ctx->L, ctx->Hkv, N, w, C, &ctx->p,
                                       method == AUDIOKV_METHOD_AUDIOKV ? profile : NULL, ctx->smooth };
        rc = akv_budgets(&in, ctx->budgets, ctx->dscratch, ctx->iscratch, ctx->keys);
        if (rc != AUDIOKV_OK) return rc;
    } else {
        for (int64_t i = 0; i < lh; ++i) ctx->budgets[i] = mode == 0 ? N : C;
    }
    int64_t total = 0;
    for (int64_t i = 0; i < lh; ++i) {
        ctx->offsets[i] = total;
        counts[i] = (int32_t) ctx->budgets[i];
        total += ctx->budgets[i];
    }
    if (n_total) *n_total = total;
    if (total > capacity) return AUDIOKV_ERR_CAPACITY;
    if (mode == 2) return akv_parallel_for(ctx->n_threads, lh, select_row, &job);
    for (int64_t i = 0; i < lh; ++i) {
        const int64_t b = ctx->budgets[i];
        int32_t * out = indices + ctx->offsets[i];
        for (int64_t j = 0; j < b; ++j) out[j] = (int32_t) (N - b + j);
    }
    return AUDIOKV_OK;
}

/* ---- ragged caches (implementation in progress: the API is fixed, the calls refuse for now) ---------------- */

int audiokv_init_ragged(const struct audiokv_params * params, int32_t n_layer, int32_t n_head, int32_t n_head_kv,
                        int32_t head_dim, const int32_t * n_entries, int64_t n_positions,
                        struct audiokv_context ** out) {
    (void) n_layer; (void) n_head; (void) n_head_kv; (void) head_dim; (void) n_positions;
    if (!out) return AUDIOKV_ERR_NULL;
    *out = NULL;
    if (!params || !n_entries) return AUDIOKV_ERR_NULL;
    akv_log(AUDIOKV_LOG_ERROR, "audiokv_init_ragged: not implemented yet in this libaudiokv");
    return AUDIOKV_ERR_STATE;
}

int audiokv_add_layer_ragged(struct audiokv_context * ctx, int32_t il, const void * q, int32_t q_type,
                             size_t q_nb_head, size_t q_nb_row, const void * const * k, int32_t k_type,
                             const size_t * k_nb_entry, audiokv_to_float_fn to_float, void * to_float_user_data) {
    (void) il; (void) q_type; (void) q_nb_head; (void) q_nb_row; (void) k_type; (void) to_float;
    (void) to_float_user_data;
    if (!ctx || !q || !k || !k_nb_entry) return AUDIOKV_ERR_NULL;
    return AUDIOKV_ERR_STATE;
}

int64_t audiokv_n_entries(const struct audiokv_context * ctx, int32_t il, int32_t kv_head) {
    if (!ctx || il < 0 || il >= ctx->L || kv_head < 0 || kv_head >= ctx->Hkv) return -1;
    return ctx->N;
}

int64_t audiokv_n_positions(const struct audiokv_context * ctx) { return ctx ? ctx->N : -1; }
