/* The native CPU kernels' interface: every exported function and struct, in one place.
 *
 * Each .c file includes this header, so the compiler checks the definitions against it, and
 * qwenvl/fast/cpu/__init__.py builds its ctypes bindings (argument types, struct fields) by reading it:
 * a signature is written once. Keep one declaration per function, `qwenvl_` names, and only the types
 * the binding reads (long, int, float, double, void and pointers).
 *
 * Shapes are row-major and contiguous unless a leading-dimension argument says otherwise. The Python
 * wrappers check every tensor's device, dtype, shape and contiguity before calling: these functions trust
 * their arguments.
 */
#ifndef QWENVL_CPU_H
#define QWENVL_CPU_H

#include <stdint.h>

/* ---- matrix-vector products for decoding (gemv.c, int4.c): y [M, N] = x [M, K] @ W^T + bias, float32 */
void qwenvl_gemv_bf16(const float* x, const uint16_t* w, const void* bias, int bias_bf16, float* y,
                      long M, long N, long K);
void qwenvl_gemv_int8(const float* x, const int8_t* q, const float* scale, const void* bias, int bias_bf16,
                      float* y, long M, long N, long K);
void qwenvl_gemv_int8_packed(const float* x, const int8_t* q, const float* scale, const void* bias,
                             int bias_bf16, float* y, long M, long N, long K);
void qwenvl_gemv_int4(const float* x, const uint8_t* q, const float* s, const uint8_t* z, const float* b,
                      float* y, long M, long N, long K, long group, int16_t* xq, float* xs, int32_t* xsum);

/* ---- the other per-token costs (gemv.c) */
void qwenvl_attend_bf16(const float* q, const uint16_t* k, const uint16_t* v, const long* rows,
                        const float* mask, float* out, float* scratch, long B, long Hq, long Hkv, long S,
                        long S_max, long D, float scale);
void qwenvl_rms_norm(const float* x, const void* w, int w_bf16, float* out, long M, long D, float eps);
void qwenvl_silu_mul(const float* gu, float* out, long M, long H);

/* ---- many-row products (gemm.c): C [M, N] (ldc) = A [M, K] (lda) @ W^T + bias; 0, or -1 out of memory */
int qwenvl_gemm(const float* A, long lda, const void* W, int w_kind, const float* scale, const void* bias,
                int bias_bf16, float* C, long ldc, long M, long N, long K);

/* ---- peak arithmetic throughput (peak.c): `iters` rounds of independent vector operations of `kind` on every
 * OpenMP thread. _flops returns the floating-point operations done (2 per multiply-add); _rate the sum over
 * the threads of each one's operations per second of the CPU time it got (what the cores do while they run
 * it, whatever share of them a loaded machine gives); both -1 for a kind the CPU lacks. _kinds: a bit per
 * kind the CPU has */
enum { PEAK_AVX2_FMA = 0, PEAK_AVX512_FMA = 1, PEAK_AVX512_BF16_DOT = 2 };
int qwenvl_peak_kinds(void);
double qwenvl_fma_flops(long iters, int kind);
double qwenvl_fma_rate(long iters, int kind);
/* the sum of x [n], read by every OpenMP thread in turn over its share: a streaming-read probe */
double qwenvl_read_sum(const float* x, long n);

/* ---- a whole decoding step (decode.c); qwenvl/fast/native_decode.py fills these structs */
enum { LINEAR_BF16 = 0, LINEAR_INT8 = 1, LINEAR_INT8_PACKED = 2, LINEAR_INT4 = 3 };

typedef struct {
    long kind;
    const void* w;        /* bfloat16 [N, K], or int8 [N, K] or packed (pack_int8), or int4 (int4.c) */
    const float* scale;   /* int8: [N]; int4: [N, K / group] */
    const void* bias;     /* [N] float32 or bfloat16 (int4: float32), or NULL */
    long bias_bf16;
    long N;
    long K;
    const uint8_t* zeros; /* int4: [N, K / group] */
    long group;           /* int4 */
} qwenvl_linear;

typedef struct {
    const void* attn_norm;  /* [E] float32 or bfloat16 */
    long attn_norm_bf16;
    const void* mlp_norm;
    long mlp_norm_bf16;
    qwenvl_linear qkv;
    qwenvl_linear o;
    qwenvl_linear gate_up;
    qwenvl_linear down;
    uint16_t* k;  /* this layer's cache, [B_max, Hkv, S_max, D] bfloat16 */
    uint16_t* v;
} qwenvl_layer;

long qwenvl_decode_work(long M, long E, long Hq, long Hkv, long D, long I, long S);
void qwenvl_decode_layers(const qwenvl_layer* layers, long n_layers, float* x, long M, long E, long Hq,
                          long Hkv, long D, long I, long S, long S_max, float eps, float attn_scale,
                          const float* cos, const float* sin, const long* rows, const long* pos,
                          const float* mask, float* work);

#endif
