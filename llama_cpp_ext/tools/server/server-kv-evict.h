#pragma once

// llama-server's per-head KV-cache eviction (--kv-evict METHOD, --kv-evict-keep R, --kv-evict-stream; the shared
// logic is tools/kv-evict/kv-evict-tool.h): start-up, the request field "kv_evict" and the "kv_evict" object of the
// response's "timings". Each slot evicts its own sequence once its prompt is decoded (and, when streaming, after
// every audio chunk of it); every prompt is decoded into an empty sequence (an evicted cache is no prefix to reuse).

#include "kv-evict-tool.h"

#include "common.h"
#include "json.h"

#include <memory>

// turn eviction on for ctx when params ask for it (out stays nullptr without --kv-evict); false (error logged) when
// it cannot run. Switches off what an evicted sequence cannot follow: the RAM prompt cache and context checkpoints
// (state save), context shift and cache reuse (K-shift), speculative decoding (rollback); has_spec: a draft model
// or MTP is configured, which is an error.
bool server_kv_evict_init(common_params & params, llama_context * ctx, bool has_spec,
        std::unique_ptr<kv_evict_tool> & out);

// the request's "kv_evict" field: {"method": NAME, "keep": R in (0, 1], "stream": BOOL}, every member optional (the
// server's flags fill the rest); an absent field gives the server's flags. Throws std::invalid_argument (HTTP 400)
// when the field is malformed or the server runs without --kv-evict.
kv_evict_request server_kv_evict_request(const common_json & data, const common_params & params);

// a prompt's statistics as the response's timings.kv_evict
common_json server_kv_evict_timings(const kv_evict_totals & totals);
