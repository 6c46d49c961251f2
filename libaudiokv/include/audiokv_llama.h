/*
 * audiokv_llama.h - libaudiokv as llama.cpp's per-head eviction callback (patched llama.cpp, include/llama-kv-evict.h,
 * docs/per-head-eviction.md). Exported only by a libaudiokv built inside the combined build, where it links libllama
 * and ggml (check for the symbol audiokv_llama_evictor_new when loading dynamically).
 *
 * Usage
 * -----
 *     struct audiokv_params p = audiokv_default_params(AUDIOKV_METHOD_AUDIOKV);
 *     char err[256];
 *     int status = 0;
 *     struct audiokv_llama_evictor * ev = audiokv_llama_evictor_new(model, &p, 0.4, &status, err, sizeof err);
 *     if (!ev) { fprintf(stderr, "%s\n", err); ... }
 *     struct llama_kv_evict_params ep = llama_kv_evict_default_params();
 *     ep.mode      = LLAMA_KV_EVICT_MODE_COMPACT;
 *     ep.n_window  = p.window;
 *     ep.callback  = audiokv_llama_evict_callback;
 *     ep.user_data = ev;
 *     llama_kv_evict_init(ctx, ep);
 *     ... llama_decode(ctx, prompt) ...;
 *     llama_kv_evict_seq(ctx, 0);                 // plans with libaudiokv, llama.cpp frees the dropped entries
 *     ... (decode more, evict again: the cache is then ragged) ...
 *     llama_free(ctx);
 *     audiokv_llama_evictor_free(ev);             // after the last llama_kv_evict_seq
 *
 * What the callback does (docs/semantics.md is the contract, the same as audiokv_edge.plan):
 *   - queries: the last w = min(params.window, n_window) captured rows of every layer, multiplied by
 *     (float) (kq_scale * sqrt(d)) in float32, because the contract divides q.k by sqrt(d) while the model's
 *     attention logit is kq_scale * q.k (Gemma 3: kq_scale = 1);
 *   - keys: any ggml type (f32 and f16 read directly, others through ggml's to_float, e.g. q8_0);
 *   - head profile: read once from the model's GGUF metadata (audiokv.* keys, docs/gguf-keys.md) by
 *     audiokv_llama_evictor_new for method audiokv; iSWA models hand over their full-attention layers only, whose
 *     profile rows (by model layer index) are used. Without a profile audiokv uses uniform budgets and logs ONE
 *     warning per process; a profile of the wrong shape or with bad values is an error of
 *     audiokv_llama_evictor_new (AUDIOKV_ERR_PROFILE, the message names the key);
 *   - first eviction (info->uniform): audiokv_init / audiokv_add_layer / audiokv_plan on keys [L, Hkv, N, d]
 *     (zero copy: llama.cpp's cache strides are passed through);
 *   - later evictions (ragged heads, docs/semantics.md "Re-planning a ragged cache"): audiokv_init_ragged /
 *     audiokv_add_layer_ragged / audiokv_plan on each head's own entries; the positions the sequence has seen are
 *     taken as its last window position + 1 (positions 0, 1, ... one per token, as llama.cpp's text decoding and
 *     the runner produce), at least the most entries a head holds;
 *   - audio spans (audiokv_llama_evictor_set_audio_spans, e.g. where libmtmd put a prompt's audio chunks): the
 *     sequence's audio positions become the planner's audio mask (audiokv_set_audio_mask, with every head's entry
 *     positions), so that audiokv's SSS smooths the runs of audio tokens only and text tokens keep their raw
 *     scores; without spans for the sequence SSS smooths every token, as before;
 *   - on any error the callback returns -1: llama.cpp then evicts nothing (never a partial or wrong plan).
 *
 * Thread safety: an evictor is used by one llama_context at a time (llama.cpp calls the callback on the thread of
 * llama_kv_evict_seq). Distinct evictors are independent. The planner runs params.n_threads worker threads.
 */
#ifndef AUDIOKV_LLAMA_H
#define AUDIOKV_LLAMA_H

#include "audiokv.h"

#ifdef __cplusplus
extern "C" {
#endif

struct llama_model;
struct llama_kv_evict_info;
struct audiokv_llama_evictor;

/* Create an evictor planning with `params` (its method, window, threads, ...) and keep ratio `keep` in (0, 1].
 *   model:  the loaded llama_model whose contexts will call the callback; read once here (head profile, shapes),
 *           not kept.
 *   status: out (may be NULL): AUDIOKV_OK, or AUDIOKV_ERR_NULL (model or params), _KEEP, _PARAM, _PROFILE (a stored
 *           profile that cannot be used: wrong version, shape, values), _NOMEM.
 *   err:    out (may be NULL): a one-line message on error, "" on success.
 * Returns NULL on error. */
AUDIOKV_API struct audiokv_llama_evictor * audiokv_llama_evictor_new(const struct llama_model * model,
                                                                     const struct audiokv_params * params,
                                                                     double keep, int * status,
                                                                     char * err, size_t err_size);

/* Free an evictor (NULL is a no-op). No llama_kv_evict_seq may use it afterwards. */
AUDIOKV_API void audiokv_llama_evictor_free(struct audiokv_llama_evictor * evictor);

/* The llama_kv_evict_callback: user_data is the evictor. Returns 0 with every head's n_keep / keep filled, or -1
 * on error (llama.cpp then changes nothing and reports LLAMA_KV_EVICT_ERR_CALLBACK); the libaudiokv status and a
 * message are kept in the evictor (audiokv_llama_evictor_last_status / _last_error) and logged. */
AUDIOKV_API int32_t audiokv_llama_evict_callback(struct llama_kv_evict_info * info, void * user_data);

/* Set the audio positions of sequence seq_id (>= 0): the union of the n_spans half-open intervals
 * [spans[2i], spans[2i + 1]), 0 <= spans[2i] < spans[2i + 1]; any order, overlaps allowed. Every later eviction of
 * that sequence restricts audiokv's SSS to these positions (docs/semantics.md, "SSS restricted to the audio
 * tokens"); positions the sequence has not reached yet are ignored, so the spans may be set as chunks arrive or
 * for a whole prompt at once. n_spans = 0 (spans may be NULL): the sequence has no audio token, every score stays
 * raw. Replaces the sequence's earlier spans; the spans are copied. Other methods than audiokv (and sss_alpha = 0)
 * plan as without spans. Not thread safe with a running llama_kv_evict_seq on the same evictor.
 * Errors: NULL (evictor; spans with n_spans > 0), SIZE (seq_id < 0, n_spans < 0, a span with a negative start or
 * an end not after its start), NOMEM; the earlier spans then stay. */
AUDIOKV_API int audiokv_llama_evictor_set_audio_spans(struct audiokv_llama_evictor * evictor, int32_t seq_id,
                                                      const int32_t * spans, int32_t n_spans);

/* Forget the audio spans of sequence seq_id (none set: nothing to do): SSS smooths every token again.
 * Errors: NULL. */
AUDIOKV_API int audiokv_llama_evictor_clear_audio_spans(struct audiokv_llama_evictor * evictor, int32_t seq_id);

/* 1 when the evictor plans with the model's stored head profile, 0 otherwise (no profile, or a method that does
 * not use one); -1 for NULL. */
AUDIOKV_API int audiokv_llama_evictor_has_profile(const struct audiokv_llama_evictor * evictor);

/* Status of the last callback (AUDIOKV_OK before any), its message ("" when none), the number of callbacks that
 * succeeded, and the (layer, KV head, entry) entries the last successful plan kept. NULL: error / "" / -1. */
AUDIOKV_API int          audiokv_llama_evictor_last_status(const struct audiokv_llama_evictor * evictor);
AUDIOKV_API const char * audiokv_llama_evictor_last_error(const struct audiokv_llama_evictor * evictor);
AUDIOKV_API int64_t      audiokv_llama_evictor_n_plans(const struct audiokv_llama_evictor * evictor);
AUDIOKV_API int64_t      audiokv_llama_evictor_last_kept(const struct audiokv_llama_evictor * evictor);

#ifdef __cplusplus
}
#endif

#endif /* AUDIOKV_LLAMA_H */
