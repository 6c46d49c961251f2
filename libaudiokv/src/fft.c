/* Complex and real FFT of any length in double precision.
 *
 * Lengths whose prime factors are all in {2, 3, 5, 7} use a recursive mixed-radix decimation in time (generic
 * radix-p butterfly, radix 4 first); any other length uses Bluestein's chirp-z algorithm on a power-of-two FFT.
 * Twiddles are computed directly with cos/sin of exactly reduced angles (no recurrences), so the error grows like
 * log(n) ulps. */
#include "internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define AKV_PI 3.14159265358979323846264338327950288

#define MAX_FACTORS 64

struct akv_fft_plan {
    int64_t n;
    int64_t factors[2 * MAX_FACTORS];  /* (p, m) pairs, n = p0 * m0, m0 = p1 * m1, ... */
    akv_cpx * twiddles;                /* [n] exp(-2 pi i k / n) (mixed radix only) */
    /* Bluestein */
    int64_t m;                         /* power-of-two convolution length, 0 when mixed radix */
    akv_cpx * chirp;                   /* [n] exp(-i pi k^2 / n) */
    akv_cpx * chirp_fft;               /* [m] FFT of the conjugate chirp, divided by m */
    akv_fft_plan * sub;                /* plan of length m */
};

static akv_cpx cpx_mul(akv_cpx a, akv_cpx b) {
    akv_cpx r = { a.re * b.re - a.im * b.im, a.re * b.im + a.im * b.re };
    return r;
}

/* exp(-2 pi i num / den), 0 <= num < den */
static akv_cpx unit_root(int64_t num, int64_t den) {
    double a = -2.0 * AKV_PI * (double) num / (double) den;
    akv_cpx r = { cos(a), sin(a) };
    /* exact values at the quarter turns keep the butterflies of small radices exact */
    if (4 * num == den) { r.re = 0.0; r.im = -1.0; }
    else if (2 * num == den) { r.re = -1.0; r.im = 0.0; }
    else if (4 * num == 3 * den) { r.re = 0.0; r.im = 1.0; }
    else if (num == 0) { r.re = 1.0; r.im = 0.0; }
    return r;
}

static int factorize(int64_t n, int64_t * factors) {
    int count = 0;
    static const int64_t radices[] = { 4, 2, 3, 5, 7 };
    int64_t rest = n;
    for (size_t r = 0; r < sizeof radices / sizeof radices[0]; ++r) {
        while (rest % radices[r] == 0 && rest > 1) {
            if (count >= MAX_FACTORS) return -1;
            rest /= radices[r];
            factors[2 * count] = radices[r];
            factors[2 * count + 1] = rest;
            ++count;
        }
    }
    if (rest != 1) return -1; /* needs Bluestein */
    if (count == 0) { factors[0] = 1; factors[1] = 1; count = 1; } /* n == 1 */
    return count;
}

void akv_fft_plan_free(akv_fft_plan * plan) {
    if (!plan) return;
    free(plan->twiddles);
    free(plan->chirp);
    free(plan->chirp_fft);
    akv_fft_plan_free(plan->sub);
    free(plan);
}

static void work(const akv_fft_plan * plan, akv_cpx * out, const akv_cpx * in, int64_t fstride,
                 const int64_t * factors);

akv_fft_plan * akv_fft_plan_new(int64_t n) {
    if (n < 1 || n > INT32_MAX) return NULL;
    akv_fft_plan * plan = (akv_fft_plan *) calloc(1, sizeof *plan);
    if (!plan) return NULL;
    plan->n = n;
    if (factorize(n, plan->factors) > 0) {
        plan->twiddles = (akv_cpx *) malloc((size_t) n * sizeof(akv_cpx));
        if (!plan->twiddles) { akv_fft_plan_free(plan); return NULL; }
        for (int64_t k = 0; k < n; ++k) plan->twiddles[k] = unit_root(k, n);
        return plan;
    }
    int64_t m = 1;
    while (m < 2 * n - 1) m *= 2;
    plan->m = m;
    plan->chirp = (akv_cpx *) malloc((size_t) n * sizeof(akv_cpx));
    plan->chirp_fft = (akv_cpx *) malloc((size_t) m * sizeof(akv_cpx));
    akv_cpx * tmp = (akv_cpx *) calloc((size_t) m, sizeof(akv_cpx));
    plan->sub = akv_fft_plan_new(m);
    if (!plan->chirp || !plan->chirp_fft || !tmp || !plan->sub) {
        free(tmp);
        akv_fft_plan_free(plan);
        return NULL;
    }
    const int64_t two_n = 2 * n;
    for (int64_t k = 0; k < n; ++k) {
        /* exp(-i pi k^2 / n) = exp(-2 pi i (k^2 mod 2n) / (2n)), k^2 reduced exactly */
        int64_t k2 = (int64_t) (((uint64_t) k * (uint64_t) k) % (uint64_t) two_n); /* k < 2^31 */
        plan->chirp[k] = unit_root(k2, two_n);
    }
    for (int64_t k = 0; k < n; ++k) {
        akv_cpx c = { plan->chirp[k].re, -plan->chirp[k].im };
        tmp[k] = c;
        if (k > 0) tmp[m - k] = c;
    }
    work(plan->sub, plan->chirp_fft, tmp, 1, plan->sub->factors);
    const double inv_m = 1.0 / (double) m;
    for (int64_t k = 0; k < m; ++k) { plan->chirp_fft[k].re *= inv_m; plan->chirp_fft[k].im *= inv_m; }
    free(tmp);
    return plan;
}

int64_t akv_fft_scratch_len(const akv_fft_plan * plan) {
    /* rfft/irfft: 2 n for the complex input and output, Bluestein: 2 m more */
    return 2 * plan->n + 2 * plan->m;
}

/* generic radix-p butterfly (p <= 7) over p sub-transforms of length m stored at out + q*m */
static void butterfly(const akv_fft_plan * plan, akv_cpx * out, int64_t fstride, int64_t p, int64_t m) {
    const akv_cpx * tw = plan->twiddles;
    const int64_t n = plan->n;
    akv_cpx scratch[8];
    if (p == 2) {
        for (int64_t k = 0; k < m; ++k) {
            akv_cpx t = cpx_mul(out[k + m], tw[k * fstride]);
            akv_cpx a = out[k];
            out[k].re = a.re + t.re; out[k].im = a.im + t.im;
            out[k + m].re = a.re - t.re; out[k + m].im = a.im - t.im;
        }
        return;
    }
    if (p == 4) {
        for (int64_t k = 0; k < m; ++k) {
            akv_cpx a0 = out[k];
            akv_cpx a1 = cpx_mul(out[k + m], tw[k * fstride]);
            akv_cpx a2 = cpx_mul(out[k + 2 * m], tw[2 * k * fstride]);
            akv_cpx a3 = cpx_mul(out[k + 3 * m], tw[3 * k * fstride]);
            akv_cpx s02 = { a0.re + a2.re, a0.im + a2.im }, d02 = { a0.re - a2.re, a0.im - a2.im };
            akv_cpx s13 = { a1.re + a3.re, a1.im + a3.im }, d13 = { a1.re - a3.re, a1.im - a3.im };
            out[k].re = s02.re + s13.re;         out[k].im = s02.im + s13.im;
            out[k + 2 * m].re = s02.re - s13.re; out[k + 2 * m].im = s02.im - s13.im;
            /* -i * d13 */
            out[k + m].re = d02.re + d13.im;     out[k + m].im = d02.im - d13.re;
            out[k + 3 * m].re = d02.re - d13.im; out[k + 3 * m].im = d02.im + d13.re;
        }
        return;
    }
    for (int64_t u = 0; u < m; ++u) {
        for (int64_t q1 = 0; q1 < p; ++q1) scratch[q1] = out[u + q1 * m];
        for (int64_t q1 = 0; q1 < p; ++q1) {
            const int64_t k = u + q1 * m;
            int64_t twidx = 0;
            akv_cpx acc = scratch[0];
            for (int64_t q = 1; q < p; ++q) {
                twidx += fstride * k;
                if (twidx >= n) twidx -= n;
                akv_cpx t = cpx_mul(scratch[q], tw[twidx]);
                acc.re += t.re; acc.im += t.im;
            }
            out[k] = acc;
        }
    }
}

static void work(const akv_fft_plan * plan, akv_cpx * out, const akv_cpx * in, int64_t fstride,
                 const int64_t * factors) {
    const int64_t p = factors[0], m = factors[1];
    if (m == 1) {
        for (int64_t q = 0; q < p; ++q) out[q] = in[q * fstride];
    } else {
        for (int64_t q = 0; q < p; ++q) work(plan, out + q * m, in + q * fstride, fstride * p, factors + 2);
    }
    if (p > 1) butterfly(plan, out, fstride, p, m);
}

void akv_fft_forward(const akv_fft_plan * plan, const akv_cpx * in, akv_cpx * out, akv_cpx * scratch) {
    if (plan->m == 0) {
        work(plan, out, in, 1, plan->factors);
        return;
    }
    const int64_t n = plan->n, m = plan->m;
    akv_cpx * a = scratch, * A = scratch + m;
    for (int64_t k = 0; k < n; ++k) a[k] = cpx_mul(in[k], plan->chirp[k]);
    for (int64_t k = n; k < m; ++k) { a[k].re = 0.0; a[k].im = 0.0; }
    work(plan->sub, A, a, 1, plan->sub->factors);
    /* inverse FFT of A * chirp_fft through conj(FFT(conj(.))) */
    for (int64_t k = 0; k < m; ++k) {
        akv_cpx t = cpx_mul(A[k], plan->chirp_fft[k]);
        A[k].re = t.re; A[k].im = -t.im;
    }
    work(plan->sub, a, A, 1, plan->sub->factors);
    for (int64_t k = 0; k < n; ++k) {
        akv_cpx c = { a[k].re, -a[k].im };
        out[k] = cpx_mul(c, plan->chirp[k]);
    }
}

void akv_rfft_exec(const akv_fft_plan * plan, const double * x, akv_cpx * X, akv_cpx * scratch) {
    const int64_t n = plan->n;
    akv_cpx * cin = scratch, * cout = scratch + n, * rest = scratch + 2 * n;
    for (int64_t j = 0; j < n; ++j) { cin[j].re = x[j]; cin[j].im = 0.0; }
    akv_fft_forward(plan, cin, cout, rest);
    memcpy(X, cout, (size_t) (n / 2 + 1) * sizeof(akv_cpx));
}

void akv_irfft_exec(const akv_fft_plan * plan, const akv_cpx * X, double * x, akv_cpx * scratch) {
    const int64_t n = plan->n, nb = n / 2 + 1;
    akv_cpx * cin = scratch, * cout = scratch + n, * rest = scratch + 2 * n;
    /* x = real(FFT(conj(Y))) / n with Y the Hermitian extension of X */
    for (int64_t k = 0; k < nb; ++k) { cin[k].re = X[k].re; cin[k].im = -X[k].im; }
    cin[0].im = 0.0;
    if (n % 2 == 0) cin[n / 2].im = 0.0;
    for (int64_t k = nb; k < n; ++k) { cin[k].re = X[n - k].re; cin[k].im = X[n - k].im; }
    akv_fft_forward(plan, cin, cout, rest);
    const double inv_n = 1.0 / (double) n;
    for (int64_t j = 0; j < n; ++j) x[j] = cout[j].re * inv_n;
}

/* ---- public helpers ---- */

static int fft_public(const double * in, int64_t n, double * out, int inverse) {
    if (!in || !out) return AUDIOKV_ERR_NULL;
    if (n < 1 || n > INT32_MAX) return AUDIOKV_ERR_SIZE;
    akv_fft_plan * plan = akv_fft_plan_new(n);
    if (!plan) return AUDIOKV_ERR_NOMEM;
    const int64_t nb = n / 2 + 1;
    akv_cpx * scratch = (akv_cpx *) malloc((size_t) (akv_fft_scratch_len(plan) + nb) * sizeof(akv_cpx));
    if (!scratch) { akv_fft_plan_free(plan); return AUDIOKV_ERR_NOMEM; }
    akv_cpx * spec = scratch + akv_fft_scratch_len(plan);
    if (inverse) {
        memcpy(spec, in, (size_t) nb * sizeof(akv_cpx));
        akv_irfft_exec(plan, spec, out, scratch);
    } else {
        akv_rfft_exec(plan, in, spec, scratch);
        memcpy(out, spec, (size_t) nb * sizeof(akv_cpx));
    }
    free(scratch);
    akv_fft_plan_free(plan);
    return AUDIOKV_OK;
}

int audiokv_rfft(const double * x, int64_t n, double * out) { return fft_public(x, n, out, 0); }
int audiokv_irfft(const double * in, int64_t n, double * out) { return fft_public(in, n, out, 1); }
