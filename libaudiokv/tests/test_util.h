/* Minimal test helpers shared by the C tests. */
#ifndef AUDIOKV_TEST_UTIL_H
#define AUDIOKV_TEST_UTIL_H

#include <stdio.h>
#include <stdlib.h>

static int g_failures = 0;

#define CHECK(cond) do { if (!(cond)) { ++g_failures; \
    fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); } } while (0)

#define CHECK_EQ_INT(a, b) do { long long va_ = (long long) (a), vb_ = (long long) (b); if (va_ != vb_) { \
    ++g_failures; fprintf(stderr, "%s:%d: %s == %lld, expected %s == %lld\n", __FILE__, __LINE__, #a, va_, \
    #b, vb_); } } while (0)

static inline int test_finish(const char * name) {
    if (g_failures) {
        fprintf(stderr, "%s: %d failure(s)\n", name, g_failures);
        return 1;
    }
    printf("%s: ok\n", name);
    return 0;
}

/* deterministic uniform [0, 1) (xorshift64*) */
static unsigned long long g_rng = 0x9E3779B97F4A7C15ULL;
static inline double rnd(void) {
    g_rng ^= g_rng >> 12; g_rng ^= g_rng << 25; g_rng ^= g_rng >> 27;
    return (double) ((g_rng * 2685821657736338717ULL) >> 11) / 9007199254740992.0;
}

#endif
