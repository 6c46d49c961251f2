/* A parallel for over task indices with pthreads. Tasks are handed out in a fixed interleaved pattern (thread t
 * runs tasks t, t + n_threads, ...): which thread runs a task never changes a result, since every task writes
 * only its own outputs. */
#include "internal.h"

#include <pthread.h>
#include <unistd.h>

#define AKV_MAX_THREADS 256

struct worker {
    akv_task_fn fn;
    void * arg;
    int64_t n_tasks;
    int n_threads;
    int thread;
    int status;           /* first error of this thread */
    int64_t failed_task;  /* its task */
};

static void * run_worker(void * p) {
    struct worker * w = (struct worker *) p;
    w->status = AUDIOKV_OK;
    w->failed_task = -1;
    for (int64_t t = w->thread; t < w->n_tasks; t += w->n_threads) {
        int rc = w->fn(w->arg, t, w->thread);
        if (rc != AUDIOKV_OK) { w->status = rc; w->failed_task = t; break; }
    }
    return NULL;
}

int akv_online_cores(void) {
#if defined(_SC_NPROCESSORS_ONLN)
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    if (n >= 1) return n > AKV_MAX_THREADS ? AKV_MAX_THREADS : (int) n;
#endif
    return 1;
}

int akv_parallel_for(int n_threads, int64_t n_tasks, akv_task_fn fn, void * arg) {
    if (n_tasks <= 0) return AUDIOKV_OK;
    if (n_threads < 1) n_threads = 1;
    if (n_threads > AKV_MAX_THREADS) n_threads = AKV_MAX_THREADS;
    if ((int64_t) n_threads > n_tasks) n_threads = (int) n_tasks;
    struct worker workers[AKV_MAX_THREADS];
    pthread_t ids[AKV_MAX_THREADS];
    int started[AKV_MAX_THREADS];
    int status = AUDIOKV_OK;
    for (int t = 0; t < n_threads; ++t) {
        workers[t].fn = fn;
        workers[t].arg = arg;
        workers[t].n_tasks = n_tasks;
        workers[t].n_threads = n_threads;
        workers[t].thread = t;
        workers[t].status = AUDIOKV_OK;
        workers[t].failed_task = -1;
        started[t] = 0;
    }
    for (int t = 1; t < n_threads; ++t) {
        if (pthread_create(&ids[t], NULL, run_worker, &workers[t]) != 0) {
            status = AUDIOKV_ERR_THREAD;
            break;
        }
        started[t] = 1;
    }
    if (status == AUDIOKV_OK) run_worker(&workers[0]);
    for (int t = 1; t < n_threads; ++t) {
        if (started[t]) pthread_join(ids[t], NULL);
    }
    if (status != AUDIOKV_OK) return status;
    int64_t first = -1;
    for (int t = 0; t < n_threads; ++t) {
        if (workers[t].status != AUDIOKV_OK && (first < 0 || workers[t].failed_task < first)) {
            first = workers[t].failed_task;
            status = workers[t].status;
        }
    }
    return status;
}
