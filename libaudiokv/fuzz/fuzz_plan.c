/*
 * fuzz_plan.c - libFuzzer target: libaudiokv's public entry points on any shape, parameters and values.
 *
 * The first byte picks the entry point, the following bytes its sizes and parameters (doubles taken bit for bit,
 * so NaN, infinities and huge values come up), the rest the data (queries, keys, scores, profile), cycled:
 *     0..3: audiokv_init + audiokv_add_layer (keys f32 or f16) + audiokv_plan, every method, with or without a
 *           profile and an audio mask;  4: audiokv_sss;  5: audiokv_integerise;  6: audiokv_select_top;
 *     7: audiokv_rfft + audiokv_irfft;  8: audiokv_pool;  9: audiokv_init_ragged + audiokv_add_layer_ragged + plan.
 * Every call must return AUDIOKV_OK or one documented status; a plan that succeeds must be a plan: per-head counts
 * within the head's entries summing to n_total, indices ascending inside the head's entries. ASan / UBSan catch
 * the rest. Build and run: scripts/fuzz.sh (corpus: libaudiokv/fuzz/corpus/plan).
 */
#include "audiokv.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

struct input {
    const uint8_t * data;
    size_t size, pos;
};

static uint8_t u8(struct input * in) { return in->pos < in->size ? in->data[in->pos++] : 0; }

static double f64(struct input * in) {
    uint64_t bits = 0;
    for (int i = 0; i < 8; i++) {
        bits = (bits << 8) | u8(in);
    }
    double v;
    memcpy(&v, &bits, sizeof v);
    return v;
}

/* A small double: mostly ordinary values in [-2, 2], sometimes the raw bits (NaN, inf, denormals, huge). */
static double value(struct input * in) {
    uint8_t tag = u8(in);
    if (tag < 16) {
        return f64(in);
    }
    return ((double) tag - 128.0) / 64.0 + (double) u8(in) / 4096.0;
}

static void check_status(int rc) {
    if (rc > 0 || rc < AUDIOKV_ERR_NONFINITE) {
        abort();
    }
}

static void fill(struct input * in, double * x, int64_t n) {
    for (int64_t i = 0; i < n; i++) {
        x[i] = value(in);
    }
}

static void check_plan(const struct audiokv_context * ctx, int32_t n_layer, int32_t n_head_kv,
                       const int32_t * counts, const int32_t * idx, int64_t total) {
    int64_t off = 0;
    for (int32_t l = 0; l < n_layer; l++) {
        for (int32_t h = 0; h < n_head_kv; h++) {
            int64_t n = audiokv_n_entries(ctx, l, h);
            int32_t c = counts[l * n_head_kv + h];
            if (c < 0 || c > n) {
                abort();
            }
            for (int32_t i = 0; i < c; i++) {
                int32_t t = idx[off + i];
                if (t < 0 || t >= n || (i > 0 && t <= idx[off + i - 1])) {
                    abort();
                }
            }
            off += c;
        }
    }
    if (off != total) {
        abort();
    }
}

static struct audiokv_params read_params(struct input * in) {
    struct audiokv_params p = audiokv_default_params(u8(in) % (AUDIOKV_METHOD_COUNT + 1));
    p.n_threads = 1;
    uint8_t flags = u8(in);
    if (flags & 1) p.window = (int32_t) u8(in) - 2;
    if (flags & 2) p.pool_kernel = (int32_t) (u8(in) % 12) - 1;
    if (flags & 4) p.pool_type = u8(in) % 3;
    if (flags & 8) p.gqa_reduce = u8(in) % 3;
    if (flags & 16) p.n_sink = (int32_t) u8(in) - 8;
    if (flags & 32) { p.beta = value(in); p.safeguard = value(in); }
    if (flags & 64) { p.sss_alpha = value(in); p.sss_gamma = value(in); p.sss_taper = value(in); }
    if (flags & 128) { p.uniform_share = value(in); p.redistribute_surplus = u8(in) & 1; }
    return p;
}

static void fuzz_plan(struct input * in, int ragged) {
    struct audiokv_params p = read_params(in);
    int32_t n_layer = 1 + u8(in) % 3, n_head_kv = 1 + u8(in) % 3, group = 1 + u8(in) % 3;
    int32_t n_head = n_head_kv * group, head_dim = 1 + u8(in) % 8;
    int64_t n_tokens = 1 + u8(in) % 96;
    int f16 = u8(in) & 1;
    double keep = value(in);
    int with_profile = u8(in) & 1, with_mask = u8(in) & 1;
    int32_t heads = n_layer * n_head_kv;
    int32_t * n_entries = malloc((size_t) heads * sizeof *n_entries);
    for (int32_t i = 0; i < heads; i++) {
        n_entries[i] = ragged ? 1 + (int32_t) (u8(in) % n_tokens) : (int32_t) n_tokens;
    }
    struct audiokv_context * ctx = NULL;
    int rc = ragged ? audiokv_init_ragged(&p, n_layer, n_head, n_head_kv, head_dim, n_entries, n_tokens, &ctx)
                    : audiokv_init(&p, n_layer, n_head, n_head_kv, head_dim, n_tokens, &ctx);
    check_status(rc);
    if (rc != AUDIOKV_OK) {
        if (ctx != NULL) abort();
        free(n_entries);
        return;
    }
    int32_t w = audiokv_window(ctx);
    size_t q_count = (size_t) n_head * (size_t) w * (size_t) head_dim;
    size_t k_count = (size_t) n_tokens * (size_t) n_head_kv * (size_t) head_dim;
    float * q = malloc(q_count * sizeof *q);
    float * k32 = malloc(k_count * sizeof *k32);
    uint16_t * k16 = malloc(k_count * sizeof *k16);
    for (size_t i = 0; i < q_count; i++) q[i] = (float) value(in);
    for (size_t i = 0; i < k_count; i++) {
        k32[i] = (float) value(in);
        k16[i] = (uint16_t) (u8(in) << 8 | u8(in));
    }
    const void * k = f16 ? (const void *) k16 : (const void *) k32;
    size_t el = f16 ? 2 : 4;
    size_t row = (size_t) head_dim * el;
    for (int32_t il = 0; il < n_layer; il++) {
        if (ragged) {
            const void * kh[3];
            size_t nb[3];
            for (int32_t h = 0; h < n_head_kv; h++) {
                kh[h] = (const char *) k + (size_t) h * (size_t) n_tokens * row;
                nb[h] = row;
            }
            rc = audiokv_add_layer_ragged(ctx, il, q, AUDIOKV_TYPE_F32, (size_t) w * head_dim * 4,
                                          (size_t) head_dim * 4, kh, f16 ? AUDIOKV_TYPE_F16 : AUDIOKV_TYPE_F32,
                                          nb, NULL, NULL);
        } else {
            rc = audiokv_add_layer(ctx, il, q, AUDIOKV_TYPE_F32, (size_t) w * head_dim * 4, (size_t) head_dim * 4,
                                   k, f16 ? AUDIOKV_TYPE_F16 : AUDIOKV_TYPE_F32, (size_t) n_head_kv * row, row,
                                   NULL, NULL);
        }
        check_status(rc);
    }
    if (with_mask && !ragged) {
        uint8_t * mask = malloc((size_t) n_tokens);
        for (int64_t i = 0; i < n_tokens; i++) mask[i] = u8(in) & 1;
        check_status(audiokv_set_audio_mask(ctx, mask, n_tokens, NULL));
        free(mask);
    }
    double * profile = malloc((size_t) heads * sizeof *profile);
    fill(in, profile, heads);
    int64_t cap = audiokv_plan_capacity(ctx);
    int32_t * counts = malloc((size_t) heads * sizeof *counts);
    int32_t * idx = malloc((size_t) cap * sizeof *idx);
    int64_t total = -1;
    rc = audiokv_plan(ctx, keep, with_profile ? profile : NULL, n_layer, n_head_kv, counts, idx, cap, &total);
    check_status(rc);
    if (rc == AUDIOKV_OK) {
        check_plan(ctx, n_layer, n_head_kv, counts, idx, total);
    }
    free(counts);
    free(idx);
    free(profile);
    free(q);
    free(k32);
    free(k16);
    free(n_entries);
    audiokv_free(ctx);
}

static void fuzz_blocks(struct input * in, int which) {
    int64_t n = (int64_t) (u8(in) | ((u8(in) & 1) << 8)) - 1; /* -1 .. 510 */
    size_t cnt = n > 0 ? (size_t) n : 1;
    double * x = malloc(cnt * sizeof *x);
    double * out = malloc((2 * (cnt / 2 + 1) + cnt) * sizeof *out);
    fill(in, x, n > 0 ? n : 0);
    if (which == 4) {
        double alpha = value(in), gamma = value(in), taper = value(in);
        check_status(audiokv_sss(x, n, alpha, gamma, taper, out));
    } else if (which == 5) {
        int64_t lo = (int64_t) u8(in) - 1, hi = lo + (int64_t) u8(in), total = (int64_t) (u8(in) | u8(in) << 8);
        int64_t * b = malloc(cnt * sizeof *b);
        int rc = audiokv_integerise(x, n, total, lo, hi, b);
        check_status(rc);
        if (rc == AUDIOKV_OK) {
            int64_t sum = 0;
            for (int64_t i = 0; i < n; i++) {
                if (b[i] < lo || b[i] > hi) abort();
                sum += b[i];
            }
            if (sum != total) abort();
        }
        free(b);
    } else if (which == 6) {
        int64_t kk = n > 0 ? (int64_t) u8(in) % (n + 2) : u8(in) % 2;
        int32_t * idx = malloc((size_t) (kk > 0 ? kk : 1) * sizeof *idx);
        int rc = audiokv_select_top(x, n, kk, idx);
        check_status(rc);
        for (int64_t i = 0; rc == AUDIOKV_OK && i < kk; i++) {
            if (idx[i] < 0 || idx[i] >= n || (i > 0 && idx[i] <= idx[i - 1])) abort();
        }
        free(idx);
    } else if (which == 7) {
        double * back = malloc(cnt * sizeof *back);
        int rc = audiokv_rfft(x, n, out);
        check_status(rc);
        if (rc == AUDIOKV_OK) check_status(audiokv_irfft(out, n, back));
        free(back);
    } else {
        check_status(audiokv_pool(x, n, (int32_t) (u8(in) % 12) - 1, u8(in) % 3, out));
    }
    free(x);
    free(out);
}

int LLVMFuzzerTestOneInput(const uint8_t * data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t * data, size_t size) {
    struct input in = {data, size, 0};
    int which = u8(&in) % 10;
    if (which < 4) {
        fuzz_plan(&in, 0);
    } else if (which == 9) {
        fuzz_plan(&in, 1);
    } else {
        fuzz_blocks(&in, which);
    }
    return 0;
}

static void quiet(enum audiokv_log_level level, const char * text, void * user_data) {
    (void) level;
    (void) text;
    (void) user_data;
}

int LLVMFuzzerInitialize(int * argc, char *** argv);

int LLVMFuzzerInitialize(int * argc, char *** argv) {
    (void) argc;
    (void) argv;
    audiokv_log_set(quiet, NULL); /* the profile-less audiokv warning once per process is not a finding */
    return 0;
}
