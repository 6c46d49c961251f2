/*
 * audiokv_ggml.h - keys of any ggml type (quantized K caches) for audiokv_add_layer. libaudiokv exports these two
 * functions only when built inside the combined build, where it links ggml (check for the symbol when loading
 * dynamically). Thread safe.
 *
 *     if (audiokv_ggml_type_supported(k->type))
 *         audiokv_add_layer(ctx, il, q, AUDIOKV_TYPE_F32, q_nb_head, q_nb_row, k->data, AUDIOKV_TYPE_OTHER,
 *                           k->nb[1], ggml_row_size(k->type, head_dim),
 *                           audiokv_ggml_to_float, (void *) (intptr_t) k->type);
 */
#ifndef AUDIOKV_GGML_H
#define AUDIOKV_GGML_H

#include "audiokv.h"

#ifdef __cplusplus
extern "C" {
#endif

/* audiokv_to_float_fn for ggml rows; user_data is the enum ggml_type cast to (void *) (intptr_t). The row of n
 * elements must be a whole number of the type's blocks (head_dim % block size == 0). */
AUDIOKV_API void audiokv_ggml_to_float(const void * src, float * dst, int64_t n, void * user_data);

/* 1 when ggml can convert the type to float, 0 otherwise. */
AUDIOKV_API int audiokv_ggml_type_supported(int32_t ggml_type);

#ifdef __cplusplus
}
#endif

#endif /* AUDIOKV_GGML_H */
