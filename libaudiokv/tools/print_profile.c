/* print_profile MODEL.gguf: load a model (memory-mapped, CPU) and print its stored AudioKV head profile, one
 * "key value" per line, scores as C99 hex floats; used by tests/test_gguf_profile_c.py to compare with Python.
 * Exit status: 0 profile printed, 1 no profile, 2 error (message on stderr). */
#include "audiokv_gguf_profile.h"

#include "llama.h"

#include <stdio.h>

static void quiet_log(enum ggml_log_level level, const char * text, void * user_data) {
    (void) user_data;
    if (level == GGML_LOG_LEVEL_ERROR) {
        fputs(text, stderr);
    }
}

int main(int argc, char ** argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: %s MODEL.gguf\n", argv[0]);
        return 2;
    }
    llama_log_set(quiet_log, NULL);
    llama_backend_init();
    struct llama_model_params mp = llama_model_default_params();
    mp.n_gpu_layers = 0;
    struct llama_model * model = llama_model_load_from_file(argv[1], mp);
    if (model == NULL) {
        fprintf(stderr, "print_profile: cannot load %s\n", argv[1]);
        return 2;
    }
    struct audiokv_stored_profile prof;
    char err[256] = "";
    int rc = audiokv_profile_read(model, &prof, err, sizeof err);
    int status = 0;
    if (rc == AUDIOKV_PROFILE_OK) {
        printf("n_layer %d\nn_head_kv %d\n", (int) prof.n_layer, (int) prof.n_head_kv);
        for (int i = 0; i < prof.n_layer * prof.n_head_kv; i++) {
            printf("score %a\n", (double) prof.scores[i]);
        }
        printf("window %d\nsss_alpha %.17g\nsss_gamma %.17g\nkeep %.17g\n", (int) prof.window, prof.sss_alpha,
               prof.sss_gamma, prof.keep);
        audiokv_profile_free(&prof);
    } else if (rc == AUDIOKV_PROFILE_NONE) {
        printf("none\n");
        status = 1;
    } else {
        fprintf(stderr, "print_profile: error %d: %s\n", rc, err);
        status = 2;
    }
    llama_model_free(model);
    llama_backend_free();
    return status;
}
