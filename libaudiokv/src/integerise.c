/* Largest-remainder integerisation of real budgets (docs/semantics.md), the twin of
 * audiokv_edge.reference.select.largest_remainder: written once, used by pyramidkv, adakv and audiokv. */
#include "internal.h"

#include <math.h>
#include <stdlib.h>

/* order[] sorted by fractional part descending, ties to the lower index (a stable merge sort) */
static void sort_by_fraction(const double * frac, int64_t n, int64_t * order, int64_t * tmp) {
    for (int64_t i = 0; i < n; ++i) order[i] = i;
    for (int64_t width = 1; width < n; width *= 2) {
        for (int64_t lo = 0; lo < n; lo += 2 * width) {
            int64_t mid = lo + width < n ? lo + width : n;
            int64_t hi = lo + 2 * width < n ? lo + 2 * width : n;
            int64_t a = lo, b = mid, o = lo;
            while (a < mid && b < hi) {
                /* take from the right run only when strictly larger: keeps equal fractions in index order */
                if (frac[order[b]] > frac[order[a]]) tmp[o++] = order[b++];
                else tmp[o++] = order[a++];
            }
            while (a < mid) tmp[o++] = order[a++];
            while (b < hi) tmp[o++] = order[b++];
        }
        for (int64_t i = 0; i < n; ++i) order[i] = tmp[i];
    }
}

int akv_integerise_exec(const double * r, int64_t n, int64_t total, int64_t lo, int64_t hi,
                        const int64_t * hi_each, int64_t * b, double * frac, int64_t * order, int64_t * tmp) {
    if (n < 1 || total < lo * n) return AUDIOKV_ERR_SIZE;
    if (hi_each) {   /* caps: entries of a head, at most INT32_MAX each, n heads: the sum cannot overflow */
        int64_t hi_sum = 0;
        for (int64_t i = 0; i < n; ++i) {
            if (lo > hi_each[i]) return AUDIOKV_ERR_SIZE;
            hi_sum += hi_each[i];
        }
        if (total > hi_sum) return AUDIOKV_ERR_SIZE;
    } else if (lo > hi || (hi <= INT64_MAX / n && total > hi * n)) {
        return AUDIOKV_ERR_SIZE;
    }
    int64_t sum = 0;
    for (int64_t i = 0; i < n; ++i) {
        if (!isfinite(r[i])) return AUDIOKV_ERR_SIZE;
        const int64_t h = hi_each ? hi_each[i] : hi;
        const double f = floor(r[i]);
        frac[i] = r[i] - f;
        b[i] = f < (double) lo ? lo : (f > (double) h ? h : (int64_t) f);
        sum += b[i];
    }
    sort_by_fraction(frac, n, order, tmp);
    int64_t left = total - sum;
    while (left > 0) {
        int64_t given = 0;
        for (int64_t i = 0; i < n && given < left; ++i) {
            if (b[order[i]] < (hi_each ? hi_each[order[i]] : hi)) { b[order[i]] += 1; ++given; }
        }
        if (given == 0) return AUDIOKV_ERR_SIZE;
        left -= given;
    }
    while (left < 0) {
        int64_t taken = 0;
        for (int64_t i = n - 1; i >= 0 && taken < -left; --i) {
            if (b[order[i]] > lo) { b[order[i]] -= 1; ++taken; }
        }
        if (taken == 0) return AUDIOKV_ERR_SIZE;
        left += taken;
    }
    return AUDIOKV_OK;
}

int audiokv_integerise(const double * r, int64_t n, int64_t total, int64_t lo, int64_t hi, int64_t * b) {
    if (!r || !b) return AUDIOKV_ERR_NULL;
    if (n < 1 || n > INT32_MAX) return AUDIOKV_ERR_SIZE;
    double * frac = (double *) malloc((size_t) n * sizeof(double));
    int64_t * order = (int64_t *) malloc((size_t) n * 2 * sizeof(int64_t));
    if (!frac || !order) { free(frac); free(order); return AUDIOKV_ERR_NOMEM; }
    int rc = akv_integerise_exec(r, n, total, lo, hi, NULL, b, frac, order, order + n);
    free(order);
    free(frac);
    return rc;
}
