/* The shared selection, largest-remainder integerisation, pooling and SSS on hand-checked cases. */
#include "audiokv.h"
#include "test_util.h"

#include <math.h>
#include <string.h>

static void test_select(void) {
    /* ties and float32 rounding: 1 + 1e-12 rounds to 1.0f and ties with the lower index */
    const double s[] = { 0.5, 1.0, 1.0 + 1e-12, 0.25, 1.0, -INFINITY, INFINITY, NAN };
    int32_t out[8];
    CHECK_EQ_INT(audiokv_select_top(s, 8, 3, out), AUDIOKV_OK);
    CHECK_EQ_INT(out[0], 1); CHECK_EQ_INT(out[1], 2); CHECK_EQ_INT(out[2], 6);
    CHECK_EQ_INT(audiokv_select_top(s, 8, 4, out), AUDIOKV_OK);
    CHECK_EQ_INT(out[3], 6); CHECK_EQ_INT(out[2], 4);
    CHECK_EQ_INT(audiokv_select_top(s, 8, 7, out), AUDIOKV_OK); /* NaN ranks last, -inf before it */
    for (int i = 0; i < 7; ++i) CHECK_EQ_INT(out[i], i);
    CHECK_EQ_INT(audiokv_select_top(s, 8, 0, out), AUDIOKV_OK);
    /* all equal: the lowest indices */
    double e[1000];
    int32_t o[1000];
    for (int i = 0; i < 1000; ++i) e[i] = 0.125;
    CHECK_EQ_INT(audiokv_select_top(e, 1000, 10, o), AUDIOKV_OK);
    for (int i = 0; i < 10; ++i) CHECK_EQ_INT(o[i], i);
    /* -0 and +0 tie */
    const double z[] = { 0.0, -0.0, -0.0, 0.0 };
    CHECK_EQ_INT(audiokv_select_top(z, 4, 2, o), AUDIOKV_OK);
    CHECK_EQ_INT(o[0], 0); CHECK_EQ_INT(o[1], 1);
    /* random against a full sort by (value desc, index asc) */
    for (int trial = 0; trial < 50; ++trial) {
        int n = 1 + (int) (rnd() * 999);
        int k = (int) (rnd() * (n + 1));
        for (int i = 0; i < n; ++i) e[i] = floor(rnd() * 20.0) / 7.0;   /* many ties */
        CHECK_EQ_INT(audiokv_select_top(e, n, k, o), AUDIOKV_OK);
        int expected_kept = 0;
        for (int i = 0; i < n; ++i) {
            int better = 0;
            for (int j = 0; j < n; ++j) {
                float fj = (float) e[j], fi = (float) e[i];
                better += fj > fi || (fj == fi && j < i);
            }
            int kept = better < k;
            expected_kept += kept;
            int found = 0;
            for (int t = 0; t < k; ++t) found |= o[t] == i;
            CHECK_EQ_INT(found, kept);
        }
        CHECK_EQ_INT(expected_kept, k);
        for (int t = 1; t < k; ++t) CHECK(o[t - 1] < o[t]);
    }
}

static void test_integerise(void) {
    int64_t b[4];
    const double r1[] = { 1.5, 2.5, 3.25, 2.75 };                 /* sum 10 */
    CHECK_EQ_INT(audiokv_integerise(r1, 4, 10, 0, 100, b), AUDIOKV_OK);
    CHECK_EQ_INT(b[0], 2); CHECK_EQ_INT(b[1], 2); CHECK_EQ_INT(b[2], 3); CHECK_EQ_INT(b[3], 3);
    const double r2[] = { 1.5, 1.5, 1.5, 1.5 };                   /* ties to the lower index */
    CHECK_EQ_INT(audiokv_integerise(r2, 4, 6, 0, 100, b), AUDIOKV_OK);
    CHECK_EQ_INT(b[0], 2); CHECK_EQ_INT(b[1], 2); CHECK_EQ_INT(b[2], 1); CHECK_EQ_INT(b[3], 1);
    const double r3[] = { 4.9, 0.5, 0.6, 0.0 };                   /* hi = 4 caps entry 0; rounds */
    CHECK_EQ_INT(audiokv_integerise(r3, 4, 6, 0, 4, b), AUDIOKV_OK);
    CHECK_EQ_INT(b[0], 4); CHECK_EQ_INT(b[1], 1); CHECK_EQ_INT(b[2], 1); CHECK_EQ_INT(b[3], 0);
    const double r4[] = { 3.0, 3.0, 3.0, 3.0 };                   /* negative leftover */
    CHECK_EQ_INT(audiokv_integerise(r4, 4, 11, 0, 10, b), AUDIOKV_OK);
    CHECK_EQ_INT(b[0], 3); CHECK_EQ_INT(b[1], 3); CHECK_EQ_INT(b[2], 3); CHECK_EQ_INT(b[3], 2);
    CHECK_EQ_INT(audiokv_integerise(r4, 4, 100, 0, 10, b), AUDIOKV_ERR_SIZE);
    const double bad[] = { NAN, 1.0 };
    CHECK_EQ_INT(audiokv_integerise(bad, 2, 1, 0, 10, b), AUDIOKV_ERR_SIZE);
}

static void test_pool_sss(void) {
    const double x[] = { 1, 2, 3, 4, 5 };
    double y[5];
    CHECK_EQ_INT(audiokv_pool(x, 5, 3, AUDIOKV_POOL_AVG, y), AUDIOKV_OK);
    CHECK(y[0] == 1.0 && y[1] == 2.0 && y[2] == 3.0 && y[3] == 4.0 && y[4] == 3.0);
    CHECK_EQ_INT(audiokv_pool(x, 5, 3, AUDIOKV_POOL_MAX, y), AUDIOKV_OK);
    CHECK(y[0] == 2.0 && y[4] == 5.0);
    CHECK_EQ_INT(audiokv_pool(x, 5, 1, AUDIOKV_POOL_AVG, y), AUDIOKV_OK);
    CHECK(memcmp(x, y, sizeof x) == 0);
    CHECK_EQ_INT(audiokv_pool(x, 5, 2, AUDIOKV_POOL_AVG, y), AUDIOKV_ERR_PARAM);
    double r[257], s[257];
    for (int i = 0; i < 257; ++i) r[i] = rnd();
    CHECK_EQ_INT(audiokv_sss(r, 257, 0.0, 0.7, 0.05, s), AUDIOKV_OK);
    CHECK(memcmp(r, s, sizeof r) == 0);                            /* alpha 0: identity */
    for (int i = 0; i < 257; ++i) r[i] = 0.375;
    CHECK_EQ_INT(audiokv_sss(r, 257, 0.5, 0.7, 0.05, s), AUDIOKV_OK);
    for (int i = 0; i < 257; ++i) CHECK(fabs(s[i] - 0.375) < 1e-15);   /* constant: unchanged */
    /* low pass: a noisy row gets smoother (smaller total variation) */
    double tv_in = 0, tv_out = 0;
    for (int i = 0; i < 257; ++i) r[i] = sin(i * 0.05) + (rnd() - 0.5);
    CHECK_EQ_INT(audiokv_sss(r, 257, 1.0, 0.7, 0.05, s), AUDIOKV_OK);
    for (int i = 1; i < 257; ++i) { tv_in += fabs(r[i] - r[i - 1]); tv_out += fabs(s[i] - s[i - 1]); }
    CHECK(tv_out < 0.5 * tv_in);
    CHECK_EQ_INT(audiokv_sss(r, 257, 1.5, 0.7, 0.05, s), AUDIOKV_ERR_PARAM);
    CHECK_EQ_INT(audiokv_sss(r, 257, 0.5, 0.0, 0.05, s), AUDIOKV_ERR_PARAM);
    CHECK_EQ_INT(audiokv_sss(r, 257, NAN, 0.5, 0.05, s), AUDIOKV_ERR_PARAM);
}

int main(void) {
    test_select();
    test_integerise();
    test_pool_sss();
    return test_finish("test_select");
}
