/* Spectral Score Smoothing (AudioKV, arXiv 2604.06694, Alg. 1 and Eq. 13-20; details in docs/semantics.md). */
#include "internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define AKV_PI 3.14159265358979323846264338327950288

int64_t akv_sss_scratch_len(int64_t n) {
    /* spectrum of n/2 + 1 bins plus n doubles of smoothed row (as n/2 + 1 complex) */
    return 2 * (n / 2 + 1) + 1;
}

void akv_sss_exec(const akv_fft_plan * plan, const double * x, int64_t n, double alpha, double gamma,
                  double taper, double * out, akv_cpx * scratch) {
    if (n <= 1 || alpha == 0.0) {
        if (out != x) memmove(out, x, (size_t) (n > 0 ? n : 0) * sizeof(double));
        return;
    }
    const int64_t nb = n / 2 + 1;
    akv_cpx * X = scratch;
    double * smooth = (double *) (scratch + nb);
    akv_cpx * fft_scratch = scratch + akv_sss_scratch_len(n);
    akv_rfft_exec(plan, x, X, fft_scratch);
    /* c = cumsum(|X|^2) (sequential); k* = smallest k with c[k] >= gamma * c[-1] */
    double total = 0.0;
    for (int64_t i = 0; i < nb; ++i) total += X[i].re * X[i].re + X[i].im * X[i].im;
    if (total == 0.0) {
        if (out != x) memmove(out, x, (size_t) n * sizeof(double));
        return;
    }
    const double target = gamma * total;
    double c = 0.0;
    int64_t kstar = nb - 1;
    for (int64_t i = 0; i < nb; ++i) {
        c += X[i].re * X[i].re + X[i].im * X[i].im;
        if (c >= target) { kstar = i; break; }
    }
    /* taper width D = max(2, ceil(taper * (n/2 + 1))); D = 1 (hard cut) when taper == 0 */
    const int64_t D = taper == 0.0 ? 1 : (int64_t) fmax(2.0, ceil(taper * (double) nb));
    for (int64_t i = kstar + 1; i < nb; ++i) {
        double m = 0.0;
        if (i < kstar + D) m = 0.5 * (1.0 + cos(AKV_PI * (double) (i - kstar) / (double) D));
        X[i].re *= m;
        X[i].im *= m;
    }
    akv_irfft_exec(plan, X, smooth, fft_scratch);
    for (int64_t j = 0; j < n; ++j) out[j] = (1.0 - alpha) * x[j] + alpha * smooth[j];
}

void akv_snap_to_row_grid(double * x, int64_t n) {
    double m = 0.0;
    for (int64_t j = 0; j < n; ++j) m = fabs(x[j]) > m ? fabs(x[j]) : m;
    if (!(m > 0.0) || !isfinite(m)) return;
    int e;
    frexp(m, &e);                       /* m = f 2^e, f in [0.5, 1) */
    const double q = ldexp(1.0, e - 24);
    for (int64_t j = 0; j < n; ++j) x[j] = nearbyint(x[j] / q) * q;   /* exact scaling; ties to even */
}

int audiokv_sss(const double * x, int64_t n, double alpha, double gamma, double taper, double * out) {
    if (!x || !out) return AUDIOKV_ERR_NULL;
    if (n < 0 || n > INT32_MAX) return AUDIOKV_ERR_SIZE;
    if (!(alpha >= 0.0 && alpha <= 1.0) || !(gamma > 0.0 && gamma <= 1.0) || !(taper >= 0.0 && taper <= 1.0)) {
        return AUDIOKV_ERR_PARAM;
    }
    if (n <= 1 || alpha == 0.0) {
        if (out != x && n > 0) memmove(out, x, (size_t) n * sizeof(double));
        return AUDIOKV_OK;
    }
    akv_fft_plan * plan = akv_fft_plan_new(n);
    if (!plan) return AUDIOKV_ERR_NOMEM;
    akv_cpx * scratch = (akv_cpx *) malloc((size_t) (akv_sss_scratch_len(n) + akv_fft_scratch_len(plan)) *
                                           sizeof(akv_cpx));
    if (!scratch) { akv_fft_plan_free(plan); return AUDIOKV_ERR_NOMEM; }
    akv_sss_exec(plan, x, n, alpha, gamma, taper, out, scratch);
    free(scratch);
    akv_fft_plan_free(plan);
    return AUDIOKV_OK;
}
