/* The context: per-layer score accumulation (add_layer, set_layer_scores) and the keep plan (smoothing, budgets,
 * the shared selection), following docs/semantics.md. All memory is allocated in audiokv_init. */
#include "internal.h"

#include <math.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

/* FFT plans of distinct lengths >= 2 (SSS), found by length. */
struct plan_set {
    akv_fft_plan ** plans;        /* [n] */
    int64_t * lengths;            /* [n] ascending */
    int64_t n;
};

/* The runs of >= 2 consecutive audio entries in each head's prefix (audiokv_set_audio_mask), smoothed one by one. */
struct audio_runs {
    int64_t * run_off;            /* [L * Hkv + 1] runs of head i: run_off[i] .. run_off[i + 1] - 1 */
    int64_t * runs;               /* [2 * n_runs] (first prefix entry, length) of each run */
    akv_fft_plan ** run_fft;      /* [n_runs] plan of the run's length */
    struct plan_set plans;        /* the distinct plans of run_fft */
};

struct audiokv_context {
    struct audiokv_params p;
    int32_t L, H, Hkv, d, w;
    int64_t N;                    /* positions the sequence has seen (n_tokens of a uniform cache) */
    int ragged;                   /* some head holds fewer than N entries */
    int64_t * nkv;                /* [L * Hkv] entries held by each head */
    int64_t * nh;                 /* [L * Hkv] prefix entries max(0, nkv - w) */
    int64_t * roff;               /* [L * Hkv] offset of each head's prefix row in scores / smooth */
    int64_t nh_max;               /* longest prefix row */
    int64_t kv_total;             /* sum of nkv (plan capacity) */
    int n_threads;
    int32_t heads_per_task;       /* query heads of one KV head scored together (share the key conversion) */
    double * scores;              /* concatenated GQA-reduced raw prefix rows, head (l, h) at roff */
    unsigned char * have;         /* [L] layer scored */
    double * qscores;             /* [H][nh_max] query-head scores of the layer being added */
    double * smooth;              /* smoothed rows of the last plan, laid out like scores */
    double * thread_scratch;      /* [n_threads][thread_len] */
    int64_t thread_len;
    akv_fft_plan ** fft;          /* [L * Hkv] plan of the head's prefix length (audiokv with SSS, length >= 2) */
    struct plan_set row_plans;    /* the distinct plans of fft */
    int has_audio;                /* an audio mask is set (audiokv_set_audio_mask; audiokv with SSS only) */
    struct audio_runs audio;      /* its runs */
    const void ** kbase;          /* [Hkv] key pointers of audiokv_add_layer */
    size_t * kstride;             /* [Hkv] */
    int64_t * budgets;            /* [L * Hkv] */
    int64_t * offsets;            /* [L * Hkv] */
    double * dscratch;            /* [3 * L * Hkv] */
    int64_t * iscratch;           /* [3 * L * Hkv + Hkv] */
    uint64_t * keys;              /* [longest layer: sum of its prefix rows] adakv global ranking */
};

static atomic_int g_warned_no_profile = 0;

static int64_t max64(int64_t a, int64_t b) { return a > b ? a : b; }

static void plan_set_free(struct plan_set * s) {
    if (s->plans) {
        for (int64_t i = 0; i < s->n; ++i) akv_fft_plan_free(s->plans[i]);
    }
    free(s->plans);
    free(s->lengths);
    s->plans = NULL;
    s->lengths = NULL;
    s->n = 0;
}

static void audio_runs_free(struct audio_runs * a) {
    free(a->run_off);
    free(a->runs);
    free(a->run_fft);
    plan_set_free(&a->plans);
    a->run_off = a->runs = NULL;
    a->run_fft = NULL;
}

void audiokv_free(struct audiokv_context * ctx) {
    if (!ctx) return;
    free(ctx->nkv);
    free(ctx->nh);
    free(ctx->roff);
    free(ctx->scores);
    free(ctx->have);
    free(ctx->qscores);
    free(ctx->smooth);
    free(ctx->thread_scratch);
    plan_set_free(&ctx->row_plans);
    free(ctx->fft);
    audio_runs_free(&ctx->audio);
    free(ctx->kbase);
    free(ctx->kstride);
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

static int cmp_i64(const void * a, const void * b) {
    const int64_t x = *(const int64_t *) a, y = *(const int64_t *) b;
    return x < y ? -1 : (x > y ? 1 : 0);
}

/* One plan per distinct length >= 2 of lengths[n_len] (reordered in place). *scratch_max: the per-thread scratch
 * in doubles that SSS needs with the longest-scratch plan. On error s is empty. */
static int plan_set_build(struct plan_set * s, int64_t * lengths, int64_t n_len, int64_t * scratch_max) {
    memset(s, 0, sizeof *s);
    *scratch_max = 0;
    int64_t m = 0;
    for (int64_t i = 0; i < n_len; ++i) {
        if (lengths[i] >= 2) lengths[m++] = lengths[i];
    }
    qsort(lengths, (size_t) m, sizeof(int64_t), cmp_i64);
    int64_t n_unique = 0;
    for (int64_t i = 0; i < m; ++i) {
        if (n_unique == 0 || lengths[n_unique - 1] != lengths[i]) lengths[n_unique++] = lengths[i];
    }
    s->plans = (akv_fft_plan **) calloc((size_t) (n_unique > 0 ? n_unique : 1), sizeof(akv_fft_plan *));
    s->lengths = (int64_t *) alloc_array(n_unique, sizeof(int64_t));
    if (!s->plans || !s->lengths) { plan_set_free(s); return AUDIOKV_ERR_NOMEM; }
    if (n_unique > 0) memcpy(s->lengths, lengths, (size_t) n_unique * sizeof(int64_t));
    for (int64_t u = 0; u < n_unique; ++u) {
        s->plans[u] = akv_fft_plan_new(lengths[u]);
        s->n = u + 1;
        if (!s->plans[u]) { plan_set_free(s); return AUDIOKV_ERR_NOMEM; }
        *scratch_max = max64(*scratch_max, 2 * (akv_sss_scratch_len(lengths[u]) + akv_fft_scratch_len(s->plans[u])));
    }
    return AUDIOKV_OK;
}

/* the plan of a length the set was built with */
static akv_fft_plan * plan_set_find(const struct plan_set * s, int64_t length) {
    int64_t lo = 0, hi = s->n - 1;   /* binary search */
    while (lo < hi) {
        const int64_t mid = lo + (hi - lo) / 2;
        if (s->lengths[mid] < length) lo = mid + 1; else hi = mid;
    }
    return s->plans[lo];
}

/* One FFT plan per distinct prefix length >= 2 (SSS); heads share the plan of their length. */
static int make_fft_plans(struct audiokv_context * ctx, int64_t lh, int64_t * fft_scratch_max) {
    int64_t * lengths = (int64_t *) alloc_array(lh, sizeof(int64_t));
    ctx->fft = (akv_fft_plan **) calloc((size_t) lh, sizeof(akv_fft_plan *));
    if (!lengths || !ctx->fft) { free(lengths); return AUDIOKV_ERR_NOMEM; }
    memcpy(lengths, ctx->nh, (size_t) lh * sizeof(int64_t));
    const int rc = plan_set_build(&ctx->row_plans, lengths, lh, fft_scratch_max);
    free(lengths);
    if (rc != AUDIOKV_OK) return rc;
    for (int64_t i = 0; i < lh; ++i) {
        if (ctx->nh[i] >= 2) ctx->fft[i] = plan_set_find(&ctx->row_plans, ctx->nh[i]);
    }
    return AUDIOKV_OK;
}

/* The one constructor: head (l, h) holds n_entries[l * n_head_kv + h] entries (all n_positions for audiokv_init). */
static int context_new(const struct audiokv_params * params, int32_t n_layer, int32_t n_head, int32_t n_head_kv,
                       int32_t head_dim, const int32_t * n_entries, int64_t uniform_entries, int64_t n_positions,
                       struct audiokv_context ** out) {
    if (!out) return AUDIOKV_ERR_NULL;
    *out = NULL;
    if (!params) return AUDIOKV_ERR_NULL;
    if (n_layer < 1 || n_head < 1 || n_head_kv < 1 || head_dim < 1 || n_positions < 1) return AUDIOKV_ERR_SIZE;
    if (n_positions > INT32_MAX - 1 || n_head % n_head_kv != 0 || head_dim > (1 << 20)) return AUDIOKV_ERR_SIZE;
    int rc = akv_params_check(params);
    if (rc != AUDIOKV_OK) return rc;
    const int64_t lh = (int64_t) n_layer * n_head_kv;
    if ((double) lh * (double) n_positions > 9.0e15) return AUDIOKV_ERR_SIZE;
    const int64_t w = params->window < n_positions ? params->window : n_positions;
    /* entries, prefix lengths and their sums (the flat rank index of a layer must fit 32 bits) */
    int64_t kv_total = 0, rows_total = 0, layer_max = 0, nh_max = 0, nkv_max = 0;
    int ragged = 0;
    for (int32_t l = 0; l < n_layer; ++l) {
        int64_t layer_rows = 0;
        for (int32_t h = 0; h < n_head_kv; ++h) {
            const int64_t e = n_entries ? n_entries[(int64_t) l * n_head_kv + h] : uniform_entries;
            if (e < 1 || e > n_positions) return AUDIOKV_ERR_SIZE;
            ragged |= e != n_positions;
            const int64_t nh = e > w ? e - w : 0;
            kv_total += e;
            layer_rows += nh;
            nh_max = max64(nh_max, nh);
            nkv_max = max64(nkv_max, e);
        }
        rows_total += layer_rows;
        layer_max = max64(layer_max, layer_rows);
    }
    if ((uint64_t) layer_max >= ((uint64_t) 1 << 32) || (double) rows_total > 4.0e11) return AUDIOKV_ERR_SIZE;

    struct audiokv_context * ctx = (struct audiokv_context *) calloc(1, sizeof *ctx);
    if (!ctx) return AUDIOKV_ERR_NOMEM;
    ctx->p = *params;
    ctx->L = n_layer; ctx->H = n_head; ctx->Hkv = n_head_kv; ctx->d = head_dim;
    ctx->w = (int32_t) w; ctx->N = n_positions; ctx->ragged = ragged;
    ctx->nh_max = nh_max; ctx->kv_total = kv_total;
    ctx->n_threads = params->n_threads > 0 ? params->n_threads : akv_online_cores();
    if (ctx->n_threads > 256) ctx->n_threads = 256;
    ctx->nkv = (int64_t *) alloc_array(lh, sizeof(int64_t));
    ctx->nh = (int64_t *) alloc_array(lh, sizeof(int64_t));
    ctx->roff = (int64_t *) alloc_array(lh, sizeof(int64_t));
    if (!ctx->nkv || !ctx->nh || !ctx->roff) { audiokv_free(ctx); return AUDIOKV_ERR_NOMEM; }
    for (int64_t i = 0, off = 0; i < lh; ++i) {
        ctx->nkv[i] = n_entries ? n_entries[i] : uniform_entries;
        ctx->nh[i] = ctx->nkv[i] > w ? ctx->nkv[i] - w : 0;
        ctx->roff[i] = off;
        off += ctx->nh[i];
    }

    /* query heads per scoring task: all g heads of a KV head share one key conversion, unless that leaves
     * threads idle or the logits buffer would exceed 64 MiB per thread */
    const int32_t g = n_head / n_head_kv;
    int64_t hpt = g;
    const int64_t per_head = (int64_t) ctx->w * nkv_max * (int64_t) sizeof(double);
    if (per_head > 0 && hpt * per_head > ((int64_t) 64 << 20)) hpt = ((int64_t) 64 << 20) / per_head;
    while (hpt > 1 && (int64_t) n_head_kv * ((g + hpt - 1) / hpt) < ctx->n_threads) --hpt;
    if (hpt < 1) hpt = 1;
    ctx->heads_per_task = (int32_t) hpt;
    int64_t len = akv_scores_scratch_len(ctx->heads_per_task, ctx->w, nkv_max, head_dim);
    if (params->method == AUDIOKV_METHOD_AUDIOKV && params->sss_alpha > 0.0) {
        int64_t fft_len = 0;
        rc = make_fft_plans(ctx, lh, &fft_len);
        if (rc != AUDIOKV_OK) { audiokv_free(ctx); return rc; }
        len = max64(len, fft_len);
    }
    len = max64(len, nh_max);   /* selection keys */
    ctx->thread_len = len;
    ctx->scores = (double *) alloc_array(rows_total, sizeof(double));
    ctx->smooth = (double *) alloc_array(rows_total, sizeof(double));
    ctx->have = (unsigned char *) calloc((size_t) n_layer, 1);
    ctx->qscores = (double *) alloc_array((int64_t) n_head * nh_max, sizeof(double));
    ctx->thread_scratch = (double *) alloc_array(len * ctx->n_threads, sizeof(double));
    ctx->kbase = (const void **) alloc_array(n_head_kv, sizeof(void *));
    ctx->kstride = (size_t *) alloc_array(n_head_kv, sizeof(size_t));
    ctx->budgets = (int64_t *) alloc_array(lh, sizeof(int64_t));
    ctx->offsets = (int64_t *) alloc_array(lh, sizeof(int64_t));
    ctx->dscratch = (double *) alloc_array(3 * lh, sizeof(double));
    ctx->iscratch = (int64_t *) alloc_array(3 * lh + n_head_kv, sizeof(int64_t));
    ctx->keys = (uint64_t *) alloc_array(layer_max, sizeof(uint64_t));
    if (!ctx->scores || !ctx->smooth || !ctx->have || !ctx->qscores || !ctx->thread_scratch || !ctx->kbase ||
        !ctx->kstride || !ctx->budgets || !ctx->offsets || !ctx->dscratch || !ctx->iscratch || !ctx->keys) {
        audiokv_free(ctx);
        return AUDIOKV_ERR_NOMEM;
    }
    *out = ctx;
    return AUDIOKV_OK;
}

int audiokv_init(const struct audiokv_params * params, int32_t n_layer, int32_t n_head, int32_t n_head_kv,
                 int32_t head_dim, int64_t n_tokens, struct audiokv_context ** out) {
    return context_new(params, n_layer, n_head, n_head_kv, head_dim, NULL, n_tokens, n_tokens, out);
}

int audiokv_init_ragged(const struct audiokv_params * params, int32_t n_layer, int32_t n_head, int32_t n_head_kv,
                        int32_t head_dim, const int32_t * n_entries, int64_t n_positions,
                        struct audiokv_context ** out) {
    if (!out) return AUDIOKV_ERR_NULL;
    *out = NULL;
    if (!n_entries) return AUDIOKV_ERR_NULL;
    return context_new(params, n_layer, n_head, n_head_kv, head_dim, n_entries, 0, n_positions, out);
}

int32_t audiokv_window(const struct audiokv_context * ctx) { return ctx ? ctx->w : -1; }

int64_t audiokv_plan_capacity(const struct audiokv_context * ctx) { return ctx ? ctx->kv_total : -1; }

int64_t audiokv_n_entries(const struct audiokv_context * ctx, int32_t il, int32_t kv_head) {
    if (!ctx || il < 0 || il >= ctx->L || kv_head < 0 || kv_head >= ctx->Hkv) return -1;
    return ctx->nkv[(int64_t) il * ctx->Hkv + kv_head];
}

int64_t audiokv_n_positions(const struct audiokv_context * ctx) { return ctx ? ctx->N : -1; }

/* ---- audio mask ------------------------------------------------------------------------------------------- */

/* whether prefix entry e of head i is an audio token */
static int entry_is_audio(const uint8_t * mask, const int32_t * const * positions, int64_t i, int64_t e) {
    return mask[positions ? (int64_t) positions[i][e] : e] != 0;
}

/* The runs of every head's prefix (positions as audiokv_set_audio_mask) and their FFT plans; *scratch: the
 * per-thread scratch in doubles they need. On error a is empty. */
static int audio_runs_build(const struct audiokv_context * ctx, const uint8_t * mask,
                            const int32_t * const * positions, struct audio_runs * a, int64_t * scratch) {
    memset(a, 0, sizeof *a);
    *scratch = 0;
    const int64_t lh = (int64_t) ctx->L * ctx->Hkv;
    int64_t n_runs = 0;                   /* counted, then recorded */
    for (int pass = 0; pass < 2; ++pass) {
        int64_t r = 0;
        for (int64_t i = 0; i < lh; ++i) {
            if (pass) a->run_off[i] = r;
            int64_t len = 0;
            for (int64_t e = 0; e <= ctx->nh[i]; ++e) {
                if (e < ctx->nh[i] && entry_is_audio(mask, positions, i, e)) { ++len; continue; }
                if (len >= 2) {
                    if (pass) { a->runs[2 * r] = e - len; a->runs[2 * r + 1] = len; }
                    ++r;
                }
                len = 0;
            }
        }
        if (pass) {
            a->run_off[lh] = r;
        } else {
            n_runs = r;
            a->run_off = (int64_t *) alloc_array(lh + 1, sizeof(int64_t));
            a->runs = (int64_t *) alloc_array(2 * n_runs, sizeof(int64_t));
            a->run_fft = (akv_fft_plan **) alloc_array(n_runs, sizeof(akv_fft_plan *));
            if (!a->run_off || !a->runs || !a->run_fft) { audio_runs_free(a); return AUDIOKV_ERR_NOMEM; }
        }
    }
    int64_t * lengths = (int64_t *) alloc_array(n_runs, sizeof(int64_t));
    if (!lengths) { audio_runs_free(a); return AUDIOKV_ERR_NOMEM; }
    for (int64_t k = 0; k < n_runs; ++k) lengths[k] = a->runs[2 * k + 1];
    const int rc = plan_set_build(&a->plans, lengths, n_runs, scratch);
    free(lengths);
    if (rc != AUDIOKV_OK) { audio_runs_free(a); return rc; }
    for (int64_t k = 0; k < n_runs; ++k) a->run_fft[k] = plan_set_find(&a->plans, a->runs[2 * k + 1]);
    return AUDIOKV_OK;
}

int audiokv_set_audio_mask(struct audiokv_context * ctx, const uint8_t * mask, int64_t n_positions,
                           const int32_t * const * positions) {
    if (!ctx || !mask) return AUDIOKV_ERR_NULL;
    if (n_positions != ctx->N) return AUDIOKV_ERR_SIZE;
    const int64_t lh = (int64_t) ctx->L * ctx->Hkv;
    for (int64_t i = 0; i < lh; ++i) {
        if (!positions) {
            if (ctx->nkv[i] != ctx->N) return AUDIOKV_ERR_NULL;   /* entry e is not position e */
            continue;
        }
        const int32_t * pos = positions[i];
        if (!pos) return AUDIOKV_ERR_NULL;
        for (int64_t e = 0; e < ctx->nkv[i]; ++e) {
            if (pos[e] < 0 || pos[e] >= ctx->N || (e > 0 && pos[e] < pos[e - 1])) return AUDIOKV_ERR_SIZE;
        }
    }
    if (ctx->p.method != AUDIOKV_METHOD_AUDIOKV || !(ctx->p.sss_alpha > 0.0)) return AUDIOKV_OK;  /* no SSS */
    struct audio_runs runs;
    int64_t scratch = 0;
    int rc = audio_runs_build(ctx, mask, positions, &runs, &scratch);
    if (rc != AUDIOKV_OK) return rc;
    if (scratch > ctx->thread_len) {   /* a run may need more FFT scratch than its whole row (Bluestein) */
        double * grown = (double *) alloc_array(scratch * ctx->n_threads, sizeof(double));
        if (!grown) { audio_runs_free(&runs); return AUDIOKV_ERR_NOMEM; }
        free(ctx->thread_scratch);
        ctx->thread_scratch = grown;
        ctx->thread_len = scratch;
    }
    audio_runs_free(&ctx->audio);
    ctx->audio = runs;
    ctx->has_audio = 1;
    return AUDIOKV_OK;
}

int audiokv_clear_audio_mask(struct audiokv_context * ctx) {
    if (!ctx) return AUDIOKV_ERR_NULL;
    audio_runs_free(&ctx->audio);
    ctx->has_audio = 0;
    return AUDIOKV_OK;
}

/* ---- scoring ---------------------------------------------------------------------------------------------- */

struct layer_job {
    struct audiokv_context * ctx;
    int32_t il;
    const char * q; int32_t q_type; size_t q_nb_head, q_nb_row;
    const void * const * k; int32_t k_type; const size_t * k_nb_entry;
    audiokv_to_float_fn to_float; void * user_data;
};

/* task t: KV head t / tasks_per_kv, query heads [first, first + count) of its group, over that head's entries */
static int score_query_heads(void * arg, int64_t task, int thread) {
    struct layer_job * job = (struct layer_job *) arg;
    struct audiokv_context * ctx = job->ctx;
    const int32_t g = ctx->H / ctx->Hkv, hpt = ctx->heads_per_task;
    const int32_t tasks_per_kv = (g + hpt - 1) / hpt;
    const int32_t kv = (int32_t) (task / tasks_per_kv);
    const int64_t head = (int64_t) job->il * ctx->Hkv + kv;
    if (ctx->nh[head] < 1) return AUDIOKV_OK;   /* only the window (or less): nothing to score */
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
    struct akv_key_view kview = { (const char *) job->k[kv], job->k_nb_entry[kv], job->k_type, job->to_float,
                                  job->user_data };
    return akv_window_scores(views, count, &kview, ctx->w, ctx->nkv[head], ctx->d,
                             ctx->p.method != AUDIOKV_METHOD_H2O, ctx->qscores + (int64_t) first * ctx->nh_max,
                             ctx->nh_max, ctx->thread_scratch + (int64_t) thread * ctx->thread_len);
}

/* rows [n_rows][stride] -> the prefix rows of layer il; n_rows == H reduces the g query heads of each KV head */
static void reduce_rows(struct audiokv_context * ctx, int32_t il, const double * rows, int32_t n_rows,
                        int64_t stride) {
    const int32_t g = n_rows == ctx->Hkv ? 1 : ctx->H / ctx->Hkv;
    for (int32_t h = 0; h < ctx->Hkv; ++h) {
        const int64_t head = (int64_t) il * ctx->Hkv + h, n = ctx->nh[head];
        double * out = ctx->scores + ctx->roff[head];
        const double * first = rows + (int64_t) h * g * stride;
        if (n < 1) continue;
        memcpy(out, first, (size_t) n * sizeof(double));
        for (int32_t q = 1; q < g; ++q) {
            const double * row = first + (int64_t) q * stride;
            if (ctx->p.gqa_reduce == AUDIOKV_GQA_MAX) {
                for (int64_t j = 0; j < n; ++j) out[j] = row[j] > out[j] ? row[j] : out[j];
            } else {
                for (int64_t j = 0; j < n; ++j) out[j] += row[j];
            }
        }
        if (g > 1 && ctx->p.gqa_reduce != AUDIOKV_GQA_MAX) {
            for (int64_t j = 0; j < n; ++j) out[j] /= (double) g;
        }
    }
}

int audiokv_add_layer_ragged(struct audiokv_context * ctx, int32_t il, const void * q, int32_t q_type,
                             size_t q_nb_head, size_t q_nb_row, const void * const * k, int32_t k_type,
                             const size_t * k_nb_entry, audiokv_to_float_fn to_float, void * to_float_user_data) {
    if (!ctx || !q || !k || !k_nb_entry) return AUDIOKV_ERR_NULL;
    if (il < 0 || il >= ctx->L) return AUDIOKV_ERR_SIZE;
    if (q_type != AUDIOKV_TYPE_F32 && q_type != AUDIOKV_TYPE_F16 && q_type != AUDIOKV_TYPE_F64) {
        return AUDIOKV_ERR_TYPE;
    }
    if (k_type < AUDIOKV_TYPE_F32 || k_type > AUDIOKV_TYPE_OTHER) return AUDIOKV_ERR_TYPE;
    if (k_type == AUDIOKV_TYPE_OTHER && !to_float) return AUDIOKV_ERR_TYPE;
    if (q_nb_row < 1 || (ctx->H > 1 && q_nb_head < 1)) return AUDIOKV_ERR_SIZE;
    for (int32_t h = 0; h < ctx->Hkv; ++h) {
        if (!k[h]) return AUDIOKV_ERR_NULL;
        if (k_nb_entry[h] < 1) return AUDIOKV_ERR_SIZE;
    }
    ctx->have[il] = 0;
    int64_t layer_rows = 0;
    for (int32_t h = 0; h < ctx->Hkv; ++h) layer_rows += ctx->nh[(int64_t) il * ctx->Hkv + h];
    if (layer_rows == 0) { ctx->have[il] = 1; return AUDIOKV_OK; }
    struct layer_job job = { ctx, il, (const char *) q, q_type, q_nb_head, q_nb_row, k, k_type, k_nb_entry,
                             to_float, to_float_user_data };
    const int32_t g = ctx->H / ctx->Hkv;
    const int64_t n_tasks = (int64_t) ctx->Hkv * ((g + ctx->heads_per_task - 1) / ctx->heads_per_task);
    int rc = akv_parallel_for(ctx->n_threads, n_tasks, score_query_heads, &job);
    if (rc != AUDIOKV_OK) return rc;
    reduce_rows(ctx, il, ctx->qscores, ctx->H, ctx->nh_max);
    ctx->have[il] = 1;
    return AUDIOKV_OK;
}

int audiokv_add_layer(struct audiokv_context * ctx, int32_t il,
                      const void * q, int32_t q_type, size_t q_nb_head, size_t q_nb_row,
                      const void * k, int32_t k_type, size_t k_nb_token, size_t k_nb_head,
                      audiokv_to_float_fn to_float, void * to_float_user_data) {
    if (!ctx || !q || !k) return AUDIOKV_ERR_NULL;
    const int bad_stride = k_nb_token < 1 || (ctx->Hkv > 1 && k_nb_head < 1);   /* reported as SIZE below */
    for (int32_t h = 0; h < ctx->Hkv; ++h) {
        ctx->kbase[h] = (const char *) k + (size_t) h * k_nb_head;
        ctx->kstride[h] = bad_stride ? 0 : k_nb_token;
    }
    return audiokv_add_layer_ragged(ctx, il, q, q_type, q_nb_head, q_nb_row, ctx->kbase, k_type, ctx->kstride,
                                    to_float, to_float_user_data);
}

int audiokv_set_layer_scores(struct audiokv_context * ctx, int32_t il, const double * scores, int32_t n_rows,
                             int64_t row_stride) {
    if (!ctx || !scores) return AUDIOKV_ERR_NULL;
    if (il < 0 || il >= ctx->L) return AUDIOKV_ERR_SIZE;
    if ((n_rows != ctx->H && n_rows != ctx->Hkv) || row_stride < ctx->N) return AUDIOKV_ERR_SIZE;
    if (ctx->ragged) return AUDIOKV_ERR_STATE;
    const int64_t n = ctx->N - ctx->w;
    for (int32_t r = 0; r < n_rows; ++r) {
        for (int64_t j = 0; j < n; ++j) {
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
    const int64_t n = ctx->nh[row];
    const double * src = ctx->scores + ctx->roff[row];
    double * dst = ctx->smooth + ctx->roff[row];
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
        if (ctx->has_audio) {
            /* audio mask: each run of audio entries smoothed on its own, every other entry keeps its raw score */
            memcpy(dst, src, (size_t) n * sizeof(double));
            const struct audio_runs * a = &ctx->audio;
            for (int64_t r = a->run_off[row]; r < a->run_off[row + 1]; ++r) {
                const int64_t first = a->runs[2 * r], len = a->runs[2 * r + 1];
                akv_sss_exec(a->run_fft[r], src + first, len, p->sss_alpha, p->sss_gamma, p->sss_taper,
                             dst + first, scratch);
                akv_snap_to_row_grid(dst + first, len);
            }
        } else {
            akv_sss_exec(ctx->fft[row], src, n, p->sss_alpha, p->sss_gamma, p->sss_taper, dst, scratch);
            if (n > 1) akv_snap_to_row_grid(dst, n);
        }
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
    const int64_t n = ctx->nh[row], b = ctx->budgets[row];
    int32_t * out = job->indices + ctx->offsets[row];
    uint64_t * keys = (uint64_t *) (void *) (ctx->thread_scratch + (int64_t) thread * ctx->thread_len);
    akv_select_top_exec(ctx->smooth + ctx->roff[row], n, b - ctx->w, out, keys);
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

    int mode; /* 0 keep all, 1 keep the last C, 2 method */
    if (method == AUDIOKV_METHOD_FULL || C >= N || N <= ctx->p.window) mode = 0;
    else if (C <= w) mode = 1;
    else mode = 2;

    if (mode == 2) {
        for (int64_t i = 0; i < lh; ++i) {
            if (ctx->nkv[i] < w) return AUDIOKV_ERR_SIZE;   /* the head cannot hold the window */
        }
        if (needs_scores(method)) {
            for (int32_t l = 0; l < ctx->L; ++l) {
                if (!ctx->have[l]) return AUDIOKV_ERR_STATE;
            }
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
                                       method == AUDIOKV_METHOD_AUDIOKV ? profile : NULL, ctx->smooth,
                                       ctx->nkv, ctx->nh };
        rc = akv_budgets(&in, ctx->budgets, ctx->dscratch, ctx->iscratch, ctx->keys);
        if (rc != AUDIOKV_OK) return rc;
    } else {
        for (int64_t i = 0; i < lh; ++i) ctx->budgets[i] = mode == 0 || ctx->nkv[i] < C ? ctx->nkv[i] : C;
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
        const int64_t b = ctx->budgets[i], n = ctx->nkv[i];
        int32_t * out = indices + ctx->offsets[i];
        for (int64_t j = 0; j < b; ++j) out[j] = (int32_t) (n - b + j);
    }
    return AUDIOKV_OK;
}

