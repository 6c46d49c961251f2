/* IEEE binary16 -> double, exact (every half is exactly representable as a double). */
#include "internal.h"

#include <math.h>

double akv_f16_to_double(uint16_t h) {
    const int sign = (h >> 15) & 1;
    const int exponent = (h >> 10) & 0x1f;
    const int mantissa = h & 0x3ff;
    double v;
    if (exponent == 0) {
        v = ldexp((double) mantissa, -24);                     /* zero and subnormals */
    } else if (exponent == 31) {
        v = mantissa ? NAN : INFINITY;
    } else {
        v = ldexp((double) (mantissa | 0x400), exponent - 25);
    }
    return sign ? -v : v;
}

#include <pthread.h>

static float g_f16_table[65536];
static pthread_once_t g_f16_once = PTHREAD_ONCE_INIT;

static void build_f16_table(void) {
    for (uint32_t h = 0; h < 65536; ++h) g_f16_table[h] = (float) akv_f16_to_double((uint16_t) h);
}

const float * akv_f16_table(void) {
    pthread_once(&g_f16_once, build_f16_table);
    return g_f16_table;
}
