/* gguf_profile.c - see include/audiokv_gguf_profile.h. */
#include "audiokv_gguf_profile.h"

#include "llama.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int fail(char * err, size_t err_size, int status, const char * fmt, ...) {
    if (err != NULL && err_size > 0) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, err_size, fmt, ap);
        va_end(ap);
    }
    return status;
}

/* The value of a key as text in a malloc'ed buffer, or NULL if absent (*missing = 1) or out of memory. */
static char * meta_string(const struct llama_model * model, const char * key, int * missing) {
    char small[64];
    int32_t n = llama_model_meta_val_str(model, key, small, sizeof small);
    *missing = n < 0;
    if (n < 0) {
        return NULL;
    }
    char * buf = (char *) malloc((size_t) n + 1);
    if (buf == NULL) {
        return NULL;
    }
    if ((size_t) n < sizeof small) {
        memcpy(buf, small, (size_t) n + 1);
    } else {
        llama_model_meta_val_str(model, key, buf, (size_t) n + 1);
    }
    return buf;
}

/* Parse a whole string as a non-negative integer that fits int32. */
static int parse_int(const char * s, int32_t * out) {
    char * end = NULL;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno != 0 || end == s || *end != '\0' || v < 0 || v > INT32_MAX) {
        return 0;
    }
    *out = (int32_t) v;
    return 1;
}

static int read_int_key(const struct llama_model * model, const char * key, int32_t * out, int required,
                        char * err, size_t err_size) {
    int missing = 0;
    char * s = meta_string(model, key, &missing);
    if (s == NULL) {
        if (!missing) {
            return fail(err, err_size, AUDIOKV_PROFILE_ERR_ALLOC, "out of memory reading %s", key);
        }
        return required ? fail(err, err_size, AUDIOKV_PROFILE_ERR_MISSING, "missing %s", key) : AUDIOKV_PROFILE_NONE;
    }
    int ok = parse_int(s, out);
    int rc = ok ? AUDIOKV_PROFILE_OK
                : fail(err, err_size, AUDIOKV_PROFILE_ERR_PARSE, "%s = \"%.40s\" is not an unsigned integer", key, s);
    free(s);
    return rc;
}

/* Optional real default: NaN when absent; must lie in [lo, hi] (lo excluded when lo_open). */
static int read_real_key(const struct llama_model * model, const char * key, double lo, int lo_open, double hi,
                         double * out, char * err, size_t err_size) {
    int missing = 0;
    char * s = meta_string(model, key, &missing);
    *out = NAN;
    if (s == NULL) {
        return missing ? AUDIOKV_PROFILE_OK
                       : fail(err, err_size, AUDIOKV_PROFILE_ERR_ALLOC, "out of memory reading %s", key);
    }
    char * end = NULL;
    double v = strtod(s, &end);
    int rc = AUDIOKV_PROFILE_OK;
    if (end == s || *end != '\0') {
        rc = fail(err, err_size, AUDIOKV_PROFILE_ERR_PARSE, "%s = \"%.40s\" is not a number", key, s);
    } else if (!isfinite(v) || v > hi || v < lo || (lo_open && v == lo)) {
        rc = fail(err, err_size, AUDIOKV_PROFILE_ERR_VALUE, "%s = %g is out of range", key, v);
    } else {
        *out = v;
    }
    free(s);
    return rc;
}

int audiokv_profile_read(const struct llama_model * model, struct audiokv_stored_profile * out,
                         char * err, size_t err_size) {
    if (model == NULL || out == NULL) {
        return fail(err, err_size, AUDIOKV_PROFILE_ERR_ARG, "NULL model or output");
    }
    memset(out, 0, sizeof *out);
    out->window = -1;
    out->sss_alpha = out->sss_gamma = out->keep = NAN;

    int32_t version = 0;
    int rc = read_int_key(model, "audiokv.format_version", &version, 0, err, err_size);
    if (rc != AUDIOKV_PROFILE_OK) {
        return rc; /* NONE when absent */
    }
    if (version != 1) {
        return fail(err, err_size, AUDIOKV_PROFILE_ERR_VERSION,
                    "audiokv.format_version = %d is not supported (this reader knows 1)", (int) version);
    }
    int32_t n_layer = 0, n_head_kv = 0;
    if ((rc = read_int_key(model, "audiokv.head_scores.n_layer", &n_layer, 1, err, err_size)) != 0 ||
        (rc = read_int_key(model, "audiokv.head_scores.n_head_kv", &n_head_kv, 1, err, err_size)) != 0) {
        return rc;
    }
    if (llama_model_n_layer(model) < 1) { /* vocab_only models have no hyper-parameters to check against */
        return fail(err, err_size, AUDIOKV_PROFILE_ERR_ARG, "the model has no layers loaded (vocab_only?)");
    }
    if (n_layer != llama_model_n_layer(model) || n_head_kv != llama_model_n_head_kv(model)) {
        return fail(err, err_size, AUDIOKV_PROFILE_ERR_SHAPE,
                    "stored profile is %d layers x %d KV heads but the model has %d x %d", (int) n_layer,
                    (int) n_head_kv, (int) llama_model_n_layer(model), (int) llama_model_n_head_kv(model));
    }
    if (n_layer < 1 || n_head_kv < 1) {
        return fail(err, err_size, AUDIOKV_PROFILE_ERR_SHAPE, "empty profile shape");
    }
    int missing = 0;
    char * hex = meta_string(model, "audiokv.head_scores.hex", &missing);
    if (hex == NULL) {
        return missing ? fail(err, err_size, AUDIOKV_PROFILE_ERR_MISSING, "missing audiokv.head_scores.hex")
                       : fail(err, err_size, AUDIOKV_PROFILE_ERR_ALLOC, "out of memory");
    }
    size_t n = (size_t) n_layer * (size_t) n_head_kv;
    float * scores = (float *) malloc(n * sizeof *scores);
    if (scores == NULL) {
        free(hex);
        return fail(err, err_size, AUDIOKV_PROFILE_ERR_ALLOC, "out of memory");
    }
    const char * p = hex;
    size_t count = 0;
    int any_positive = 0;
    rc = AUDIOKV_PROFILE_OK;
    for (;;) {
        while (*p == ' ') {
            p++;
        }
        if (*p == '\0') {
            break;
        }
        char * end = NULL;
        float v = strtof(p, &end);
        if (end == p || (*end != ' ' && *end != '\0')) {
            rc = fail(err, err_size, AUDIOKV_PROFILE_ERR_PARSE, "audiokv.head_scores.hex: item %zu is not a float",
                      count);
            break;
        }
        if (count == n) {
            count++;
            break;
        }
        if (!isfinite(v) || v < 0.0f) {
            rc = fail(err, err_size, AUDIOKV_PROFILE_ERR_VALUE,
                      "audiokv.head_scores: NaN, infinite or negative score at layer %zu, KV head %zu",
                      count / (size_t) n_head_kv, count % (size_t) n_head_kv);
            break;
        }
        any_positive |= v > 0.0f;
        scores[count++] = v;
        p = end;
    }
    free(hex);
    if (rc == AUDIOKV_PROFILE_OK && count != n) {
        rc = fail(err, err_size, AUDIOKV_PROFILE_ERR_SHAPE, "audiokv.head_scores.hex has %s%zu values, expected %zu",
                  count > n ? "more than " : "", count > n ? n : count, n);
    }
    if (rc == AUDIOKV_PROFILE_OK && !any_positive) {
        rc = fail(err, err_size, AUDIOKV_PROFILE_ERR_VALUE, "audiokv.head_scores are all zero");
    }
    if (rc != AUDIOKV_PROFILE_OK) {
        free(scores);
        return rc;
    }
    out->n_layer = n_layer;
    out->n_head_kv = n_head_kv;
    out->scores = scores;

    int32_t window = 0;
    rc = read_int_key(model, "audiokv.defaults.window", &window, 0, err, err_size);
    if (rc == AUDIOKV_PROFILE_OK && window < 1) {
        rc = fail(err, err_size, AUDIOKV_PROFILE_ERR_VALUE, "audiokv.defaults.window must be >= 1");
    }
    if (rc == AUDIOKV_PROFILE_OK) {
        out->window = window;
    } else if (rc == AUDIOKV_PROFILE_NONE) {
        rc = AUDIOKV_PROFILE_OK;
    }
    if (rc == AUDIOKV_PROFILE_OK) {
        rc = read_real_key(model, "audiokv.defaults.sss_alpha", 0.0, 0, 1.0, &out->sss_alpha, err, err_size);
    }
    if (rc == AUDIOKV_PROFILE_OK) {
        rc = read_real_key(model, "audiokv.defaults.sss_gamma", 0.0, 1, 1.0, &out->sss_gamma, err, err_size);
    }
    if (rc == AUDIOKV_PROFILE_OK) {
        rc = read_real_key(model, "audiokv.defaults.keep", 0.0, 1, 1.0, &out->keep, err, err_size);
    }
    if (rc != AUDIOKV_PROFILE_OK) {
        audiokv_profile_free(out);
    }
    return rc;
}

void audiokv_profile_free(struct audiokv_stored_profile * profile) {
    if (profile != NULL) {
        free(profile->scores);
        profile->scores = NULL;
    }
}
