/* Peak arithmetic throughput: independent vector chains on every thread, nothing read from memory.
 *
 * Three loops, one per instruction a product of ours or aten's may run on: 8-wide AVX2 FMA, 16-wide AVX-512
 * FMA, and AVX-512 BF16's dot product (vdpbf16ps: 16 float32 lanes, each adding two bf16 products, so 64
 * operations an instruction). aten's bf16 GEMM uses the last where the CPU has it, and then runs far above
 * the float32 FMA peak: a ceiling for bf16 has to be measured with it. The AVX-512 loops are compiled for
 * their instruction sets by function attribute and run only where the CPU reports them (peak_kinds).
 *
 * Twelve accumulators: more than the latency (4-5 cycles) times the vector ports (2) per core, so the chains
 * never wait on each other and the loop runs at the core's issue rate.
 */
#include <immintrin.h>
#include <omp.h>
#include <time.h>

#include "qwenvl_cpu.h"

/* twelve named accumulators, not an array: an array may live on the stack, and then every step waits on a
 * store and a load */
#define X12(op) op(0) op(1) op(2) op(3) op(4) op(5) op(6) op(7) op(8) op(9) op(10) op(11)

static double thread_cpu_seconds(void) {
    struct timespec t;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
    return t.tv_sec + 1e-9 * t.tv_nsec;
}

/* per thread: its operations, or those over the CPU time it got (rate) */
static double account(double flops, double t0, int rate) {
    double dt = thread_cpu_seconds() - t0;
    return rate ? (dt > 0 ? flops / dt : 0) : flops;
}

/* the result is used, so the loop is not optimised away */
#define FINISH(vec, zero, add, store, lanes)  \
    vec s = zero();                           \
    X12(add)                                  \
    float sink[lanes];                        \
    store(sink, s);                           \
    used = (sink[0] == 12345.0f);

static double avx2_fma(long iters, int rate) {
    double total = 0;
#pragma omp parallel reduction(+ : total)
    {
        double t0 = thread_cpu_seconds(), used;
        const __m256 m = _mm256_set1_ps(0.999999f), c = _mm256_set1_ps(1e-7f);
#define DECLARE(i) __m256 a##i = _mm256_set1_ps((float)(i + omp_get_thread_num()));
#define STEP(i) a##i = _mm256_fmadd_ps(a##i, m, c);
#define ADD(i) s = _mm256_add_ps(s, a##i);
        X12(DECLARE)
        for (long it = 0; it < iters; it++) {
            X12(STEP)
        }
        FINISH(__m256, _mm256_setzero_ps, ADD, _mm256_storeu_ps, 8)
#undef DECLARE
#undef STEP
#undef ADD
        total += account((double)iters * 12 * 8 * 2 + used, t0, rate);
    }
    return total;
}

__attribute__((target("avx512f"))) static double avx512_fma(long iters, int rate) {
    double total = 0;
#pragma omp parallel reduction(+ : total)
    {
        double t0 = thread_cpu_seconds(), used;
        const __m512 m = _mm512_set1_ps(0.999999f), c = _mm512_set1_ps(1e-7f);
#define DECLARE(i) __m512 a##i = _mm512_set1_ps((float)(i + omp_get_thread_num()));
#define STEP(i) a##i = _mm512_fmadd_ps(a##i, m, c);
#define ADD(i) s = _mm512_add_ps(s, a##i);
        X12(DECLARE)
        for (long it = 0; it < iters; it++) {
            X12(STEP)
        }
        FINISH(__m512, _mm512_setzero_ps, ADD, _mm512_storeu_ps, 16)
#undef DECLARE
#undef STEP
#undef ADD
        total += account((double)iters * 12 * 16 * 2 + used, t0, rate);
    }
    return total;
}

__attribute__((target("avx512f,avx512bf16"))) static double avx512_bf16_dot(long iters, int rate) {
    double total = 0;
#pragma omp parallel reduction(+ : total)
    {
        double t0 = thread_cpu_seconds(), used;
        /* small products, so the float32 sums stay finite however long the run */
        const __m512bh x = _mm512_cvtne2ps_pbh(_mm512_set1_ps(1e-7f), _mm512_set1_ps(1e-7f));
        const __m512bh y = _mm512_cvtne2ps_pbh(_mm512_set1_ps(0.5f), _mm512_set1_ps(0.5f));
#define DECLARE(i) __m512 a##i = _mm512_set1_ps((float)(i + omp_get_thread_num()));
#define STEP(i) a##i = _mm512_dpbf16_ps(a##i, x, y);
#define ADD(i) s = _mm512_add_ps(s, a##i);
        X12(DECLARE)
        for (long it = 0; it < iters; it++) {
            X12(STEP)
        }
        FINISH(__m512, _mm512_setzero_ps, ADD, _mm512_storeu_ps, 16)
#undef DECLARE
#undef STEP
#undef ADD
        total += account((double)iters * 12 * 16 * 2 * 2 + used, t0, rate);
    }
    return total;
}

int qwenvl_peak_kinds(void) {
    __builtin_cpu_init();
    int kinds = 1 << PEAK_AVX2_FMA;
    if (__builtin_cpu_supports("avx512f")) kinds |= 1 << PEAK_AVX512_FMA;
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bf16")) kinds |= 1 << PEAK_AVX512_BF16_DOT;
    return kinds;
}

static double run(long iters, int kind, int rate) {
    if (!(qwenvl_peak_kinds() & (1 << kind))) return -1;
    switch (kind) {
        case PEAK_AVX2_FMA: return avx2_fma(iters, rate);
        case PEAK_AVX512_FMA: return avx512_fma(iters, rate);
        case PEAK_AVX512_BF16_DOT: return avx512_bf16_dot(iters, rate);
    }
    return -1;
}

double qwenvl_fma_flops(long iters, int kind) { return run(iters, kind, 0); }

double qwenvl_fma_rate(long iters, int kind) { return run(iters, kind, 1); }
