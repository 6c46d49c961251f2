/*
 * fuzz_profile_read.c - libFuzzer target: audiokv_profile_read (src/gguf_profile.c) on any metadata.
 *
 * audiokv_profile_read takes its input from llama.cpp's model metadata API only (llama_model_meta_val_str,
 * llama_model_n_layer, llama_model_n_head_kv). This harness defines those three functions over a model made from the
 * fuzz input, so that the reader's own parsing (integers, hexadecimal float lists, defaults, shapes) sees any text:
 *     byte 0: the model's n_layer, byte 1: its n_head_kv, then "key=value" entries separated by '\n'
 *     (the first entry of a key wins, as a GGUF holds each key once).
 * Checks: any status but OK leaves no allocation; OK means finite, non-negative scores, not all zero, of the
 * model's shape, and defaults in their documented ranges. ASan / UBSan catch the rest.
 * Build and run: scripts/fuzz.sh (corpus: libaudiokv/fuzz/corpus/profile_read).
 */
#include "audiokv_gguf_profile.h"
#include "llama.h" /* llama_stub/llama.h */

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_ENTRIES 64

struct llama_model {
    int32_t n_layer;
    int32_t n_head_kv;
    int n;
    char * keys[MAX_ENTRIES];
    char * values[MAX_ENTRIES];
};

/* As llama.cpp: snprintf of the value into buf, the value's length, or -1 when the key is absent. */
int32_t llama_model_meta_val_str(const struct llama_model * model, const char * key, char * buf, size_t buf_size) {
    for (int i = 0; i < model->n; i++) {
        if (strcmp(model->keys[i], key) == 0) {
            return snprintf(buf, buf_size, "%s", model->values[i]);
        }
    }
    if (buf_size > 0) {
        buf[0] = '\0';
    }
    return -1;
}

int32_t llama_model_n_layer(const struct llama_model * model) { return model->n_layer; }

int32_t llama_model_n_head_kv(const struct llama_model * model) { return model->n_head_kv; }

static void parse_model(const uint8_t * data, size_t size, struct llama_model * m) {
    memset(m, 0, sizeof *m);
    if (size < 2) {
        return;
    }
    m->n_layer = data[0];
    m->n_head_kv = data[1];
    const char * p = (const char *) data + 2;
    const char * end = (const char *) data + size;
    while (p < end && m->n < MAX_ENTRIES) {
        const char * nl = memchr(p, '\n', (size_t) (end - p));
        const char * line_end = nl != NULL ? nl : end;
        const char * eq = memchr(p, '=', (size_t) (line_end - p));
        if (eq != NULL) {
            size_t klen = (size_t) (eq - p), vlen = (size_t) (line_end - eq - 1);
            char * k = malloc(klen + 1);
            char * v = malloc(vlen + 1);
            memcpy(k, p, klen);
            k[klen] = '\0';
            memcpy(v, eq + 1, vlen);
            v[vlen] = '\0';
            m->keys[m->n] = k;
            m->values[m->n] = v;
            m->n++;
        }
        p = line_end + 1;
    }
}

static void free_model(struct llama_model * m) {
    for (int i = 0; i < m->n; i++) {
        free(m->keys[i]);
        free(m->values[i]);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t * data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t * data, size_t size) {
    struct llama_model model;
    parse_model(data, size, &model);
    struct audiokv_stored_profile prof;
    memset(&prof, 0, sizeof prof);
    char err[96];
    err[0] = '\0';
    int rc = audiokv_profile_read(&model, &prof, err, sizeof err);
    if (rc == AUDIOKV_PROFILE_OK) {
        if (prof.scores == NULL || prof.n_layer != model.n_layer || prof.n_head_kv != model.n_head_kv) {
            abort();
        }
        int any_positive = 0;
        for (int32_t i = 0; i < prof.n_layer * prof.n_head_kv; i++) {
            if (!isfinite(prof.scores[i]) || prof.scores[i] < 0.0f) {
                abort();
            }
            any_positive |= prof.scores[i] > 0.0f;
        }
        if (!any_positive || (prof.window != -1 && prof.window < 1) ||
            !(isnan(prof.keep) || (prof.keep > 0.0 && prof.keep <= 1.0)) ||
            !(isnan(prof.sss_alpha) || (prof.sss_alpha >= 0.0 && prof.sss_alpha <= 1.0)) ||
            !(isnan(prof.sss_gamma) || (prof.sss_gamma > 0.0 && prof.sss_gamma <= 1.0))) {
            abort();
        }
        audiokv_profile_free(&prof);
    } else if (prof.scores != NULL) {
        abort(); /* an error leaves no allocation */
    } else if (rc < 0 && (err[0] == '\0' || strchr(err, '\n') != NULL)) {
        abort(); /* every error has a one-line message */
    }
    free_model(&model);
    return 0;
}
