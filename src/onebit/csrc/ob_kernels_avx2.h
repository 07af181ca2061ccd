/* onebit C runtime: AVX2 + FMA convolution kernels (same results as ob_kernels_portable.h).
 *
 * Float: 4 pixels x 16 output channels per pass (two passes per 32-channel block); each byte of sign
 * bits indexes a table of eight +-1.0f, and acc = fma(x, +-1, acc) = acc + (+-x) exactly, one term at a
 * time in the portable kernel's order. Integer: pairs of int16 inputs (consecutive input channels) times
 * +-1 int16 weight pairs with vpmaddwd, summed into int32.
 */
#include <immintrin.h>

#define OB_MR 4
#define OB_KERNEL_NAME "avx2"

/* float vector ops for the fused epilogues (onebit.c): the scalar epilogue's operations, 8 lanes */
#define OB_VW 8
typedef __m256 ob_vf;
#define ob_vload(p) _mm256_loadu_ps(p)
#define ob_vstore(p, v) _mm256_storeu_ps(p, v)
#define ob_vset1(x) _mm256_set1_ps(x)
#define ob_vzero() _mm256_setzero_ps()
#define ob_vadd(a, b) _mm256_add_ps(a, b)
#define ob_vmul(a, b) _mm256_mul_ps(a, b)
#define ob_vdiv(a, b) _mm256_div_ps(a, b)
#define ob_vmax(a, b) _mm256_max_ps(a, b)   /* a > b ? a : b, lane by lane */

#define OB_S(b, i) ((((b) >> (i)) & 1) ? 1.0f : -1.0f)
#define OB_ROWF(b) {OB_S(b, 0), OB_S(b, 1), OB_S(b, 2), OB_S(b, 3), OB_S(b, 4), OB_S(b, 5), OB_S(b, 6), OB_S(b, 7)}
#define OB_LO(b, i) ((((b) >> (i)) & 1) ? 1 : 0xFFFF)
#define OB_ROWLO(b) {OB_LO(b, 0), OB_LO(b, 1), OB_LO(b, 2), OB_LO(b, 3), OB_LO(b, 4), OB_LO(b, 5), OB_LO(b, 6), OB_LO(b, 7)}
#define OB_HI(b, i) ((((b) >> (i)) & 1) ? 0x10000 : -0x10000)
#define OB_ROWHI(b) {OB_HI(b, 0), OB_HI(b, 1), OB_HI(b, 2), OB_HI(b, 3), OB_HI(b, 4), OB_HI(b, 5), OB_HI(b, 6), OB_HI(b, 7)}
#define OB_T4(R, b) R(b), R((b) + 1), R((b) + 2), R((b) + 3)
#define OB_T16(R, b) OB_T4(R, b), OB_T4(R, (b) + 4), OB_T4(R, (b) + 8), OB_T4(R, (b) + 12)
#define OB_T64(R, b) OB_T16(R, b), OB_T16(R, (b) + 16), OB_T16(R, (b) + 32), OB_T16(R, (b) + 48)
#define OB_T256(R) OB_T64(R, 0), OB_T64(R, 64), OB_T64(R, 128), OB_T64(R, 192)

/* byte of sign bits -> eight +-1.0f; -> eight int32 with +-1 in the low / high int16 half */
static const float ob_lut_f[256][8] = {OB_T256(OB_ROWF)};
static const int32_t ob_lut_lo[256][8] = {OB_T256(OB_ROWLO)};
static const int32_t ob_lut_hi[256][8] = {OB_T256(OB_ROWHI)};

static void ob_kf16(const float *x, ptrdiff_t pix, ptrdiff_t row, int cin, int k, const uint8_t *w,
                    int half, int mr, float *acc)
{
    __m256 a00 = _mm256_setzero_ps(), a01 = a00, a10 = a00, a11 = a00;
    __m256 a20 = a00, a21 = a00, a30 = a00, a31 = a00;
    const ptrdiff_t o1 = (mr > 1 ? 1 : 0) * pix, o2 = (mr > 2 ? 2 : mr - 1) * pix;
    const ptrdiff_t o3 = (mr > 3 ? 3 : mr - 1) * pix;
    int ky, kx, ci, p;
    for (ky = 0; ky < k; ky++) {
        for (kx = 0; kx < k; kx++) {
            const float *b0 = x + ky * row + (ptrdiff_t)kx * cin;
            const float *b1 = b0 + o1, *b2 = b0 + o2, *b3 = b0 + o3;
            const uint8_t *wr = w + (size_t)(ky * k + kx) * (size_t)cin * OB_TAP_BYTES + 2 * half;
            for (ci = 0; ci < cin; ci++) {
                const __m256 w0 = _mm256_loadu_ps(ob_lut_f[wr[OB_TAP_BYTES * ci]]);
                const __m256 w1 = _mm256_loadu_ps(ob_lut_f[wr[OB_TAP_BYTES * ci + 1]]);
                __m256 v;
                v = _mm256_broadcast_ss(b0 + ci); a00 = _mm256_fmadd_ps(v, w0, a00); a01 = _mm256_fmadd_ps(v, w1, a01);
                v = _mm256_broadcast_ss(b1 + ci); a10 = _mm256_fmadd_ps(v, w0, a10); a11 = _mm256_fmadd_ps(v, w1, a11);
                v = _mm256_broadcast_ss(b2 + ci); a20 = _mm256_fmadd_ps(v, w0, a20); a21 = _mm256_fmadd_ps(v, w1, a21);
                v = _mm256_broadcast_ss(b3 + ci); a30 = _mm256_fmadd_ps(v, w0, a30); a31 = _mm256_fmadd_ps(v, w1, a31);
            }
        }
    }
    {
        float tmp[OB_MR][16];
        _mm256_storeu_ps(tmp[0], a00); _mm256_storeu_ps(tmp[0] + 8, a01);
        _mm256_storeu_ps(tmp[1], a10); _mm256_storeu_ps(tmp[1] + 8, a11);
        _mm256_storeu_ps(tmp[2], a20); _mm256_storeu_ps(tmp[2] + 8, a21);
        _mm256_storeu_ps(tmp[3], a30); _mm256_storeu_ps(tmp[3] + 8, a31);
        for (p = 0; p < mr; p++) memcpy(acc + p * OB_NCO + 16 * half, tmp[p], sizeof tmp[p]);
    }
}

static void ob_kf(const float *x, ptrdiff_t pix, ptrdiff_t row, int cin, int k, const uint8_t *w,
                  int mr, int nco, float *acc)
{
    ob_kf16(x, pix, row, cin, k, w, 0, mr, acc);
    if (nco > 16) ob_kf16(x, pix, row, cin, k, w, 1, mr, acc);
}

#if ONEBIT_HAS_INT
static void ob_ki16(const int16_t *x, ptrdiff_t pix, ptrdiff_t row, int cin, int k, const uint8_t *w,
                    int half, int mr, int32_t *acc)
{
    __m256i a00 = _mm256_setzero_si256(), a01 = a00, a10 = a00, a11 = a00;
    __m256i a20 = a00, a21 = a00, a30 = a00, a31 = a00;
    const ptrdiff_t o1 = (mr > 1 ? 1 : 0) * pix, o2 = (mr > 2 ? 2 : mr - 1) * pix;
    const ptrdiff_t o3 = (mr > 3 ? 3 : mr - 1) * pix;
    int ky, kx, ci, p;
    for (ky = 0; ky < k; ky++) {
        for (kx = 0; kx < k; kx++) {
            const int16_t *b0 = x + ky * row + (ptrdiff_t)kx * cin;
            const int16_t *b1 = b0 + o1, *b2 = b0 + o2, *b3 = b0 + o3;
            const uint8_t *wr = w + (size_t)(ky * k + kx) * (size_t)cin * OB_TAP_BYTES + 2 * half;
            for (ci = 0; ci < cin; ci += 2) {
                const uint8_t *q0 = wr + OB_TAP_BYTES * ci, *q1 = q0 + OB_TAP_BYTES;
                const __m256i w0 = _mm256_or_si256(_mm256_loadu_si256((const __m256i *)ob_lut_lo[q0[0]]),
                                                   _mm256_loadu_si256((const __m256i *)ob_lut_hi[q1[0]]));
                const __m256i w1 = _mm256_or_si256(_mm256_loadu_si256((const __m256i *)ob_lut_lo[q0[1]]),
                                                   _mm256_loadu_si256((const __m256i *)ob_lut_hi[q1[1]]));
                int32_t pr;
                __m256i v;
#define OB_STEP(bp, A0, A1) memcpy(&pr, (bp) + ci, 4); v = _mm256_set1_epi32(pr); \
                A0 = _mm256_add_epi32(A0, _mm256_madd_epi16(v, w0)); A1 = _mm256_add_epi32(A1, _mm256_madd_epi16(v, w1));
                OB_STEP(b0, a00, a01)
                OB_STEP(b1, a10, a11)
                OB_STEP(b2, a20, a21)
                OB_STEP(b3, a30, a31)
#undef OB_STEP
            }
        }
    }
    {
        int32_t tmp[OB_MR][16];
        _mm256_storeu_si256((__m256i *)tmp[0], a00); _mm256_storeu_si256((__m256i *)(tmp[0] + 8), a01);
        _mm256_storeu_si256((__m256i *)tmp[1], a10); _mm256_storeu_si256((__m256i *)(tmp[1] + 8), a11);
        _mm256_storeu_si256((__m256i *)tmp[2], a20); _mm256_storeu_si256((__m256i *)(tmp[2] + 8), a21);
        _mm256_storeu_si256((__m256i *)tmp[3], a30); _mm256_storeu_si256((__m256i *)(tmp[3] + 8), a31);
        for (p = 0; p < mr; p++) memcpy(acc + p * OB_NCO + 16 * half, tmp[p], sizeof tmp[p]);
    }
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
 * (8 per vector) and its four bytes are input channels ci..ci+3, so one vpdpbusd (AVX-VNNI) or
 * vpmaddubsw + vpmaddwd adds four u8 x (+-1) products per lane. The +-1 bytes 4j + c come from the sign
 * byte of channel c (outputs j = 0..7 of the vector) through a table with +-1 in byte 0 of each lane,
 * shifted to byte c. The four bytes u[ci..ci+3] of a pixel are broadcast. Needs cin % 4 == 0. */
#define OB_HAVE_K8
#if defined(__AVXVNNI__)
#define OB_KERNEL8_NAME "avx2-vnni"
#define OB_DP8(A, V, W) A = _mm256_dpbusd_avx_epi32(A, V, W)
#else
#define OB_KERNEL8_NAME "avx2"
#define OB_DP8(A, V, W) A = _mm256_add_epi32(A, _mm256_madd_epi16(_mm256_maddubs_epi16(V, W), ones16))
#endif
#define OB_B0(b, i) ((((b) >> (i)) & 1) ? 1 : 0xFF)
#define OB_ROWB0(b) {OB_B0(b, 0), OB_B0(b, 1), OB_B0(b, 2), OB_B0(b, 3), OB_B0(b, 4), OB_B0(b, 5), OB_B0(b, 6), OB_B0(b, 7)}
/* byte of sign bits -> eight int32 lanes with +-1 (as a byte: 1 or 0xFF) in byte 0 */
static const int32_t ob_lut_b0[256][8] = {OB_T256(OB_ROWB0)};

static inline __m256i ob_w8x8(const uint8_t *q)        /* q[4c]: sign byte of channel c, these 8 outputs */
{
    const __m256i c0 = _mm256_loadu_si256((const __m256i *)ob_lut_b0[q[0]]);
    const __m256i c1 = _mm256_slli_epi32(_mm256_loadu_si256((const __m256i *)ob_lut_b0[q[4]]), 8);
    const __m256i c2 = _mm256_slli_epi32(_mm256_loadu_si256((const __m256i *)ob_lut_b0[q[8]]), 16);
    const __m256i c3 = _mm256_slli_epi32(_mm256_loadu_si256((const __m256i *)ob_lut_b0[q[12]]), 24);
    return _mm256_or_si256(_mm256_or_si256(c0, c1), _mm256_or_si256(c2, c3));
}

static void ob_k8_16(const uint8_t *x, ptrdiff_t pix, ptrdiff_t row, int cin, int k, const uint8_t *w,
                     int half, int mr, int32_t *acc)
{
#if !defined(__AVXVNNI__)
    const __m256i ones16 = _mm256_set1_epi16(1);
#endif
    __m256i a00 = _mm256_setzero_si256(), a01 = a00, a10 = a00, a11 = a00;
    __m256i a20 = a00, a21 = a00, a30 = a00, a31 = a00;
    const ptrdiff_t o1 = (mr > 1 ? 1 : 0) * pix, o2 = (mr > 2 ? 2 : mr - 1) * pix;
    const ptrdiff_t o3 = (mr > 3 ? 3 : mr - 1) * pix;
    int ky, kx, ci, p;
    for (ky = 0; ky < k; ky++) {
        for (kx = 0; kx < k; kx++) {
            const uint8_t *b0 = x + ky * row + (ptrdiff_t)kx * cin;
            const uint8_t *b1 = b0 + o1, *b2 = b0 + o2, *b3 = b0 + o3;
            const uint8_t *wr = w + (size_t)(ky * k + kx) * (size_t)cin * OB_TAP_BYTES + 2 * half;
            for (ci = 0; ci < cin; ci += 4) {
                const uint8_t *q = wr + OB_TAP_BYTES * ci;
                const __m256i w0 = ob_w8x8(q), w1 = ob_w8x8(q + 1);
                int32_t pr;
                __m256i v;
#define OB_STEP(bp, A0, A1) memcpy(&pr, (bp) + ci, 4); v = _mm256_set1_epi32(pr); OB_DP8(A0, v, w0); OB_DP8(A1, v, w1);
                OB_STEP(b0, a00, a01)
                OB_STEP(b1, a10, a11)
                OB_STEP(b2, a20, a21)
                OB_STEP(b3, a30, a31)
#undef OB_STEP
            }
        }
    }
    {
        int32_t tmp[4][16];
        _mm256_storeu_si256((__m256i *)tmp[0], a00); _mm256_storeu_si256((__m256i *)(tmp[0] + 8), a01);
        _mm256_storeu_si256((__m256i *)tmp[1], a10); _mm256_storeu_si256((__m256i *)(tmp[1] + 8), a11);
        _mm256_storeu_si256((__m256i *)tmp[2], a20); _mm256_storeu_si256((__m256i *)(tmp[2] + 8), a21);
        _mm256_storeu_si256((__m256i *)tmp[3], a30); _mm256_storeu_si256((__m256i *)(tmp[3] + 8), a31);
        for (p = 0; p < mr; p++) memcpy(acc + p * OB_NCO + 16 * half, tmp[p], sizeof tmp[p]);
    }
}

static void ob_k8(const uint8_t *x, ptrdiff_t pix, ptrdiff_t row, int cin, int k, const uint8_t *w,
                  int mr, int nco, int32_t *acc)
{
    ob_k8_16(x, pix, row, cin, k, w, 0, mr, acc);
    if (nco > 16) ob_k8_16(x, pix, row, cin, k, w, 1, mr, acc);
}
#define OB_MR8 4
#endif
