/*
 * audiokv_gguf_profile.h - read the AudioKV head profile stored in a model's GGUF metadata (audiokv.* keys,
 * docs/gguf-keys.md) through llama.cpp's model metadata API (llama_model_meta_val_str).
 *
 * Usage:
 *     struct llama_model * model = llama_model_load_from_file(path, params);
 *     struct audiokv_stored_profile prof;
 *     char err[256];
 *     int rc = audiokv_profile_read(model, &prof, err, sizeof err);
 *     if (rc == AUDIOKV_PROFILE_OK) { ... prof.scores[l * prof.n_head_kv + h] ...; audiokv_profile_free(&prof); }
 *     else if (rc == AUDIOKV_PROFILE_NONE) { uniform budgets }
 *     else { fprintf(stderr, "%s\n", err); }
 *
 * The scores are read from audiokv.head_scores.hex (C99 hexadecimal floats, converted exactly by strtof), so they
 * are bit-identical to the float32 array audiokv.head_scores that the Python reader returns.
 * Thread safety: audiokv_profile_read only reads the model; calls on different outputs may run concurrently.
 * Part of libaudiokv when built with llama.cpp (the combined build); libaudiokv/tools/print_profile.c prints it.
 * Portable C99; no allocation besides the scores array (owned by the output, freed by audiokv_profile_free).
 */
#ifndef AUDIOKV_GGUF_PROFILE_H
#define AUDIOKV_GGUF_PROFILE_H

#include "audiokv.h"

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

struct llama_model;

/* Status codes of audiokv_profile_read. */
enum audiokv_profile_status {
    AUDIOKV_PROFILE_OK          =  0, /* profile read and valid */
    AUDIOKV_PROFILE_NONE        =  1, /* the model has no audiokv.format_version key: no profile */
    AUDIOKV_PROFILE_ERR_ARG     = -1, /* NULL model or output */
    AUDIOKV_PROFILE_ERR_VERSION = -2, /* audiokv.format_version is not 1 */
    AUDIOKV_PROFILE_ERR_MISSING = -3, /* a required key is missing */
    AUDIOKV_PROFILE_ERR_PARSE   = -4, /* a value does not parse as its documented type */
    AUDIOKV_PROFILE_ERR_SHAPE   = -5, /* n_layer / n_head_kv differ from the model or from the score count */
    AUDIOKV_PROFILE_ERR_VALUE   = -6, /* NaN, infinite, negative or all-zero scores; defaults out of range */
    AUDIOKV_PROFILE_ERR_ALLOC   = -7  /* out of memory */
};

struct audiokv_stored_profile {
    int32_t n_layer;     /* layers (= llama_model_n_layer) */
    int32_t n_head_kv;   /* KV heads per layer (= llama_model_n_head_kv) */
    float * scores;      /* [n_layer * n_head_kv], layer-major, not normalised; owned, free with audiokv_profile_free */
    int32_t window;      /* audiokv.defaults.window in tokens; -1 when absent */
    double  sss_alpha;   /* audiokv.defaults.sss_alpha; NaN when absent */
    double  sss_gamma;   /* audiokv.defaults.sss_gamma; NaN when absent */
    double  keep;        /* audiokv.defaults.keep; NaN when absent */
};

/* Read and validate the profile of a loaded model. On any status but OK, *out holds no allocation.
 * err (may be NULL) receives a one-line message naming the key and the problem. */
AUDIOKV_API int audiokv_profile_read(const struct llama_model * model, struct audiokv_stored_profile * out,
                                     char * err, size_t err_size);

/* Free the scores of a profile filled by audiokv_profile_read (safe on a zeroed struct). */
AUDIOKV_API void audiokv_profile_free(struct audiokv_stored_profile * profile);

#ifdef __cplusplus
}
#endif

#endif /* AUDIOKV_GGUF_PROFILE_H */
