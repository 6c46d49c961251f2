/* Per-(layer, KV head) budgets of every method (docs/semantics.md, "Methods"), window included; the twins of the
 * budgets() methods in audiokv_edge/methods/. Real budgets are integerised by the one largest-remainder rule. */
#include "internal.h"

#include <math.h>

static void uniform(const struct akv_budget_input * in, int64_t * b) {
    const int64_t lh = (int64_t) in->n_layer * in->n_head_kv;
    for (int64_t i = 0; i < lh; ++i) b[i] = in->C;
}

/* PyramidKV (KVCache-Factory): real layer caps decreasing linearly with depth, averaging C - w. */
static int pyramid(const struct akv_budget_input * in, int64_t * b, double * real, double * frac, int64_t * order,
                   int64_t * tmp) {
    const int32_t L = in->n_layer, Hkv = in->n_head_kv;
    const double base = (double) (in->C - in->w);
    double lo = 0.0, hi = base, step = 0.0;
    if (L > 1) {
        lo = base / in->params->beta;
        hi = 2.0 * base - lo;
        if (hi >= (double) (in->n_tokens - in->w)) {
            hi = (double) (in->n_tokens - in->w);
            lo = 2.0 * base - hi;
        }
        step = (hi - lo) / (double) (L - 1);
    }
    for (int32_t l = 0; l < L; ++l) {
        const double cap = L > 1 ? hi - (double) l * step : base;
        for (int32_t h = 0; h < Hkv; ++h) real[(int64_t) l * Hkv + h] = cap + (double) in->w;
    }
    return akv_integerise_exec(real, (int64_t) L * Hkv, in->C * L * Hkv, in->w, in->n_tokens, b, frac, order, tmp);
}

/* AdaKV: per layer, the global top Hkv * B' of the layer's concatenated prefix rows sizes each head. */
static int adaptive(const struct akv_budget_input * in, int64_t * b, double * real, double * frac, int64_t * order,
                    int64_t * tmp, int64_t * counts, uint64_t * keys) {
    const int32_t L = in->n_layer, Hkv = in->n_head_kv;
    const int64_t n = in->n_tokens - in->w, base = in->C - in->w;
    const double a = in->params->safeguard;
    const double floor_share = floor(a * (double) base);
    for (int32_t l = 0; l < L; ++l) {
        akv_select_top_rows(in->scores + (int64_t) l * Hkv * n, Hkv, n, (int64_t) Hkv * base, counts, keys);
        for (int32_t h = 0; h < Hkv; ++h) real[h] = ((double) counts[h] * (1.0 - a) + floor_share) + (double) in->w;
        int rc = akv_integerise_exec(real, Hkv, (int64_t) Hkv * in->C, in->w, in->n_tokens,
                                     b + (int64_t) l * Hkv, frac, order, tmp);
        if (rc != AUDIOKV_OK) return rc;
    }
    return AUDIOKV_OK;
}

/* AudioKV (arXiv 2604.06694, Eq. 1, SparseMM): a uniform share plus a share proportional to the head profile;
 * budgets above N are clipped and their surplus redistributed to the unclipped heads by profile. */
static int audio_heads(const struct akv_budget_input * in, int64_t * b, double * real, double * frac,
                       int64_t * order, int64_t * tmp, double * shat, int64_t * clipped) {
    const int64_t lh = (int64_t) in->n_layer * in->n_head_kv;
    const double N = (double) in->n_tokens;
    double total = 0.0;
    for (int64_t i = 0; i < lh; ++i) total += in->profile[i];
    for (int64_t i = 0; i < lh; ++i) shat[i] = in->profile[i] / total;
    const int64_t base = in->C - in->w;
    const int64_t m = (int64_t) floor(in->params->uniform_share * (double) base);
    const double remain = (double) ((base - m) * lh);
    for (int64_t i = 0; i < lh; ++i) {
        real[i] = shat[i] * remain + (double) m + (double) in->w;
        clipped[i] = 0;
    }
    if (!in->params->redistribute_surplus) {
        /* SparseMM: round each head, clip at N, drop the surplus */
        for (int64_t i = 0; i < lh; ++i) {
            const double r = floor((real[i] < N ? real[i] : N) + 0.5);
            b[i] = r < N ? (int64_t) r : in->n_tokens;
        }
        return AUDIOKV_OK;
    }
    /* clip at N and share the surplus by profile among the never-clipped heads (equally when their profile is
     * all zero), until no head exceeds N; sums run sequentially in row-major order like the reference */
    for (int64_t round = 0; round <= lh; ++round) {
        double surplus = 0.0;
        int any = 0;
        for (int64_t i = 0; i < lh; ++i) {
            if (real[i] > N) { surplus += real[i] - N; real[i] = N; clipped[i] = 1; any = 1; }
        }
        if (!any) break;
        double free_weight = 0.0;
        int64_t n_free = 0;
        for (int64_t i = 0; i < lh; ++i) if (!clipped[i]) { free_weight += shat[i]; ++n_free; }
        if (n_free == 0) return AUDIOKV_ERR_SIZE;
        for (int64_t i = 0; i < lh; ++i) {
            if (clipped[i]) continue;
            if (free_weight > 0.0) real[i] += surplus * (shat[i] / free_weight);
            else real[i] += surplus / (double) n_free;
        }
    }
    return akv_integerise_exec(real, lh, in->C * lh, in->w, in->n_tokens, b, frac, order, tmp);
}

int akv_budgets(const struct akv_budget_input * in, int64_t * b, double * dscratch, int64_t * iscratch,
                uint64_t * keys) {
    const int64_t lh = (int64_t) in->n_layer * in->n_head_kv;
    double * real = dscratch, * frac = dscratch + lh, * shat = dscratch + 2 * lh;
    int64_t * order = iscratch, * tmp = iscratch + lh, * extra = iscratch + 2 * lh;
    switch (in->method) {
        case AUDIOKV_METHOD_PYRAMIDKV:
            return pyramid(in, b, real, frac, order, tmp);
        case AUDIOKV_METHOD_ADAKV:
            return adaptive(in, b, real, frac, order, tmp, extra, keys);
        case AUDIOKV_METHOD_AUDIOKV:
            if (in->profile) return audio_heads(in, b, real, frac, order, tmp, shat, extra);
            uniform(in, b);
            return AUDIOKV_OK;
        default:
            uniform(in, b);
            return AUDIOKV_OK;
    }
}
