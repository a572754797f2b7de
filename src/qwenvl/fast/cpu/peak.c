/* Peak arithmetic throughput: independent vector chains on every thread, nothing read from memory; and the
 * memory's read bandwidth: a sum over a buffer, split between the threads, with nothing else to do.
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

/* One probe, `name`: on every thread twelve chains of the STEP macro (defined before each use, with SETUP
 * naming its constant operands) over vectors of `lanes` float32, `ops` operations per lane and step. The
 * chains' sum is stored and compared, so the loop is not optimised away. */
#define PROBE(name, vec, set1, zero, add, store, lanes, ops)                        \
    static double name(long iters, int rate) {                                     \
        double total = 0;                                                          \
        _Pragma("omp parallel reduction(+ : total)") {                             \
            double t0 = thread_cpu_seconds();                                      \
            SETUP                                                                  \
            DECLARE_CHAINS(vec, set1)                                              \
            for (long it = 0; it < iters; it++) {                                  \
                X12(STEP)                                                          \
            }                                                                      \
            vec s = zero();                                                        \
            SUM_CHAINS(add)                                                        \
            float sink[lanes];                                                     \
            store(sink, s);                                                        \
            double used = (sink[0] == 12345.0f);                                   \
            total += account((double)iters * 12 * (lanes) * (ops) + used, t0, rate); \
        }                                                                          \
        return total;                                                              \
    }

/* chain i starts at i + the thread's number */
#define DECLARE_CHAINS(vec, set1)                                                                 \
    const float t = (float)omp_get_thread_num();                                                  \
    vec a0 = set1(t), a1 = set1(t + 1), a2 = set1(t + 2), a3 = set1(t + 3), a4 = set1(t + 4),      \
        a5 = set1(t + 5), a6 = set1(t + 6), a7 = set1(t + 7), a8 = set1(t + 8), a9 = set1(t + 9), \
        a10 = set1(t + 10), a11 = set1(t + 11);
#define SUM_CHAINS(add)                                                                  \
    s = add(s, a0); s = add(s, a1); s = add(s, a2); s = add(s, a3); s = add(s, a4); s = add(s, a5); \
    s = add(s, a6); s = add(s, a7); s = add(s, a8); s = add(s, a9); s = add(s, a10); s = add(s, a11);

/* 8-wide AVX2 FMA: a = a * m + c, two operations a lane */
#define SETUP const __m256 m = _mm256_set1_ps(0.999999f), c = _mm256_set1_ps(1e-7f);
#define STEP(i) a##i = _mm256_fmadd_ps(a##i, m, c);
PROBE(avx2_fma, __m256, _mm256_set1_ps, _mm256_setzero_ps, _mm256_add_ps, _mm256_storeu_ps, 8, 2)
#undef SETUP
#undef STEP

/* 16-wide AVX-512 FMA */
#define SETUP const __m512 m = _mm512_set1_ps(0.999999f), c = _mm512_set1_ps(1e-7f);
#define STEP(i) a##i = _mm512_fmadd_ps(a##i, m, c);
__attribute__((target("avx512f")))
PROBE(avx512_fma, __m512, _mm512_set1_ps, _mm512_setzero_ps, _mm512_add_ps, _mm512_storeu_ps, 16, 2)
#undef SETUP
#undef STEP

/* AVX-512 BF16 dot product: each float32 lane adds two bf16 products, four operations; small products, so
 * the float32 sums stay finite however long the run */
#define SETUP                                                                       \
    const __m512bh x = _mm512_cvtne2ps_pbh(_mm512_set1_ps(1e-7f), _mm512_set1_ps(1e-7f)); \
    const __m512bh y = _mm512_cvtne2ps_pbh(_mm512_set1_ps(0.5f), _mm512_set1_ps(0.5f));
#define STEP(i) a##i = _mm512_dpbf16_ps(a##i, x, y);
__attribute__((target("avx512f,avx512bf16")))
PROBE(avx512_bf16_dot, __m512, _mm512_set1_ps, _mm512_setzero_ps, _mm512_add_ps, _mm512_storeu_ps, 16, 4)
#undef SETUP
#undef STEP

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

/* The read probe: each thread sums its contiguous share of `x`, as eight streams read side by side (the
 * share cut in eight, one 8-wide accumulator each). One stream a core is bound by how many cache-line misses
 * it can have in flight, not by the memory: a matrix-vector product reading many rows at once outran a
 * single stream (docs/benchmarks.md). The adds never wait on each other, so only the loads set the pace; the
 * sum is returned, so they are not optimised away. */
#define READ_STREAMS 8
double qwenvl_read_sum(const float* x, long n) {
    double total = 0;
    #pragma omp parallel reduction(+ : total)
    {
        const long nt = omp_get_num_threads(), t = omp_get_thread_num();
        const long per = (n / nt) & ~63L, lo = t * per, hi = t == nt - 1 ? n : lo + per;
        const long len = ((hi - lo) / READ_STREAMS) & ~7L;
        __m256 s[READ_STREAMS];
        for (int j = 0; j < READ_STREAMS; j++) s[j] = _mm256_setzero_ps();
        for (long i = 0; i < len; i += 8) {
            for (int j = 0; j < READ_STREAMS; j++) s[j] = _mm256_add_ps(s[j], _mm256_loadu_ps(x + lo + j * len + i));
        }
        float lanes[8];
        double part = 0;
        for (int j = 0; j < READ_STREAMS; j++) {
            _mm256_storeu_ps(lanes, s[j]);
            for (int k = 0; k < 8; k++) part += lanes[k];
        }
        for (long i = lo + READ_STREAMS * len; i < hi; i++) part += x[i];
        total += part;
    }
    return total;
}
