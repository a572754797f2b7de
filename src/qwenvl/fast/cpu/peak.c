/* Peak FMA throughput: independent AVX2 FMA chains on every thread, nothing read from memory.
 *
 * Twelve accumulators: more than the FMA latency (4-5 cycles) times the FMA ports (2) per core, so the
 * chains never wait on each other and the loop runs at the core's FMA issue rate.
 */
#include <immintrin.h>
#include <omp.h>
#include <time.h>

#include "qwenvl_cpu.h"

/* twelve named accumulators, not an array: an array may live on the stack, and then every FMA waits on a
 * store and a load */
#define FMA12(op) op(0) op(1) op(2) op(3) op(4) op(5) op(6) op(7) op(8) op(9) op(10) op(11)
#define DECLARE(i) __m256 a##i = _mm256_set1_ps((float)(i + omp_get_thread_num()));
#define STEP(i) a##i = _mm256_fmadd_ps(a##i, m, c);
#define SUM(i) s = _mm256_add_ps(s, a##i);

static double thread_cpu_seconds(void) {
    struct timespec t;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
    return t.tv_sec + 1e-9 * t.tv_nsec;
}

static double fma_run(long iters, int rate) {
    double total = 0;
#pragma omp parallel reduction(+ : total)
    {
        double t0 = thread_cpu_seconds();
        const __m256 m = _mm256_set1_ps(0.999999f), c = _mm256_set1_ps(1e-7f);
        FMA12(DECLARE)
        for (long it = 0; it < iters; it++) {
            FMA12(STEP)
        }
        __m256 s = _mm256_setzero_ps();
        FMA12(SUM)
        float sink[8];
        _mm256_storeu_ps(sink, s);
        /* the result is used, so the loop is not optimised away */
        double flops = (double)iters * 12 * 8 * 2 + (sink[0] == 12345.0f);
        double dt = thread_cpu_seconds() - t0;
        total += rate ? (dt > 0 ? flops / dt : 0) : flops;
    }
    return total;
}

double qwenvl_fma_flops(long iters) { return fma_run(iters, 0); }

double qwenvl_fma_rate(long iters) { return fma_run(iters, 1); }
