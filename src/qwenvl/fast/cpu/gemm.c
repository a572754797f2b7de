/* Matrix products with many rows (the vision tower, prefill) on x86 CPUs without bf16 matrix instructions:
 * C[M, N] = A[M, K] @ W[N, K]^T + bias, A float32, W bfloat16, float32 or int8 with a scale per row, C float32.
 *
 * Why not aten: on AVX2 CPUs other than Intel's, the float32 GEMM torch calls (MKL) runs below what the
 * cores can do (docs/benchmarks.md has the A/B against MKL, oneDNN and OpenBLAS that keeps this file). It
 * also converts bf16 or int8 weights while packing them (no float32 copy of W) and adds the bias in the
 * first store.
 *
 * The BLIS structure, with a 6 x 16 register tile (12 AVX accumulators):
 *   for each block of W's rows (C's columns), ~6 MB once packed, shared by the threads in L3:
 *     pack it, for all of K, into panels [kc][16] per slice of K (one barrier per block, not per slice);
 *     each thread takes row blocks of A (~144 rows, in L2) in turn; for each slice of K, for each panel
 *     (in L1), for each 6 rows: C tile (+)= A rows @ panel.
 * A is read in place (its rows may be strided): the kernel broadcasts from 6 row pointers, which costs
 * nothing over a packed copy here and saves the copy. With fewer row blocks than threads, the threads
 * also split the panels.
 */
#include <immintrin.h>
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "qwenvl_cpu.h"

#define MR 6
#define NR 16
#define KC_MAX 256
#define MC_MAX 144
#define B_BLOCK_BYTES (6L << 20) /* packed columns of W shared by the threads, in L3 */

static inline float bf16f(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* C tile (rows x cols <= MR x NR, row stride ldc) from rows a[0..MR) of A (row stride lda; rows past `rows`
 * repeat a valid one) and a packed B panel [kc][NR]. First slice of K: C = acc + bias; later ones: C += acc. */
static inline void kernel(long kc, const float* a, long lda, const float* b, float* c, long ldc, int rows, int cols,
                          int first, const float* bias) {
    __m256 c00 = _mm256_setzero_ps(), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00,
           c30 = c00, c31 = c00, c40 = c00, c41 = c00, c50 = c00, c51 = c00;
    /* C is far larger than the caches: fetch the tile while the products run */
    for (int i = 0; i < rows; i++) {
        _mm_prefetch((const char*)(c + i * ldc), _MM_HINT_T0);
        _mm_prefetch((const char*)(c + i * ldc + NR - 1), _MM_HINT_T0);
    }
    const float *a0 = a, *a1 = a + (rows > 1) * lda, *a2 = a + (rows > 2) * 2 * lda, *a3 = a + (rows > 3) * 3 * lda,
                *a4 = a + (rows > 4) * 4 * lda, *a5 = a + (rows > 5) * 5 * lda;
    #pragma GCC unroll 4
    for (long k = 0; k < kc; k++) {
        __m256 b0 = _mm256_load_ps(b), b1 = _mm256_load_ps(b + 8), x;
        x = _mm256_broadcast_ss(a0 + k); c00 = _mm256_fmadd_ps(x, b0, c00); c01 = _mm256_fmadd_ps(x, b1, c01);
        x = _mm256_broadcast_ss(a1 + k); c10 = _mm256_fmadd_ps(x, b0, c10); c11 = _mm256_fmadd_ps(x, b1, c11);
        x = _mm256_broadcast_ss(a2 + k); c20 = _mm256_fmadd_ps(x, b0, c20); c21 = _mm256_fmadd_ps(x, b1, c21);
        x = _mm256_broadcast_ss(a3 + k); c30 = _mm256_fmadd_ps(x, b0, c30); c31 = _mm256_fmadd_ps(x, b1, c31);
        x = _mm256_broadcast_ss(a4 + k); c40 = _mm256_fmadd_ps(x, b0, c40); c41 = _mm256_fmadd_ps(x, b1, c41);
        x = _mm256_broadcast_ss(a5 + k); c50 = _mm256_fmadd_ps(x, b0, c50); c51 = _mm256_fmadd_ps(x, b1, c51);
        b += NR;
    }
    __m256 acc[MR][2] = {{c00, c01}, {c10, c11}, {c20, c21}, {c30, c31}, {c40, c41}, {c50, c51}};
    if (rows == MR && cols == NR) {
        __m256 add0 = first ? (bias ? _mm256_loadu_ps(bias) : _mm256_setzero_ps()) : _mm256_setzero_ps();
        __m256 add1 = first ? (bias ? _mm256_loadu_ps(bias + 8) : _mm256_setzero_ps()) : _mm256_setzero_ps();
        for (int i = 0; i < MR; i++) {
            float* ci = c + i * ldc;
            __m256 o0 = first ? add0 : _mm256_loadu_ps(ci), o1 = first ? add1 : _mm256_loadu_ps(ci + 8);
            _mm256_storeu_ps(ci, _mm256_add_ps(o0, acc[i][0]));
            _mm256_storeu_ps(ci + 8, _mm256_add_ps(o1, acc[i][1]));
        }
        return;
    }
    float tile[MR][NR] __attribute__((aligned(32)));
    for (int i = 0; i < MR; i++) {
        _mm256_store_ps(tile[i], acc[i][0]);
        _mm256_store_ps(tile[i] + 8, acc[i][1]);
    }
    for (int i = 0; i < rows; i++)
        for (int j = 0; j < cols; j++)
            c[i * ldc + j] = (first ? (bias ? bias[j] : 0.0f) : c[i * ldc + j]) + tile[i][j];
}

/* how W is stored: float32 or bfloat16 [N, K]; int8 [N, K] or packed by cpu.pack_int8, times scale[n] */
enum { W_F32 = 0, W_BF16 = 1, W_INT8 = 2, W_INT8_PACKED = 3 };

/* W rows [n0, n0 + NR) (output columns) x K slice [p0, p0 + kc) -> one panel [kc][NR] float32, zero-padded */
static void pack_b(const void* W, int kind, const float* scale, long K, long n0, long N, long p0, long kc,
                   float* dst) {
    for (int j = 0; j < NR; j++) {
        long n = n0 + j;
        if (n >= N) {
            for (long k = 0; k < kc; k++) dst[k * NR + j] = 0.0f;
        } else if (kind == W_BF16) {
            const uint16_t* src = (const uint16_t*)W + n * K + p0;
            for (long k = 0; k < kc; k++) dst[k * NR + j] = bf16f(src[k]);
        } else if (kind == W_F32) {
            const float* src = (const float*)W + n * K + p0;
            for (long k = 0; k < kc; k++) dst[k * NR + j] = src[k];
        } else if (kind == W_INT8) {
            const int8_t* src = (const int8_t*)W + n * K + p0;
            for (long k = 0; k < kc; k++) dst[k * NR + j] = scale[n] * src[k];
        } else {  /* blocks of 4 rows x 16 columns, see gemv.c */
            const int8_t* rows = (const int8_t*)W + (n >> 2) * K * 4 + (n & 3) * 16;
            for (long k = p0; k < p0 + kc; k++) dst[(k - p0) * NR + j] = scale[n] * rows[(k >> 4) * 64 + (k & 15)];
        }
    }
}

/* Returns 0, or -1 when its buffers cannot be allocated (C untouched). */
int qwenvl_gemm(const float* A, long lda, const void* W, int w_kind, const float* scale, const void* bias,
                int bias_bf16, float* C, long ldc, long M, long N, long K) {
    int threads = omp_get_max_threads();
    long nk = (K + KC_MAX - 1) / KC_MAX, KC = (K + nk - 1) / nk;  /* even slices of K */
    /* row blocks: as even as possible, a multiple of the thread count where there are enough rows */
    long nb = (M + MC_MAX - 1) / MC_MAX;
    if (nb > 1 && nb % threads) nb += threads - nb % threads;
    long MC = ((M + nb - 1) / nb + MR - 1) / MR * MR;
    nb = (M + MC - 1) / MC;
    long nsplit = nb >= threads ? 1 : (threads + nb - 1) / nb;  /* few rows: threads also split the B panels */
    /* column blocks of W packed whole (all of K) at once: one barrier per block, not per slice of K */
    long NC = B_BLOCK_BYTES / ((long)sizeof(float) * K) / NR * NR;
    if (NC < NR) NC = NR;
    if (NC > (N + NR - 1) / NR * NR) NC = (N + NR - 1) / NR * NR;

    float* bias32 = bias ? malloc(sizeof(float) * (N + NR)) : NULL;
    float* Bp = aligned_alloc(64, (sizeof(float) * K * NC + 63) / 64 * 64);
    if (!Bp || (bias && !bias32)) {
        free(Bp);
        free(bias32);
        return -1;
    }
    for (long n = 0; bias && n < N; n++)
        bias32[n] = bias_bf16 ? bf16f(((const uint16_t*)bias)[n]) : ((const float*)bias)[n];
    #pragma omp parallel
    {
        for (long j0 = 0; j0 < N; j0 += NC) {
            long nc = N - j0 < NC ? N - j0 : NC, npanels = (nc + NR - 1) / NR;
            /* slice p0 of K holds its panels at Bp + p0 * npanels * NR, [npanels][kc][NR] */
            #pragma omp for schedule(static)
            for (long jp = 0; jp < npanels; jp++)
                for (long p0 = 0; p0 < K; p0 += KC) {
                    long kc = K - p0 < KC ? K - p0 : KC;
                    pack_b(W, w_kind, scale, K, j0 + jp * NR, N, p0, kc, Bp + p0 * npanels * NR + jp * kc * NR);
                }
            #pragma omp for schedule(dynamic, 1)
            for (long item = 0; item < nb * nsplit; item++) {
                long ib = item / nsplit, js = item % nsplit;
                long r0 = ib * MC, mc = M - r0 < MC ? M - r0 : MC;
                long jp0 = npanels * js / nsplit, jp1 = npanels * (js + 1) / nsplit;
                for (long p0 = 0; p0 < K; p0 += KC) {
                    long kc = K - p0 < KC ? K - p0 : KC;
                    const float* slice = Bp + p0 * npanels * NR;
                    for (long jp = jp0; jp < jp1; jp++) {
                        long n0 = j0 + jp * NR;
                        int cols = N - n0 < NR ? (int)(N - n0) : NR;
                        for (long i0 = 0; i0 < mc; i0 += MR) {
                            int rows = mc - i0 < MR ? (int)(mc - i0) : MR;
                            kernel(kc, A + (r0 + i0) * lda + p0, lda, slice + jp * kc * NR, C + (r0 + i0) * ldc + n0,
                                   ldc, rows, cols, p0 == 0, bias32 ? bias32 + n0 : NULL);
                        }
                    }
                }
            }
        }
    }
    free(Bp);
    free(bias32);
    return 0;
}
