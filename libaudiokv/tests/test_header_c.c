/* The public header compiles as plain C11 (no C++), and its defaults and names are consistent. */
#include "audiokv.h"
#include "test_util.h"

#include <string.h>

int main(void) {
    for (int32_t m = 0; m < AUDIOKV_METHOD_COUNT; ++m) {
        struct audiokv_params p = audiokv_default_params(m);
        CHECK_EQ_INT(p.method, m);
        CHECK_EQ_INT(p.window, 32);
        CHECK(audiokv_method_name(m) != NULL);
        CHECK_EQ_INT(audiokv_method_from_name(audiokv_method_name(m)), m);
    }
    CHECK(audiokv_method_name(AUDIOKV_METHOD_COUNT) == NULL);
    CHECK_EQ_INT(audiokv_method_from_name("nope"), -1);
    CHECK_EQ_INT(audiokv_method_from_name(NULL), -1);
    CHECK(audiokv_default_params(AUDIOKV_METHOD_AUDIOKV).sss_alpha == 0.5);
    CHECK(audiokv_default_params(AUDIOKV_METHOD_SNAPKV).pool_kernel == 5);
    CHECK(strcmp(audiokv_status_string(AUDIOKV_ERR_KEEP), "AUDIOKV_ERR_KEEP") == 0);
    CHECK(strcmp(audiokv_status_string(12345), "unknown status") == 0);
    return test_finish("test_header_c");
}
