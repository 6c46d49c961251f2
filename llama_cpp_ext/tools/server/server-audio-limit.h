#pragma once

// llama-server refuses audio too long for a slot's context as soon as it is decoded, before libmtmd computes its mel
// spectrogram: two hours of speech would otherwise cost minutes of one HTTP thread and hundreds of MB of mel frames
// (kept by the allocator afterwards) before the slot's own "exceeds the available context size" check refuses the
// request. The decoded samples themselves are still made (the request body is at most 100 MB). The tokens a
// duration needs come from libmtmd itself: placeholder bitmaps (no samples) of SPAN and 2 x SPAN seconds are tokenized
// once at start-up, and their difference, the tokens of SPAN seconds, bounds from below what a clip needs (SPAN =
// 30 s, the Whisper window: whole windows of a clip give at least that many tokens each).
//
// Thread safety: server_audio_limit_init once, before requests are served; server_audio_limit_check from any thread.

#include <cstdint>

struct mtmd_context;
struct mtmd_bitmap;

// measure the audio tokens per 30 s of mctx's projector (nothing when mctx is null or has no audio encoder) and
// remember n_ctx_slot, the context of one slot in tokens; marker: the media marker mctx was made with; logs the limit
void server_audio_limit_init(mtmd_context * mctx, int32_t n_ctx_slot, const char * marker);

// throws std::invalid_argument (HTTP 400) naming the length, the tokens it needs at least and the slot's context
// when bitmap is audio that cannot fit a slot; images and short audio pass
void server_audio_limit_check(const mtmd_bitmap * bitmap);
