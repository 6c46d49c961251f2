// The COMPACT-vs-MASK eviction oracle of tests/test_evict_compact.py as a stand-alone program, for builds where the
// Python harness cannot run (an aarch64 cross build run under qemu-user: scripts/check_arm64.sh).
//
// One model, two contexts with the same cache type and flash-attention setting: one evicts in COMPACT mode (per-head
// pools), the other in MASK mode (the oracle: entries masked per head, nothing moved). Both get the same prompt and
// the same ragged keep plans (a random share of every (layer, KV head), the last entries protected, layer 0 head 0
// keeping everything so that the oracle's cells stay in position order). Evict after the prompt, greedy-decode half
// the steps (the oracle is forced onto the compacted context's tokens), evict again (entries from the pools and the
// new tokens), decode the rest. Passes when
//   - the prompt logits are bitwise equal (nothing evicted yet),
//   - every step's logits differ by less than --tol (default 1e-3, the Python test's bound for f16 / q8_0 caches)
//     and both contexts pick the same greedy token,
//   - the COMPACT context reports the plan's entries (llama_kv_evict_get_stats n_entries == sum of budgets).
//
// Usage: llama-kv-evict-oracle MODEL.gguf [--type f16|q8_0|f32] [--fa on|off] [--prompt N] [--steps N]
//                              [--headroom N] [--seed N] [--threads N] [--tol X] [--page-size N]
// q8_0 without flash attention quantizes K only (llama.cpp requires flash attention for a quantized V cache).
// --page-size N: fail unless the system page size is N bytes (checks that qemu-aarch64 -p N took effect).
// Exit status 0 when the comparison passes, 1 when it fails, 2 on bad arguments or a model that does not load.

#include "llama.h"
#include "llama-kv-evict.h"

#include <algorithm>
#include <cinttypes>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#if !defined(_WIN32)
#    include <unistd.h>
#endif

namespace {

struct options {
    std::string model;
    ggml_type   type_kv  = GGML_TYPE_F16;
    bool        fa       = true;
    int32_t     n_prompt = 64;
    int32_t     n_steps  = 32;
    int32_t     headroom = 4;
    uint32_t    seed     = 0;
    int32_t     threads  = 1;
    double      tol      = 1e-3;
    long        page     = 0;
};

// a plan reproducible on every platform: raw mt19937 words (fully specified), no std distributions
struct ragged_plan {
    uint32_t             seed;
    int32_t              protect = 4;
    double               keep    = 0.5;
    int32_t              n_calls = 0;
    std::vector<int64_t> budgets; // kept entries per call (sum over layers and heads)

    static int32_t callback(llama_kv_evict_info * info, void * user_data) {
        return static_cast<ragged_plan *>(user_data)->plan(info);
    }

    int32_t plan(llama_kv_evict_info * info) {
        std::mt19937 rng(seed * 1000003u + (uint32_t) n_calls++);
        int64_t total = 0;
        for (int32_t l = 0; l < info->n_layer; ++l) {
            llama_kv_evict_layer & layer = info->layers[l];
            for (int32_t h = 0; h < layer.n_head_kv; ++h) {
                llama_kv_evict_head & head = layer.heads[h];
                const int32_t n      = head.n_kv;
                const int32_t prefix = std::max(n - protect, 0);
                double share = keep + 0.3 * ((double) rng() / 4294967296.0 - 0.5);
                if (l == 0 && h == 0) {
                    share = 1.0;
                }
                const int32_t k = (int32_t) std::lround(share * prefix);
                // the first k of a Fisher-Yates shuffle of the prefix, sorted, then the protected tail
                std::vector<int32_t> idx(prefix);
                for (int32_t i = 0; i < prefix; ++i) {
                    idx[i] = i;
                }
                for (int32_t i = 0; i < k; ++i) {
                    const int32_t j = i + (int32_t) (rng() % (uint32_t) (prefix - i));
                    std::swap(idx[i], idx[j]);
                }
                idx.resize(k);
                std::sort(idx.begin(), idx.end());
                for (int32_t i = prefix; i < n; ++i) {
                    idx.push_back(i);
                }
                head.n_keep = (int32_t) idx.size();
                std::copy(idx.begin(), idx.end(), head.keep);
                total += head.n_keep;
            }
        }
        budgets.push_back(total);
        return 0;
    }
};

struct runner {
    llama_context * ctx = nullptr;
    llama_batch     batch{};
    int32_t         n_vocab = 0;
    llama_pos       n_past  = 0;
    ragged_plan     plan;

    bool init(llama_model * model, const options & o, int32_t mode) {
        llama_context_params cp = llama_context_default_params();
        cp.n_ctx           = 256;
        cp.n_batch         = 256;
        cp.n_ubatch        = 256;
        cp.n_seq_max       = 1;
        cp.n_threads       = o.threads;
        cp.n_threads_batch = o.threads;
        cp.flash_attn_type = o.fa ? LLAMA_FLASH_ATTN_TYPE_ENABLED : LLAMA_FLASH_ATTN_TYPE_DISABLED;
        cp.type_k          = o.type_kv;
        cp.type_v          = (!o.fa && o.type_kv == GGML_TYPE_Q8_0) ? GGML_TYPE_F16 : o.type_kv;
        cp.no_perf         = true;
        ctx = llama_init_from_model(model, cp);
        if (ctx == nullptr) {
            return false;
        }
        n_vocab = llama_vocab_n_tokens(llama_model_get_vocab(model));
        batch   = llama_batch_init(256, 0, 1);
        plan.seed = o.seed;
        llama_kv_evict_params ep = llama_kv_evict_default_params();
        ep.n_window   = 8;
        ep.mode       = mode;
        ep.callback   = ragged_plan::callback;
        ep.user_data  = &plan;
        ep.n_headroom = o.headroom;
        const int32_t rc = llama_kv_evict_init(ctx, ep);
        if (rc != LLAMA_KV_EVICT_OK) {
            fprintf(stderr, "kv-evict-oracle: llama_kv_evict_init: %s\n", llama_kv_evict_status_str(rc));
            return false;
        }
        return true;
    }

    // decode tokens at the next positions; the logits of the last one
    std::vector<float> decode(const std::vector<llama_token> & tokens) {
        batch.n_tokens = (int32_t) tokens.size();
        for (size_t i = 0; i < tokens.size(); ++i) {
            batch.token[i]     = tokens[i];
            batch.pos[i]       = n_past + (llama_pos) i;
            batch.n_seq_id[i]  = 1;
            batch.seq_id[i][0] = 0;
            batch.logits[i]    = i + 1 == tokens.size();
        }
        if (llama_decode(ctx, batch) != 0) {
            fprintf(stderr, "kv-evict-oracle: llama_decode failed\n");
            exit(1);
        }
        n_past += (llama_pos) tokens.size();
        const float * logits = llama_get_logits_ith(ctx, batch.n_tokens - 1);
        return std::vector<float>(logits, logits + n_vocab);
    }

    bool evict(const char * name) {
        const int32_t rc = llama_kv_evict_seq(ctx, 0);
        if (rc != LLAMA_KV_EVICT_OK) {
            fprintf(stderr, "kv-evict-oracle: %s: llama_kv_evict_seq: %s\n", name, llama_kv_evict_status_str(rc));
            return false;
        }
        return true;
    }

    ~runner() {
        if (ctx != nullptr) {
            llama_batch_free(batch);
            llama_free(ctx);
        }
    }
};

llama_token argmax(const std::vector<float> & v) {
    return (llama_token) (std::max_element(v.begin(), v.end()) - v.begin());
}

double max_abs_diff(const std::vector<float> & a, const std::vector<float> & b) {
    double d = 0.0;
    for (size_t i = 0; i < a.size(); ++i) {
        const double x = std::fabs((double) a[i] - (double) b[i]);
        d = std::isnan(x) ? INFINITY : std::max(d, x);
    }
    return d;
}

bool parse(int argc, char ** argv, options & o) {
    for (int i = 1; i < argc; ++i) {
        const std::string a = argv[i];
        const bool has_value = i + 1 < argc;
        if (a[0] != '-' && o.model.empty()) {
            o.model = a;
        } else if (a == "--type" && has_value) {
            const std::string t = argv[++i];
            if (t == "f16") {
                o.type_kv = GGML_TYPE_F16;
            } else if (t == "q8_0") {
                o.type_kv = GGML_TYPE_Q8_0;
            } else if (t == "f32") {
                o.type_kv = GGML_TYPE_F32;
            } else {
                fprintf(stderr, "kv-evict-oracle: --type must be f16, q8_0 or f32, not '%s'\n", t.c_str());
                return false;
            }
        } else if (a == "--fa" && has_value) {
            const std::string v = argv[++i];
            if (v != "on" && v != "off") {
                fprintf(stderr, "kv-evict-oracle: --fa must be on or off, not '%s'\n", v.c_str());
                return false;
            }
            o.fa = v == "on";
        } else if (a == "--prompt" && has_value) {
            o.n_prompt = atoi(argv[++i]);
        } else if (a == "--steps" && has_value) {
            o.n_steps = atoi(argv[++i]);
        } else if (a == "--headroom" && has_value) {
            o.headroom = atoi(argv[++i]);
        } else if (a == "--seed" && has_value) {
            o.seed = (uint32_t) strtoul(argv[++i], nullptr, 10);
        } else if (a == "--threads" && has_value) {
            o.threads = atoi(argv[++i]);
        } else if (a == "--tol" && has_value) {
            o.tol = atof(argv[++i]);
        } else if (a == "--page-size" && has_value) {
            o.page = atol(argv[++i]);
        } else {
            fprintf(stderr, "kv-evict-oracle: unknown or incomplete argument '%s'\n", a.c_str());
            return false;
        }
    }
    if (o.model.empty()) {
        fprintf(stderr, "usage: llama-kv-evict-oracle MODEL.gguf [--type f16|q8_0|f32] [--fa on|off] [--prompt N] "
                        "[--steps N] [--headroom N] [--seed N] [--threads N] [--tol X] [--page-size N]\n");
        return false;
    }
    if (o.n_prompt < 16 || o.n_prompt + o.n_steps > 256 || o.n_steps < 2 || o.headroom < 0 || o.threads < 1 ||
        !(o.tol > 0.0)) {
        fprintf(stderr, "kv-evict-oracle: need --prompt >= 16, --steps >= 2, prompt + steps <= 256, --headroom >= 0, "
                        "--threads >= 1, --tol > 0\n");
        return false;
    }
    return true;
}

long system_page_size() {
#if defined(_WIN32)
    return 0;
#else
    return sysconf(_SC_PAGESIZE);
#endif
}

void quiet_log(ggml_log_level level, const char * text, void * /*user_data*/) {
    if (level == GGML_LOG_LEVEL_ERROR) {
        fputs(text, stderr);
    }
}

} // namespace

int main(int argc, char ** argv) {
    options o;
    if (!parse(argc, argv, o)) {
        return 2;
    }
    const long page = system_page_size();
    if (o.page != 0 && page != o.page) {
        fprintf(stderr, "kv-evict-oracle: the page size is %ld bytes, not the expected %ld\n", page, o.page);
        return 1;
    }

    llama_log_set(quiet_log, nullptr);
    llama_backend_init();
    llama_model_params mp = llama_model_default_params();
    mp.n_gpu_layers = 0;
    llama_model * model = llama_model_load_from_file(o.model.c_str(), mp);
    if (model == nullptr) {
        fprintf(stderr, "kv-evict-oracle: cannot load %s\n", o.model.c_str());
        return 2;
    }

    int status = 0;
    {
        runner c;
        runner m;
        if (!c.init(model, o, LLAMA_KV_EVICT_MODE_COMPACT) || !m.init(model, o, LLAMA_KV_EVICT_MODE_MASK)) {
            fprintf(stderr, "kv-evict-oracle: cannot create the contexts\n");
            llama_model_free(model);
            return 2;
        }

        std::mt19937 rng(12);
        std::vector<llama_token> prompt(o.n_prompt);
        for (auto & t : prompt) {
            t = 5 + (llama_token) (rng() % (uint32_t) (c.n_vocab - 5));
        }
        std::vector<float> lc = c.decode(prompt);
        std::vector<float> lm = m.decode(prompt);
        if (lc != lm) {
            fprintf(stderr, "kv-evict-oracle: prompt logits differ before any eviction (max %.3g)\n",
                    max_abs_diff(lc, lm));
            status = 1;
        }

        double worst = 0.0;
        int32_t token_mismatch = -1;
        for (int round = 0; round < 2 && status == 0; ++round) {
            if (!c.evict("compact") || !m.evict("mask")) {
                status = 1;
                break;
            }
            const int32_t n = round == 0 ? o.n_steps / 2 : o.n_steps - o.n_steps / 2;
            for (int32_t i = 0; i < n; ++i) {
                const llama_token tc = argmax(lc);
                if (argmax(lm) != tc && token_mismatch < 0) {
                    token_mismatch = round * (o.n_steps / 2) + i;
                }
                lc = c.decode({tc});
                lm = m.decode({tc}); // forced onto the compacted context's token
                worst = std::max(worst, max_abs_diff(lc, lm));
            }
        }
        if (status == 0 && argmax(lc) != argmax(lm) && token_mismatch < 0) {
            token_mismatch = o.n_steps;
        }

        llama_kv_evict_stats st{};
        if (status == 0 && llama_kv_evict_get_stats(c.ctx, 0, &st) == LLAMA_KV_EVICT_OK) {
            const int64_t planned = c.plan.budgets.empty() ? -1 : c.plan.budgets.back();
            // entries after the last eviction: its plan + the tokens decoded since, in every (layer, KV head)
            const int64_t heads   = c.plan.budgets.empty() ? 0 : st.n_entries_full / std::max<int64_t>(st.n_tokens, 1);
            const int64_t since   = o.n_steps - o.n_steps / 2;
            if (st.n_entries != planned + since * heads) {
                fprintf(stderr, "kv-evict-oracle: %" PRId64 " entries attended, the plan kept %" PRId64
                        " + %" PRId64 " new\n", st.n_entries, planned, since * heads);
                status = 1;
            }
            printf("kv-evict-oracle: KV bytes %" PRId64 " in use of %" PRId64 " kept (%" PRId64 " headroom)\n",
                   st.bytes_used, st.bytes_kept, st.bytes_headroom);
        } else if (status == 0) {
            fprintf(stderr, "kv-evict-oracle: llama_kv_evict_get_stats failed\n");
            status = 1;
        }

        const char * type = o.type_kv == GGML_TYPE_F16 ? "f16" : o.type_kv == GGML_TYPE_Q8_0 ? "q8_0" : "f32";
        printf("kv-evict-oracle: %s type %s fa %s page %ld: %d greedy tokens, max abs logit diff %.3g (tol %.1g), "
               "tokens %s\n", o.model.c_str(), type, o.fa ? "on" : "off", page, o.n_steps, worst, o.tol,
               token_mismatch < 0 ? "equal" : "DIFFER");
        if (status == 0 && (!(worst < o.tol) || token_mismatch >= 0)) {
            if (token_mismatch >= 0) {
                fprintf(stderr, "kv-evict-oracle: greedy tokens differ from step %d\n", token_mismatch);
            }
            status = 1;
        }
    }
    llama_model_free(model);
    llama_backend_free();
    printf("kv-evict-oracle: %s\n", status == 0 ? "PASS" : "FAIL");
    return status;
}
