/* libaudiokv as llama.cpp's per-head eviction callback (include/audiokv_llama.h). Built only inside the combined
 * build: it needs the patched llama.h / llama-kv-evict.h (libllama) and ggml (key types, to_float). */
#include "audiokv_llama.h"

#include "audiokv_ggml.h"
#include "audiokv_gguf_profile.h"
#include "internal.h"

#include "ggml.h"
#include "llama-kv-evict.h"
#include "llama.h"

#include <math.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The audio positions of one sequence: the union of [pairs[2i], pairs[2i + 1]), i < n. */
struct seq_spans {
    int32_t seq_id;
    int32_t n;
    int32_t * pairs;              /* [2 * n] (NULL when n == 0) */
};

struct audiokv_llama_evictor {
    struct audiokv_params params;
    double keep;
    int has_profile;
    int32_t profile_n_layer, profile_n_head_kv;
    double * profile;             /* [profile_n_layer * profile_n_head_kv] or NULL */
    int last_status;
    char last_error[256];
    int64_t n_plans;
    int64_t last_kept;
    struct seq_spans * spans;     /* [n_seqs] audio spans of the sequences that have them */
    int32_t n_seqs;
};

static atomic_int g_warned_no_profile = 0;

static void set_text(char * dst, size_t size, const char * text) {
    if (dst && size > 0) {
        snprintf(dst, size, "%s", text);
    }
}

struct audiokv_llama_evictor * audiokv_llama_evictor_new(const struct llama_model * model,
                                                         const struct audiokv_params * params,
                                                         double keep, int * status,
                                                         char * err, size_t err_size) {
    int dummy = 0;
    if (!status) status = &dummy;
    set_text(err, err_size, "");
    if (!model || !params) {
        *status = AUDIOKV_ERR_NULL;
        set_text(err, err_size, "audiokv_llama_evictor_new: NULL model or params");
        return NULL;
    }
    if (!(keep > 0.0 && keep <= 1.0)) {
        *status = AUDIOKV_ERR_KEEP;
        if (err && err_size > 0) snprintf(err, err_size, "keep must be in (0, 1], got %g", keep);
        return NULL;
    }
    int rc = akv_params_check(params);
    if (rc != AUDIOKV_OK) {
        *status = rc;
        set_text(err, err_size, "invalid struct audiokv_params (unknown method or a field out of range)");
        return NULL;
    }
    struct audiokv_llama_evictor * ev = (struct audiokv_llama_evictor *) calloc(1, sizeof *ev);
    if (!ev) {
        *status = AUDIOKV_ERR_NOMEM;
        set_text(err, err_size, "out of memory");
        return NULL;
    }
    ev->params = *params;
    ev->keep = keep;
    ev->last_status = AUDIOKV_OK;
    if (params->method == AUDIOKV_METHOD_AUDIOKV) {
        struct audiokv_stored_profile prof;
        memset(&prof, 0, sizeof prof);
        char perr[256] = "";
        const int prc = audiokv_profile_read(model, &prof, perr, sizeof perr);
        if (prc == AUDIOKV_PROFILE_OK) {
            const int64_t n = (int64_t) prof.n_layer * prof.n_head_kv;
            ev->profile = (double *) malloc((size_t) (n > 0 ? n : 1) * sizeof(double));
            if (!ev->profile) {
                audiokv_profile_free(&prof);
                free(ev);
                *status = AUDIOKV_ERR_NOMEM;
                set_text(err, err_size, "out of memory");
                return NULL;
            }
            for (int64_t i = 0; i < n; ++i) ev->profile[i] = (double) prof.scores[i];
            ev->profile_n_layer = prof.n_layer;
            ev->profile_n_head_kv = prof.n_head_kv;
            ev->has_profile = 1;
            audiokv_profile_free(&prof);
        } else if (prc == AUDIOKV_PROFILE_NONE) {
            if (atomic_exchange(&g_warned_no_profile, 1) == 0) {
                akv_log(AUDIOKV_LOG_WARN, "audiokv: the model has no head profile (no audiokv.* GGUF keys, "
                                          "docs/gguf-keys.md); using uniform budgets");
            }
        } else {
            free(ev);
            *status = AUDIOKV_ERR_PROFILE;
            if (err && err_size > 0) snprintf(err, err_size, "head profile in the model's GGUF is unusable: %s", perr);
            return NULL;
        }
    }
    *status = AUDIOKV_OK;
    return ev;
}

void audiokv_llama_evictor_free(struct audiokv_llama_evictor * ev) {
    if (!ev) return;
    for (int32_t i = 0; i < ev->n_seqs; ++i) free(ev->spans[i].pairs);
    free(ev->spans);
    free(ev->profile);
    free(ev);
}

static struct seq_spans * find_spans(const struct audiokv_llama_evictor * ev, int32_t seq_id) {
    for (int32_t i = 0; i < ev->n_seqs; ++i) {
        if (ev->spans[i].seq_id == seq_id) return &ev->spans[i];
    }
    return NULL;
}

int audiokv_llama_evictor_set_audio_spans(struct audiokv_llama_evictor * ev, int32_t seq_id, const int32_t * spans,
                                          int32_t n_spans) {
    if (!ev || (!spans && n_spans > 0)) return AUDIOKV_ERR_NULL;
    if (seq_id < 0 || n_spans < 0) return AUDIOKV_ERR_SIZE;
    for (int32_t i = 0; i < n_spans; ++i) {
        if (spans[2 * i] < 0 || spans[2 * i + 1] <= spans[2 * i]) return AUDIOKV_ERR_SIZE;
    }
    int32_t * pairs = NULL;
    if (n_spans > 0) {
        pairs = (int32_t *) malloc((size_t) n_spans * 2 * sizeof(int32_t));
        if (!pairs) return AUDIOKV_ERR_NOMEM;
        memcpy(pairs, spans, (size_t) n_spans * 2 * sizeof(int32_t));
    }
    struct seq_spans * s = find_spans(ev, seq_id);
    if (!s) {
        struct seq_spans * grown = (struct seq_spans *) realloc(ev->spans, (size_t) (ev->n_seqs + 1) * sizeof *grown);
        if (!grown) { free(pairs); return AUDIOKV_ERR_NOMEM; }
        ev->spans = grown;
        s = &ev->spans[ev->n_seqs++];
        s->seq_id = seq_id;
        s->pairs = NULL;
    }
    free(s->pairs);
    s->pairs = pairs;
    s->n = n_spans;
    return AUDIOKV_OK;
}

int audiokv_llama_evictor_clear_audio_spans(struct audiokv_llama_evictor * ev, int32_t seq_id) {
    if (!ev) return AUDIOKV_ERR_NULL;
    struct seq_spans * s = find_spans(ev, seq_id);
    if (s) {
        free(s->pairs);
        *s = ev->spans[--ev->n_seqs];
    }
    return AUDIOKV_OK;
}

int audiokv_llama_evictor_has_profile(const struct audiokv_llama_evictor * ev) { return ev ? ev->has_profile : -1; }
int audiokv_llama_evictor_last_status(const struct audiokv_llama_evictor * ev) {
    return ev ? ev->last_status : AUDIOKV_ERR_NULL;
}
const char * audiokv_llama_evictor_last_error(const struct audiokv_llama_evictor * ev) {
    return ev ? ev->last_error : "";
}
int64_t audiokv_llama_evictor_n_plans(const struct audiokv_llama_evictor * ev) { return ev ? ev->n_plans : -1; }
int64_t audiokv_llama_evictor_last_kept(const struct audiokv_llama_evictor * ev) { return ev ? ev->last_kept : -1; }

/* ---- the callback ------------------------------------------------------------------------------------------ */

/* Everything one callback allocates (freed on every exit path). */
struct plan_buffers {
    struct audiokv_context * ctx;
    float * q;              /* [n_head * w * d] scaled queries of one layer */
    const void ** k;        /* [n_head_kv] key pointers of one layer (ragged scoring) */
    size_t * k_nb;          /* [n_head_kv] their entry strides */
    int32_t * n_entries;    /* [L * Hkv] entries per head (ragged context) */
    double * profile;       /* [L * Hkv] rows of the evictable layers */
    int32_t * counts;       /* [L * Hkv] */
    int32_t * indices;      /* [capacity] */
    uint8_t * audio;        /* [n_positions] audio mask of the sequence's spans */
    const int32_t ** pos;   /* [L * Hkv] positions of each head's entries */
};

static void free_buffers(struct plan_buffers * b) {
    audiokv_free(b->ctx);
    free(b->q);
    free((void *) b->k);
    free(b->k_nb);
    free(b->n_entries);
    free(b->profile);
    free(b->counts);
    free(b->indices);
    free(b->audio);
    free((void *) b->pos);
}

#if defined(__GNUC__)
static int32_t fail(struct audiokv_llama_evictor * ev, struct plan_buffers * b, int status, const char * fmt, ...)
    __attribute__((format(printf, 4, 5)));
#endif

static int32_t fail(struct audiokv_llama_evictor * ev, struct plan_buffers * b, int status, const char * fmt, ...) {
    va_list args;
    va_start(args, fmt);
    vsnprintf(ev->last_error, sizeof ev->last_error, fmt, args);
    va_end(args);
    ev->last_status = status;
    akv_log(AUDIOKV_LOG_ERROR, "eviction callback: %s", ev->last_error);
    if (b) free_buffers(b);
    return -1;
}

static int key_type_of(enum ggml_type type, int32_t d, int32_t * akv_type, audiokv_to_float_fn * to_float) {
    *to_float = NULL;
    if (type == GGML_TYPE_F32) { *akv_type = AUDIOKV_TYPE_F32; return 1; }
    if (type == GGML_TYPE_F16) { *akv_type = AUDIOKV_TYPE_F16; return 1; }
    if (!audiokv_ggml_type_supported((int32_t) type) || d % ggml_blck_size(type) != 0) return 0;
    *akv_type = AUDIOKV_TYPE_OTHER;
    *to_float = audiokv_ggml_to_float;
    return 1;
}

/* A uniform layer whose heads are evenly strided (llama.cpp's own cache before the first eviction) can go to the
 * dense audiokv_add_layer without a copy: one base, a stride per token and per head. */
static int dense_keys(const struct llama_kv_evict_layer * layer, size_t row_bytes, const char ** base,
                      size_t * nb_token, size_t * nb_head) {
    const struct llama_kv_evict_head * heads = layer->heads;
    const size_t nb = heads[0].nb_entry;
    ptrdiff_t step = (ptrdiff_t) row_bytes;
    if (layer->n_head_kv > 1) {
        step = (const char *) heads[1].k - (const char *) heads[0].k;
        if (step <= 0) return 0;
    }
    if (nb < 1) return 0;
    for (int32_t h = 0; h < layer->n_head_kv; ++h) {
        if (heads[h].nb_entry != nb || (const char *) heads[h].k != (const char *) heads[0].k + h * step) return 0;
    }
    *base = (const char *) heads[0].k;
    *nb_token = nb;
    *nb_head = (size_t) step;
    return 1;
}

int32_t audiokv_llama_evict_callback(struct llama_kv_evict_info * info, void * user_data) {
    struct audiokv_llama_evictor * ev = (struct audiokv_llama_evictor *) user_data;
    if (!ev) {
        akv_log(AUDIOKV_LOG_ERROR, "eviction callback: user_data is not an audiokv_llama_evictor (NULL)");
        return -1;
    }
    ev->last_error[0] = '\0';
    struct plan_buffers b;
    memset(&b, 0, sizeof b);
    if (!info || info->n_layer < 1 || !info->layers) {
        return fail(ev, NULL, AUDIOKV_ERR_SIZE, "no evictable layer handed over");
    }
    const struct llama_kv_evict_layer * l0 = &info->layers[0];
    const int32_t L = info->n_layer, H = l0->n_head, Hkv = l0->n_head_kv, d = l0->n_embd_head_k;
    const int32_t n_window = l0->n_window;
    if (H < 1 || Hkv < 1 || d < 1 || n_window < 1 || !l0->heads || !l0->q_pos) {
        return fail(ev, NULL, AUDIOKV_ERR_SIZE, "layer %d: bad shape (n_head %d, n_head_kv %d, d %d, window %d)",
                    l0->il, H, Hkv, d, n_window);
    }
    int64_t max_entries = 0;
    for (int32_t l = 0; l < L; ++l) {
        const struct llama_kv_evict_layer * layer = &info->layers[l];
        if (layer->n_head != H || layer->n_head_kv != Hkv || layer->n_embd_head_k != d ||
            layer->n_window != n_window || layer->type_k != l0->type_k || !layer->heads || !layer->q) {
            return fail(ev, NULL, AUDIOKV_ERR_SIZE, "layer %d differs in shape, window or key type from layer %d",
                        layer->il, l0->il);
        }
        for (int32_t h = 0; h < Hkv; ++h) {
            const int32_t n_kv = layer->heads[h].n_kv;
            if (n_kv < 1 || !layer->heads[h].k || !layer->heads[h].keep) {
                return fail(ev, NULL, AUDIOKV_ERR_SIZE, "layer %d head %d holds no entry", layer->il, h);
            }
            if (info->uniform && n_kv != l0->heads[0].n_kv) {
                return fail(ev, NULL, AUDIOKV_ERR_SIZE, "layer %d head %d holds %d entries, not %d (uniform cache)",
                            layer->il, h, n_kv, l0->heads[0].n_kv);
            }
            if (n_kv > max_entries) max_entries = n_kv;
        }
    }
    int32_t akv_k_type = 0;
    audiokv_to_float_fn to_float = NULL;
    if (!key_type_of(l0->type_k, d, &akv_k_type, &to_float)) {
        return fail(ev, NULL, AUDIOKV_ERR_TYPE, "keys of ggml type %s cannot be converted to float",
                    ggml_type_name(l0->type_k));
    }
    const size_t row_bytes = ggml_row_size(l0->type_k, d);

    /* Positions the sequence has seen: up to its last window position (positions 0, 1, ... one per token), at
     * least the entries a head holds. A cache evicted before holds fewer entries than that in every head, even
     * when the plan was the same for all heads (info->uniform: full, streamingllm): it is planned as ragged, so
     * that the budgets follow keep x the positions seen (docs/semantics.md, "Re-planning a ragged cache"). */
    int64_t n_positions = max_entries;
    if ((int64_t) l0->q_pos[n_window - 1] + 1 > n_positions) n_positions = (int64_t) l0->q_pos[n_window - 1] + 1;
    struct audiokv_params p = ev->params;
    p.window = p.window < n_window ? p.window : n_window;
    int dense = info->uniform && max_entries == n_positions;
    const char * kbase[1] = { NULL };
    for (int32_t l = 0; dense && l < L; ++l) {
        size_t nb_token = 0, nb_head = 0;
        dense = dense_keys(&info->layers[l], row_bytes, kbase, &nb_token, &nb_head);
    }
    int rc;
    if (dense) {
        rc = audiokv_init(&p, L, H, Hkv, d, n_positions, &b.ctx);
    } else {
        /* a ragged or evicted cache, or a full one whose heads are not evenly strided (the same plan, bitwise) */
        b.n_entries = (int32_t *) malloc((size_t) L * (size_t) Hkv * sizeof(int32_t));
        if (!b.n_entries) return fail(ev, &b, AUDIOKV_ERR_NOMEM, "out of memory");
        for (int32_t l = 0; l < L; ++l) {
            for (int32_t h = 0; h < Hkv; ++h) b.n_entries[(size_t) l * Hkv + h] = info->layers[l].heads[h].n_kv;
        }
        rc = audiokv_init_ragged(&p, L, H, Hkv, d, b.n_entries, n_positions, &b.ctx);
    }
    if (rc != AUDIOKV_OK) {
        return fail(ev, &b, rc, "planner for L %d, H %d, Hkv %d, d %d, %lld positions (%s cache): %s", L, H, Hkv, d,
                    (long long) n_positions, dense ? "uniform" : "ragged", audiokv_status_string(rc));
    }
    const int32_t w = audiokv_window(b.ctx);     /* min(window, positions) <= n_window */
    const int needs_scores = p.method != AUDIOKV_METHOD_FULL && p.method != AUDIOKV_METHOD_STREAMINGLLM;
    if (needs_scores) {
        b.q = (float *) malloc((size_t) H * (size_t) w * (size_t) d * sizeof(float));
        b.k = (const void **) malloc((size_t) Hkv * sizeof(void *));
        b.k_nb = (size_t *) malloc((size_t) Hkv * sizeof(size_t));
        if (!b.q || !b.k || !b.k_nb) return fail(ev, &b, AUDIOKV_ERR_NOMEM, "out of memory");
        for (int32_t l = 0; l < L; ++l) {
            const struct llama_kv_evict_layer * layer = &info->layers[l];
            /* docs/per-head-eviction.md: the logit is kq_scale * q.k, docs/semantics.md divides q.k by sqrt(d) */
            const float scale = (float) ((double) layer->kq_scale * sqrt((double) d));
            for (int32_t h = 0; h < H; ++h) {
                const float * src = layer->q + ((size_t) h * (size_t) n_window + (size_t) (n_window - w)) * d;
                float * dst = b.q + (size_t) h * (size_t) w * d;
                for (size_t i = 0; i < (size_t) w * (size_t) d; ++i) dst[i] = src[i] * scale;
            }
            const size_t q_nb_head = (size_t) w * d * sizeof(float), q_nb_row = (size_t) d * sizeof(float);
            void * type_user_data = (void *) (intptr_t) l0->type_k;
            if (dense) {
                const char * base = NULL;
                size_t nb_token = 0, nb_head = 0;
                dense_keys(layer, row_bytes, &base, &nb_token, &nb_head);
                rc = audiokv_add_layer(b.ctx, l, b.q, AUDIOKV_TYPE_F32, q_nb_head, q_nb_row, base, akv_k_type,
                                       nb_token, nb_head, to_float, type_user_data);
            } else {
                for (int32_t h = 0; h < Hkv; ++h) {
                    b.k[h] = layer->heads[h].k;
                    b.k_nb[h] = layer->heads[h].nb_entry;
                }
                rc = audiokv_add_layer_ragged(b.ctx, l, b.q, AUDIOKV_TYPE_F32, q_nb_head, q_nb_row, b.k, akv_k_type,
                                              b.k_nb, to_float, type_user_data);
            }
            if (rc != AUDIOKV_OK) {
                return fail(ev, &b, rc, "scoring layer %d: %s", layer->il, audiokv_status_string(rc));
            }
        }
    }

    /* audio spans of the sequence: SSS restricted to the audio tokens (positions from every head's entries) */
    const struct seq_spans * spans = find_spans(ev, info->seq_id);
    if (spans) {
        b.audio = (uint8_t *) calloc((size_t) n_positions, 1);
        b.pos = (const int32_t **) malloc((size_t) L * (size_t) Hkv * sizeof(int32_t *));
        if (!b.audio || !b.pos) return fail(ev, &b, AUDIOKV_ERR_NOMEM, "out of memory");
        for (int32_t i = 0; i < spans->n; ++i) {   /* positions not reached yet are left out */
            const int64_t end = spans->pairs[2 * i + 1] < n_positions ? spans->pairs[2 * i + 1] : n_positions;
            for (int64_t pos = spans->pairs[2 * i]; pos < end; ++pos) b.audio[pos] = 1;
        }
        for (int32_t l = 0; l < L; ++l) {
            for (int32_t h = 0; h < Hkv; ++h) {
                b.pos[(size_t) l * Hkv + h] = (const int32_t *) info->layers[l].heads[h].pos;
            }
        }
        rc = audiokv_set_audio_mask(b.ctx, b.audio, n_positions, b.pos);
        if (rc != AUDIOKV_OK) {
            return fail(ev, &b, rc, "audio mask of sequence %d (%d spans, %lld positions): %s", info->seq_id,
                        spans->n, (long long) n_positions, audiokv_status_string(rc));
        }
    }

    const double * profile = NULL;
    if (p.method == AUDIOKV_METHOD_AUDIOKV) {
        /* rows of the evictable layers; without a stored profile all ones, which gives exactly the uniform budgets
         * (every real budget is the same number, so integerisation hands each head C) without a second warning */
        b.profile = (double *) malloc((size_t) L * (size_t) Hkv * sizeof(double));
        if (!b.profile) return fail(ev, &b, AUDIOKV_ERR_NOMEM, "out of memory");
        for (int32_t l = 0; l < L; ++l) {
            const int32_t il = info->layers[l].il;
            if (ev->has_profile && (il < 0 || il >= ev->profile_n_layer || Hkv != ev->profile_n_head_kv)) {
                return fail(ev, &b, AUDIOKV_ERR_PROFILE, "head profile has %d layers x %d KV heads but layer %d "
                            "with %d KV heads was handed over", ev->profile_n_layer, ev->profile_n_head_kv, il, Hkv);
            }
            for (int32_t h = 0; h < Hkv; ++h) {
                b.profile[(size_t) l * Hkv + h] = ev->has_profile ? ev->profile[(size_t) il * Hkv + h] : 1.0;
            }
        }
        profile = b.profile;
    }

    const int64_t capacity = audiokv_plan_capacity(b.ctx);
    b.counts = (int32_t *) malloc((size_t) L * (size_t) Hkv * sizeof(int32_t));
    b.indices = (int32_t *) malloc((size_t) (capacity > 0 ? capacity : 1) * sizeof(int32_t));
    if (!b.counts || !b.indices) return fail(ev, &b, AUDIOKV_ERR_NOMEM, "out of memory");
    int64_t total = 0;
    rc = audiokv_plan(b.ctx, ev->keep, profile, L, Hkv, b.counts, b.indices, capacity, &total);
    if (rc != AUDIOKV_OK) {
        return fail(ev, &b, rc, "planning the %s cache (%lld positions): %s", dense ? "uniform" : "ragged",
                    (long long) n_positions, audiokv_status_string(rc));
    }
    int64_t off = 0;
    for (int32_t l = 0; l < L; ++l) {
        for (int32_t h = 0; h < Hkv; ++h) {
            struct llama_kv_evict_head * head = &info->layers[l].heads[h];
            const int32_t c = b.counts[(size_t) l * Hkv + h];
            memcpy(head->keep, b.indices + off, (size_t) c * sizeof(int32_t));
            head->n_keep = c;
            off += c;
        }
    }
    free_buffers(&b);
    ev->last_status = AUDIOKV_OK;
    ev->last_kept = total;
    ev->n_plans += 1;
    return 0;
}
