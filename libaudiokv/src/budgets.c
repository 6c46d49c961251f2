/* Per-(layer, KV head) budgets of every method (docs/semantics.md, "Methods"), window included; the twins of the
 * budgets() methods in audiokv_edge/methods/. Real budgets are capped at the entries each head holds (all N in a
 * uniform cache, where nothing exceeds them except audiokv's own surplus) by the one capping rule, then
 * integerised by the one largest-remainder rule. */
#include "internal.h"

#include <math.h>

void akv_cap_and_share(double * real, int64_t n, const int64_t * caps, const double * weights, int64_t * clipped) {
    for (int64_t i = 0; i < n; ++i) clipped[i] = 0;
    /* each round caps at least one more entry for good, so n + 1 rounds always finish */
    for (int64_t round = 0; round <= n; ++round) {
        double surplus = 0.0;
        int any = 0;
        for (int64_t i = 0; i < n; ++i) {
            const double cap = (double) caps[i];
            if (real[i] > cap) { surplus += real[i] - cap; real[i] = cap; clipped[i] = 1; any = 1; }
        }
        if (!any) return;
        double free_weight = 0.0;
        int64_t n_free = 0;
        for (int64_t i = 0; i < n; ++i) {
            if (clipped[i]) continue;
            if (weights) free_weight += weights[i];
            ++n_free;
        }
        if (n_free == 0) return;   /* every entry at its cap: the surplus has nowhere to go */
        for (int64_t i = 0; i < n; ++i) {
            if (clipped[i]) continue;
            if (free_weight > 0.0) real[i] += surplus * (weights[i] / free_weight);
            else real[i] += surplus / (double) n_free;
        }
    }
}

/* b = largest remainder of the capped real budgets to min(total, sum of caps), each within [w, cap]. */
static int capped_budgets(double * real, int64_t n, int64_t total, int64_t w, const int64_t * caps,
                          const double * weights, int64_t * b, double * frac, int64_t * order, int64_t * tmp,
                          int64_t * clipped) {
    akv_cap_and_share(real, n, caps, weights, clipped);
    int64_t cap_sum = 0;
    for (int64_t i = 0; i < n; ++i) cap_sum += caps[i];
    return akv_integerise_exec(real, n, total < cap_sum ? total : cap_sum, w, 0, caps, b, frac, order, tmp);
}

struct budget_scratch {
    double * real, * frac, * shat;
    int64_t * order, * tmp, * extra;   /* extra: L * Hkv + Hkv */
};

static int uniform(const struct akv_budget_input * in, int64_t * b, const struct budget_scratch * s) {
    const int64_t lh = (int64_t) in->n_layer * in->n_head_kv;
    for (int64_t i = 0; i < lh; ++i) s->real[i] = (double) in->C;
    return capped_budgets(s->real, lh, in->C * lh, in->w, in->caps, NULL, b, s->frac, s->order, s->tmp, s->extra);
}

/* PyramidKV (KVCache-Factory): real layer caps decreasing linearly with depth, averaging C - w. */
static int pyramid(const struct akv_budget_input * in, int64_t * b, const struct budget_scratch * s) {
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
        for (int32_t h = 0; h < Hkv; ++h) s->real[(int64_t) l * Hkv + h] = cap + (double) in->w;
    }
    const int64_t lh = (int64_t) L * Hkv;
    return capped_budgets(s->real, lh, in->C * lh, in->w, in->caps, NULL, b, s->frac, s->order, s->tmp, s->extra);
}

/* AdaKV: per layer, the global top Hkv * B' of the layer's concatenated prefix rows sizes each head. */
static int adaptive(const struct akv_budget_input * in, int64_t * b, const struct budget_scratch * s,
                    uint64_t * keys) {
    const int32_t L = in->n_layer, Hkv = in->n_head_kv;
    const int64_t base = in->C - in->w;
    const double a = in->params->safeguard;
    const double floor_share = floor(a * (double) base);
    int64_t * counts = s->extra, * clipped = s->extra + Hkv;
    const double * rows = in->scores;
    for (int32_t l = 0; l < L; ++l) {
        const int64_t first = (int64_t) l * Hkv;
        akv_select_top_rows(rows, Hkv, in->row_len + first, (int64_t) Hkv * base, counts, keys);
        for (int32_t h = 0; h < Hkv; ++h) {
            s->real[h] = ((double) counts[h] * (1.0 - a) + floor_share) + (double) in->w;
            rows += in->row_len[first + h];
        }
        int rc = capped_budgets(s->real, Hkv, (int64_t) Hkv * in->C, in->w, in->caps + first, NULL, b + first,
                                s->frac, s->order, s->tmp, clipped);
        if (rc != AUDIOKV_OK) return rc;
    }
    return AUDIOKV_OK;
}

/* AudioKV (arXiv 2604.06694, Eq. 1, SparseMM): a uniform share plus a share proportional to the head profile;
 * budgets above a head's cap are clipped and their surplus redistributed to the unclipped heads by profile. */
static int audio_heads(const struct akv_budget_input * in, int64_t * b, const struct budget_scratch * s) {
    const int64_t lh = (int64_t) in->n_layer * in->n_head_kv;
    double total = 0.0;
    for (int64_t i = 0; i < lh; ++i) total += in->profile[i];
    for (int64_t i = 0; i < lh; ++i) s->shat[i] = in->profile[i] / total;
    const int64_t base = in->C - in->w;
    const int64_t m = (int64_t) floor(in->params->uniform_share * (double) base);
    const double remain = (double) ((base - m) * lh);
    for (int64_t i = 0; i < lh; ++i) s->real[i] = s->shat[i] * remain + (double) m + (double) in->w;
    if (!in->params->redistribute_surplus) {
        /* SparseMM: round each head, clip at its cap, drop the surplus */
        for (int64_t i = 0; i < lh; ++i) {
            const double cap = (double) in->caps[i];
            const double r = floor((s->real[i] < cap ? s->real[i] : cap) + 0.5);
            b[i] = r < cap ? (int64_t) r : in->caps[i];
        }
        return AUDIOKV_OK;
    }
    /* sums run sequentially in row-major order like the reference */
    return capped_budgets(s->real, lh, in->C * lh, in->w, in->caps, s->shat, b, s->frac, s->order, s->tmp,
                          s->extra);
}

int akv_budgets(const struct akv_budget_input * in, int64_t * b, double * dscratch, int64_t * iscratch,
                uint64_t * keys) {
    const int64_t lh = (int64_t) in->n_layer * in->n_head_kv;
    const struct budget_scratch s = { dscratch, dscratch + lh, dscratch + 2 * lh,
                                      iscratch, iscratch + lh, iscratch + 2 * lh };
    switch (in->method) {
        case AUDIOKV_METHOD_PYRAMIDKV:
            return pyramid(in, b, &s);
        case AUDIOKV_METHOD_ADAKV:
            return adaptive(in, b, &s, keys);
        case AUDIOKV_METHOD_AUDIOKV:
            if (in->profile) return audio_heads(in, b, &s);
            return uniform(in, b, &s);
        default:
            return uniform(in, b, &s);
    }
}
