/* Matrix-vector products with 4-bit weights for decoding (AVX2), fast/int4.py's format:
 *
 * y[m, n] = sum_g s[n, g] * sum_{k in g} (q[n, k] - z[n, g]) * x[m, k] + b[n]
 *
 * q packed 2 per byte ([N, K / 2]; each run of 64 inputs is 16 16-bit words, word j holding inputs j, 16 + j,
 * 32 + j, 48 + j in its nibbles, low to high: fast/int4.py pack_int4), s float32 [N, G], z uint8 [N, G],
 * groups of `group` inputs (a multiple of 32), K a multiple of 64.
 *
 * Widening nibbles to float32 costs ~4 instructions per 8 weights, as much as the int8 kernel spends in
 * all: a float path would run no faster than int8 weights. Here each group's activations are rounded to
 * int16 (xs = max|x| / 32767 per row and group, so each is within 2^-16 of the group's largest) and the
 * weights become 16-bit integers in place: a shift and a mask of the 32-byte load per 16 weights, no
 * shuffles. _mm256_madd_epi16 then multiplies 16 pairs and adds neighbours in one instruction, exactly
 * and the zero points come off in integers: sum (q - z) * xq = sum q * xq - z * sum xq, per lane. An int32
 * lane then holds at most 16 products of 15 * 32767 per group of 128 (32 per 256): below 2^24, so its
 * conversion to float32 is exact too. Groups accumulate in float32.
 *
 * Each thread takes consecutive output channels (one sequential weight stream); up to 4 activation rows
 * share each decoded run of weights.
 */
#include <immintrin.h>
#include <math.h>
#include <stdint.h>

#include "qwenvl_cpu.h"

static inline float hsum8(__m256 v) {
    __m128 a = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    a = _mm_hadd_ps(a, a);
    a = _mm_hadd_ps(a, a);
    return _mm_cvtss_f32(a);
}

/* x [M, K] float32 -> xq int16 [M, K], xs float32 [M, G] (the step) and xsum int32 [M, G, 8]: per group, the
 * sums of xq over the inputs that land in each int32 lane of the products (inputs k with k % 16 in 2L, 2L+1) */
static void quantize_rows(const float* x, long M, long K, long group, int16_t* xq, float* xs, int32_t* xsum) {
    long G = K / group;
    for (long m = 0; m < M; m++)
        for (long g = 0; g < G; g++) {
            const float* xg = x + m * K + g * group;
            float amax = 0.f;
            for (long k = 0; k < group; k++) amax = fmaxf(amax, fabsf(xg[k]));
            float step = amax / 32767.f, inv = amax > 0.f ? 32767.f / amax : 0.f;
            int32_t* sum = xsum + (m * G + g) * 8;
            for (int lane = 0; lane < 8; lane++) sum[lane] = 0;
            for (long k = 0; k < group; k++) {
                int32_t v = (int32_t)lrintf(xg[k] * inv);
                v = v > 32767 ? 32767 : (v < -32767 ? -32767 : v);
                xq[m * K + g * group + k] = (int16_t)v;
                sum[(k % 16) / 2] += v;
            }
            xs[m * G + g] = step;
        }
}

/* the finished group g of rows m0 .. m0 + NR - 1 into their float32 totals. The zero point comes off each
 * lane in integers first (lane - z * its xq sum), so a group's total is exact before any rounding: a
 * float correction at the end would cancel against the totals and lose the small groups next to a huge one */
static inline __attribute__((always_inline)) void flush(__m256i* acc, __m256* tot, float sg, int32_t zg,
                                                        const float* xs, const int32_t* xsum, long m0, int NR,
                                                        long G, long g) {
    const __m256i z = _mm256_set1_epi32(zg);
    for (int r = 0; r < NR; r++) {
        float f = sg * xs[(m0 + r) * G + g];
        __m256i sums = _mm256_loadu_si256((const __m256i*)(xsum + ((m0 + r) * G + g) * 8));
        __m256i exact = _mm256_sub_epi32(acc[r], _mm256_mullo_epi32(z, sums));
        tot[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(exact), _mm256_set1_ps(f), tot[r]);
        acc[r] = _mm256_setzero_si256();
    }
}

/* rows m0 .. m0 + NR - 1 of y for output channel n; NR a constant after inlining. A run of 64 inputs is two
 * halves of 32, and a group ends at the end of a half (group 32: every half). */
static inline __attribute__((always_inline)) void channel(
        const uint8_t* qn, const float* sn, const uint8_t* zn, float bias, const int16_t* xq, const float* xs,
        const int32_t* xsum, float* y, long m0, int NR, long N, long K, long group, long n) {
    const long G = K / group;
    const __m256i low = _mm256_set1_epi16(0x000F);
    __m256 tot[4];
    __m256i acc[4];
    for (int r = 0; r < NR; r++) { tot[r] = _mm256_setzero_ps(); acc[r] = _mm256_setzero_si256(); }
    long g = 0, left = group;
    for (long k = 0; k < K; k += 64) {
        _mm_prefetch((const char*)(qn + k / 2 + 2048), _MM_HINT_T0);
        __m256i v = _mm256_loadu_si256((const __m256i*)(qn + k / 2));
        __m256i w[4] = {_mm256_and_si256(v, low), _mm256_and_si256(_mm256_srli_epi16(v, 4), low),
                        _mm256_and_si256(_mm256_srli_epi16(v, 8), low), _mm256_srli_epi16(v, 12)};
        for (int half = 0; half < 2; half++) {
            for (int r = 0; r < NR; r++) {
                const __m256i* xr = (const __m256i*)(xq + (m0 + r) * K + k) + 2 * half;  /* inputs k + 16i + j */
                acc[r] = _mm256_add_epi32(acc[r], _mm256_madd_epi16(w[2 * half], _mm256_loadu_si256(xr)));
                acc[r] = _mm256_add_epi32(acc[r], _mm256_madd_epi16(w[2 * half + 1], _mm256_loadu_si256(xr + 1)));
            }
            if ((left -= 32) == 0) {
                flush(acc, tot, sn[g], zn[g], xs, xsum, m0, NR, G, g);
                g++;
                left = group;
            }
        }
    }
    for (int r = 0; r < NR; r++) y[(m0 + r) * N + n] = hsum8(tot[r]) + bias;
}

/* scratch: xq int16 [M, K], xs float32 [M, G], xsum int32 [M, G, 8], from the caller */
void qwenvl_gemv_int4(const float* x, const uint8_t* q, const float* s, const uint8_t* z, const float* b, float* y,
                      long M, long N, long K, long group, int16_t* xq, float* xs, int32_t* xsum) {
    quantize_rows(x, M, K, group, xq, xs, xsum);
    const long G = K / group;
    #pragma omp parallel for schedule(static)
    for (long n = 0; n < N; n++) {
        const uint8_t* qn = q + n * (K / 2);
        const float* sn = s + n * G;
        const uint8_t* zn = z + n * G;
        float bias = b ? b[n] : 0.f;
        for (long m0 = 0; m0 < M; m0 += 4) {
            switch (M - m0 >= 4 ? 4 : M - m0) {
                case 4: channel(qn, sn, zn, bias, xq, xs, xsum, y, m0, 4, N, K, group, n); break;
                case 3: channel(qn, sn, zn, bias, xq, xs, xsum, y, m0, 3, N, K, group, n); break;
                case 2: channel(qn, sn, zn, bias, xq, xs, xsum, y, m0, 2, N, K, group, n); break;
                default: channel(qn, sn, zn, bias, xq, xs, xsum, y, m0, 1, N, K, group, n); break;
            }
        }
    }
}
