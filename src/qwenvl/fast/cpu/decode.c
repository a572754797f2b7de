/* The decoder's layers for one decoding step in one call, on the products and small kernels of gemv.c.
 *
 * Why: a decoding step streams every weight through the caches, which evicts the Python interpreter's
 * and torch's own code and data between products. Each of the ~40 small ops a layer runs between its
 * products then starts cold, and their overhead becomes a visible share of the step (docs/benchmarks.md,
 * "native decode step"). Here a
 * step is one foreign call, whose few kilobytes of code stay warm enough.
 *
 * Per layer, for M rows (one query each):
 *   h = rms_norm(x); qkv = h Wqkv^T + b; rotate q and k (half-rotation RoPE, cos/sin given per row);
 *   k, v -> the bfloat16 cache at (rows[m], pos[m]); a = attention over the first S cached positions;
 *   x += a Wo^T; h = rms_norm(x); x += (silu(h Wg^T) * (h Wu^T)) Wd^T
 * the order of operations and precisions (float32 activations) of the fused, kernel-backed decoder layer
 * (qwenvl/fast/native.py on qwenvl/model/text.py); tests/fast/test_native_decode.py holds them equal.
 */
#include <stdint.h>
#include <string.h>

#include "qwenvl_cpu.h"

/* int4 scratch (rounded activations and their group sums, int4.c) for M rows of K inputs, in floats */
static long int4_work(long M, long K) { return M * (K / 2 + 9 * (K / 32)); }

static void linear(const qwenvl_linear* l, const float* x, float* y, long M, float* work4) {
    int bb = (int)l->bias_bf16;
    if (l->kind == LINEAR_INT4) {
        long G = l->K / l->group;
        int16_t* xq = (int16_t*)work4;
        float* xs = work4 + M * l->K / 2;
        qwenvl_gemv_int4(x, (const uint8_t*)l->w, l->scale, l->zeros, (const float*)l->bias, y, M, l->N, l->K,
                         l->group, xq, xs, (int32_t*)(xs + M * G));
    } else if (l->kind == LINEAR_BF16)
        qwenvl_gemv_bf16(x, (const uint16_t*)l->w, l->bias, bb, y, M, l->N, l->K);
    else if (l->kind == LINEAR_INT8)
        qwenvl_gemv_int8(x, (const int8_t*)l->w, l->scale, l->bias, bb, y, M, l->N, l->K);
    else
        qwenvl_gemv_int8_packed(x, (const int8_t*)l->w, l->scale, l->bias, bb, y, M, l->N, l->K);
}

/* float32 -> bfloat16, rounding to nearest even as torch does (a NaN stays a quiet NaN) */
static inline uint16_t to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return 0x7fc0;
    return (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

/* x[0:D] rotated in place: [x1, x2] -> [x1 cos1 - x2 sin1, x2 cos2 + x1 sin2] (layers.apply_rope) */
static inline void rope(float* x, const float* cos, const float* sin, long D) {
    long half = D / 2;
    for (long i = 0; i < half; i++) {
        float x1 = x[i], x2 = x[i + half];
        x[i] = x1 * cos[i] - x2 * sin[i];
        x[i + half] = x2 * cos[i + half] + x1 * sin[i + half];
    }
}

/* Work space for `qwenvl_decode_layers`, in floats */
long qwenvl_decode_work(long M, long E, long Hq, long Hkv, long D, long I, long S) {
    long G = Hq / Hkv, K = E > I ? E : I;
    K = K > Hq * D ? K : Hq * D;
    return M * (E + (Hq + 2 * Hkv) * D + 2 * Hq * D + 3 * I) + M * Hkv * ((G + 7) / 8) * (S + D) * 8 + int4_work(M, K);
}

/* All layers for M rows: x [M, E] float32, updated in place (the residual stream); cos, sin [M, D] float32;
 * rows [M] the cache rows, pos [M] the position each row's new key/value is written at; mask [M, S] additive
 * float32 over the first S cached positions (the new one included); work: qwenvl_decode_work(...) floats. */
void qwenvl_decode_layers(const qwenvl_layer* layers, long n_layers, float* x, long M, long E, long Hq, long Hkv,
                          long D, long I, long S, long S_max, float eps, float attn_scale, const float* cos,
                          const float* sin, const long* rows, const long* pos, const float* mask, float* work) {
    long QKV = (Hq + 2 * Hkv) * D;
    float *h = work, *qkv = h + M * E, *q = qkv + M * QKV, *att = q + M * Hq * D, *gu = att + M * Hq * D,
          *act = gu + M * 2 * I, *scratch = act + M * I;
    float* work4 = scratch + M * Hkv * ((Hq / Hkv + 7) / 8) * (S + D) * 8;  /* after the attention's scratch */
    for (long i = 0; i < n_layers; i++) {
        const qwenvl_layer* L = layers + i;
        qwenvl_rms_norm(x, L->attn_norm, (int)L->attn_norm_bf16, h, M, E, eps);
        linear(&L->qkv, h, qkv, M, work4);
        for (long m = 0; m < M; m++) {
            float* r = qkv + m * QKV;  /* [Hq + 2 Hkv heads][D]: q heads, k heads, v heads */
            for (long hd = 0; hd < Hq + Hkv; hd++) rope(r + hd * D, cos + m * D, sin + m * D, D);
            memcpy(q + m * Hq * D, r, Hq * D * sizeof(float));
            for (long hd = 0; hd < Hkv; hd++) {
                long at = ((rows[m] * Hkv + hd) * S_max + pos[m]) * D;
                const float* kr = r + (Hq + hd) * D;
                const float* vr = r + (Hq + Hkv + hd) * D;
                for (long d = 0; d < D; d++) {
                    L->k[at + d] = to_bf16(kr[d]);
                    L->v[at + d] = to_bf16(vr[d]);
                }
            }
        }
        qwenvl_attend_bf16(q, L->k, L->v, rows, mask, att, scratch, M, Hq, Hkv, S, S_max, D, attn_scale);
        linear(&L->o, att, h, M, work4);
        for (long j = 0; j < M * E; j++) x[j] += h[j];
        qwenvl_rms_norm(x, L->mlp_norm, (int)L->mlp_norm_bf16, h, M, E, eps);
        linear(&L->gate_up, h, gu, M, work4);
        qwenvl_silu_mul(gu, act, M, I);
        linear(&L->down, act, h, M, work4);
        for (long j = 0; j < M * E; j++) x[j] += h[j];
    }
}
