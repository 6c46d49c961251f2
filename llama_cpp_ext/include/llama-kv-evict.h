#pragma once

// Per-(layer, KV head) KV-cache eviction driven by a callback.
//
// Usage:
//
//     static int32_t my_plan(struct llama_kv_evict_info * info, void * user_data) {
//         for (int32_t l = 0; l < info->n_layer; ++l) {
//             struct llama_kv_evict_layer * layer = &info->layers[l];
//             for (int32_t h = 0; h < layer->n_head_kv; ++h) {
//                 struct llama_kv_evict_head * head = &layer->heads[h];
//                 // score head->n_kv entries with layer->q and head->k, then:
//                 head->n_keep = ...;            // 1 <= n_keep <= n_kv
//                 // head->keep[0 .. n_keep-1] = kept entry indices, strictly increasing
//             }
//         }
//         return 0;                              // 1: keep everything, other values: error
//     }
//
//     struct llama_kv_evict_params p = llama_kv_evict_default_params();
//     p.callback  = my_plan;
//     p.user_data = NULL;
//     llama_kv_evict_init(ctx, p);               // once per context, before decoding the sequence
//     llama_decode(ctx, batch);                  // the last n_window queries of every sequence are captured
//     int32_t rc = llama_kv_evict_seq(ctx, 0);   // calls my_plan for sequence 0, then applies its plan
//
// Thread safety: none beyond llama.cpp's own; never call these functions concurrently with llama_decode on the
// same context. The callback runs on the calling thread of llama_kv_evict_seq.
// Design and exact semantics: docs/per-head-eviction.md of the audiokv-edge project.

#include "llama.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

    // status codes returned by the llama_kv_evict_* functions
    enum llama_kv_evict_status {
        LLAMA_KV_EVICT_OK              =  0, // done
        LLAMA_KV_EVICT_DECLINED        =  1, // the callback returned 1 (keep everything): nothing changed
        LLAMA_KV_EVICT_ERR_ARG         = -1, // NULL pointer, n_window < 1, unknown mode
        LLAMA_KV_EVICT_ERR_NOT_INIT    = -2, // llama_kv_evict_init was not called on this context
        LLAMA_KV_EVICT_ERR_UNSUPPORTED = -3, // memory type, backend or mode not supported (message logged)
        LLAMA_KV_EVICT_ERR_SEQ         = -4, // seq_id out of range, or the sequence holds no token
        LLAMA_KV_EVICT_ERR_WINDOW      = -5, // no query captured for the sequence since init
        LLAMA_KV_EVICT_ERR_CALLBACK    = -6, // the callback returned neither 0 nor 1: nothing changed
        LLAMA_KV_EVICT_ERR_PLAN        = -7, // invalid plan (first offending layer/head logged): nothing changed
        LLAMA_KV_EVICT_ERR_STATE       = -8, // init called twice, or an operation invalid on an evicted sequence
    };

    enum llama_kv_evict_mode {
        LLAMA_KV_EVICT_MODE_MASK    = 0, // test oracle: evicted entries are masked per head, nothing is freed
        LLAMA_KV_EVICT_MODE_COMPACT = 1, // the default: ragged per-head storage, memory freed (per-sequence pools)
    };

    // one (layer, KV head) of the sequence; every pointer is owned by llama.cpp and valid during the callback only
    struct llama_kv_evict_head {
        int32_t           n_kv;     // entries this head holds for the sequence
        const llama_pos * pos;      // [n_kv] positions of the entries, ascending
        const void      * k;        // key of entry 0: n_embd_head_k elements of the layer's type_k
        size_t            nb_entry; // bytes from the key of entry i to the key of entry i + 1
        int32_t           n_keep;   // OUT: entries kept, 1 <= n_keep <= n_kv (preset to n_kv)
        int32_t         * keep;     // OUT: [n_kv] capacity; keep[0 .. n_keep-1] = kept entry indices, strictly increasing
                                    //      (preset to 0 .. n_kv-1)
    };

    struct llama_kv_evict_layer {
        int32_t           il;            // model layer index
        int32_t           n_head;        // query heads; query head q reads KV head q / (n_head / n_head_kv)
        int32_t           n_head_kv;     // KV heads
        int32_t           n_embd_head_k; // d, elements per key and per query row
        enum ggml_type    type_k;        // storage type of the keys (ggml_get_type_traits(type_k)->to_float reads them)
        float             kq_scale;      // attention logit = kq_scale * dot(q, k)
        int32_t           n_window;      // query rows captured for this sequence
        const float     * q;             // [n_head][n_window][n_embd_head_k]: post-RoPE queries as attention uses them
        const llama_pos * q_pos;         // [n_window] positions of the query rows, ascending
        struct llama_kv_evict_head * heads; // [n_head_kv]
    };

    struct llama_kv_evict_info {
        llama_seq_id                  seq_id;
        int32_t                       n_layer; // evictable layers (full attention, own K/V storage)
        struct llama_kv_evict_layer * layers;  // [n_layer]
        bool                          uniform; // every head holds the same positions (no eviction applied yet)
    };

    // return 0 after filling n_keep/keep of every head, 1 to keep everything, any other value on error
    typedef int32_t (*llama_kv_evict_callback)(struct llama_kv_evict_info * info, void * user_data);

    struct llama_kv_evict_params {
        int32_t                 n_window;  // queries captured per sequence (its last decoded tokens), >= 1; default 32
        int32_t                 mode;      // enum llama_kv_evict_mode; default LLAMA_KV_EVICT_MODE_COMPACT
        llama_kv_evict_callback callback;  // required
        void                  * user_data; // handed to the callback unchanged
        int32_t                 n_headroom; // COMPACT: rows per (layer, KV head) reserved for new tokens after each
                                            // eviction (more are allocated on demand); >= 0, default 256
    };

    // memory held by one sequence in the evictable layers
    struct llama_kv_evict_stats {
        int64_t n_tokens;       // tokens (positions) of the sequence in the cache
        int64_t n_entries;      // (layer, KV head, token) entries still attended
        int64_t n_entries_full; // entries without eviction: n_tokens * sum over layers of n_head_kv
        int64_t bytes_used;     // bytes of K and V storage the sequence occupies (MASK mode: all its cells;
                                //   COMPACT: its per-head pools incl. headroom + the cells of the main cache it holds)
        int64_t bytes_kept;     // bytes the attended entries need (n_entries rows of K and V)
        int64_t bytes_headroom; // part of bytes_used reserved for new tokens (COMPACT pools), 0 in MASK mode
    };

    LLAMA_API struct llama_kv_evict_params llama_kv_evict_default_params(void);

    // enable eviction on a context: allocates the query capture (and, in MASK mode, the per-head masks) and makes
    // the next decode rebuild its graph. Once per context.
    // returns LLAMA_KV_EVICT_OK, _ERR_ARG, _ERR_UNSUPPORTED or _ERR_STATE (already enabled)
    LLAMA_API int32_t llama_kv_evict_init(struct llama_context * ctx, struct llama_kv_evict_params params);

    // hand sequence seq_id to the callback and apply the keep plan it returns
    // returns LLAMA_KV_EVICT_OK, _DECLINED or a negative status; on any status but _OK the cache is unchanged
    LLAMA_API int32_t llama_kv_evict_seq(struct llama_context * ctx, llama_seq_id seq_id);

    // returns LLAMA_KV_EVICT_OK, _ERR_ARG, _ERR_NOT_INIT or _ERR_SEQ (seq_id out of range)
    LLAMA_API int32_t llama_kv_evict_get_stats(
            struct llama_context        * ctx,
            llama_seq_id                  seq_id,
            struct llama_kv_evict_stats * out);

    // name of a status code ("LLAMA_KV_EVICT_OK", ...); "unknown status" for other values; never NULL
    LLAMA_API const char * llama_kv_evict_status_str(int32_t status);

#ifdef __cplusplus
}
#endif
