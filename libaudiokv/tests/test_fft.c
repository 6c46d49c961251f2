/* rfft / irfft against a direct DFT (exact twiddle table, double) on every length 1..256 and some large primes and
 * composites; the scipy comparison on every length 1..4096 is in tests/test_c_fft.py. */
#include "audiokv.h"
#include "test_util.h"

#include <math.h>

static const double PI = 3.14159265358979323846;

static double check_length(long n) {
    double * x = calloc((size_t) n, sizeof(double));
    double * X = malloc(sizeof(double) * 2 * (size_t) (n / 2 + 1));
    double * y = malloc(sizeof(double) * (size_t) n);
    for (long j = 0; j < n; ++j) x[j] = rnd() - 0.5;
    CHECK_EQ_INT(audiokv_rfft(x, n, X), AUDIOKV_OK);
    double * c = malloc(sizeof(double) * (size_t) n), * s = malloc(sizeof(double) * (size_t) n);
    for (long j = 0; j < n; ++j) { c[j] = cos(-2.0 * PI * (double) j / (double) n); s[j] = sin(-2.0 * PI * (double) j / (double) n); }
    double norm = 0.0, err = 0.0;
    for (long k = 0; k <= n / 2; ++k) {
        double re = 0.0, im = 0.0;
        for (long j = 0; j < n; ++j) {
            long t = (j * k) % n;
            re += x[j] * c[t];
            im += x[j] * s[t];
        }
        norm += re * re + im * im;
        double dr = X[2 * k] - re, di = X[2 * k + 1] - im;
        err += dr * dr + di * di;
    }
    free(c); free(s);
    CHECK_EQ_INT(audiokv_irfft(X, n, y), AUDIOKV_OK);
    double rt = 0.0;
    for (long j = 0; j < n; ++j) rt = fmax(rt, fabs(y[j] - x[j]));
    CHECK(rt < 1e-13);
    free(x); free(X); free(y);
    return norm > 0 ? sqrt(err / norm) : sqrt(err);
}

int main(void) {
    double worst = 0.0;
    for (long n = 1; n <= 256; ++n) {
        double e = check_length(n);
        if (e > worst) worst = e;
        if (!(e < 1e-13)) fprintf(stderr, "n=%ld relative error %g\n", n, e);
        CHECK(e < 1e-13);
    }
    const long extra[] = { 1009, 1024, 2003, 2310, 4096, 4099 };
    for (size_t i = 0; i < sizeof extra / sizeof extra[0]; ++i) {
        double e = check_length(extra[i]);
        if (!(e < 1e-12)) fprintf(stderr, "n=%ld relative error %g\n", extra[i], e);
        CHECK(e < 1e-12);
        if (e > worst) worst = e;
    }
    printf("worst relative error %g\n", worst);
    return test_finish("test_fft");
}
