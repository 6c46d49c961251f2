// The runner's audio path (python -m audiokv_edge.run MODEL AUDIO --mmproj MMPROJ --stream) as a stand-alone
// program, for builds where Python cannot run (an aarch64 cross build under qemu-user: scripts/check_arm64.sh).
//
// The same steps as audiokv_edge/runtime/session.py: the rendered prompt (holding libmtmd's media marker) and the
// mono float32 samples go through mtmd_tokenize; each chunk is encoded and decoded in n_batch slices
// (mtmd_helper_eval_chunk_single); with --stream every audio chunk but the prompt's last is followed by an eviction,
// and the whole prompt by one more; libaudiokv plans them (audiokv_llama_evict_callback, COMPACT mode); then greedy
// decoding. The inputs the Python session derives (rendered prompt, samples at the projector's rate, observation
// window, headroom) are passed in, so that the answer can be compared with the runner's on another machine
// (scripts/arm64_inputs.py writes them and the runner's answer).
//
// Usage: llama-kv-evict-stream MODEL.gguf MMPROJ.gguf SAMPLES.f32 PROMPT.txt [--method NAME] [--keep R]
//            [--window N] [--n-window N] [--headroom N] [--max-tokens N] [--ctx N] [--batch N] [--threads N]
//            [--fa on|off] [--stream]
// Prints one line per eviction, then "answer: <text>" (text as UTF-8, newlines escaped as \n).
// Exit status 0 when the answer was generated, 1 on a failure of llama.cpp / libmtmd / libaudiokv, 2 on bad arguments.

#include "llama.h"
#include "llama-kv-evict.h"
#include "mtmd.h"
#include "mtmd-helper.h"

#include "audiokv.h"
#include "audiokv_llama.h"

#include <algorithm>
#include <cinttypes>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iterator>
#include <sstream>
#include <string>
#include <vector>

namespace {

struct options {
    std::string model, mmproj, samples, prompt;
    std::string method      = "snapkv";
    double      keep        = 0.4;
    int32_t     window      = 32;
    int32_t     n_window    = 32;
    int32_t     headroom    = 256;
    int32_t     max_tokens  = 8;
    int32_t     n_ctx       = 4096;
    int32_t     n_batch     = 512;
    int32_t     threads     = 1;
    bool        fa          = false;
    bool        stream      = false;
};

bool parse(int argc, char ** argv, options & o) {
    std::vector<std::string> pos;
    for (int i = 1; i < argc; ++i) {
        const std::string a = argv[i];
        const bool v = i + 1 < argc;
        if (a == "--method" && v) {
            o.method = argv[++i];
        } else if (a == "--keep" && v) {
            o.keep = atof(argv[++i]);
        } else if (a == "--window" && v) {
            o.window = atoi(argv[++i]);
        } else if (a == "--n-window" && v) {
            o.n_window = atoi(argv[++i]);
        } else if (a == "--headroom" && v) {
            o.headroom = atoi(argv[++i]);
        } else if (a == "--max-tokens" && v) {
            o.max_tokens = atoi(argv[++i]);
        } else if (a == "--ctx" && v) {
            o.n_ctx = atoi(argv[++i]);
        } else if (a == "--batch" && v) {
            o.n_batch = atoi(argv[++i]);
        } else if (a == "--threads" && v) {
            o.threads = atoi(argv[++i]);
        } else if (a == "--fa" && v) {
            o.fa = std::string(argv[++i]) == "on";
        } else if (a == "--stream") {
            o.stream = true;
        } else if (a.size() > 1 && a[0] == '-') {
            fprintf(stderr, "kv-evict-stream: unknown or incomplete argument '%s'\n", a.c_str());
            return false;
        } else {
            pos.push_back(a);
        }
    }
    if (pos.size() != 4) {
        fprintf(stderr, "usage: llama-kv-evict-stream MODEL.gguf MMPROJ.gguf SAMPLES.f32 PROMPT.txt [--method NAME] "
                        "[--keep R] [--window N] [--n-window N] [--headroom N] [--max-tokens N] [--ctx N] "
                        "[--batch N] [--threads N] [--fa on|off] [--stream]\n");
        return false;
    }
    o.model = pos[0], o.mmproj = pos[1], o.samples = pos[2], o.prompt = pos[3];
    if (!(o.keep > 0.0 && o.keep <= 1.0) || o.window < 1 || o.n_window < 1 || o.headroom < 0 || o.max_tokens < 1 ||
        o.n_ctx < 16 || o.n_batch < 1 || o.threads < 1) {
        fprintf(stderr, "kv-evict-stream: need 0 < --keep <= 1 and positive sizes\n");
        return false;
    }
    return true;
}

bool read_file(const std::string & path, std::string & out) {
    std::ifstream f(path, std::ios::binary);
    if (!f) {
        fprintf(stderr, "kv-evict-stream: cannot read %s\n", path.c_str());
        return false;
    }
    out.assign(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
    return true;
}

void quiet_log(ggml_log_level level, const char * text, void * /*user_data*/) {
    if (level == GGML_LOG_LEVEL_ERROR) {
        fputs(text, stderr);
    }
}

struct run {
    llama_model           * model = nullptr;
    llama_context         * ctx   = nullptr;
    mtmd_context          * mctx  = nullptr;
    audiokv_llama_evictor * ev    = nullptr;
    mtmd_input_chunks     * chunks = nullptr;

    ~run() {
        if (chunks) mtmd_input_chunks_free(chunks);
        if (mctx) mtmd_free(mctx);
        if (ctx) llama_free(ctx);          // the context calls the evictor until it is freed
        if (ev) audiokv_llama_evictor_free(ev);
        if (model) llama_model_free(model);
    }
};

int evict(run & r, int32_t n_evictions) {
    llama_kv_evict_stats before{}, after{};
    llama_kv_evict_get_stats(r.ctx, 0, &before);
    const int32_t rc = llama_kv_evict_seq(r.ctx, 0);
    if (rc != LLAMA_KV_EVICT_OK) {
        fprintf(stderr, "kv-evict-stream: eviction %d failed: %s (%s)\n", n_evictions + 1,
                llama_kv_evict_status_str(rc), audiokv_llama_evictor_last_error(r.ev));
        return 1;
    }
    llama_kv_evict_get_stats(r.ctx, 0, &after);
    printf("eviction %d: %" PRId64 " positions, entries %" PRId64 " -> %" PRId64 " of %" PRId64 "\n",
           n_evictions + 1, after.n_tokens, before.n_entries, after.n_entries, after.n_entries_full);
    return 0;
}

} // namespace

int main(int argc, char ** argv) {
    options o;
    if (!parse(argc, argv, o)) {
        return 2;
    }
    const int32_t method = audiokv_method_from_name(o.method.c_str());
    if (method < 0) {
        fprintf(stderr, "kv-evict-stream: unknown method '%s'\n", o.method.c_str());
        return 2;
    }
    std::string prompt, raw;
    if (!read_file(o.prompt, prompt) || !read_file(o.samples, raw)) {
        return 2;
    }
    std::vector<float> samples(raw.size() / sizeof(float));
    std::copy(raw.data(), raw.data() + samples.size() * sizeof(float), reinterpret_cast<char *>(samples.data()));

    llama_log_set(quiet_log, nullptr);
    mtmd_helper_log_set(quiet_log, nullptr);
    llama_backend_init();
    run r;

    llama_model_params mp = llama_model_default_params();
    mp.n_gpu_layers = 0;
    r.model = llama_model_load_from_file(o.model.c_str(), mp);
    if (r.model == nullptr) {
        fprintf(stderr, "kv-evict-stream: cannot load %s\n", o.model.c_str());
        return 2;
    }
    llama_context_params cp = llama_context_default_params();
    cp.n_ctx           = (uint32_t) o.n_ctx;
    cp.n_batch         = cp.n_ubatch = (uint32_t) o.n_batch;
    cp.n_threads       = cp.n_threads_batch = o.threads;
    cp.flash_attn_type = o.fa ? LLAMA_FLASH_ATTN_TYPE_ENABLED : LLAMA_FLASH_ATTN_TYPE_DISABLED;
    cp.no_perf         = true;
    r.ctx = llama_init_from_model(r.model, cp);
    mtmd_context_params mcp = mtmd_context_params_default();
    mcp.use_gpu         = false;
    mcp.print_timings   = false;
    mcp.n_threads       = o.threads;
    mcp.warmup          = false;
    mcp.flash_attn_type = cp.flash_attn_type;
    r.mctx = r.ctx ? mtmd_init_from_file(o.mmproj.c_str(), r.model, mcp) : nullptr;
    if (r.mctx == nullptr) {
        fprintf(stderr, "kv-evict-stream: cannot create the context or load the projector %s\n", o.mmproj.c_str());
        return 1;
    }

    audiokv_params ap = audiokv_default_params(method);
    ap.window    = o.window;
    ap.n_threads = o.threads;
    char err[512] = "";
    int  status   = 0;
    r.ev = audiokv_llama_evictor_new(r.model, &ap, o.keep, &status, err, sizeof err);
    if (r.ev == nullptr) {
        fprintf(stderr, "kv-evict-stream: %s\n", err);
        return 1;
    }
    llama_kv_evict_params ep = llama_kv_evict_default_params();
    ep.n_window   = o.n_window;
    ep.mode       = LLAMA_KV_EVICT_MODE_COMPACT;
    ep.callback   = audiokv_llama_evict_callback;
    ep.user_data  = r.ev;
    ep.n_headroom = o.headroom;
    if (llama_kv_evict_init(r.ctx, ep) != LLAMA_KV_EVICT_OK) {
        fprintf(stderr, "kv-evict-stream: per-head eviction cannot run on this context\n");
        return 1;
    }

    mtmd_bitmap * bitmap = mtmd_bitmap_init_from_audio(samples.size(), samples.data());
    r.chunks = mtmd_input_chunks_init();
    // BOS added unless the rendered prompt starts with it (a chat template that writes it), as the runner does
    const llama_vocab * vocab = llama_model_get_vocab(r.model);
    const llama_token   bos   = llama_vocab_bos(vocab);
    const char * bos_text     = bos != LLAMA_TOKEN_NULL ? llama_vocab_get_text(vocab, bos) : nullptr;
    const bool add_special    = !(bos_text != nullptr && *bos_text != '\0' && prompt.rfind(bos_text, 0) == 0);
    mtmd_input_text text = { prompt.c_str(), prompt.size(), add_special, true };
    const mtmd_bitmap * bitmaps[1] = { bitmap };
    const int32_t trc = mtmd_tokenize(r.mctx, r.chunks, &text, bitmaps, 1);
    mtmd_bitmap_free(bitmap);
    if (trc != 0) {
        fprintf(stderr, "kv-evict-stream: mtmd_tokenize failed (code %d)\n", trc);
        return 1;
    }

    const size_t n_chunks = mtmd_input_chunks_size(r.chunks);
    llama_pos n_past = 0;
    int32_t n_evictions = 0, n_audio = 0;
    for (size_t i = 0; i < n_chunks; ++i) {
        const mtmd_input_chunk * chunk = mtmd_input_chunks_get(r.chunks, i);
        const bool last = i + 1 == n_chunks;
        llama_pos new_n_past = n_past;
        if (mtmd_helper_eval_chunk_single(r.mctx, r.ctx, chunk, n_past, 0, o.n_batch, last, &new_n_past) != 0) {
            fprintf(stderr, "kv-evict-stream: prompt chunk %zu of %zu failed\n", i + 1, n_chunks);
            return 1;
        }
        n_past = new_n_past;
        const bool audio = mtmd_input_chunk_get_type(chunk) == MTMD_INPUT_CHUNK_TYPE_AUDIO;
        n_audio += audio;
        if (o.stream && audio && !last) {
            if (evict(r, n_evictions++) != 0) {
                return 1;
            }
        }
    }
    if (evict(r, n_evictions++) != 0) {
        return 1;
    }
    printf("prompt: %zu chunks (%d audio), %d positions, %d evictions\n", n_chunks, n_audio, n_past, n_evictions);

    // greedy decoding, as the runner: the last sampled token is not decoded into the cache
    const int32_t n_vocab = llama_vocab_n_tokens(vocab);
    std::string answer;
    for (int32_t n = 0; n < o.max_tokens; ++n) {
        const float * logits = llama_get_logits_ith(r.ctx, -1);
        const llama_token t = (llama_token) (std::max_element(logits, logits + n_vocab) - logits);
        if (llama_vocab_is_eog(vocab, t)) {
            break;
        }
        char piece[256];
        const int32_t len = llama_token_to_piece(vocab, t, piece, sizeof piece, 0, false);
        if (len > 0) {
            answer.append(piece, (size_t) len);
        }
        if (n + 1 == o.max_tokens) {
            break;
        }
        llama_token tok = t;
        llama_batch b = llama_batch_get_one(&tok, 1);
        std::vector<llama_pos> p = { n_past };
        b.pos = p.data();
        if (llama_decode(r.ctx, b) != 0) {
            fprintf(stderr, "kv-evict-stream: decoding answer token %d failed\n", n + 1);
            return 1;
        }
        n_past++;
    }
    std::string escaped;
    for (char c : answer) {
        if (c == '\n') {
            escaped += "\\n";
        } else if (c == '\\') {
            escaped += "\\\\";
        } else {
            escaped += c;
        }
    }
    printf("answer: %s\n", escaped.c_str());
    llama_backend_free();
    return 0;
}
