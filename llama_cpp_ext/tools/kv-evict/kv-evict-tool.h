#pragma once

// Per-head KV-cache eviction for llama.cpp's tools (llama-server, llama-mtmd-cli): libaudiokv's keep plans
// (audiokv_llama_evict_callback, libaudiokv/include/audiokv_llama.h of audiokv-edge) applied by the eviction API of
// include/llama-kv-evict.h in COMPACT mode, as the audiokv-edge runner applies them (docs/per-head-eviction.md).
//
// Usage (one tool per llama_context):
//
//     kv_evict_tool::keep_kv_in_host_memory(params.no_kv_offload);   // before the context is created
//     kv_evict_request defaults;                  // the command line: --kv-evict, --kv-evict-keep, --kv-evict-stream
//     defaults.method = "snapkv";
//     std::string err;
//     std::unique_ptr<kv_evict_tool> ev = kv_evict_tool::init(ctx, defaults, n_threads, n_headroom, err);
//     if (!ev) { LOG_ERR("%s\n", err.c_str()); ... }
//     kv_evict_totals totals;                     // the statistics of one prompt of one sequence
//     for each prompt chunk: decode it, then ev->after_chunk(seq_id, req, is_audio, is_last, n_past, totals);
//     ev->after_prompt(seq_id, req, n_past, totals);   // before the first answer token is decoded
//     ...
//     llama_free(ctx);                            // the context calls the tool until it is freed, so free it first
//     ev.reset();
//
// A request (kv_evict_request) leaves fields unset to take the tool's defaults; check() validates one.
// Thread safety: as llama_kv_evict_seq: calls on one tool must not overlap, nor run during llama_decode on its context.

#include "llama.h"

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <utility>

struct audiokv_llama_evictor;
struct llama_kv_evict_info;

// what a run or a request asks for; unset fields take the tool's defaults
struct kv_evict_request {
    std::string method;          // libaudiokv method name (full, streamingllm, h2o, snapkv, pyramidkv, adakv, audiokv);
                                 //   "": the default ("full" keeps every entry and only reports)
    float       keep   = -1.0f;  // fraction of the prompt's KV entries kept, in (0, 1]; < 0: the default, else for
                                 //   method audiokv the model's stored audiokv.defaults.keep, else 0.4
    int32_t     stream = -1;     // 1: also evict after every audio chunk of the prompt but the last, 0: once after the
                                 //   prompt; -1: the default
};

// the statistics of one prompt of one sequence (the runner's --json fields of the same names)
struct kv_evict_totals {
    bool        active        = false; // a prompt was recorded (the fields below are set)
    std::string method;                // effective method
    double      keep          = 1.0;   // effective keep ratio (1 for full)
    std::string keep_source;           // "request" (the request or the command line), "profile" (the model's stored
                                       //   default), "default" (0.4) or "full"
    bool        stream        = false;
    int32_t     n_evictions   = 0;     // evictions applied
    int64_t     n_past        = 0;     // positions of the prompt
    int64_t     kv_bytes_full = 0;     // K + V bytes the prompt holds without eviction, in the evictable layers
    int64_t     kv_bytes_kept = 0;     // K + V bytes it holds there after the last eviction
    double      evict_ms      = 0.0;   // time spent planning and evicting
    std::string error;                 // why an eviction failed ("" when none); the cache then stays as it was
};

class kv_evict_tool {
public:
    // enable per-head eviction (COMPACT) on ctx, once per context, before its sequences are decoded; defaults.method
    // must be set. n_threads: libaudiokv's planning threads; n_headroom: rows per (layer, KV head) reserved after
    // each eviction for the tokens until the next one (<= 0: llama.cpp's default). Returns nullptr and sets err
    // (one line) when the request is invalid, the model's stored head profile is unusable for method audiokv, or
    // llama.cpp cannot evict on this context (its log says why).
    static std::unique_ptr<kv_evict_tool> init(llama_context * ctx, const kv_evict_request & defaults,
            int32_t n_threads, int32_t n_headroom, std::string & err);

    // before the context is created, when eviction is on: the eviction reads and rewrites the KV cache in host
    // memory, so the KV cache and attention stay there (llama.cpp's offload_kqv = false) while the model's layers
    // may still be offloaded to a GPU (-ngl); sets no_kv_offload (common_params) and logs it
    static void keep_kv_in_host_memory(bool & no_kv_offload);

    // a request with a known method (or none) and a keep in (0, 1] (or none); false with a one-line err otherwise
    static bool check(const kv_evict_request & req, std::string & err);

    // the method names, ", "-separated (libaudiokv's table)
    static std::string method_names();

    // decode of a chunk of sequence seq_id's prompt done, n_past positions decoded: evicts when the request streams,
    // the chunk holds audio and is not the prompt's last
    void after_chunk(llama_seq_id seq_id, const kv_evict_request & req, bool is_audio, bool is_last, llama_pos n_past,
            kv_evict_totals & totals);

    // the whole prompt of seq_id decoded (n_past positions): evicts it (method full: only the statistics); on failure
    // totals.error says why and the cache is unchanged
    void after_prompt(llama_seq_id seq_id, const kv_evict_request & req, llama_pos n_past, kv_evict_totals & totals);

    // one log line of a prompt's statistics
    static std::string describe(const kv_evict_totals & totals);

    ~kv_evict_tool();

private:
    struct choice {
        int32_t     method = 0;
        double      keep   = 1.0;
        const char * keep_source = "full";
        bool        stream = false;
    };

    kv_evict_tool() = default;

    choice resolve(const kv_evict_request & req) const;
    void   begin(const choice & c, kv_evict_totals & totals) const;
    void   evict(llama_seq_id seq_id, const choice & c, llama_pos n_past, kv_evict_totals & totals);
    audiokv_llama_evictor * evictor(const choice & c, std::string & err);

    static int32_t callback(llama_kv_evict_info * info, void * user_data);

    llama_context     * ctx   = nullptr;
    const llama_model * model = nullptr;

    kv_evict_request defaults;
    int32_t          n_threads = 0;

    // the model's stored AudioKV defaults (audiokv.defaults.*, method audiokv only); profile_err when unusable
    int32_t     profile_window = -1;
    double      profile_keep   = -1.0;
    double      profile_alpha  = -1.0;
    double      profile_gamma  = -1.0;
    std::string profile_err;

    std::map<std::pair<int32_t, double>, audiokv_llama_evictor *> evictors; // (method, keep) -> evictor
    audiokv_llama_evictor * current = nullptr;                              // the one the callback plans with
};
