/* to_float for any ggml cache type, for audiokv_add_layer with AUDIOKV_TYPE_OTHER (built only inside the combined
 * build, where ggml exists). */
#include "audiokv_ggml.h"

#include "ggml.h"

#include <stdint.h>

void audiokv_ggml_to_float(const void * src, float * dst, int64_t n, void * user_data) {
    const enum ggml_type type = (enum ggml_type) (intptr_t) user_data;
    ggml_get_type_traits(type)->to_float(src, dst, n);
}

int audiokv_ggml_type_supported(int32_t ggml_type) {
    if (ggml_type < 0 || ggml_type >= GGML_TYPE_COUNT) return 0;
    const struct ggml_type_traits * traits = ggml_get_type_traits((enum ggml_type) ggml_type);
    return traits != NULL && traits->to_float != NULL && traits->blck_size > 0;
}
