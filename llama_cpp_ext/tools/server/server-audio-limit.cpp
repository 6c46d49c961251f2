#include "server-audio-limit.h"

#include "log.h"
#include "mtmd.h"

#include <atomic>
#include <cmath>
#include <cstdio>
#include <stdexcept>
#include <string>

// seconds of one Whisper window: the unit whose tokens are measured
static constexpr double AUDIO_SPAN_S = 30.0;

static std::atomic<int64_t> g_tokens_per_span{0}; // audio tokens of AUDIO_SPAN_S seconds; 0: no check
static std::atomic<int32_t> g_sample_rate{0};
static std::atomic<int32_t> g_n_ctx_slot{0};

// audio tokens libmtmd gives a clip of n_samples (a placeholder: counted, not encoded); -1 on failure
static int64_t audio_tokens(mtmd_context * mctx, const char * marker, size_t n_samples) {
    mtmd_bitmap * bitmap = mtmd_bitmap_init_from_audio(n_samples, nullptr);
    mtmd_input_chunks * chunks = mtmd_input_chunks_init();
    mtmd_input_text text = { marker, /* text_len */ std::char_traits<char>::length(marker), /* add_special */ false,
                             /* parse_special */ true };
    const mtmd_bitmap * bitmaps[] = { bitmap };
    int64_t n = -1;
    if (bitmap != nullptr && chunks != nullptr && mtmd_tokenize(mctx, chunks, &text, bitmaps, 1) == 0) {
        n = 0;
        for (size_t i = 0; i < mtmd_input_chunks_size(chunks); ++i) {
            const mtmd_input_chunk * chunk = mtmd_input_chunks_get(chunks, i);
            if (mtmd_input_chunk_get_type(chunk) == MTMD_INPUT_CHUNK_TYPE_AUDIO) {
                n += (int64_t) mtmd_input_chunk_get_n_tokens(chunk);
            }
        }
    }
    mtmd_input_chunks_free(chunks);
    mtmd_bitmap_free(bitmap);
    return n;
}

void server_audio_limit_init(mtmd_context * mctx, int32_t n_ctx_slot, const char * marker) {
    g_tokens_per_span = 0;
    if (mctx == nullptr || marker == nullptr || !mtmd_support_audio(mctx) || n_ctx_slot <= 0) {
        return;
    }
    const int32_t rate = mtmd_get_audio_sample_rate(mctx);
    if (rate <= 0) {
        return;
    }
    const size_t span = (size_t) std::llround(AUDIO_SPAN_S * rate);
    const int64_t one = audio_tokens(mctx, marker, span);
    const int64_t two = audio_tokens(mctx, marker, 2 * span);
    if (one < 0 || two <= one) {
        LOG_WRN("%s: cannot measure the audio tokens per second of this projector: long audio is refused only "
                "after its mel spectrogram\n", __func__);
        return;
    }
    g_sample_rate     = rate;
    g_n_ctx_slot      = n_ctx_slot;
    g_tokens_per_span = two - one;
    LOG_INF("%s: %lld audio tokens per %.0f s, a slot holds %d tokens (about %.0f s of audio): audio that needs "
            "more is refused as soon as it is decoded, before its mel spectrogram\n", __func__,
            (long long) (two - one), AUDIO_SPAN_S, n_ctx_slot,
            AUDIO_SPAN_S * (double) n_ctx_slot / (double) (two - one));
}

void server_audio_limit_check(const mtmd_bitmap * bitmap) {
    const int64_t per_span = g_tokens_per_span;
    if (per_span <= 0 || bitmap == nullptr || !mtmd_bitmap_is_audio(bitmap)) {
        return;
    }
    const double  seconds = (double) mtmd_bitmap_get_nx(bitmap) / (double) g_sample_rate;
    // whole spans less one, so that a clip near the limit is left to the slot's exact check
    const int64_t spans   = (int64_t) std::floor(seconds / AUDIO_SPAN_S) - 1;
    const int64_t needed  = spans * per_span;
    const int32_t n_ctx   = g_n_ctx_slot;
    if (spans < 1 || needed < n_ctx) {
        return;
    }
    char msg[320];
    snprintf(msg, sizeof msg, "audio of %.1f s is too long for the context: it needs at least %lld audio tokens, a "
             "slot's context holds %d tokens (about %.0f s of audio); send shorter audio or start the server with a "
             "larger context per slot (-c, -np)", seconds, (long long) needed, n_ctx,
             AUDIO_SPAN_S * (double) n_ctx / (double) per_span);
    throw std::invalid_argument(msg);
}
