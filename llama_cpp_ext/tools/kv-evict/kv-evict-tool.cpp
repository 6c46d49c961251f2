#include "kv-evict-tool.h"

#include "llama-kv-evict.h"
#include "log.h"

#include "audiokv.h"
#include "audiokv_gguf_profile.h"
#include "audiokv_llama.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>

#if defined(__GLIBC__)
#include <malloc.h>
#endif

// keep ratio when neither the request, the command line nor (method audiokv) the model's stored defaults set one
static constexpr double KV_EVICT_DEFAULT_KEEP = 0.4;

std::string kv_evict_tool::method_names() {
    std::string names;
    for (int32_t m = 0; m < AUDIOKV_METHOD_COUNT; ++m) {
        names += (m > 0 ? ", " : "") + std::string(audiokv_method_name(m));
    }
    return names;
}

// A server with eviction holds a small, fixed KV cache, but each audio request allocates and frees large transient
// buffers (decoded samples, mel windows, embeddings: tens of MB). glibc raises its mmap threshold after such a free
// (up to 32 MiB), so the next ones come from the heap, where fragmentation keeps them resident: the process grew by
// ~1.6 MB per request in the load test (scripts/load_test_server.py). A fixed 1 MiB threshold sends them back to the
// system when freed (the same test: +9 KiB per request). Elsewhere the system allocator is left as it is.
static void return_large_blocks_to_the_system() {
#if defined(__GLIBC__)
    static bool done = false;
    if (!done && mallopt(M_MMAP_THRESHOLD, 1 << 20) == 1) {
        LOG_INF("%s: per-head KV eviction: blocks of 1 MiB and more are returned to the system when freed "
                "(glibc M_MMAP_THRESHOLD)\n", __func__);
    }
    done = true;
#endif
}

void kv_evict_tool::keep_kv_in_host_memory(bool & no_kv_offload) {
    no_kv_offload = true;
    LOG_INF("%s: per-head KV eviction: the KV cache and attention stay in host memory (offload_kqv = false); "
            "offloaded layers (-ngl) stay on their device\n", __func__);
}

bool kv_evict_tool::check(const kv_evict_request & req, std::string & err) {
    if (!req.method.empty() && audiokv_method_from_name(req.method.c_str()) < 0) {
        err = "unknown KV eviction method '" + req.method + "'; choose from " + method_names();
        return false;
    }
    if (!(req.keep < 0.0f) && !(req.keep > 0.0f && req.keep <= 1.0f)) {
        err = "the KV eviction keep ratio must be in (0, 1], got " + std::to_string(req.keep);
        return false;
    }
    return true;
}

std::unique_ptr<kv_evict_tool> kv_evict_tool::init(llama_context * ctx, const kv_evict_request & defaults,
        int32_t n_threads, int32_t n_headroom, std::string & err) {
    if (!check(defaults, err)) {
        return nullptr;
    }
    if (ctx == nullptr || defaults.method.empty()) {
        err = "per-head KV eviction needs a context and a method";
        return nullptr;
    }

    return_large_blocks_to_the_system();

    std::unique_ptr<kv_evict_tool> t(new kv_evict_tool());
    t->ctx       = ctx;
    t->model     = llama_get_model(ctx);
    t->defaults  = defaults;
    t->n_threads = std::max(0, n_threads);

    // the model's stored AudioKV defaults: keep, window and SSS alpha / gamma of method audiokv
    {
        audiokv_stored_profile prof = {};
        char msg[512] = "";
        const int rc = audiokv_profile_read(t->model, &prof, msg, sizeof msg);
        if (rc == AUDIOKV_PROFILE_OK) {
            t->profile_window = prof.window;
            t->profile_keep   = std::isnan(prof.keep)      ? -1.0 : prof.keep;
            t->profile_alpha  = std::isnan(prof.sss_alpha) ? -1.0 : prof.sss_alpha;
            t->profile_gamma  = std::isnan(prof.sss_gamma) ? -1.0 : prof.sss_gamma;
            audiokv_profile_free(&prof);
        } else if (rc != AUDIOKV_PROFILE_NONE) {
            t->profile_err = std::string("head profile in the model's GGUF is unusable: ") + msg;
        }
    }

    // the default request must plan: its evictor is created now, so that a bad profile stops the start
    const choice c = t->resolve(defaults);
    if (c.method != AUDIOKV_METHOD_FULL && t->evictor(c, err) == nullptr) {
        return nullptr;
    }

    // capture the whole observation window: the methods' default, or method audiokv's stored one
    const int32_t n_ctx = (int32_t) llama_n_ctx(ctx);
    int32_t n_window = audiokv_default_params(AUDIOKV_METHOD_AUDIOKV).window;
    if (t->profile_window > 0) {
        n_window = std::max(n_window, std::min(t->profile_window, n_ctx));
    }

    llama_kv_evict_params ep = llama_kv_evict_default_params();
    ep.n_window  = n_window;
    ep.mode      = LLAMA_KV_EVICT_MODE_COMPACT;
    ep.callback  = callback;
    ep.user_data = t.get();
    if (n_headroom > 0) {
        ep.n_headroom = n_headroom;
    }
    const int32_t rc = llama_kv_evict_init(ctx, ep);
    if (rc != LLAMA_KV_EVICT_OK) {
        err = std::string("per-head KV eviction cannot run on this context (") + llama_kv_evict_status_str(rc) +
              "; llama.cpp's log says why)";
        return nullptr;
    }
    LOG_INF("%s: per-head KV eviction on: %s, keep %.3g (%s)%s, window %d\n", __func__,
            audiokv_method_name(c.method), c.keep, c.keep_source, c.stream ? ", after every audio chunk" : "",
            n_window);
    return t;
}

kv_evict_tool::~kv_evict_tool() {
    for (auto & it : evictors) {
        audiokv_llama_evictor_free(it.second);
    }
}

kv_evict_tool::choice kv_evict_tool::resolve(const kv_evict_request & req) const {
    choice c;
    c.method = audiokv_method_from_name((req.method.empty() ? defaults.method : req.method).c_str());
    c.stream = req.stream >= 0 ? req.stream > 0 : defaults.stream > 0;
    if (c.method == AUDIOKV_METHOD_FULL) {
        return c; // keep 1, source "full"
    }
    if (req.keep > 0.0f) {
        c.keep = req.keep;
        c.keep_source = "config";
    } else if (defaults.keep > 0.0f) {
        c.keep = defaults.keep;
        c.keep_source = "config";
    } else if (c.method == AUDIOKV_METHOD_AUDIOKV && profile_keep > 0.0) {
        c.keep = profile_keep;
        c.keep_source = "profile";
    } else {
        c.keep = KV_EVICT_DEFAULT_KEEP;
        c.keep_source = "default";
    }
    return c;
}

audiokv_llama_evictor * kv_evict_tool::evictor(const choice & c, std::string & err) {
    const auto key = std::make_pair(c.method, c.keep);
    const auto it = evictors.find(key);
    if (it != evictors.end()) {
        return it->second;
    }
    audiokv_params p = audiokv_default_params(c.method);
    p.n_threads = n_threads;
    if (c.method == AUDIOKV_METHOD_AUDIOKV) {
        if (!profile_err.empty()) {
            err = "cannot plan evictions: " + profile_err;
            return nullptr;
        }
        if (profile_window > 0) {
            p.window = profile_window;
        }
        if (profile_alpha >= 0.0) {
            p.sss_alpha = profile_alpha;
        }
        if (profile_gamma >= 0.0) {
            p.sss_gamma = profile_gamma;
        }
    }
    int  status = 0;
    char msg[512] = "";
    audiokv_llama_evictor * ev = audiokv_llama_evictor_new(model, &p, c.keep, &status, msg, sizeof msg);
    if (ev == nullptr) {
        err = std::string("cannot plan evictions: ") + msg;
        return nullptr;
    }
    evictors[key] = ev;
    return ev;
}

int32_t kv_evict_tool::callback(llama_kv_evict_info * info, void * user_data) {
    auto * t = static_cast<kv_evict_tool *>(user_data);
    if (t->current == nullptr) {
        return 1; // not asked by this tool: keep everything
    }
    return audiokv_llama_evict_callback(info, t->current);
}

void kv_evict_tool::begin(const choice & c, kv_evict_totals & totals) const {
    if (totals.active) {
        return;
    }
    totals = {};
    totals.active      = true;
    totals.method      = audiokv_method_name(c.method);
    totals.keep        = c.keep;
    totals.keep_source = c.keep_source;
    totals.stream      = c.stream;
}

void kv_evict_tool::evict(llama_seq_id seq_id, const choice & c, llama_pos n_past, kv_evict_totals & totals) {
    const auto t0 = std::chrono::steady_clock::now();

    llama_kv_evict_stats before = {};
    if (llama_kv_evict_get_stats(ctx, seq_id, &before) != LLAMA_KV_EVICT_OK) {
        totals.error = "no KV eviction statistics for sequence " + std::to_string(seq_id);
        return;
    }
    if (c.method != AUDIOKV_METHOD_FULL) {
        std::string err;
        current = evictor(c, err);
        if (current == nullptr) {
            totals.error = err;
        } else {
            const int32_t rc = llama_kv_evict_seq(ctx, seq_id);
            if (rc == LLAMA_KV_EVICT_OK) {
                totals.n_evictions++;
            } else if (rc != LLAMA_KV_EVICT_DECLINED) {
                totals.error = std::string("per-head KV eviction failed: ") + llama_kv_evict_status_str(rc);
                const char * why = audiokv_llama_evictor_last_error(current);
                if (rc == LLAMA_KV_EVICT_ERR_CALLBACK && why != nullptr && why[0] != '\0') {
                    totals.error += std::string(" (") + why + ")";
                }
            }
            current = nullptr;
        }
        if (!totals.error.empty()) {
            LOG_ERR("%s: sequence %d: %s; the cache stays as it was\n", __func__, seq_id, totals.error.c_str());
        }
    }
    totals.evict_ms += std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();

    llama_kv_evict_stats after = before;
    llama_kv_evict_get_stats(ctx, seq_id, &after);

    // without eviction: one entry per evictable (layer, KV head) and position seen, at this cache's bytes per entry
    const double per_position = before.n_tokens > 0 ? (double) (before.n_entries_full / before.n_tokens) : 0.0;
    const double entry_bytes  = after.n_entries > 0 ? (double) after.bytes_kept / (double) after.n_entries : 0.0;
    totals.n_past        = n_past;
    totals.kv_bytes_full = std::llround(per_position * (double) n_past * entry_bytes);
    totals.kv_bytes_kept = after.bytes_kept;
}

void kv_evict_tool::after_chunk(llama_seq_id seq_id, const kv_evict_request & req, bool is_audio, bool is_last,
        llama_pos n_past, kv_evict_totals & totals) {
    if (!is_audio || is_last) {
        return;
    }
    const choice c = resolve(req);
    if (!c.stream || c.method == AUDIOKV_METHOD_FULL) {
        return;
    }
    begin(c, totals);
    evict(seq_id, c, n_past, totals);
}

void kv_evict_tool::after_prompt(llama_seq_id seq_id, const kv_evict_request & req, llama_pos n_past,
        kv_evict_totals & totals) {
    const choice c = resolve(req);
    begin(c, totals);
    evict(seq_id, c, n_past, totals);
    LOG_INF("%s: sequence %d: %s\n", __func__, seq_id, describe(totals).c_str());
}

std::string kv_evict_tool::describe(const kv_evict_totals & t) {
    char buf[256];
    const double pct = t.kv_bytes_full > 0 ? 100.0 * (double) t.kv_bytes_kept / (double) t.kv_bytes_full : 100.0;
    snprintf(buf, sizeof buf, "%s keep %.3g (%s)%s: KV %.1f of %.1f KiB kept (%.1f%%) for %lld positions, "
            "%d eviction(s) in %.2f ms", t.method.c_str(), t.keep, t.keep_source.c_str(),
            t.stream ? " streamed" : "", t.kv_bytes_kept / 1024.0, t.kv_bytes_full / 1024.0, pct,
            (long long) t.n_past, t.n_evictions, t.evict_ms);
    return t.error.empty() ? std::string(buf) : std::string(buf) + "; " + t.error;
}
