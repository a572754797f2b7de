/* Matrix-vector products for decoding on x86 CPUs with AVX2 + FMA.
 *
 * y[m, n] = sum_k x[m, k] * W[n, k] for a few rows m, float32 activations and accumulation, with W
 * stored as bfloat16 or as int8 with one float32 scale per output channel n. Decoding is bound by
 * reading W, and aten's kernels for these two formats are compute-bound on AVX2 (they run well below
 * the memory bandwidth on 2 cores); these stay close to it. Built and loaded by qwenvl/fast/cpu/__init__.py.
 *
 * Each thread takes blocks of 4 output channels. Also: the decoder's SwiGLU activation, GQA attention on
 * a bfloat16 KV cache and RMSNorm, each one call instead of several small aten ops per token.
 */
#include <immintrin.h>
#include <stdint.h>

#include "qwenvl_cpu.h"

static inline float hsum(__m256 v) {
    __m128 a = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    a = _mm_hadd_ps(a, a);
    a = _mm_hadd_ps(a, a);
    return _mm_cvtss_f32(a);
}

static inline float bf16_to_float(uint16_t h) {
    union { uint32_t u; float f; } v = { (uint32_t)h << 16 };
    return v.f;
}

/* 8 bfloat16 -> 8 float32: a bfloat16 is the high half of a float32 */
static inline __m256 load_bf16(const uint16_t* p) {
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i*)p)), 16));
}

static inline __m256 load_i8(const int8_t* p) {
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i*)p)));
}

static float dot_bf16(const float* x, const uint16_t* w, long K) {
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps(), a2 = _mm256_setzero_ps(), a3 = _mm256_setzero_ps();
    long k = 0;
    for (; k + 32 <= K; k += 32) {
        a0 = _mm256_fmadd_ps(load_bf16(w + k), _mm256_loadu_ps(x + k), a0);
        a1 = _mm256_fmadd_ps(load_bf16(w + k + 8), _mm256_loadu_ps(x + k + 8), a1);
        a2 = _mm256_fmadd_ps(load_bf16(w + k + 16), _mm256_loadu_ps(x + k + 16), a2);
        a3 = _mm256_fmadd_ps(load_bf16(w + k + 24), _mm256_loadu_ps(x + k + 24), a3);
    }
    float s = hsum(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
    for (; k < K; k++) s += x[k] * bf16_to_float(w[k]);
    return s;
}

static float dot_i8(const float* x, const int8_t* q, long K) {
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps(), a2 = _mm256_setzero_ps(), a3 = _mm256_setzero_ps();
    long k = 0;
    for (; k + 32 <= K; k += 32) {
        /* 2 KB ahead (into the next row near the end): faster where the hardware
         * prefetcher alone leaves the int8 stream short of the memory's bandwidth */
        _mm_prefetch((const char*)(q + k + 2048), _MM_HINT_T0);
        a0 = _mm256_fmadd_ps(load_i8(q + k), _mm256_loadu_ps(x + k), a0);
        a1 = _mm256_fmadd_ps(load_i8(q + k + 8), _mm256_loadu_ps(x + k + 8), a1);
        a2 = _mm256_fmadd_ps(load_i8(q + k + 16), _mm256_loadu_ps(x + k + 16), a2);
        a3 = _mm256_fmadd_ps(load_i8(q + k + 24), _mm256_loadu_ps(x + k + 24), a3);
    }
    float s = hsum(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
    for (; k < K; k++) s += x[k] * (float)q[k];
    return s;
}

/* y[n] = x . W[n] for 4 rows of W at once: one x load feeds 4 rows (the loop is bound by loads, not FMAs),
 * with a software prefetch 256 bytes ahead in each row: faster than one row at a time,
 * where the hardware prefetcher alone leaves each core short of its share of the memory bandwidth. */
static void dot4_bf16(const float* x, const uint16_t* w, long K, float* y) {
    const uint16_t *r0 = w, *r1 = w + K, *r2 = w + 2 * K, *r3 = w + 3 * K;
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, b0 = a0, b1 = a0, b2 = a0, b3 = a0;
    long k = 0;
    for (; k + 32 <= K; k += 32) {
        _mm_prefetch((const char*)(r0 + k + 128), _MM_HINT_T0);
        _mm_prefetch((const char*)(r1 + k + 128), _MM_HINT_T0);
        _mm_prefetch((const char*)(r2 + k + 128), _MM_HINT_T0);
        _mm_prefetch((const char*)(r3 + k + 128), _MM_HINT_T0);
        for (long j = k; j < k + 32; j += 16) {
            __m256 x0 = _mm256_loadu_ps(x + j), x1 = _mm256_loadu_ps(x + j + 8);
            a0 = _mm256_fmadd_ps(load_bf16(r0 + j), x0, a0);
            a1 = _mm256_fmadd_ps(load_bf16(r1 + j), x0, a1);
            a2 = _mm256_fmadd_ps(load_bf16(r2 + j), x0, a2);
            a3 = _mm256_fmadd_ps(load_bf16(r3 + j), x0, a3);
            b0 = _mm256_fmadd_ps(load_bf16(r0 + j + 8), x1, b0);
            b1 = _mm256_fmadd_ps(load_bf16(r1 + j + 8), x1, b1);
            b2 = _mm256_fmadd_ps(load_bf16(r2 + j + 8), x1, b2);
            b3 = _mm256_fmadd_ps(load_bf16(r3 + j + 8), x1, b3);
        }
    }
    float s[4] = {hsum(_mm256_add_ps(a0, b0)), hsum(_mm256_add_ps(a1, b1)), hsum(_mm256_add_ps(a2, b2)),
                  hsum(_mm256_add_ps(a3, b3))};
    for (; k < K; k++)
        for (int r = 0; r < 4; r++) s[r] += x[k] * bf16_to_float(w[r * K + k]);
    for (int r = 0; r < 4; r++) y[r] = s[r];
}

/* Optional bias: float32 (bias_bf16 = 0) or bfloat16, or NULL. */
static inline float bias_at(const void* bias, int bias_bf16, long n) {
    if (!bias) return 0.f;
    return bias_bf16 ? bf16_to_float(((const uint16_t*)bias)[n]) : ((const float*)bias)[n];
}

/* y = x W^T + bias: x [M, K] float32, w [N, K] bfloat16, y [M, N] float32; all contiguous */
void qwenvl_gemv_bf16(const float* x, const uint16_t* w, const void* bias, int bias_bf16, float* y,
                      long M, long N, long K) {
    #pragma omp parallel for schedule(static)
    for (long n0 = 0; n0 < N; n0 += 4) {
        for (long m = 0; m < M; m++) {
            float* ym = y + m * N;
            if (n0 + 4 <= N)
                dot4_bf16(x + m * K, w + n0 * K, K, ym + n0);
            else
                for (long n = n0; n < N; n++) ym[n] = dot_bf16(x + m * K, w + n * K, K);
            for (long n = n0; n < n0 + 4 && n < N; n++) ym[n] += bias_at(bias, bias_bf16, n);
        }
    }
}

/* y = x (q * scale)^T + bias: x [M, K] float32, q [N, K] int8, scale [N] float32, y [M, N] float32 */
void qwenvl_gemv_int8(const float* x, const int8_t* q, const float* scale, const void* bias, int bias_bf16, float* y,
                      long M, long N, long K) {
    #pragma omp parallel for schedule(static)
    for (long n0 = 0; n0 < N; n0 += 4) {
        long n1 = n0 + 4 < N ? n0 + 4 : N;
        for (long m = 0; m < M; m++)
            for (long n = n0; n < n1; n++)
                y[m * N + n] = dot_i8(x + m * K, q + n * K, K) * scale[n] + bias_at(bias, bias_bf16, n);
    }
}

/* The int8 product on weights packed in blocks of 4 rows (cpu.pack_int8): block b holds rows 4b..4b+3
 * as [K / 16][4][16], so that each 64-byte line carries 16 columns of all 4 rows and each thread reads one
 * sequential stream; a software prefetch 1 KB ahead. faster than the row-major kernel (docs/benchmarks.md).
 * N % 4 == 0, K % 16 == 0. */
void qwenvl_gemv_int8_packed(const float* x, const int8_t* q, const float* scale, const void* bias, int bias_bf16,
                             float* y, long M, long N, long K) {
    #pragma omp parallel for schedule(static)
    for (long n0 = 0; n0 < N; n0 += 4) {
        const int8_t* blk = q + n0 * K;
        for (long m = 0; m < M; m++) {
            const float* xm = x + m * K;
            __m256 a[4], b[4];
            for (int r = 0; r < 4; r++) a[r] = b[r] = _mm256_setzero_ps();
            for (long k = 0; k < K; k += 16) {
                const int8_t* p = blk + k * 4;
                _mm_prefetch((const char*)(p + 1024), _MM_HINT_T0);
                __m256 x0 = _mm256_loadu_ps(xm + k), x1 = _mm256_loadu_ps(xm + k + 8);
                for (int r = 0; r < 4; r++) {
                    a[r] = _mm256_fmadd_ps(load_i8(p + 16 * r), x0, a[r]);
                    b[r] = _mm256_fmadd_ps(load_i8(p + 16 * r + 8), x1, b[r]);
                }
            }
            for (int r = 0; r < 4; r++)
                y[m * N + n0 + r] = hsum(_mm256_add_ps(a[r], b[r])) * scale[n0 + r] + bias_at(bias, bias_bf16, n0 + r);
        }
    }
}

/* exp(x) for 8 floats, x <= 87 (Cephes' polynomial after a reduction by ln 2; relative error ~2e-7). Inputs
 * below -87.3 are clamped to it (~1e-38 instead of 0: masked keys weigh nothing either way). */
static inline __m256 exp8(__m256 x) {
    x = _mm256_max_ps(x, _mm256_set1_ps(-87.3f));
    __m256 fx = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(0.693359375f), x);
    x = _mm256_fnmadd_ps(fx, _mm256_set1_ps(-2.12194440e-4f), x);
    __m256 y = _mm256_set1_ps(1.9875691500e-4f);
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.3981999507e-3f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(8.3334519073e-3f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(4.1665795894e-2f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.6666665459e-1f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(5.0000001201e-1f));
    y = _mm256_fmadd_ps(y, _mm256_mul_ps(x, x), _mm256_add_ps(x, _mm256_set1_ps(1.f)));
    __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(fx), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(y, _mm256_castsi256_ps(e));
}

/* [sum(a[0]), ..., sum(a[7])] */
static inline __m256 reduce8(const __m256* a) {
    __m256 u0 = _mm256_hadd_ps(_mm256_hadd_ps(a[0], a[1]), _mm256_hadd_ps(a[2], a[3]));
    __m256 u1 = _mm256_hadd_ps(_mm256_hadd_ps(a[4], a[5]), _mm256_hadd_ps(a[6], a[7]));
    return _mm256_add_ps(_mm256_permute2f128_ps(u0, u1, 0x20), _mm256_permute2f128_ps(u0, u1, 0x31));
}

/* One query per row against a bfloat16 KV cache (decoding), grouped-query attention.
 * q [B, Hq, D] float32; k, v: one layer of the cache, [B_max, Hkv, S_max, D] bfloat16, of which rows[b]
 * (row b when rows is NULL) and the first S positions are read; mask [B, S] additive float32; out [B, Hq, D] float32.
 * The query heads that share a key/value head go in groups of 8 (a smaller group padded with zero
 * queries), one lane per head: each cached key and value row is read once per group, and the scores,
 * the softmax (float32, as the reference) and the weights are vectors over the 8 heads.
 * `scratch`: B * Hkv * ceil(G / 8) * (S + D) * 8 floats. D % 8 == 0. */
void qwenvl_attend_bf16(const float* q, const uint16_t* k, const uint16_t* v, const long* rows, const float* mask,
                        float* out, float* scratch, long B, long Hq, long Hkv, long S, long S_max, long D,
                        float scale) {
    long G = Hq / Hkv, groups = (G + 7) / 8;
    #pragma omp parallel for schedule(static) collapse(3)
    for (long b = 0; b < B; b++) {
        for (long h = 0; h < Hkv; h++) {
            for (long grp = 0; grp < groups; grp++) {
                long row = rows ? rows[b] : b;
                const uint16_t* kh = k + (row * Hkv + h) * S_max * D;
                const uint16_t* vh = v + (row * Hkv + h) * S_max * D;
                long g0 = h * G + grp * 8, n = G - grp * 8 < 8 ? G - grp * 8 : 8;
                float* sc = scratch + ((b * Hkv + h) * groups + grp) * (S + D) * 8;  /* [S][8] */
                float* qo = sc + S * 8;  /* [8][D]: the queries, then the outputs */
                const float* mb = mask + b * S;
                for (long j = 0; j < 8; j++)
                    for (long d = 0; d < D; d++) qo[j * D + d] = j < n ? q[(b * Hq + g0 + j) * D + d] : 0.f;
                __m256 mx = _mm256_set1_ps(-3.4e38f);
                for (long s = 0; s < S; s++) {
                    __m256 a[8];
                    for (int j = 0; j < 8; j++) a[j] = _mm256_setzero_ps();
                    for (long d = 0; d < D; d += 8) {
                        __m256 kv = load_bf16(kh + s * D + d);
                        for (int j = 0; j < 8; j++) a[j] = _mm256_fmadd_ps(_mm256_loadu_ps(qo + j * D + d), kv, a[j]);
                    }
                    __m256 r = _mm256_fmadd_ps(reduce8(a), _mm256_set1_ps(scale), _mm256_set1_ps(mb[s]));
                    _mm256_storeu_ps(sc + s * 8, r);
                    mx = _mm256_max_ps(mx, r);
                }
                __m256 sum = _mm256_setzero_ps();
                for (long s = 0; s < S; s++) {
                    __m256 e = exp8(_mm256_sub_ps(_mm256_loadu_ps(sc + s * 8), mx));
                    _mm256_storeu_ps(sc + s * 8, e);
                    sum = _mm256_add_ps(sum, e);
                }
                for (long i = 0; i < 8 * D; i++) qo[i] = 0.f;
                for (long s = 0; s < S; s++) {
                    float* p = sc + s * 8;
                    for (long d = 0; d < D; d += 8) {
                        __m256 vv = load_bf16(vh + s * D + d);
                        for (int j = 0; j < 8; j++)
                            _mm256_storeu_ps(qo + j * D + d, _mm256_fmadd_ps(_mm256_set1_ps(p[j]), vv,
                                                                              _mm256_loadu_ps(qo + j * D + d)));
                    }
                }
                float inv[8];
                _mm256_storeu_ps(inv, _mm256_div_ps(_mm256_set1_ps(1.f), sum));
                for (long j = 0; j < n; j++)
                    for (long d = 0; d < D; d++) out[(b * Hq + g0 + j) * D + d] = qo[j * D + d] * inv[j];
            }
        }
    }
}

/* RMSNorm of M rows of D float32: out = w * x / sqrt(mean(x^2) + eps), w float32 (w_bf16 = 0) or bfloat16. */
void qwenvl_rms_norm(const float* x, const void* w, int w_bf16, float* out, long M, long D, float eps) {
    #pragma omp parallel for schedule(static) if (M > 1)
    for (long m = 0; m < M; m++) {
        const float* xm = x + m * D;
        float* om = out + m * D;
        __m256 acc = _mm256_setzero_ps();
        long d = 0;
        for (; d + 8 <= D; d += 8) {
            __m256 v = _mm256_loadu_ps(xm + d);
            acc = _mm256_fmadd_ps(v, v, acc);
        }
        float ss = hsum(acc);
        for (; d < D; d++) ss += xm[d] * xm[d];
        float r = 1.f / __builtin_sqrtf(ss / (float)D + eps);
        for (d = 0; d < D; d++) {
            float wd = w_bf16 ? bf16_to_float(((const uint16_t*)w)[d]) : ((const float*)w)[d];
            om[d] = wd * (xm[d] * r);
        }
    }
}

/* out = silu(g) * u for M rows, gu [M, 2H] = [gate | up] float32 -> out [M, H] (the decoder MLP's activation,
 * one call instead of aten's slice, silu and multiply). */
void qwenvl_silu_mul(const float* gu, float* out, long M, long H) {
    #pragma omp parallel for schedule(static) if (M >= 64)
    for (long m = 0; m < M; m++) {
        const float* g = gu + m * 2 * H;
        const float* u = g + H;
        float* o = out + m * H;
        long h = 0;
        for (; h + 8 <= H; h += 8) {
            __m256 gv = _mm256_loadu_ps(g + h);
            __m256 e = exp8(_mm256_sub_ps(_mm256_setzero_ps(), _mm256_max_ps(gv, _mm256_set1_ps(-87.f))));
            __m256 s = _mm256_div_ps(gv, _mm256_add_ps(_mm256_set1_ps(1.f), e));
            _mm256_storeu_ps(o + h, _mm256_mul_ps(s, _mm256_loadu_ps(u + h)));
        }
        for (; h < H; h++) o[h] = g[h] / (1.f + __builtin_expf(-g[h])) * u[h];
    }
}
