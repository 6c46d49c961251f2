/* The one selection rule of every method (docs/semantics.md, "Selection"): rank scores after rounding to float32,
 * larger first, ties to the lower index, NaN last; keep the top k. Written once; budgets.c (AdaKV) and plan.c use it. */
#include "internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

uint64_t akv_rank_key(double score, uint32_t index) {
    float f = (float) score;
    uint32_t ordered;
    if (isnan(f)) {
        ordered = 0;
    } else {
        if (f == 0.0f) f = 0.0f; /* -0 ranks like +0 */
        uint32_t u;
        memcpy(&u, &f, sizeof u);
        ordered = (u & 0x80000000u) ? ~u : (u | 0x80000000u);
    }
    return ((uint64_t) ordered << 32) | (uint64_t) (0xFFFFFFFFu - index);
}

static void swap_u64(uint64_t * a, uint64_t * b) { uint64_t t = *a; *a = *b; *b = t; }

/* Rearranges keys so that keys[k-1] is the k-th largest and keys[0..k) are the k largest (any order). Keys are
 * unique (they embed the index). Quickselect with median of three; falls back to a full sort when unlucky. */
static int cmp_desc(const void * a, const void * b) {
    uint64_t x = *(const uint64_t *) a, y = *(const uint64_t *) b;
    return x < y ? 1 : (x > y ? -1 : 0);
}

static uint64_t kth_largest(uint64_t * keys, int64_t n, int64_t k) {
    int64_t lo = 0, hi = n - 1;
    const int64_t target = k - 1;
    int rounds = 0;
    while (lo < hi) {
        if (++rounds > 128) {
            qsort(keys + lo, (size_t) (hi - lo + 1), sizeof(uint64_t), cmp_desc);
            break;
        }
        int64_t mid = lo + (hi - lo) / 2;
        /* median of three to keys[hi] */
        if (keys[mid] > keys[lo]) swap_u64(&keys[mid], &keys[lo]);
        if (keys[hi] > keys[lo]) swap_u64(&keys[hi], &keys[lo]);
        if (keys[mid] > keys[hi]) swap_u64(&keys[mid], &keys[hi]);
        const uint64_t pivot = keys[hi];
        int64_t store = lo;
        for (int64_t i = lo; i < hi; ++i) {
            if (keys[i] > pivot) { swap_u64(&keys[i], &keys[store]); ++store; }
        }
        swap_u64(&keys[store], &keys[hi]);
        if (store == target) break;
        if (store < target) lo = store + 1; else hi = store - 1;
    }
    return keys[target];
}

void akv_select_top_exec(const double * scores, int64_t n, int64_t k, int32_t * out, uint64_t * keys) {
    if (k <= 0) return;
    if (k >= n) {
        for (int64_t j = 0; j < n; ++j) out[j] = (int32_t) j;
        return;
    }
    for (int64_t j = 0; j < n; ++j) keys[j] = akv_rank_key(scores[j], (uint32_t) j);
    const uint64_t threshold = kth_largest(keys, n, k);
    int64_t c = 0;
    for (int64_t j = 0; j < n && c < k; ++j) {
        if (akv_rank_key(scores[j], (uint32_t) j) >= threshold) out[c++] = (int32_t) j;
    }
}

void akv_select_top_rows(const double * scores, int64_t n_rows, const int64_t * row_len, int64_t k,
                         int64_t * counts, uint64_t * keys) {
    int64_t total = 0;
    for (int64_t r = 0; r < n_rows; ++r) { counts[r] = 0; total += row_len[r]; }
    if (k <= 0) return;
    if (k >= total) {
        for (int64_t r = 0; r < n_rows; ++r) counts[r] = row_len[r];
        return;
    }
    for (int64_t f = 0; f < total; ++f) keys[f] = akv_rank_key(scores[f], (uint32_t) f);
    const uint64_t threshold = kth_largest(keys, total, k);
    for (int64_t r = 0, f = 0; r < n_rows; ++r) {
        int64_t c = 0;
        for (int64_t j = 0; j < row_len[r]; ++j, ++f) c += akv_rank_key(scores[f], (uint32_t) f) >= threshold;
        counts[r] = c;
    }
}

int audiokv_select_top(const double * scores, int64_t n, int64_t k, int32_t * out) {
    if (!scores || !out) return AUDIOKV_ERR_NULL;
    if (n < 1 || n > INT32_MAX || k < 0 || k > n) return AUDIOKV_ERR_SIZE;
    uint64_t * keys = (uint64_t *) malloc((size_t) n * sizeof(uint64_t));
    if (!keys) return AUDIOKV_ERR_NOMEM;
    akv_select_top_exec(scores, n, k, out, keys);
    free(keys);
    return AUDIOKV_OK;
}
