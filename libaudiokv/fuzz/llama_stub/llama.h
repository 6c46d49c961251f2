/* llama.h for the fuzz build of src/gguf_profile.c only: the three functions of llama.cpp's model metadata API that
 * the profile reader calls, with llama.cpp's declarations. fuzz_profile_read.c defines them over the fuzz input. */
#ifndef AUDIOKV_FUZZ_LLAMA_STUB_H
#define AUDIOKV_FUZZ_LLAMA_STUB_H

#include <stddef.h>
#include <stdint.h>

struct llama_model;

int32_t llama_model_meta_val_str(const struct llama_model * model, const char * key, char * buf, size_t buf_size);
int32_t llama_model_n_layer(const struct llama_model * model);
int32_t llama_model_n_head_kv(const struct llama_model * model);

#endif
