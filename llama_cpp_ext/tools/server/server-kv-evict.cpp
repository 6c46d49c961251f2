#include "server-kv-evict.h"

#include "log.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>

bool server_kv_evict_init(common_params & params, llama_context * ctx, bool has_spec,
        std::unique_ptr<kv_evict_tool> & out) {
    out.reset();
    if (params.kv_evict_method.empty()) {
        return true;
    }
    if (has_spec) {
        LOG_ERR("%s: --kv-evict cannot be combined with speculative decoding (a draft model or MTP): it rolls the "
                "cache back\n", __func__);
        return false;
    }

    kv_evict_request defaults;
    defaults.method = params.kv_evict_method;
    defaults.keep   = params.kv_evict_keep;
    defaults.stream = params.kv_evict_stream ? 1 : 0;
    const int32_t n_headroom = params.n_predict > 0 ? params.n_predict + 1 : 0;

    std::string err;
    out = kv_evict_tool::init(ctx, defaults, params.cpuparams.n_threads, n_headroom, err);
    if (!out) {
        LOG_ERR("%s: --kv-evict: %s\n", __func__, err.c_str());
        return false;
    }

    // an evicted sequence cannot be saved and restored, shifted, reused as a prefix, nor rolled back
    if (params.cache_ram_mib != 0) {
        params.cache_ram_mib = 0;
        LOG_WRN("%s: the RAM prompt cache is disabled by --kv-evict\n", __func__);
    }
    params.cache_idle_slots  = false;
    params.n_ctx_checkpoints = 0;
    if (params.ctx_shift) {
        params.ctx_shift = false;
        LOG_WRN("%s: context shift is disabled by --kv-evict\n", __func__);
    }
    if (params.n_cache_reuse > 0) {
        params.n_cache_reuse = 0;
        LOG_WRN("%s: cache reuse is disabled by --kv-evict\n", __func__);
    }
    const bool spec_types = std::any_of(params.speculative.types.begin(), params.speculative.types.end(),
            [](common_speculative_type t) { return t != COMMON_SPECULATIVE_TYPE_NONE; });
    if (spec_types) {
        params.speculative.types = { COMMON_SPECULATIVE_TYPE_NONE };
        LOG_WRN("%s: speculative decoding is disabled by --kv-evict\n", __func__);
    }
    return true;
}

// a request value for an error message: a scalar as JSON (at most 80 characters), an array or an object by its kind
// only (dump() recurses once per nesting level: a value nested 100,000 deep overflows the HTTP thread's stack)
static std::string describe(const common_json & val) {
    if (val.is_array() || val.is_object()) {
        return val.is_array() ? "an array" : "an object";
    }
    std::string text = val.dump();
    return text.size() > 80 ? text.substr(0, 77) + "..." : text;
}

kv_evict_request server_kv_evict_request(const common_json & data, const common_params & params) {
    kv_evict_request req;
    if (!data.contains("kv_evict")) {
        return req;
    }
    if (params.kv_evict_method.empty()) {
        throw std::invalid_argument("\"kv_evict\" needs a server started with --kv-evict");
    }
    const common_json & ev = data.at("kv_evict");
    if (!ev.is_object()) {
        throw std::invalid_argument(
                "\"kv_evict\" must be an object: {\"method\": ..., \"keep\": ..., \"stream\": ...}");
    }
    for (const auto & item : ev.items()) {
        const std::string & key = item.key();
        const common_json & val = item.value();
        if (key == "method") {
            if (!val.is_string()) {
                throw std::invalid_argument("\"kv_evict.method\" must be a string; choose from " +
                        kv_evict_tool::method_names());
            }
            req.method = val.get<std::string>();
        } else if (key == "keep") {
            const double keep = val.is_number() ? val.get<double>() : NAN;
            if (!(keep > 0.0 && keep <= 1.0)) {
                throw std::invalid_argument("\"kv_evict.keep\" must be a number in (0, 1], got " + describe(val));
            }
            req.keep = (float) keep;
        } else if (key == "stream") {
            if (!val.is_boolean()) {
                throw std::invalid_argument("\"kv_evict.stream\" must be true or false, got " + describe(val));
            }
            req.stream = val.get<bool>() ? 1 : 0;
        } else {
            throw std::invalid_argument("unknown field \"kv_evict." + key + "\" (method, keep, stream)");
        }
    }
    std::string err;
    if (!kv_evict_tool::check(req, err)) {
        throw std::invalid_argument("\"kv_evict\": " + err);
    }
    return req;
}

common_json server_kv_evict_timings(const kv_evict_totals & t) {
    common_json res = common_json::object();
    res["method"]        = t.method;
    res["keep"]          = t.keep;
    res["keep_source"]   = t.keep_source;
    res["stream"]        = t.stream;
    res["n_evictions"]   = t.n_evictions;
    res["n_past"]        = t.n_past;
    res["kv_bytes_full"] = t.kv_bytes_full;
    res["kv_bytes_kept"] = t.kv_bytes_kept;
    res["evict_ms"]      = t.evict_ms;
    if (!t.error.empty()) {
        res["error"] = t.error;
    }
    return res;
}
