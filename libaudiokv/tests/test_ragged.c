/* Ragged caches (docs/semantics.md, "Re-planning a ragged cache"): a ragged context whose heads hold every position
 * plans exactly like audiokv_init; random ragged plans keep the window, stay within each head's entries, sum to
 * min(T, entries) and do not depend on the thread count or on the key layout (f32, f16, to_float, per-head
 * pointers with their own strides); a hand-computed cap with redistribution; the errors of the ragged API. */
#include "audiokv.h"
#include "test_util.h"

#include <math.h>
#include <string.h>

enum { L = 2, H = 6, HKV = 3, D = 8, P = 240, W = 16 };

static float g_q[L][H][W][D];
static float g_k[L][HKV][P][D];          /* entry e of head (l, h): row e (the head's own entries, in order) */
static uint16_t g_k16[L][HKV][P][D];
static float g_kwide[L][HKV][P][2 * D];  /* the same rows with a stride of 2 D floats */
static int32_t g_entries[L * HKV];

static uint16_t to_half(float f) {       /* exact for multiples of 1/64 in [-2, 2] */
    if (f == 0.0f) return 0;
    uint16_t sign = f < 0 ? 0x8000 : 0;
    int e;
    double m = frexp(fabs((double) f), &e);
    return (uint16_t) (sign | ((e - 1 + 15) << 10) | (uint16_t) ((m * 2.0 - 1.0) * 1024.0));
}

static void fill(void) {
    for (int l = 0; l < L; ++l) {
        for (int h = 0; h < H; ++h)
            for (int i = 0; i < W; ++i)
                for (int t = 0; t < D; ++t) g_q[l][h][i][t] = (float) (rnd() * 2.0 - 1.0);
        for (int h = 0; h < HKV; ++h)
            for (int j = 0; j < P; ++j)
                for (int t = 0; t < D; ++t) {
                    float v = (float) (floor(rnd() * 256.0 - 128.0) / 64.0);
                    if (v == 0.0f) v = 0.015625f;
                    g_k[l][h][j][t] = v;
                    g_k16[l][h][j][t] = to_half(v);
                    g_kwide[l][h][j][t] = v;
                    g_kwide[l][h][j][D + t] = 99.0f;
                }
    }
}

static void to_float_f32(const void * src, float * dst, int64_t n, void * user_data) {
    (void) user_data;
    memcpy(dst, src, (size_t) n * sizeof(float));
}

/* layout: 0 f32 per-head pointers, 1 f16, 2 wide rows, 3 to_float, 4 audiokv_add_layer (uniform only) */
static int make_plan(int method, int ragged, int n_threads, int layout, double keep, const double * profile,
                     int32_t * counts, int32_t * idx, int64_t * total) {
    struct audiokv_params p = audiokv_default_params(method);
    p.window = W;
    p.n_threads = n_threads;
    struct audiokv_context * ctx = NULL;
    int rc = ragged ? audiokv_init_ragged(&p, L, H, HKV, D, g_entries, P, &ctx)
                    : audiokv_init(&p, L, H, HKV, D, P, &ctx);
    if (rc != AUDIOKV_OK) return rc;
    for (int l = 0; l < L && rc == AUDIOKV_OK; ++l) {
        const void * k[HKV];
        size_t nb[HKV];
        for (int h = 0; h < HKV; ++h) {
            k[h] = layout == 1 ? (const void *) g_k16[l][h] : layout == 2 ? (const void *) g_kwide[l][h]
                                                                         : (const void *) g_k[l][h];
            nb[h] = layout == 1 ? sizeof g_k16[l][h][0] : layout == 2 ? sizeof g_kwide[l][h][0]
                                                                     : sizeof g_k[l][h][0];
        }
        const int32_t type = layout == 1 ? AUDIOKV_TYPE_F16 : layout == 3 ? AUDIOKV_TYPE_OTHER : AUDIOKV_TYPE_F32;
        if (layout == 4) {
            rc = audiokv_add_layer(ctx, l, g_q[l], AUDIOKV_TYPE_F32, sizeof g_q[l][0], sizeof g_q[l][0][0], g_k[l],
                                   AUDIOKV_TYPE_F32, sizeof g_k[l][0][0], sizeof g_k[l][0], NULL, NULL);
        } else {
            rc = audiokv_add_layer_ragged(ctx, l, g_q[l], AUDIOKV_TYPE_F32, sizeof g_q[l][0], sizeof g_q[l][0][0],
                                          k, type, nb, layout == 3 ? to_float_f32 : NULL, NULL);
        }
    }
    if (rc == AUDIOKV_OK) rc = audiokv_plan(ctx, keep, profile, L, HKV, counts, idx, L * HKV * P, total);
    audiokv_free(ctx);
    return rc;
}

static void check_invariants(int method, double keep, const int32_t * counts, const int32_t * idx, int64_t total) {
    int64_t C = (int64_t) floor(keep * P + 0.5);
    if (C < 1) C = 1;
    const int keep_all = method == AUDIOKV_METHOD_FULL || C >= P;
    int64_t sum = 0, off = 0, held = 0;
    for (int i = 0; i < L * HKV; ++i) {
        const int32_t b = counts[i], n = g_entries[i];
        held += n;
        CHECK(b >= 1 && b <= n);
        if (keep_all) CHECK_EQ_INT(b, n);
        else if (C <= W) CHECK_EQ_INT(b, C < n ? C : n);
        else CHECK(b >= W);
        for (int32_t t = 1; t < b; ++t) CHECK(idx[off + t - 1] < idx[off + t]);
        CHECK(idx[off] >= 0 && idx[off + b - 1] == n - 1);
        if (b >= W) CHECK(idx[off + b - W] == n - W);                /* the window: the head's last W entries */
        sum += b;
        off += b;
    }
    CHECK_EQ_INT(sum, total);
    if (!keep_all && C > W && method != AUDIOKV_METHOD_ADAKV) {
        CHECK_EQ_INT(total, C * L * HKV < held ? C * L * HKV : held);
    }
}

static void test_uniform_equals_dense(const double * profile) {
    static int32_t counts[2][L * HKV], idx[2][L * HKV * P];
    for (int i = 0; i < L * HKV; ++i) g_entries[i] = P;
    const double keeps[] = { 0.03, 0.3, 0.7, 1.0 };
    for (int method = 0; method < AUDIOKV_METHOD_COUNT; ++method) {
        for (size_t kk = 0; kk < sizeof keeps / sizeof keeps[0]; ++kk) {
            int64_t t0 = 0, t1 = 0;
            CHECK_EQ_INT(make_plan(method, 0, 2, 4, keeps[kk], profile, counts[0], idx[0], &t0), AUDIOKV_OK);
            CHECK_EQ_INT(make_plan(method, 1, 2, 0, keeps[kk], profile, counts[1], idx[1], &t1), AUDIOKV_OK);
            CHECK_EQ_INT(t1, t0);
            CHECK(memcmp(counts[0], counts[1], sizeof counts[0]) == 0);
            CHECK(memcmp(idx[0], idx[1], (size_t) t0 * sizeof(int32_t)) == 0);
        }
    }
}

static void test_random_ragged(const double * profile) {
    static int32_t counts[5][L * HKV], idx[5][L * HKV * P];
    const double keeps[] = { 0.05, 0.2, 0.4, 0.8, 1.0 };
    for (int trial = 0; trial < 3; ++trial) {
        for (int i = 0; i < L * HKV; ++i) {
            const double u = rnd();
            g_entries[i] = u < 0.2 ? W : u < 0.35 ? P : W + (int32_t) (rnd() * (P - W));
        }
        for (int method = 0; method < AUDIOKV_METHOD_COUNT; ++method) {
            for (size_t kk = 0; kk < sizeof keeps / sizeof keeps[0]; ++kk) {
                int64_t total[5] = { 0, 0, 0, 0, 0 };
                const int threads[5] = { 1, 3, 2, 1, 2 };
                const int layouts[5] = { 0, 0, 1, 2, 3 };
                for (int v = 0; v < 5; ++v) {
                    CHECK_EQ_INT(make_plan(method, 1, threads[v], layouts[v], keeps[kk], profile, counts[v], idx[v],
                                           &total[v]), AUDIOKV_OK);
                }
                check_invariants(method, keeps[kk], counts[0], idx[0], total[0]);
                for (int v = 1; v < 5; ++v) {
                    CHECK_EQ_INT(total[v], total[0]);
                    CHECK(memcmp(counts[v], counts[0], sizeof counts[0]) == 0);
                    CHECK(memcmp(idx[v], idx[0], (size_t) total[0] * sizeof(int32_t)) == 0);
                }
            }
        }
    }
}

/* streamingllm, P = 40, keep 0.5 (C = 20), window 4, 2 sinks; heads hold 40, 12, 40, 30 entries: head (0, 1) is
 * capped at 12 and its surplus 8 is shared equally by the three others (22.67 each -> 23, 23, 22). */
static void test_cap_by_hand(void) {
    struct audiokv_params p = audiokv_default_params(AUDIOKV_METHOD_STREAMINGLLM);
    p.window = 4;
    p.n_sink = 2;
    p.n_threads = 1;
    const int32_t entries[4] = { 40, 12, 40, 30 };
    struct audiokv_context * ctx = NULL;
    CHECK_EQ_INT(audiokv_init_ragged(&p, 2, 2, 2, 4, entries, 40, &ctx), AUDIOKV_OK);
    int32_t counts[4], idx[160];
    int64_t total = 0;
    CHECK_EQ_INT(audiokv_plan(ctx, 0.5, NULL, 0, 0, counts, idx, 160, &total), AUDIOKV_OK);
    CHECK_EQ_INT(counts[0], 23);
    CHECK_EQ_INT(counts[1], 12);
    CHECK_EQ_INT(counts[2], 23);
    CHECK_EQ_INT(counts[3], 22);
    CHECK_EQ_INT(total, 80);
    /* head (0, 0): sinks 0, 1 then entries 19 .. 39; head (0, 1): everything; head (1, 1): 0, 1, 10 .. 29 */
    CHECK_EQ_INT(idx[0], 0);
    CHECK_EQ_INT(idx[1], 1);
    CHECK_EQ_INT(idx[2], 19);
    CHECK_EQ_INT(idx[22], 39);
    for (int j = 0; j < 12; ++j) CHECK_EQ_INT(idx[23 + j], j);
    const int32_t * h11 = idx + 23 + 12 + 23;
    CHECK_EQ_INT(h11[0], 0);
    CHECK_EQ_INT(h11[1], 1);
    CHECK_EQ_INT(h11[2], 10);
    CHECK_EQ_INT(h11[21], 29);
    audiokv_free(ctx);
}

static void test_errors(void) {
    struct audiokv_params p = audiokv_default_params(AUDIOKV_METHOD_SNAPKV);
    p.window = 8;
    p.n_threads = 1;
    struct audiokv_context * ctx = (struct audiokv_context *) &p;   /* must be reset to NULL on error */
    int32_t entries[2] = { 20, 21 };
    CHECK_EQ_INT(audiokv_init_ragged(&p, 1, 2, 2, D, entries, 20, &ctx), AUDIOKV_ERR_SIZE);
    CHECK(ctx == NULL);
    entries[1] = 0;
    CHECK_EQ_INT(audiokv_init_ragged(&p, 1, 2, 2, D, entries, 20, &ctx), AUDIOKV_ERR_SIZE);
    CHECK_EQ_INT(audiokv_init_ragged(&p, 1, 2, 2, D, NULL, 20, &ctx), AUDIOKV_ERR_NULL);
    CHECK_EQ_INT(audiokv_init_ragged(NULL, 1, 2, 2, D, entries, 20, &ctx), AUDIOKV_ERR_NULL);
    CHECK_EQ_INT(audiokv_init_ragged(&p, 1, 2, 2, D, entries, 20, NULL), AUDIOKV_ERR_NULL);
    entries[1] = 6;
    CHECK_EQ_INT(audiokv_init_ragged(&p, 1, 3, 2, D, entries, 20, &ctx), AUDIOKV_ERR_SIZE);
    CHECK_EQ_INT(audiokv_init_ragged(&p, 1, 2, 2, D, entries, (int64_t) INT32_MAX, &ctx), AUDIOKV_ERR_SIZE);
    CHECK_EQ_INT(audiokv_init_ragged(&p, 1, 2, 2, D, entries, 20, &ctx), AUDIOKV_OK);
    CHECK_EQ_INT(audiokv_n_entries(ctx, 0, 1), 6);
    CHECK_EQ_INT(audiokv_n_entries(ctx, 0, 2), -1);
    CHECK_EQ_INT(audiokv_n_entries(NULL, 0, 0), -1);
    CHECK_EQ_INT(audiokv_n_positions(ctx), 20);
    CHECK_EQ_INT(audiokv_n_positions(NULL), -1);
    CHECK_EQ_INT(audiokv_plan_capacity(ctx), 26);
    const void * k[2] = { g_k[0][0], g_k[0][1] };
    const void * k_null[2] = { g_k[0][0], NULL };
    size_t nb[2] = { sizeof g_k[0][0][0], sizeof g_k[0][0][0] };
    size_t nb_bad[2] = { sizeof g_k[0][0][0], 0 };
    int32_t counts[2], idx[26];
    int64_t total = 0;
    CHECK_EQ_INT(audiokv_plan(ctx, 0.5, NULL, 0, 0, counts, idx, 26, &total), AUDIOKV_ERR_SIZE);   /* 6 < w */
    CHECK_EQ_INT(audiokv_add_layer_ragged(ctx, 0, g_q[0], AUDIOKV_TYPE_F32, sizeof g_q[0][0], sizeof g_q[0][0][0],
                                          k_null, AUDIOKV_TYPE_F32, nb, NULL, NULL), AUDIOKV_ERR_NULL);
    CHECK_EQ_INT(audiokv_add_layer_ragged(ctx, 0, g_q[0], AUDIOKV_TYPE_F32, sizeof g_q[0][0], sizeof g_q[0][0][0],
                                          k, AUDIOKV_TYPE_F32, nb_bad, NULL, NULL), AUDIOKV_ERR_SIZE);
    CHECK_EQ_INT(audiokv_add_layer_ragged(ctx, 1, g_q[0], AUDIOKV_TYPE_F32, sizeof g_q[0][0], sizeof g_q[0][0][0],
                                          k, AUDIOKV_TYPE_F32, nb, NULL, NULL), AUDIOKV_ERR_SIZE);
    CHECK_EQ_INT(audiokv_add_layer_ragged(ctx, 0, g_q[0], AUDIOKV_TYPE_OTHER, sizeof g_q[0][0], sizeof g_q[0][0][0],
                                          k, AUDIOKV_TYPE_F32, nb, NULL, NULL), AUDIOKV_ERR_TYPE);
    CHECK_EQ_INT(audiokv_add_layer_ragged(NULL, 0, g_q[0], AUDIOKV_TYPE_F32, 1, 1, k, AUDIOKV_TYPE_F32, nb, NULL,
                                          NULL), AUDIOKV_ERR_NULL);
    CHECK_EQ_INT(audiokv_add_layer_ragged(ctx, 0, g_q[0], AUDIOKV_TYPE_F32, sizeof g_q[0][0], sizeof g_q[0][0][0],
                                          k, AUDIOKV_TYPE_F32, nb, NULL, NULL), AUDIOKV_OK);
    CHECK_EQ_INT(audiokv_plan(ctx, 0.5, NULL, 0, 0, counts, idx, 26, &total), AUDIOKV_ERR_SIZE);
    CHECK_EQ_INT(audiokv_plan(ctx, 0.1, NULL, 0, 0, counts, idx, 26, &total), AUDIOKV_OK);   /* C = 2: last 2 */
    CHECK_EQ_INT(counts[0], 2);
    CHECK_EQ_INT(counts[1], 2);
    CHECK_EQ_INT(idx[0], 18);
    CHECK_EQ_INT(idx[2], 4);
    double acc[2 * 20] = { 0 };
    CHECK_EQ_INT(audiokv_set_layer_scores(ctx, 0, acc, 2, 20), AUDIOKV_ERR_STATE);
    audiokv_free(ctx);
}

int main(void) {
    fill();
    double profile[L * HKV];
    for (int i = 0; i < L * HKV; ++i) profile[i] = 0.05 + (i == 1 ? 4.0 : rnd());
    test_uniform_equals_dense(profile);
    test_random_ragged(profile);
    test_cap_by_hand();
    test_errors();
    return test_finish("test_ragged");
}
