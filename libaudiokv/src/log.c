/* Logging sink of the library (default: warnings and errors to stderr). */
#include "internal.h"

#include <stdarg.h>
#include <stdio.h>

static audiokv_log_fn g_log_fn = NULL;
static void * g_log_user_data = NULL;

void audiokv_log_set(audiokv_log_fn fn, void * user_data) {
    g_log_fn = fn;
    g_log_user_data = user_data;
}

void akv_log(enum audiokv_log_level level, const char * fmt, ...) {
    char text[512];
    va_list args;
    va_start(args, fmt);
    vsnprintf(text, sizeof text, fmt, args);
    va_end(args);
    if (g_log_fn) {
        g_log_fn(level, text, g_log_user_data);
    } else if (level >= AUDIOKV_LOG_WARN) {
        fprintf(stderr, "libaudiokv: %s\n", text);
    }
}
