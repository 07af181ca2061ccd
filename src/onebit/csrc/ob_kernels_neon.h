/* onebit C runtime: Arm NEON (AArch64 Advanced SIMD) convolution kernels, bit-identical to
 * ob_kernels_portable.h.
 *
 * Both kernels compute 4 pixels x 16 output channels per pass (two passes per 32-channel block), 16
 * accumulator registers. Each byte of sign bits indexes a table of eight +-1 values.
 * Float: acc = fma(+-1, x, acc) = acc + (+-x) exactly (the product is exact, then one rounding), one
 * term at a time in the portable kernel's order (ky, kx, ci).
 * Integer: acc(int32) += (+-1) * x(int16) with the widening multiply-accumulate SMLAL: exact.
 * The output step (ob_output_step.h) runs on 4 float lanes and on 8 int64 channels (ob_q*).
 */
#include <arm_neon.h>

#define OB_MR 4
#define OB_KERNEL_NAME "neon"

/* float vector ops for the fused epilogues (onebit.c): the scalar epilogue's operations, 4 lanes */
#define OB_VW 4
typedef float32x4_t ob_vf;
#define ob_vload(p) vld1q_f32(p)
#define ob_vstore(p, v) vst1q_f32(p, v)
#define ob_vset1(x) vdupq_n_f32(x)
#define ob_vzero() vdupq_n_f32(0.0f)
#define ob_vadd(a, b) vaddq_f32(a, b)
#define ob_vmul(a, b) vmulq_f32(a, b)
#define ob_vdiv(a, b) vdivq_f32(a, b)
#define ob_vmax(a, b) vbslq_f32(vcgtq_f32(a, b), a, b)   /* a > b ? a : b, lane by lane (not FMAX: NaN) */

#define OB_S(b, i) ((((b) >> (i)) & 1) ? 1.0f : -1.0f)
#define OB_ROWF(b) {OB_S(b, 0), OB_S(b, 1), OB_S(b, 2), OB_S(b, 3), \
                    OB_S(b, 4), OB_S(b, 5), OB_S(b, 6), OB_S(b, 7)}
#define OB_SQ(b, i) ((((b) >> (i)) & 1) ? 1 : -1)
#define OB_ROWQ(b) {OB_SQ(b, 0), OB_SQ(b, 1), OB_SQ(b, 2), OB_SQ(b, 3), \
                    OB_SQ(b, 4), OB_SQ(b, 5), OB_SQ(b, 6), OB_SQ(b, 7)}
#define OB_T4(R, b) R(b), R((b) + 1), R((b) + 2), R((b) + 3)
#define OB_T16(R, b) OB_T4(R, b), OB_T4(R, (b) + 4), OB_T4(R, (b) + 8), OB_T4(R, (b) + 12)
#define OB_T64(R, b) OB_T16(R, b), OB_T16(R, (b) + 16), OB_T16(R, (b) + 32), OB_T16(R, (b) + 48)
#define OB_T256(R) OB_T64(R, 0), OB_T64(R, 64), OB_T64(R, 128), OB_T64(R, 192)

/* byte of sign bits -> eight +-1.0f; -> eight +-1 int16 */
static const float ob_lut_f[256][8] = {OB_T256(OB_ROWF)};
#if ONEBIT_HAS_INT
static const int16_t ob_lut_q[256][8] = {OB_T256(OB_ROWQ)};
#endif
#undef OB_SQ

static void ob_kf16(const float *x, ptrdiff_t pix, ptrdiff_t row, int cin, int k, const uint8_t *w,
                    int half, int mr, float *acc)
{
    float32x4_t a[OB_MR][4];
    const ptrdiff_t o1 = (mr > 1 ? 1 : 0) * pix, o2 = (mr > 2 ? 2 : mr - 1) * pix;
    const ptrdiff_t o3 = (mr > 3 ? 3 : mr - 1) * pix;
    int ky, kx, ci, p, q;
    for (p = 0; p < OB_MR; p++)
        for (q = 0; q < 4; q++) a[p][q] = vdupq_n_f32(0.0f);
    for (ky = 0; ky < k; ky++) {
        for (kx = 0; kx < k; kx++) {
            const float *b0 = x + ky * row + (ptrdiff_t)kx * cin;
            const float *b1 = b0 + o1, *b2 = b0 + o2, *b3 = b0 + o3;
            const uint8_t *wr = w + (size_t)(ky * k + kx) * (size_t)cin * OB_TAP_BYTES + 2 * half;
            for (ci = 0; ci < cin; ci++) {
                const uint8_t *t = wr + OB_TAP_BYTES * ci;
                const float *l0 = ob_lut_f[t[0]], *l1 = ob_lut_f[t[1]];
                const float32x4_t w0 = vld1q_f32(l0), w1 = vld1q_f32(l0 + 4);
                const float32x4_t w2 = vld1q_f32(l1), w3 = vld1q_f32(l1 + 4);
                float32x4_t v;
#define OB_STEP(bp, P) v = vld1q_dup_f32((bp) + ci); \
                a[P][0] = vfmaq_f32(a[P][0], v, w0); a[P][1] = vfmaq_f32(a[P][1], v, w1); \
                a[P][2] = vfmaq_f32(a[P][2], v, w2); a[P][3] = vfmaq_f32(a[P][3], v, w3);
                OB_STEP(b0, 0) OB_STEP(b1, 1) OB_STEP(b2, 2) OB_STEP(b3, 3)
#undef OB_STEP
            }
        }
    }
    for (p = 0; p < mr; p++)
        for (q = 0; q < 4; q++) vst1q_f32(acc + p * OB_NCO + 16 * half + 4 * q, a[p][q]);
}

static void ob_kf(const float *x, ptrdiff_t pix, ptrdiff_t row, int cin, int k, const uint8_t *w,
                  int mr, int nco, float *acc)
{
    ob_kf16(x, pix, row, cin, k, w, 0, mr, acc);
    if (nco > 16) ob_kf16(x, pix, row, cin, k, w, 1, mr, acc);
}

#if ONEBIT_HAS_INT
/* integer vector ops for the output step (onebit.c, ob_output_step.h): the scalar step's int64
 * arithmetic on 8 channels, 2 lanes per vector. Products are int32 x int32 -> int64 (SMULL): the
 * step's operands (accumulators, int16 activations, pool sums) and multipliers all fit in int32. */
#define OB_QW 8
typedef struct { int64x2_t v[4]; } ob_qv;          /* 8 channels as four vectors of 2 int64 */

static ob_qv ob_q_widen(int32x4_t lo, int32x4_t hi)
{
    ob_qv r;
    r.v[0] = vmovl_s32(vget_low_s32(lo)); r.v[1] = vmovl_high_s32(lo);
    r.v[2] = vmovl_s32(vget_low_s32(hi)); r.v[3] = vmovl_high_s32(hi);
    return r;
}

static ob_qv ob_q_acc(const int32_t *p) { return ob_q_widen(vld1q_s32(p), vld1q_s32(p + 4)); }

static ob_qv ob_q_load16(const int16_t *p)
{
    const int16x8_t x = vld1q_s16(p);
    return ob_q_widen(vmovl_s16(vget_low_s16(x)), vmovl_high_s16(x));
}

static ob_qv ob_q_set1(int64_t x)
{
    ob_qv r;
    r.v[0] = r.v[1] = r.v[2] = r.v[3] = vdupq_n_s64(x);
    return r;
}

/* (v * m + 2^(sh-1)) >> sh per lane, m as two int32 lanes */
static int64x2_t ob_q_rq2(int64x2_t v, int32x2_t m, int sh)
{
    const int64x2_t t = vaddq_s64(vmull_s32(vmovn_s64(v), m), vdupq_n_s64((int64_t)1 << (sh - 1)));
    return vshlq_s64(t, vdupq_n_s64(-sh));             /* negative count: arithmetic shift right */
}

static ob_qv ob_q_rq(ob_qv v, int32_t m, int sh)
{
    const int32x2_t mv = vdup_n_s32(m);
    int i;
    for (i = 0; i < 4; i++) v.v[i] = ob_q_rq2(v.v[i], mv, sh);
    return v;
}

/* per channel: rq(v, m[c], sh) + b[c] */
static ob_qv ob_q_affine(ob_qv v, const int32_t *m, const int32_t *b, int sh)
{
    const int32x4_t m0 = vld1q_s32(m), m1 = vld1q_s32(m + 4);
    const ob_qv bv = ob_q_widen(vld1q_s32(b), vld1q_s32(b + 4));
    v.v[0] = vaddq_s64(ob_q_rq2(v.v[0], vget_low_s32(m0), sh), bv.v[0]);
    v.v[1] = vaddq_s64(ob_q_rq2(v.v[1], vget_high_s32(m0), sh), bv.v[1]);
    v.v[2] = vaddq_s64(ob_q_rq2(v.v[2], vget_low_s32(m1), sh), bv.v[2]);
    v.v[3] = vaddq_s64(ob_q_rq2(v.v[3], vget_high_s32(m1), sh), bv.v[3]);
    return v;
}

static ob_qv ob_q_add(ob_qv a, ob_qv b)
{
    int i;
    for (i = 0; i < 4; i++) a.v[i] = vaddq_s64(a.v[i], b.v[i]);
    return a;
}

static ob_qv ob_q_max(ob_qv a, ob_qv b)
{
    int i;
    for (i = 0; i < 4; i++) a.v[i] = vbslq_s64(vcgtq_s64(a.v[i], b.v[i]), a.v[i], b.v[i]);
    return a;
}

static ob_qv ob_q_sat(ob_qv a)
{
    const int64x2_t lo = vdupq_n_s64(-32767), hi = vdupq_n_s64(32767);
    int i;
    for (i = 0; i < 4; i++) {
        a.v[i] = vbslq_s64(vcgtq_s64(a.v[i], lo), a.v[i], lo);
        a.v[i] = vbslq_s64(vcgtq_s64(a.v[i], hi), hi, a.v[i]);
    }
    return a;
}

static void ob_q_store16(int16_t *p, ob_qv a)
{
    const int32x4_t lo = vcombine_s32(vmovn_s64(a.v[0]), vmovn_s64(a.v[1]));
    const int32x4_t hi = vcombine_s32(vmovn_s64(a.v[2]), vmovn_s64(a.v[3]));
    vst1q_s16(p, vcombine_s16(vmovn_s32(lo), vmovn_s32(hi)));
}

static ob_qv ob_q_sub(ob_qv a, ob_qv b)
{
    int i;
    for (i = 0; i < 4; i++) a.v[i] = vsubq_s64(a.v[i], b.v[i]);
    return a;
}

/* clamp to 0..255, store 8 bytes */
static void ob_q_store8(uint8_t *p, ob_qv a)
{
    const int64x2_t lo = vdupq_n_s64(0), hi = vdupq_n_s64(255);
    int32x4_t h0, h1;
    int i;
    for (i = 0; i < 4; i++) {
        a.v[i] = vbslq_s64(vcgtq_s64(a.v[i], lo), a.v[i], lo);
        a.v[i] = vbslq_s64(vcgtq_s64(a.v[i], hi), hi, a.v[i]);
    }
    h0 = vcombine_s32(vmovn_s64(a.v[0]), vmovn_s64(a.v[1]));
    h1 = vcombine_s32(vmovn_s64(a.v[2]), vmovn_s64(a.v[3]));
    vst1_u8(p, vmovn_u16(vreinterpretq_u16_s16(vcombine_s16(vmovn_s32(h0), vmovn_s32(h1)))));
}

static void ob_ki16(const int16_t *x, ptrdiff_t pix, ptrdiff_t row, int cin, int k, const uint8_t *w,
                    int half, int mr, int32_t *acc)
{
    int32x4_t a[OB_MR][4];
    const ptrdiff_t o1 = (mr > 1 ? 1 : 0) * pix, o2 = (mr > 2 ? 2 : mr - 1) * pix;
    const ptrdiff_t o3 = (mr > 3 ? 3 : mr - 1) * pix;
    int ky, kx, ci, p, q;
    for (p = 0; p < OB_MR; p++)
        for (q = 0; q < 4; q++) a[p][q] = vdupq_n_s32(0);
    for (ky = 0; ky < k; ky++) {
        for (kx = 0; kx < k; kx++) {
            const int16_t *b0 = x + ky * row + (ptrdiff_t)kx * cin;
            const int16_t *b1 = b0 + o1, *b2 = b0 + o2, *b3 = b0 + o3;
            const uint8_t *wr = w + (size_t)(ky * k + kx) * (size_t)cin * OB_TAP_BYTES + 2 * half;
            for (ci = 0; ci < cin; ci++) {
                const uint8_t *t = wr + OB_TAP_BYTES * ci;
                const int16x8_t w0 = vld1q_s16(ob_lut_q[t[0]]), w1 = vld1q_s16(ob_lut_q[t[1]]);
                int16x8_t v;
#define OB_STEP(bp, P) v = vld1q_dup_s16((bp) + ci); \
                a[P][0] = vmlal_s16(a[P][0], vget_low_s16(w0), vget_low_s16(v)); \
                a[P][1] = vmlal_high_s16(a[P][1], w0, v); \
                a[P][2] = vmlal_s16(a[P][2], vget_low_s16(w1), vget_low_s16(v)); \
                a[P][3] = vmlal_high_s16(a[P][3], w1, v);
                OB_STEP(b0, 0) OB_STEP(b1, 1) OB_STEP(b2, 2) OB_STEP(b3, 3)
#undef OB_STEP
            }
        }
    }
    for (p = 0; p < mr; p++)
        for (q = 0; q < 4; q++) vst1q_s32(acc + p * OB_NCO + 16 * half + 4 * q, a[p][q]);
}

static void ob_ki(const int16_t *x, ptrdiff_t pix, ptrdiff_t row, int cin, int k, const uint8_t *w,
                  int mr, int nco, int32_t *acc)
{
    ob_ki16(x, pix, row, cin, k, w, 0, mr, acc);
    if (nco > 16) ob_ki16(x, pix, row, cin, k, w, 1, mr, acc);
}
#endif

#if ONEBIT_HAS_INT8
/* 8-bit mode (ob_kernels8_portable.h): per pass 4 pixels x 16 outputs; lane j of a vector is output j
 * (4 per vector) and its four bytes are input channels ci..ci+3. The weight bytes 4j + c are the bits
 * (c, j) of the four sign words: a table lookup (TBL) puts byte j / 8 of word c at 4j + c and a bit test
 * (CMTST) makes 0xFF where the weight is +1, so P = sum over the +1 weights of u comes from the broadcast
 * bytes of a pixel: UDOT with 0/1 weights (the dot-product extension, __ARM_FEATURE_DOTPROD), else the
 * masked bytes summed by pairwise widening adds (UADDLP, UADALP). S = sum of all u (UDOT with ones, or
 * UADDLP/UADALP), and acc = 2 P - S. Needs cin % 4 == 0. */
#define OB_HAVE_K8
#if defined(__ARM_FEATURE_DOTPROD)
#define OB_KERNEL8_NAME "neon-dotprod"
#define OB_MASK8(M) vshrq_n_u8(M, 7)                                /* 0xFF / 0 -> 1 / 0 */
#define OB_SUM8(A, V, M) A = vdotq_u32(A, V, M)
#define OB_SUMALL8(A, V) A = vdotq_u32(A, V, vdupq_n_u8(1))
#else
#define OB_KERNEL8_NAME "neon"
#define OB_MASK8(M) (M)
#define OB_SUM8(A, V, M) A = vpadalq_u16(A, vpaddlq_u8(vandq_u8(V, M)))
#define OB_SUMALL8(A, V) A = vpadalq_u16(A, vpaddlq_u8(V))
#endif

static void ob_k8_16(const uint8_t *x, ptrdiff_t pix, ptrdiff_t row, int cin, int k, const uint8_t *w,
                     int half, int mr, int32_t *acc)
{
    /* output group q (outputs 4q..4q+3 of the half, bits 16 half + 4q.. of each word): byte 4jj + c of
     * the table index picks byte (16 half + 4q) / 8 of word c; the bit tested is (4q + jj) % 8 */
    static const uint8_t bitsel[2][16] = {{1, 1, 1, 1, 2, 2, 2, 2, 4, 4, 4, 4, 8, 8, 8, 8},
                                          {16, 16, 16, 16, 32, 32, 32, 32, 64, 64, 64, 64, 128, 128, 128, 128}};
    uint8x16_t idx[2], bit[2];
    uint32x4_t a[4][4], s[4];
    const ptrdiff_t o[4] = {0, (mr > 1 ? 1 : 0) * pix, (mr > 2 ? 2 : mr - 1) * pix, (mr > 3 ? 3 : mr - 1) * pix};
    int ky, kx, ci, p, q;
    for (q = 0; q < 2; q++) {
        uint8_t t[16];
        int jj, c;
        for (jj = 0; jj < 4; jj++)
            for (c = 0; c < 4; c++) t[4 * jj + c] = (uint8_t)(4 * c + 2 * half + q);
        idx[q] = vld1q_u8(t);
        bit[q] = vld1q_u8(bitsel[q]);
    }
    for (p = 0; p < 4; p++) {
        s[p] = vdupq_n_u32(0);
        for (q = 0; q < 4; q++) a[p][q] = vdupq_n_u32(0);
    }
    for (ky = 0; ky < k; ky++) {
        for (kx = 0; kx < k; kx++) {
            const uint8_t *b = x + ky * row + (ptrdiff_t)kx * cin;
            const uint8_t *wr = w + (size_t)(ky * k + kx) * (size_t)cin * OB_TAP_BYTES;
            for (ci = 0; ci < cin; ci += 4) {
                const uint8x16_t words = vld1q_u8(wr + OB_TAP_BYTES * ci);   /* word c = bytes 4c..4c+3 */
                uint8x16_t m[4];
                for (q = 0; q < 4; q++)           /* groups 0, 1 test byte 2 half, groups 2, 3 byte 2 half + 1 */
                    m[q] = OB_MASK8(vtstq_u8(vqtbl1q_u8(words, idx[q >> 1]), bit[q & 1]));
                for (p = 0; p < 4; p++) {
                    uint32_t u;
                    uint8x16_t v;
                    memcpy(&u, b + o[p] + ci, 4);
                    v = vreinterpretq_u8_u32(vdupq_n_u32(u));
                    OB_SUMALL8(s[p], v);
                    for (q = 0; q < 4; q++) OB_SUM8(a[p][q], v, m[q]);
                }
            }
        }
    }
    for (p = 0; p < mr; p++)
        for (q = 0; q < 4; q++)
            vst1q_s32(acc + p * OB_NCO + 16 * half + 4 * q,
                      vreinterpretq_s32_u32(vsubq_u32(vshlq_n_u32(a[p][q], 1), s[p])));
}

static void ob_k8(const uint8_t *x, ptrdiff_t pix, ptrdiff_t row, int cin, int k, const uint8_t *w,
                  int mr, int nco, int32_t *acc)
{
    ob_k8_16(x, pix, row, cin, k, w, 0, mr, acc);
    if (nco > 16) ob_k8_16(x, pix, row, cin, k, w, 1, mr, acc);
}
#define OB_MR8 4
#endif
