/* Whole plans: invariants for every method, identical results for any thread count, and identical scores from the
 * f32, f16, f64, to_float and token-major strided key layouts of the same values. */
#include "audiokv.h"
#include "test_util.h"

#include <math.h>
#include <string.h>

enum { L = 3, H = 6, HKV = 2, D = 16, N = 300 };

static float g_q[L][H][32][D];
static float g_k[L][HKV][N][D];            /* values exactly representable in binary16 */
static uint16_t g_k16[L][N][HKV][D];       /* token-major, all heads in one row (llama.cpp's layout) */
static double g_k64[L][HKV][N][D];

static uint16_t to_half(float f) {         /* exact for the values used here (multiples of 1/64 in [-2, 2]) */
    if (f == 0.0f) return 0;
    uint16_t sign = f < 0 ? 0x8000 : 0;
    double a = fabs((double) f);
    int e;
    double m = frexp(a, &e);              /* a = m 2^e, m in [0.5, 1) */
    int exp16 = e - 1 + 15;
    uint16_t mant = (uint16_t) ((m * 2.0 - 1.0) * 1024.0);
    return (uint16_t) (sign | (exp16 << 10) | mant);
}

static void fill(void) {
    for (int l = 0; l < L; ++l) {
        for (int h = 0; h < H; ++h)
            for (int i = 0; i < 32; ++i)
                for (int t = 0; t < D; ++t) g_q[l][h][i][t] = (float) (rnd() * 2.0 - 1.0);
        for (int h = 0; h < HKV; ++h)
            for (int j = 0; j < N; ++j)
                for (int t = 0; t < D; ++t) {
                    float v = (float) (floor(rnd() * 256.0 - 128.0) / 64.0);
                    if (v == 0.0f) v = 0.015625f;
                    g_k[l][h][j][t] = v;
                    g_k64[l][h][j][t] = v;
                    g_k16[l][j][h][t] = to_half(v);
                }
    }
}

static void to_float_f32(const void * src, float * dst, int64_t n, void * user_data) {
    (void) user_data;
    memcpy(dst, src, (size_t) n * sizeof(float));
}

/* layout: 0 f32, 1 f16 token-major, 2 f64, 3 to_float */
static int make_plan(int method, int n_threads, int layout, double keep, const double * profile,
                     int32_t * counts, int32_t * idx, int64_t cap, int64_t * total) {
    struct audiokv_params p = audiokv_default_params(method);
    p.n_threads = n_threads;
    struct audiokv_context * ctx = NULL;
    int rc = audiokv_init(&p, L, H, HKV, D, N, &ctx);
    if (rc != AUDIOKV_OK) return rc;
    const int32_t w = audiokv_window(ctx);
    for (int l = 0; l < L && rc == AUDIOKV_OK; ++l) {
        const float * q = &g_q[l][0][32 - w][0];
        const size_t qh = sizeof g_q[l][0], qr = sizeof g_q[l][0][0];
        if (layout == 0) rc = audiokv_add_layer(ctx, l, q, AUDIOKV_TYPE_F32, qh, qr, g_k[l], AUDIOKV_TYPE_F32,
                                                sizeof g_k[l][0][0], sizeof g_k[l][0], NULL, NULL);
        if (layout == 1) rc = audiokv_add_layer(ctx, l, q, AUDIOKV_TYPE_F32, qh, qr, g_k16[l], AUDIOKV_TYPE_F16,
                                                sizeof g_k16[l][0], sizeof g_k16[l][0][0], NULL, NULL);
        if (layout == 2) rc = audiokv_add_layer(ctx, l, q, AUDIOKV_TYPE_F32, qh, qr, g_k64[l], AUDIOKV_TYPE_F64,
                                                sizeof g_k64[l][0][0], sizeof g_k64[l][0], NULL, NULL);
        if (layout == 3) rc = audiokv_add_layer(ctx, l, q, AUDIOKV_TYPE_F32, qh, qr, g_k[l], AUDIOKV_TYPE_OTHER,
                                                sizeof g_k[l][0][0], sizeof g_k[l][0], to_float_f32, NULL);
    }
    if (rc == AUDIOKV_OK) rc = audiokv_plan(ctx, keep, profile, L, HKV, counts, idx, cap, total);
    audiokv_free(ctx);
    return rc;
}

static void check_invariants(int method, double keep, const int32_t * counts, const int32_t * idx, int64_t total) {
    const int64_t w = 32;
    int64_t C = (int64_t) floor(keep * N + 0.5);
    if (C < 1) C = 1;
    int64_t sum = 0, off = 0;
    for (int i = 0; i < L * HKV; ++i) {
        const int32_t b = counts[i];
        CHECK(b >= 1 && b <= N);
        if (method != AUDIOKV_METHOD_FULL) CHECK(b >= (C < w ? C : w));
        for (int32_t t = 1; t < b; ++t) CHECK(idx[off + t - 1] < idx[off + t]);
        CHECK(idx[off] >= 0 && idx[off + b - 1] == N - 1);            /* last token always kept */
        if (b >= w) CHECK(idx[off + b - w] == N - w);                 /* whole window kept */
        sum += b;
        off += b;
    }
    CHECK_EQ_INT(sum, total);
    if (method == AUDIOKV_METHOD_FULL) CHECK_EQ_INT(total, (int64_t) L * HKV * N);
    else CHECK_EQ_INT(total, (C >= N ? N : C) * L * HKV);
}

int main(void) {
    fill();
    static int32_t counts[4][L * HKV], idx[4][L * HKV * N];
    const double keeps[] = { 0.4, 0.05, 0.1, 0.9, 1.0 };
    double profile[L * HKV];
    for (int i = 0; i < L * HKV; ++i) profile[i] = 0.1 + i * i;
    for (int method = 0; method < AUDIOKV_METHOD_COUNT; ++method) {
        for (size_t kk = 0; kk < sizeof keeps / sizeof keeps[0]; ++kk) {
            int64_t total[4] = { 0, 0, 0, 0 };
            const int threads[4] = { 1, 3, 1, 2 };
            const int layouts[4] = { 0, 0, 1, 3 };
            for (int v = 0; v < 4; ++v) {
                int rc = make_plan(method, threads[v], layouts[v], keeps[kk], profile, counts[v], idx[v],
                                   L * HKV * N, &total[v]);
                CHECK_EQ_INT(rc, AUDIOKV_OK);
            }
            check_invariants(method, keeps[kk], counts[0], idx[0], total[0]);
            for (int v = 1; v < 4; ++v) {
                CHECK_EQ_INT(total[v], total[0]);
                CHECK(memcmp(counts[v], counts[0], sizeof counts[0]) == 0);
                CHECK(memcmp(idx[v], idx[0], (size_t) total[0] * sizeof(int32_t)) == 0);
            }
            int64_t t64 = 0;
            CHECK_EQ_INT(make_plan(method, 2, 2, keeps[kk], profile, counts[1], idx[1], L * HKV * N, &t64),
                         AUDIOKV_OK);
            CHECK(memcmp(idx[1], idx[0], (size_t) total[0] * sizeof(int32_t)) == 0);
        }
    }
    /* streamingllm keeps sinks and recent tokens */
    int64_t total = 0;
    CHECK_EQ_INT(make_plan(AUDIOKV_METHOD_STREAMINGLLM, 1, 0, 0.4, NULL, counts[0], idx[0], L * HKV * N, &total),
                 AUDIOKV_OK);
    CHECK_EQ_INT(counts[0][0], 120);
    for (int t = 0; t < 4; ++t) CHECK_EQ_INT(idx[0][t], t);
    CHECK_EQ_INT(idx[0][4], N - 116);
    /* a heavier profile head gets a larger audiokv budget */
    CHECK_EQ_INT(make_plan(AUDIOKV_METHOD_AUDIOKV, 1, 0, 0.4, profile, counts[0], idx[0], L * HKV * N, &total),
                 AUDIOKV_OK);
    CHECK(counts[0][L * HKV - 1] > counts[0][0]);
    /* capacity too small: counts still written */
    CHECK_EQ_INT(make_plan(AUDIOKV_METHOD_SNAPKV, 1, 0, 0.4, NULL, counts[0], idx[0], 10, &total),
                 AUDIOKV_ERR_CAPACITY);
    CHECK_EQ_INT(total, 120 * L * HKV);
    return test_finish("test_plan");
}
