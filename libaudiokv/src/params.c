/* Method defaults (docs/semantics.md, "Methods") and their validation. */
#include "internal.h"

#include <math.h>
#include <string.h>

static const char * const k_method_names[AUDIOKV_METHOD_COUNT] = {
    "full", "streamingllm", "h2o", "snapkv", "pyramidkv", "adakv", "audiokv",
};

const char * audiokv_method_name(int32_t method) {
    if (method < 0 || method >= AUDIOKV_METHOD_COUNT) return NULL;
    return k_method_names[method];
}

int32_t audiokv_method_from_name(const char * name) {
    if (!name) return -1;
    for (int32_t m = 0; m < AUDIOKV_METHOD_COUNT; ++m) {
        if (strcmp(name, k_method_names[m]) == 0) return m;
    }
    return -1;
}

struct audiokv_params audiokv_default_params(int32_t method) {
    struct audiokv_params p;
    memset(&p, 0, sizeof p);
    p.method = method;
    p.window = 32;
    p.pool_kernel = 1;
    p.pool_type = AUDIOKV_POOL_AVG;
    p.gqa_reduce = AUDIOKV_GQA_MEAN;
    p.n_sink = 4;
    p.n_threads = 0;
    p.beta = 20.0;
    p.safeguard = 0.2;
    p.sss_alpha = 0.0;
    p.sss_gamma = 0.7;
    p.sss_taper = 0.05;
    p.uniform_share = 0.5;
    p.redistribute_surplus = true;
    switch (method) {
        case AUDIOKV_METHOD_SNAPKV:
        case AUDIOKV_METHOD_PYRAMIDKV:
        case AUDIOKV_METHOD_ADAKV:
            p.pool_kernel = 5;
            break;
        case AUDIOKV_METHOD_AUDIOKV:
            p.pool_kernel = 5;      /* used only when sss_alpha is set to 0 */
            p.sss_alpha = 0.5;
            break;
        default:
            break;
    }
    return p;
}

int akv_params_check(const struct audiokv_params * p) {
    if (p->method < 0 || p->method >= AUDIOKV_METHOD_COUNT) return AUDIOKV_ERR_PARAM;
    if (p->window < 1) return AUDIOKV_ERR_PARAM;
    if (p->pool_kernel < 1 || p->pool_kernel % 2 == 0) return AUDIOKV_ERR_PARAM;
    if (p->pool_type != AUDIOKV_POOL_AVG && p->pool_type != AUDIOKV_POOL_MAX) return AUDIOKV_ERR_PARAM;
    if (p->gqa_reduce != AUDIOKV_GQA_MEAN && p->gqa_reduce != AUDIOKV_GQA_MAX) return AUDIOKV_ERR_PARAM;
    if (p->n_sink < 0 || p->n_threads < 0) return AUDIOKV_ERR_PARAM;
    if (!(p->beta >= 1.0) || !isfinite(p->beta)) return AUDIOKV_ERR_PARAM;
    if (!(p->safeguard >= 0.0 && p->safeguard <= 1.0)) return AUDIOKV_ERR_PARAM;
    if (!(p->sss_alpha >= 0.0 && p->sss_alpha <= 1.0)) return AUDIOKV_ERR_PARAM;
    if (!(p->sss_gamma > 0.0 && p->sss_gamma <= 1.0)) return AUDIOKV_ERR_PARAM;
    if (!(p->sss_taper >= 0.0 && p->sss_taper <= 1.0)) return AUDIOKV_ERR_PARAM;
    if (!(p->uniform_share >= 0.0 && p->uniform_share <= 1.0)) return AUDIOKV_ERR_PARAM;
    return AUDIOKV_OK;
}

const char * audiokv_status_string(int status) {
    switch (status) {
        case AUDIOKV_OK:            return "AUDIOKV_OK";
        case AUDIOKV_ERR_NULL:      return "AUDIOKV_ERR_NULL";
        case AUDIOKV_ERR_SIZE:      return "AUDIOKV_ERR_SIZE";
        case AUDIOKV_ERR_KEEP:      return "AUDIOKV_ERR_KEEP";
        case AUDIOKV_ERR_PROFILE:   return "AUDIOKV_ERR_PROFILE";
        case AUDIOKV_ERR_PARAM:     return "AUDIOKV_ERR_PARAM";
        case AUDIOKV_ERR_TYPE:      return "AUDIOKV_ERR_TYPE";
        case AUDIOKV_ERR_CAPACITY:  return "AUDIOKV_ERR_CAPACITY";
        case AUDIOKV_ERR_NOMEM:     return "AUDIOKV_ERR_NOMEM";
        case AUDIOKV_ERR_STATE:     return "AUDIOKV_ERR_STATE";
        case AUDIOKV_ERR_THREAD:    return "AUDIOKV_ERR_THREAD";
        case AUDIOKV_ERR_NONFINITE: return "AUDIOKV_ERR_NONFINITE";
        default:                    return "unknown status";
    }
}
