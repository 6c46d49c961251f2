/* Bad arguments return the documented status codes and never crash. */
#include "audiokv.h"
#include "test_util.h"

#include <math.h>

static void quiet(enum audiokv_log_level level, const char * text, void * user_data) {
    (void) level; (void) text; (void) user_data;
}

int main(void) {
    audiokv_log_set(quiet, NULL);
    struct audiokv_params p = audiokv_default_params(AUDIOKV_METHOD_AUDIOKV);
    p.n_threads = 2;
    struct audiokv_context * ctx = (struct audiokv_context *) &p; /* must be reset to NULL on error */
    CHECK_EQ_INT(audiokv_init(NULL, 2, 4, 2, 8, 100, &ctx), AUDIOKV_ERR_NULL);
    CHECK(ctx == NULL);
    CHECK_EQ_INT(audiokv_init(&p, 2, 4, 2, 8, 100, NULL), AUDIOKV_ERR_NULL);
    CHECK_EQ_INT(audiokv_init(&p, 0, 4, 2, 8, 100, &ctx), AUDIOKV_ERR_SIZE);
    CHECK_EQ_INT(audiokv_init(&p, -1, 4, 2, 8, 100, &ctx), AUDIOKV_ERR_SIZE);
    CHECK_EQ_INT(audiokv_init(&p, 2, 4, 3, 8, 100, &ctx), AUDIOKV_ERR_SIZE);   /* 4 % 3 */
    CHECK_EQ_INT(audiokv_init(&p, 2, 4, 2, 0, 100, &ctx), AUDIOKV_ERR_SIZE);
    CHECK_EQ_INT(audiokv_init(&p, 2, 4, 2, 8, 0, &ctx), AUDIOKV_ERR_SIZE);
    CHECK_EQ_INT(audiokv_init(&p, 2, 4, 2, 8, -5, &ctx), AUDIOKV_ERR_SIZE);
    CHECK_EQ_INT(audiokv_init(&p, 2, 4, 2, 8, (int64_t) 1 << 40, &ctx), AUDIOKV_ERR_SIZE);
    struct audiokv_params bad = p;
    bad.method = 99;
    CHECK_EQ_INT(audiokv_init(&bad, 2, 4, 2, 8, 100, &ctx), AUDIOKV_ERR_PARAM);
    bad = p; bad.pool_kernel = 4;
    CHECK_EQ_INT(audiokv_init(&bad, 2, 4, 2, 8, 100, &ctx), AUDIOKV_ERR_PARAM);
    bad = p; bad.sss_gamma = 0.0;
    CHECK_EQ_INT(audiokv_init(&bad, 2, 4, 2, 8, 100, &ctx), AUDIOKV_ERR_PARAM);
    bad = p; bad.sss_alpha = NAN;
    CHECK_EQ_INT(audiokv_init(&bad, 2, 4, 2, 8, 100, &ctx), AUDIOKV_ERR_PARAM);
    bad = p; bad.sss_taper = 1.5;
    CHECK_EQ_INT(audiokv_init(&bad, 2, 4, 2, 8, 100, &ctx), AUDIOKV_ERR_PARAM);
    bad = p; bad.beta = 0.5;
    CHECK_EQ_INT(audiokv_init(&bad, 2, 4, 2, 8, 100, &ctx), AUDIOKV_ERR_PARAM);
    bad = p; bad.window = 0;
    CHECK_EQ_INT(audiokv_init(&bad, 2, 4, 2, 8, 100, &ctx), AUDIOKV_ERR_PARAM);
    bad = p; bad.n_threads = -1;
    CHECK_EQ_INT(audiokv_init(&bad, 2, 4, 2, 8, 100, &ctx), AUDIOKV_ERR_PARAM);

    CHECK_EQ_INT(audiokv_init(&p, 2, 4, 2, 8, 100, &ctx), AUDIOKV_OK);
    CHECK_EQ_INT(audiokv_window(ctx), 32);
    CHECK_EQ_INT(audiokv_window(NULL), -1);
    CHECK_EQ_INT(audiokv_plan_capacity(NULL), -1);
    float q[4][32][8] = { { { 0 } } };
    float k[100][2][8] = { { { 0 } } };
    q[0][0][0] = NAN;
    int32_t counts[4], idx[800];
    int64_t total = -1;
    /* plan before any scores: STATE (keep that needs scores) */
    CHECK_EQ_INT(audiokv_plan(ctx, 0.5, NULL, 0, 0, counts, idx, 800, &total), AUDIOKV_ERR_STATE);
    /* but keep = 1 and tiny keeps need no scores */
    CHECK_EQ_INT(audiokv_plan(ctx, 1.0, NULL, 0, 0, counts, idx, 800, &total), AUDIOKV_OK);
    CHECK_EQ_INT(total, 400);
    CHECK_EQ_INT(audiokv_plan(ctx, 0.2, NULL, 0, 0, counts, idx, 800, &total), AUDIOKV_OK);
    CHECK_EQ_INT(counts[0], 20); CHECK_EQ_INT(idx[0], 80);
    CHECK_EQ_INT(audiokv_add_layer(NULL, 0, q, 0, sizeof q[0], sizeof q[0][0], k, 0, sizeof k[0], sizeof k[0][0],
                                   NULL, NULL), AUDIOKV_ERR_NULL);
    CHECK_EQ_INT(audiokv_add_layer(ctx, 0, NULL, 0, sizeof q[0], sizeof q[0][0], k, 0, sizeof k[0],
                                   sizeof k[0][0], NULL, NULL), AUDIOKV_ERR_NULL);
    CHECK_EQ_INT(audiokv_add_layer(ctx, 0, q, 0, sizeof q[0], sizeof q[0][0], NULL, 0, sizeof k[0],
                                   sizeof k[0][0], NULL, NULL), AUDIOKV_ERR_NULL);
    CHECK_EQ_INT(audiokv_add_layer(ctx, 2, q, 0, sizeof q[0], sizeof q[0][0], k, 0, sizeof k[0], sizeof k[0][0],
                                   NULL, NULL), AUDIOKV_ERR_SIZE);
    CHECK_EQ_INT(audiokv_add_layer(ctx, -1, q, 0, sizeof q[0], sizeof q[0][0], k, 0, sizeof k[0],
                                   sizeof k[0][0], NULL, NULL), AUDIOKV_ERR_SIZE);
    CHECK_EQ_INT(audiokv_add_layer(ctx, 0, q, 0, sizeof q[0], 0, k, 0, sizeof k[0], sizeof k[0][0], NULL, NULL),
                 AUDIOKV_ERR_SIZE);
    CHECK_EQ_INT(audiokv_add_layer(ctx, 0, q, 7, sizeof q[0], sizeof q[0][0], k, 0, sizeof k[0],
                                   sizeof k[0][0], NULL, NULL), AUDIOKV_ERR_TYPE);
    CHECK_EQ_INT(audiokv_add_layer(ctx, 0, q, 0, sizeof q[0], sizeof q[0][0], k, AUDIOKV_TYPE_OTHER, sizeof k[0],
                                   sizeof k[0][0], NULL, NULL), AUDIOKV_ERR_TYPE);
    CHECK_EQ_INT(audiokv_add_layer(ctx, 0, q, 0, sizeof q[0], sizeof q[0][0], k, 0, sizeof k[0], sizeof k[0][0],
                                   NULL, NULL), AUDIOKV_ERR_NONFINITE);
    q[0][0][0] = 0.0f;
    for (int l = 0; l < 2; ++l) {
        CHECK_EQ_INT(audiokv_add_layer(ctx, l, q, 0, sizeof q[0], sizeof q[0][0], k, 0, sizeof k[0],
                                       sizeof k[0][0], NULL, NULL), AUDIOKV_OK);
    }
    CHECK_EQ_INT(audiokv_plan(NULL, 0.5, NULL, 0, 0, counts, idx, 800, &total), AUDIOKV_ERR_NULL);
    CHECK_EQ_INT(audiokv_plan(ctx, 0.5, NULL, 0, 0, NULL, idx, 800, &total), AUDIOKV_ERR_NULL);
    CHECK_EQ_INT(audiokv_plan(ctx, 0.5, NULL, 0, 0, counts, NULL, 800, &total), AUDIOKV_ERR_NULL);
    CHECK_EQ_INT(audiokv_plan(ctx, 0.5, NULL, 0, 0, counts, idx, 0, &total), AUDIOKV_ERR_SIZE);
    CHECK_EQ_INT(audiokv_plan(ctx, 0.5, NULL, 0, 0, counts, idx, -3, &total), AUDIOKV_ERR_SIZE);
    const double keeps_bad[] = { 0.0, -0.5, 1.0000001, NAN, INFINITY, -INFINITY };
    for (int i = 0; i < 6; ++i) {
        CHECK_EQ_INT(audiokv_plan(ctx, keeps_bad[i], NULL, 0, 0, counts, idx, 800, &total), AUDIOKV_ERR_KEEP);
    }
    double prof[6] = { 1, 2, 3, 4, 5, 6 };
    CHECK_EQ_INT(audiokv_plan(ctx, 0.5, prof, 3, 2, counts, idx, 800, &total), AUDIOKV_ERR_PROFILE);
    CHECK_EQ_INT(audiokv_plan(ctx, 0.5, prof, 2, 3, counts, idx, 800, &total), AUDIOKV_ERR_PROFILE);
    CHECK_EQ_INT(audiokv_plan(ctx, 0.5, prof, 1, 4, counts, idx, 800, &total), AUDIOKV_ERR_PROFILE);
    prof[1] = -1;
    CHECK_EQ_INT(audiokv_plan(ctx, 0.5, prof, 2, 2, counts, idx, 800, &total), AUDIOKV_ERR_PROFILE);
    prof[1] = NAN;
    CHECK_EQ_INT(audiokv_plan(ctx, 0.5, prof, 2, 2, counts, idx, 800, &total), AUDIOKV_ERR_PROFILE);
    prof[0] = prof[1] = prof[2] = prof[3] = 0;
    CHECK_EQ_INT(audiokv_plan(ctx, 0.5, prof, 2, 2, counts, idx, 800, &total), AUDIOKV_ERR_PROFILE);
    prof[0] = 1;
    CHECK_EQ_INT(audiokv_plan(ctx, 0.5, prof, 2, 2, counts, idx, 800, &total), AUDIOKV_OK);
    CHECK_EQ_INT(audiokv_plan(ctx, 0.5, NULL, 0, 0, counts, idx, 800, &total), AUDIOKV_OK);
    CHECK_EQ_INT(total, 200);
    double sc[4][100] = { { 0 } };
    CHECK_EQ_INT(audiokv_set_layer_scores(ctx, 0, NULL, 4, 100), AUDIOKV_ERR_NULL);
    CHECK_EQ_INT(audiokv_set_layer_scores(ctx, 0, sc[0], 3, 100), AUDIOKV_ERR_SIZE);
    CHECK_EQ_INT(audiokv_set_layer_scores(ctx, 0, sc[0], 4, 99), AUDIOKV_ERR_SIZE);
    CHECK_EQ_INT(audiokv_set_layer_scores(ctx, 5, sc[0], 4, 100), AUDIOKV_ERR_SIZE);
    sc[1][3] = NAN;
    CHECK_EQ_INT(audiokv_set_layer_scores(ctx, 0, sc[0], 4, 100), AUDIOKV_ERR_NONFINITE);
    /* audio mask: one flag per position, positions in range and non-decreasing; an error keeps the context usable */
    uint8_t audio[100] = { 0 };
    int32_t pos[100];
    for (int j = 0; j < 100; ++j) pos[j] = j;
    for (int j = 20; j < 70; ++j) audio[j] = 1;
    const int32_t * heads[4] = { pos, pos, pos, pos };
    CHECK_EQ_INT(audiokv_set_audio_mask(NULL, audio, 100, NULL), AUDIOKV_ERR_NULL);
    CHECK_EQ_INT(audiokv_set_audio_mask(ctx, NULL, 100, NULL), AUDIOKV_ERR_NULL);
    CHECK_EQ_INT(audiokv_set_audio_mask(ctx, audio, 99, NULL), AUDIOKV_ERR_SIZE);
    CHECK_EQ_INT(audiokv_set_audio_mask(ctx, audio, 101, heads), AUDIOKV_ERR_SIZE);
    heads[3] = NULL;
    CHECK_EQ_INT(audiokv_set_audio_mask(ctx, audio, 100, heads), AUDIOKV_ERR_NULL);
    int32_t bad_pos[100];
    for (int j = 0; j < 100; ++j) bad_pos[j] = j;
    bad_pos[50] = 10;                                   /* decreasing */
    heads[3] = bad_pos;
    CHECK_EQ_INT(audiokv_set_audio_mask(ctx, audio, 100, heads), AUDIOKV_ERR_SIZE);
    bad_pos[50] = 50;
    bad_pos[99] = 100;                                  /* out of range */
    CHECK_EQ_INT(audiokv_set_audio_mask(ctx, audio, 100, heads), AUDIOKV_ERR_SIZE);
    heads[3] = pos;
    CHECK_EQ_INT(audiokv_set_audio_mask(ctx, audio, 100, heads), AUDIOKV_OK);
    CHECK_EQ_INT(audiokv_set_audio_mask(ctx, audio, 100, NULL), AUDIOKV_OK);
    CHECK_EQ_INT(audiokv_plan(ctx, 0.5, NULL, 0, 0, counts, idx, 800, &total), AUDIOKV_OK);
    CHECK_EQ_INT(total, 200);
    CHECK_EQ_INT(audiokv_clear_audio_mask(ctx), AUDIOKV_OK);
    CHECK_EQ_INT(audiokv_clear_audio_mask(NULL), AUDIOKV_ERR_NULL);
    audiokv_free(ctx);
    int32_t entries[4] = { 100, 60, 100, 100 };         /* ragged: entry e is not position e everywhere */
    CHECK_EQ_INT(audiokv_init_ragged(&p, 2, 4, 2, 8, entries, 100, &ctx), AUDIOKV_OK);
    CHECK_EQ_INT(audiokv_set_audio_mask(ctx, audio, 100, NULL), AUDIOKV_ERR_NULL);
    heads[1] = pos + 40;                                /* head (0, 1) holds positions 40 .. 99 */
    CHECK_EQ_INT(audiokv_set_audio_mask(ctx, audio, 100, heads), AUDIOKV_OK);
    audiokv_free(ctx);
    audiokv_free(NULL);
    double x[4] = { 1, 2, 3, 4 }, y[6];
    int32_t o[4];
    int64_t b[4];
    CHECK_EQ_INT(audiokv_rfft(NULL, 4, y), AUDIOKV_ERR_NULL);
    CHECK_EQ_INT(audiokv_rfft(x, 0, y), AUDIOKV_ERR_SIZE);
    CHECK_EQ_INT(audiokv_irfft(x, -1, y), AUDIOKV_ERR_SIZE);
    CHECK_EQ_INT(audiokv_sss(x, -1, 0.5, 0.5, 0.05, y), AUDIOKV_ERR_SIZE);
    CHECK_EQ_INT(audiokv_pool(x, 4, 0, 0, y), AUDIOKV_ERR_PARAM);
    CHECK_EQ_INT(audiokv_pool(x, 4, 3, 9, y), AUDIOKV_ERR_PARAM);
    CHECK_EQ_INT(audiokv_select_top(x, 4, 5, o), AUDIOKV_ERR_SIZE);
    CHECK_EQ_INT(audiokv_select_top(x, 0, 0, o), AUDIOKV_ERR_SIZE);
    CHECK_EQ_INT(audiokv_select_top(x, 4, -1, o), AUDIOKV_ERR_SIZE);
    CHECK_EQ_INT(audiokv_integerise(x, 0, 1, 0, 4, b), AUDIOKV_ERR_SIZE);
    CHECK_EQ_INT(audiokv_integerise(NULL, 4, 1, 0, 4, b), AUDIOKV_ERR_NULL);
    return test_finish("test_errors");
}
