/* onebit C runtime: AVX-512 convolution kernels (same results as ob_kernels_portable.h).
 *
 * Float: 8 pixels x 32 output channels (16 zmm accumulators). The 32 sign bits of one tap are two
 * 16-bit lane masks; a masked blend turns each into sixteen +-1.0f, and acc = fma(x, +-1, acc) =
 * acc + (+-x) exactly, one term at a time in the portable kernel's order.
 * Integer: the sign bits of two consecutive input channels are interleaved into a 32-lane mask of +-1
 * int16 pairs, multiplied with pairs of int16 inputs and summed into int32 (vpdpwssd with AVX512-VNNI,
 * else vpmaddwd + vpaddd).
 */
#include <immintrin.h>

#define OB_MR 8
#define OB_KERNEL_NAME "avx512"

/* float vector ops for the fused epilogues (onebit.c): the scalar epilogue's operations, 16 lanes */
#define OB_VW 16
typedef __m512 ob_vf;
#define ob_vload(p) _mm512_loadu_ps(p)
#define ob_vstore(p, v) _mm512_storeu_ps(p, v)
#define ob_vset1(x) _mm512_set1_ps(x)
#define ob_vzero() _mm512_setzero_ps()
#define ob_vadd(a, b) _mm512_add_ps(a, b)
#define ob_vmul(a, b) _mm512_mul_ps(a, b)
#define ob_vdiv(a, b) _mm512_div_ps(a, b)
#define ob_vmax(a, b) _mm512_max_ps(a, b)   /* a > b ? a : b, lane by lane */

static void ob_kf(const float *x, ptrdiff_t pix, ptrdiff_t row, int cin, int k, const uint8_t *w,
                  int mr, int nco, float *acc)
{
    const __m512 pos = _mm512_set1_ps(1.0f), neg = _mm512_set1_ps(-1.0f);
    __m512 a00 = _mm512_setzero_ps(), a01 = a00, a10 = a00, a11 = a00, a20 = a00, a21 = a00;
    __m512 a30 = a00, a31 = a00, a40 = a00, a41 = a00, a50 = a00, a51 = a00, a60 = a00, a61 = a00;
    __m512 a70 = a00, a71 = a00;
    ptrdiff_t o[OB_MR];
    int ky, kx, ci, p;
    for (p = 0; p < OB_MR; p++) o[p] = (p < mr ? p : mr - 1) * pix;
    for (ky = 0; ky < k; ky++) {
        for (kx = 0; kx < k; kx++) {
            const float *b = x + ky * row + (ptrdiff_t)kx * cin;
            const float *b0 = b + o[0], *b1 = b + o[1], *b2 = b + o[2], *b3 = b + o[3];
            const float *b4 = b + o[4], *b5 = b + o[5], *b6 = b + o[6], *b7 = b + o[7];
            const uint8_t *wr = w + (size_t)(ky * k + kx) * (size_t)cin * OB_TAP_BYTES;
            if (nco > 16) {
                for (ci = 0; ci < cin; ci++) {
                    uint32_t m;
                    __m512 w0, w1, v;
                    memcpy(&m, wr + OB_TAP_BYTES * ci, 4);
                    w0 = _mm512_mask_blend_ps((__mmask16)(m & 0xFFFFu), neg, pos);
                    w1 = _mm512_mask_blend_ps((__mmask16)(m >> 16), neg, pos);
#define OB_STEP(bp, A0, A1) v = _mm512_set1_ps((bp)[ci]); A0 = _mm512_fmadd_ps(v, w0, A0); A1 = _mm512_fmadd_ps(v, w1, A1);
                    OB_STEP(b0, a00, a01) OB_STEP(b1, a10, a11) OB_STEP(b2, a20, a21) OB_STEP(b3, a30, a31)
                    OB_STEP(b4, a40, a41) OB_STEP(b5, a50, a51) OB_STEP(b6, a60, a61) OB_STEP(b7, a70, a71)
#undef OB_STEP
                }
            } else {                    /* a 16-channel block: the upper half is padding */
                for (ci = 0; ci < cin; ci++) {
                    uint32_t m;
                    __m512 w0, v;
                    memcpy(&m, wr + OB_TAP_BYTES * ci, 4);
                    w0 = _mm512_mask_blend_ps((__mmask16)(m & 0xFFFFu), neg, pos);
#define OB_STEP(bp, A0) v = _mm512_set1_ps((bp)[ci]); A0 = _mm512_fmadd_ps(v, w0, A0);
                    OB_STEP(b0, a00) OB_STEP(b1, a10) OB_STEP(b2, a20) OB_STEP(b3, a30)
                    OB_STEP(b4, a40) OB_STEP(b5, a50) OB_STEP(b6, a60) OB_STEP(b7, a70)
#undef OB_STEP
                }
            }
        }
    }
    {
        float tmp[OB_MR][OB_NCO];
        _mm512_storeu_ps(tmp[0], a00); _mm512_storeu_ps(tmp[0] + 16, a01);
        _mm512_storeu_ps(tmp[1], a10); _mm512_storeu_ps(tmp[1] + 16, a11);
        _mm512_storeu_ps(tmp[2], a20); _mm512_storeu_ps(tmp[2] + 16, a21);
        _mm512_storeu_ps(tmp[3], a30); _mm512_storeu_ps(tmp[3] + 16, a31);
        _mm512_storeu_ps(tmp[4], a40); _mm512_storeu_ps(tmp[4] + 16, a41);
        _mm512_storeu_ps(tmp[5], a50); _mm512_storeu_ps(tmp[5] + 16, a51);
        _mm512_storeu_ps(tmp[6], a60); _mm512_storeu_ps(tmp[6] + 16, a61);
        _mm512_storeu_ps(tmp[7], a70); _mm512_storeu_ps(tmp[7] + 16, a71);
        memcpy(acc, tmp, (size_t)mr * sizeof tmp[0]);
    }
}

#if ONEBIT_HAS_INT
/* 32-bit mask whose bit 2j is bit j of a and bit 2j+1 is bit j of b (16-bit a, b) */
#if defined(__BMI2__)
static uint32_t ob_interleave(uint32_t a, uint32_t b)
{
    return _pdep_u32(a, 0x55555555u) | _pdep_u32(b, 0xAAAAAAAAu);
}
#else
#define OB_SP(v) ((((v) & 1u)) | (((v) & 2u) << 1) | (((v) & 4u) << 2) | (((v) & 8u) << 3) | \
                  (((v) & 16u) << 4) | (((v) & 32u) << 5) | (((v) & 64u) << 6) | (((v) & 128u) << 7))
#define OB_SP4(b) OB_SP(b), OB_SP((b) + 1), OB_SP((b) + 2), OB_SP((b) + 3)
#define OB_SP16(b) OB_SP4(b), OB_SP4((b) + 4), OB_SP4((b) + 8), OB_SP4((b) + 12)
#define OB_SP64(b) OB_SP16(b), OB_SP16((b) + 16), OB_SP16((b) + 32), OB_SP16((b) + 48)
static const uint16_t ob_spread[256] = {OB_SP64(0u), OB_SP64(64u), OB_SP64(128u), OB_SP64(192u)};
static uint32_t ob_interleave(uint32_t a, uint32_t b)
{
    const uint32_t sa = ob_spread[a & 255u] | ((uint32_t)ob_spread[(a >> 8) & 255u] << 16);
    const uint32_t sb = ob_spread[b & 255u] | ((uint32_t)ob_spread[(b >> 8) & 255u] << 16);
    return sa | (sb << 1);
}
#endif

/* integer vector ops for the output step (onebit.c, ob_output_step.h): the scalar step's int64
 * arithmetic on 16 channels, 8 lanes per vector (int32 x int32 products with vpmuldq), so results are
 * identical. */
#define OB_QW 16
typedef struct { __m512i lo, hi; } ob_qv;         /* 16 channels as two vectors of 8 int64 */

static ob_qv ob_q_widen32(__m512i v)
{
    ob_qv r;
    r.lo = _mm512_cvtepi32_epi64(_mm512_castsi512_si256(v));
    r.hi = _mm512_cvtepi32_epi64(_mm512_extracti64x4_epi64(v, 1));
    return r;
}

static ob_qv ob_q_acc(const int32_t *p)
{
    return ob_q_widen32(_mm512_loadu_si512(p));
}

static ob_qv ob_q_load16(const int16_t *p)
{
    return ob_q_widen32(_mm512_cvtepi16_epi32(_mm256_loadu_si256((const __m256i *)p)));
}

static __m512i ob_q_rq8(__m512i v, __m512i m, int sh)
{
    const __m512i half = _mm512_set1_epi64((long long)((int64_t)1 << (sh - 1)));
    return _mm512_sra_epi64(_mm512_add_epi64(_mm512_mul_epi32(v, m), half), _mm_cvtsi32_si128(sh));
}

static ob_qv ob_q_rq(ob_qv v, int32_t m, int sh)
{
    const __m512i mv = _mm512_set1_epi64(m);
    v.lo = ob_q_rq8(v.lo, mv, sh);
    v.hi = ob_q_rq8(v.hi, mv, sh);
    return v;
}

/* per channel: rq(v, m[c], sh) + b[c] */
static ob_qv ob_q_affine(ob_qv v, const int32_t *m, const int32_t *b, int sh)
{
    const ob_qv mv = ob_q_widen32(_mm512_loadu_si512(m)), bv = ob_q_widen32(_mm512_loadu_si512(b));
    v.lo = _mm512_add_epi64(ob_q_rq8(v.lo, mv.lo, sh), bv.lo);
    v.hi = _mm512_add_epi64(ob_q_rq8(v.hi, mv.hi, sh), bv.hi);
    return v;
}

static ob_qv ob_q_add(ob_qv a, ob_qv b)
{
    a.lo = _mm512_add_epi64(a.lo, b.lo);
    a.hi = _mm512_add_epi64(a.hi, b.hi);
    return a;
}

static ob_qv ob_q_set1(int64_t x)
{
    ob_qv r;
    r.lo = r.hi = _mm512_set1_epi64((long long)x);
    return r;
}

static ob_qv ob_q_max(ob_qv a, ob_qv b)
{
    a.lo = _mm512_max_epi64(a.lo, b.lo);
    a.hi = _mm512_max_epi64(a.hi, b.hi);
    return a;
}

static ob_qv ob_q_sat(ob_qv a)
{
    const __m512i lo = _mm512_set1_epi64(-32767), hi = _mm512_set1_epi64(32767);
    a.lo = _mm512_min_epi64(_mm512_max_epi64(a.lo, lo), hi);
    a.hi = _mm512_min_epi64(_mm512_max_epi64(a.hi, lo), hi);
    return a;
}

static void ob_q_store16(int16_t *p, ob_qv a)
{
    _mm_storeu_si128((__m128i *)p, _mm512_cvtepi64_epi16(a.lo));
    _mm_storeu_si128((__m128i *)(p + 8), _mm512_cvtepi64_epi16(a.hi));
}

static ob_qv ob_q_sub(ob_qv a, ob_qv b)
{
    a.lo = _mm512_sub_epi64(a.lo, b.lo);
    a.hi = _mm512_sub_epi64(a.hi, b.hi);
    return a;
}

/* clamp to 0..255, store 16 bytes */
static void ob_q_store8(uint8_t *p, ob_qv a)
{
    const __m512i lo = _mm512_setzero_si512(), hi = _mm512_set1_epi64(255);
    _mm_storel_epi64((__m128i *)p, _mm512_cvtepi64_epi8(_mm512_min_epi64(_mm512_max_epi64(a.lo, lo), hi)));
    _mm_storel_epi64((__m128i *)(p + 8), _mm512_cvtepi64_epi8(_mm512_min_epi64(_mm512_max_epi64(a.hi, lo), hi)));
}

#if defined(__AVX512VNNI__)
#define OB_DP(A, V, W) A = _mm512_dpwssd_epi32(A, V, W)
#else
#define OB_DP(A, V, W) A = _mm512_add_epi32(A, _mm512_madd_epi16(V, W))
#endif

static void ob_ki(const int16_t *x, ptrdiff_t pix, ptrdiff_t row, int cin, int k, const uint8_t *w,
                  int mr, int nco, int32_t *acc)
{
    const __m512i pos = _mm512_set1_epi16(1), neg = _mm512_set1_epi16(-1);
    __m512i a00 = _mm512_setzero_si512(), a01 = a00, a10 = a00, a11 = a00, a20 = a00, a21 = a00;
    __m512i a30 = a00, a31 = a00, a40 = a00, a41 = a00, a50 = a00, a51 = a00, a60 = a00, a61 = a00;
    __m512i a70 = a00, a71 = a00;
    ptrdiff_t o[OB_MR];
    int ky, kx, ci, p;
    for (p = 0; p < OB_MR; p++) o[p] = (p < mr ? p : mr - 1) * pix;
    for (ky = 0; ky < k; ky++) {
        for (kx = 0; kx < k; kx++) {
            const int16_t *b = x + ky * row + (ptrdiff_t)kx * cin;
            const int16_t *b0 = b + o[0], *b1 = b + o[1], *b2 = b + o[2], *b3 = b + o[3];
            const int16_t *b4 = b + o[4], *b5 = b + o[5], *b6 = b + o[6], *b7 = b + o[7];
            const uint8_t *wr = w + (size_t)(ky * k + kx) * (size_t)cin * OB_TAP_BYTES;
            if (nco > 16) {
                for (ci = 0; ci < cin; ci += 2) {
                    uint32_t m0, m1;
                    int32_t pr;
                    __m512i w0, w1, v;
                    memcpy(&m0, wr + OB_TAP_BYTES * ci, 4);
                    memcpy(&m1, wr + OB_TAP_BYTES * (ci + 1), 4);
                    w0 = _mm512_mask_blend_epi16((__mmask32)ob_interleave(m0 & 0xFFFFu, m1 & 0xFFFFu), neg, pos);
                    w1 = _mm512_mask_blend_epi16((__mmask32)ob_interleave(m0 >> 16, m1 >> 16), neg, pos);
#define OB_STEP(bp, A0, A1) memcpy(&pr, (bp) + ci, 4); v = _mm512_set1_epi32(pr); OB_DP(A0, v, w0); OB_DP(A1, v, w1);
                    OB_STEP(b0, a00, a01) OB_STEP(b1, a10, a11) OB_STEP(b2, a20, a21) OB_STEP(b3, a30, a31)
                    OB_STEP(b4, a40, a41) OB_STEP(b5, a50, a51) OB_STEP(b6, a60, a61) OB_STEP(b7, a70, a71)
#undef OB_STEP
                }
            } else {                    /* a 16-channel block: the upper half is padding */
                for (ci = 0; ci < cin; ci += 2) {
                    uint32_t m0, m1;
                    int32_t pr;
                    __m512i w0, v;
                    memcpy(&m0, wr + OB_TAP_BYTES * ci, 4);
                    memcpy(&m1, wr + OB_TAP_BYTES * (ci + 1), 4);
                    w0 = _mm512_mask_blend_epi16((__mmask32)ob_interleave(m0 & 0xFFFFu, m1 & 0xFFFFu), neg, pos);
#define OB_STEP(bp, A0) memcpy(&pr, (bp) + ci, 4); v = _mm512_set1_epi32(pr); OB_DP(A0, v, w0);
                    OB_STEP(b0, a00) OB_STEP(b1, a10) OB_STEP(b2, a20) OB_STEP(b3, a30)
                    OB_STEP(b4, a40) OB_STEP(b5, a50) OB_STEP(b6, a60) OB_STEP(b7, a70)
#undef OB_STEP
                }
            }
        }
    }
    {
        int32_t tmp[OB_MR][OB_NCO];
        _mm512_storeu_si512(tmp[0], a00); _mm512_storeu_si512(tmp[0] + 16, a01);
        _mm512_storeu_si512(tmp[1], a10); _mm512_storeu_si512(tmp[1] + 16, a11);
        _mm512_storeu_si512(tmp[2], a20); _mm512_storeu_si512(tmp[2] + 16, a21);
        _mm512_storeu_si512(tmp[3], a30); _mm512_storeu_si512(tmp[3] + 16, a31);
        _mm512_storeu_si512(tmp[4], a40); _mm512_storeu_si512(tmp[4] + 16, a41);
        _mm512_storeu_si512(tmp[5], a50); _mm512_storeu_si512(tmp[5] + 16, a51);
        _mm512_storeu_si512(tmp[6], a60); _mm512_storeu_si512(tmp[6] + 16, a61);
        _mm512_storeu_si512(tmp[7], a70); _mm512_storeu_si512(tmp[7] + 16, a71);
        memcpy(acc, tmp, (size_t)mr * sizeof tmp[0]);
    }
}
#endif

#if ONEBIT_HAS_INT8
/* 8-bit mode: acc[p][j] = sum s * u (ob_kernels8_portable.h) with vpdpbusd (AVX512-VNNI; else vpmaddubsw +
 * vpmaddwd), which adds four u8 x s8 products into each int32 lane. Lane j of a vector is output j, its
 * four bytes are input channels ci..ci+3: the weights of 16 outputs x 4 input channels are the bytes
 * 4j + c = +-1. They are built from the four 32-bit sign words of ci..ci+3 either by a masked blend of
 * the words as 64 byte lanes and a byte permutation (AVX512-VBMI vpermt2b), or by scattering the bits into
 * that order (BMI2 pdep) and one masked blend. The four bytes u[ci..ci+3] of a pixel are broadcast to all
 * lanes. 8 pixels x 32 outputs: 16 accumulators; with nco <= 16 (a 16-channel layer's block) the upper
 * half is not computed. Needs cin % 4 == 0 (the export's condition for the 8-bit mode). */
#define OB_HAVE_K8
#if defined(__AVX512VNNI__)
#define OB_KERNEL8_ZMM_NAME "avx512-vnni"
#define OB_DP8(A, V, W) A = _mm512_dpbusd_epi32(A, V, W)
#else
#define OB_KERNEL8_ZMM_NAME "avx512"
#define OB_DP8(A, V, W) A = _mm512_add_epi32(A, _mm512_madd_epi16(_mm512_maddubs_epi16(V, W), ones16))
#endif

/* +-1 bytes of outputs 0..15 (lo) and 16..31 (hi) x input channels ci..ci+3 from their sign words wr[0..15] */
#if defined(__AVX512VBMI__)
static inline void ob_w8(const uint8_t *wr, __m512i pos, __m512i neg, __m512i idx_lo, __m512i idx_hi,
                         __m512i *lo, __m512i *hi)
{
    uint64_t m01, m23;
    __m512i a, b;
    memcpy(&m01, wr, 8);                 /* bytes 0..31: channel ci, 32..63: ci+1 (output j at byte j) */
    memcpy(&m23, wr + 8, 8);
    a = _mm512_mask_blend_epi8((__mmask64)m01, neg, pos);
    b = _mm512_mask_blend_epi8((__mmask64)m23, neg, pos);
    *lo = _mm512_permutex2var_epi8(a, idx_lo, b);
    *hi = _mm512_permutex2var_epi8(a, idx_hi, b);
}
#define OB_W8(wr, lo, hi) ob_w8(wr, pos, neg, idx_lo, idx_hi, lo, hi)
#else
static inline __mmask64 ob_w8_mask(const uint8_t *wr, int shift)
{
    uint64_t m = 0;
    int c;
    for (c = 0; c < 4; c++) {
        uint32_t word;
        memcpy(&word, wr + 4 * c, 4);
#if defined(__BMI2__)
        m |= _pdep_u64((uint64_t)((word >> shift) & 0xFFFFu), 0x1111111111111111ULL << c);
#else
        {
            int j;
            for (j = 0; j < 16; j++) m |= (uint64_t)((word >> (shift + j)) & 1u) << (4 * j + c);
        }
#endif
    }
    return (__mmask64)m;
}
#define OB_W8(wr, lo, hi) (*(lo) = _mm512_mask_blend_epi8(ob_w8_mask(wr, 0), neg, pos), \
                           *(hi) = _mm512_mask_blend_epi8(ob_w8_mask(wr, 16), neg, pos))
#endif

/* the +-1 bytes' constants of OB_W8 */
#if defined(__AVX512VBMI__)
#define OB_W8_CONSTANTS \
    const __m512i pos = _mm512_set1_epi8(1), neg = _mm512_set1_epi8(-1); \
    /* byte 4j + c of lo takes byte j of channel c (a: c = 0, 1 at 32c + j; b: c = 2, 3 at 64 + 32(c-2) + j) */ \
    const __m512i idx_lo = _mm512_set_epi32( \
        0x6f4f2f0f, 0x6e4e2e0e, 0x6d4d2d0d, 0x6c4c2c0c, 0x6b4b2b0b, 0x6a4a2a0a, 0x69492909, 0x68482808, \
        0x67472707, 0x66462606, 0x65452505, 0x64442404, 0x63432303, 0x62422202, 0x61412101, 0x60402000); \
    const __m512i idx_hi = _mm512_add_epi8(idx_lo, _mm512_set1_epi8(16));
#else
#define OB_W8_CONSTANTS const __m512i pos = _mm512_set1_epi8(1), neg = _mm512_set1_epi8(-1);
#endif

static void ob_k8_zmm(const uint8_t *x, ptrdiff_t pix, ptrdiff_t row, int cin, int k, const uint8_t *w,
                      int mr, int nco, int32_t *acc)
{
    OB_W8_CONSTANTS
#if !defined(__AVX512VNNI__)
    const __m512i ones16 = _mm512_set1_epi16(1);
#endif
    __m512i a00 = _mm512_setzero_si512(), a01 = a00, a10 = a00, a11 = a00, a20 = a00, a21 = a00;
    __m512i a30 = a00, a31 = a00, a40 = a00, a41 = a00, a50 = a00, a51 = a00, a60 = a00, a61 = a00;
    __m512i a70 = a00, a71 = a00;
    ptrdiff_t o[8];
    int ky, kx, ci, p;
    for (p = 0; p < 8; p++) o[p] = (p < mr ? p : mr - 1) * pix;
    for (ky = 0; ky < k; ky++) {
        for (kx = 0; kx < k; kx++) {
            const uint8_t *b = x + ky * row + (ptrdiff_t)kx * cin;
            const uint8_t *b0 = b + o[0], *b1 = b + o[1], *b2 = b + o[2], *b3 = b + o[3];
            const uint8_t *b4 = b + o[4], *b5 = b + o[5], *b6 = b + o[6], *b7 = b + o[7];
            const uint8_t *wr = w + (size_t)(ky * k + kx) * (size_t)cin * OB_TAP_BYTES;
            int32_t q;
            __m512i w0, w1, v;
#define OB_BC(bp) (memcpy(&q, (bp) + ci, 4), v = _mm512_set1_epi32(q))
            if (nco > 16) {
                for (ci = 0; ci < cin; ci += 4) {
                    OB_W8(wr + OB_TAP_BYTES * ci, &w0, &w1);
#define OB_STEP(bp, A0, A1) OB_BC(bp); OB_DP8(A0, v, w0); OB_DP8(A1, v, w1);
                    OB_STEP(b0, a00, a01) OB_STEP(b1, a10, a11) OB_STEP(b2, a20, a21) OB_STEP(b3, a30, a31)
                    OB_STEP(b4, a40, a41) OB_STEP(b5, a50, a51) OB_STEP(b6, a60, a61) OB_STEP(b7, a70, a71)
#undef OB_STEP
                }
            } else {
                for (ci = 0; ci < cin; ci += 4) {
                    OB_W8(wr + OB_TAP_BYTES * ci, &w0, &w1);
#define OB_STEP(bp, A0) OB_BC(bp); OB_DP8(A0, v, w0);
                    OB_STEP(b0, a00) OB_STEP(b1, a10) OB_STEP(b2, a20) OB_STEP(b3, a30)
                    OB_STEP(b4, a40) OB_STEP(b5, a50) OB_STEP(b6, a60) OB_STEP(b7, a70)
#undef OB_STEP
                }
            }
#undef OB_BC
        }
    }
    {
        int32_t tmp[8][OB_NCO];
        _mm512_storeu_si512(tmp[0], a00); _mm512_storeu_si512(tmp[0] + 16, a01);
        _mm512_storeu_si512(tmp[1], a10); _mm512_storeu_si512(tmp[1] + 16, a11);
        _mm512_storeu_si512(tmp[2], a20); _mm512_storeu_si512(tmp[2] + 16, a21);
        _mm512_storeu_si512(tmp[3], a30); _mm512_storeu_si512(tmp[3] + 16, a31);
        _mm512_storeu_si512(tmp[4], a40); _mm512_storeu_si512(tmp[4] + 16, a41);
        _mm512_storeu_si512(tmp[5], a50); _mm512_storeu_si512(tmp[5] + 16, a51);
        _mm512_storeu_si512(tmp[6], a60); _mm512_storeu_si512(tmp[6] + 16, a61);
        _mm512_storeu_si512(tmp[7], a70); _mm512_storeu_si512(tmp[7] + 16, a71);
        memcpy(acc, tmp, (size_t)mr * sizeof tmp[0]);
    }
}

#if defined(__AMX_INT8__) && defined(__AMX_TILE__) && defined(__linux__) && defined(__x86_64__) && \
    !defined(ONEBIT_NO_AMX)
/* AMX-INT8 (Sapphire Rapids and later): tdpbusd multiplies a tile A of M rows x 64 bytes (u8) with a tile B
 * of 16 rows x 64 bytes (s8, row r: four bytes per output column n, k = 4r..4r+3) into C, M x 16 int32:
 * C[m][n] += sum_k A[m][k] B[k/4][4n + k%4]. Row m of A is pixel m's bytes u[ci..ci+63] of one tap, loaded
 * with the pixel stride as the row stride (no copy); row r of B is exactly OB_W8's vector for input
 * channels ci+4r..ci+4r+3, built into a 1 KB buffer per 16 outputs. Up to 32 pixels x 32 outputs: C tiles
 * 0-3 (pixels 0-15 / 16-31 x outputs 0-15 / 16-31), A tiles 4-5, B tiles 6-7. Channels in steps of 64, of
 * one tap or, where that takes fewer steps, of one kernel row's k taps together (k * cin consecutive bytes);
 * fewer than 64 make the tiles narrower, and a last step of the remainder is the 64 channels ending at the
 * end with the B rows of those already summed set to 0. The integer sums are the same as every other
 * kernel's. Linux hands out the tile state only on request (arch_prctl ARCH_REQ_XCOMP_PERM, kernel 5.16+):
 * ob_kernels_init asks once; where that fails the VNNI kernel above runs instead. A thread keeps its tile
 * configuration between calls (reloaded only when it changes) until ob_kernels_done releases it. */
#define OB_K8_AMX
#define OB_MR8 32
#define OB_KERNEL8_NAME (ob_amx_ok > 0 ? "avx512-amx" : OB_KERNEL8_ZMM_NAME)

typedef struct {
    uint8_t palette, start_row, reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} ob_tilecfg;

static int ob_amx_ok;                   /* 0: not asked yet, 1: tiles usable, -1: not */
static __thread ob_tilecfg ob_tiles_now;   /* this thread's loaded tile configuration (palette 0: none) */

static void ob_kernels_init(void)
{
    if (!ob_amx_ok) {                   /* raw syscall: arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) */
        long rc;
        __asm__ volatile("syscall" : "=a"(rc) : "0"(158L), "D"(0x1023L), "S"(18L) : "rcx", "r11", "memory");
        ob_amx_ok = rc == 0 ? 1 : -1;
#if defined(ONEBIT_TEST_AMX_REFUSED)     /* tests: the path of a kernel that refuses the tile state */
        ob_amx_ok = -1;
#endif
    }
}

static void ob_kernels_done(void)       /* end of a thread's work: give the tile state back */
{
    if (ob_tiles_now.palette) {
        _tile_release();
        ob_tiles_now.palette = 0;
    }
}

/* B rows of step s (unit s / nci, flattened channels from 64 (s % nci), or the 64 ending at len) into b[0]
 * (outputs 0-15) and b[1] (16-31); a unit is `len` channels whose sign words follow one another (one tap, or
 * the k taps of a kernel row) */
static inline void ob_amx_b(const uint8_t *w, int len, int nci, int kb, int hi, int s, uint8_t (*b)[16][64])
{
    OB_W8_CONSTANTS
    const int ci = 64 * (s % nci), c0 = len >= 64 && ci + 64 > len ? len - 64 : ci;
    const uint8_t *wr = w + (size_t)(s / nci) * (size_t)len * OB_TAP_BYTES;
    int r;
    for (r = 0; r < kb / 4; r++) {
        __m512i lo, hv;
        if (c0 + 4 * r < ci) {                                  /* summed by the step before */
            lo = hv = _mm512_setzero_si512();
        } else {
            OB_W8(wr + OB_TAP_BYTES * (c0 + 4 * r), &lo, &hv);
        }
        _mm512_storeu_si512(b[0][r], lo);
        if (hi) _mm512_storeu_si512(b[1][r], hv);
    }
}

/* A step covers 64 of a unit's flattened channels. A unit is one tap (cin channels), or, where that takes
 * fewer steps (cin < 64), one kernel row: its k taps are k * cin consecutive bytes of a pixel's NHWC row
 * (and their sign words are consecutive too), so a 16-channel layer sums 48 bytes per tdpbusd, not 16. */
static void ob_k8_amx(const uint8_t *x, ptrdiff_t pix, ptrdiff_t row, int cin, int k, const uint8_t *w,
                      int mr, int nco, int32_t *acc)
{
    uint8_t b[2][16][64];
    ob_tilecfg cfg;
    const int by_row = k * ((k * cin + 63) / 64) < k * k * ((cin + 63) / 64);
    const int len = by_row ? k * cin : cin, units = by_row ? k : k * k;
    const int m0 = mr < 16 ? mr : 16, m1 = mr - m0, hi = nco > 16, kb = len < 64 ? len : 64;
    const int nci = (len + 63) / 64, steps = units * nci;
    int s, t;
    memset(&cfg, 0, sizeof cfg);
    cfg.palette = 1;
    for (t = 0; t < 4; t++) {           /* C: rows = pixels, 16 int32 columns */
        if ((t & 1) && !hi) continue;
        if (t >= 2 && !m1) continue;
        cfg.rows[t] = (uint8_t)(t < 2 ? m0 : m1);
        cfg.colsb[t] = 64;
    }
    cfg.rows[4] = (uint8_t)m0; cfg.colsb[4] = (uint16_t)kb;
    if (m1) { cfg.rows[5] = (uint8_t)m1; cfg.colsb[5] = (uint16_t)kb; }
    cfg.rows[6] = (uint8_t)(kb / 4); cfg.colsb[6] = 64;
    if (hi) { cfg.rows[7] = (uint8_t)(kb / 4); cfg.colsb[7] = 64; }
    if (memcmp(&cfg, &ob_tiles_now, sizeof cfg)) {
        _tile_loadconfig(&cfg);
        ob_tiles_now = cfg;
    }
    _tile_zero(0);
    if (hi) _tile_zero(1);
    if (m1) { _tile_zero(2); if (hi) _tile_zero(3); }
    for (s = 0; s < steps; s++) {
        const int u = s / nci, ci = 64 * (s % nci), c0 = len >= 64 && ci + 64 > len ? len - 64 : ci;
        const uint8_t *a = x + (by_row ? u * row : (u / k) * row + (ptrdiff_t)(u % k) * cin) + c0;
        ob_amx_b(w, len, nci, kb, hi, s, b);
        _tile_loadd(6, b[0], 64);
        _tile_loadd(4, a, pix);
        _tile_dpbusd(0, 4, 6);
        if (m1) { _tile_loadd(5, a + 16 * pix, pix); _tile_dpbusd(2, 5, 6); }
        if (hi) {
            _tile_loadd(7, b[1], 64);
            _tile_dpbusd(1, 4, 7);
            if (m1) _tile_dpbusd(3, 5, 7);
        }
    }
    _tile_stored(0, acc, OB_NCO * 4);
    if (hi) _tile_stored(1, acc + 16, OB_NCO * 4);
    if (m1) {
        _tile_stored(2, acc + 16 * OB_NCO, OB_NCO * 4);
        if (hi) _tile_stored(3, acc + 16 * OB_NCO + 16, OB_NCO * 4);
    }
}

static void ob_k8(const uint8_t *x, ptrdiff_t pix, ptrdiff_t row, int cin, int k, const uint8_t *w,
                  int mr, int nco, int32_t *acc)
{
    int p0;
    if (ob_amx_ok > 0) {
        ob_k8_amx(x, pix, row, cin, k, w, mr, nco, acc);
        return;
    }
    for (p0 = 0; p0 < mr; p0 += 8)
        ob_k8_zmm(x + p0 * pix, pix, row, cin, k, w, mr - p0 < 8 ? mr - p0 : 8, nco, acc + p0 * OB_NCO);
}
#else
#define ob_k8 ob_k8_zmm
#define OB_MR8 8
#define OB_KERNEL8_NAME OB_KERNEL8_ZMM_NAME
#endif
#endif
