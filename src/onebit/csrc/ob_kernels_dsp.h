/* onebit C runtime: kernels for Cortex-M cores with the DSP extension (ARMv7E-M: Cortex-M4, M7;
 * ARMv8-M Mainline with DSP: M33, M55), selected when the compiler defines __ARM_FEATURE_DSP.
 *
 * The portable kernel's sum acc[p][j] = sum_t s_tj x_tp (s = +-1 from the weight bits, t over (ky, kx, ci))
 * is computed as acc = 2 P - S with P[p][j] = sum over the taps whose bit is set of x_tp and
 * S[p] = sum_t x_tp (since s = 2 b - 1). Input channels are stored in pairs (cin is even, NHWC), so one
 * 32-bit load gives (x_ci, x_ci+1) as two signed 16-bit lanes, and SMLAD (dual 16 x 16 multiply, both
 * products added to a 32-bit accumulator) adds b_ci x_ci + b_ci+1 x_ci+1 for the lanes (b_ci, b_ci+1) in
 * {0, 1}: two conditional additions in one single-cycle instruction, with each weight lane pair shared by
 * the OB_MR pixels of the tile. Integer sums are exact in any order, so the logits are bit-identical to
 * the portable kernel's (and to every other kernel's). */
#include <arm_acle.h>

#define OB_MR 8                         /* pixels per tile (the full-tile kernel assumes 8) */
#define OB_KERNEL_NAME "dsp"

/* Float kernel (FPU): for each output channel j, the eight pixels' sums stay in registers over all taps,
 * and the term s * x (exactly +-x) is x with its sign bit flipped when the weight bit is 0, so every sum
 * takes the same terms in the same order (ky, kx, ci) as the portable kernel: bit-identical results.
 * Outputs whose weights are all +1 (the padding of a 16-channel layer) have identical sums, computed once. */
static inline uint32_t ob_fbits(const float *p)
{
    uint32_t v;
    memcpy(&v, p, 4);
    return v;
}

static inline float ob_bitsf(uint32_t v)
{
    float f;
    memcpy(&f, &v, 4);
    return f;
}

static void ob_kf(const float *x, ptrdiff_t pix, ptrdiff_t row, int cin, int k, const uint8_t *w, int mr,
                  int nco, float *acc)
{
    int p, j, ky, kx, ci;
    if (mr != OB_MR) {                  /* partial tile: one pixel at a time, same order */
        for (p = 0; p < mr; p++)
            for (j = 0; j < nco; j++) {
                float a = 0.0f;
                for (ky = 0; ky < k; ky++)
                    for (kx = 0; kx < k; kx++)
                        for (ci = 0; ci < cin; ci++) {
                            uint32_t word;
                            memcpy(&word, w + ((size_t)(ky * k + kx) * (size_t)cin + (size_t)ci) * 4, 4);
                            a += ob_bitsf(ob_fbits(x + ky * row + (ptrdiff_t)kx * cin + p * pix + ci) ^
                                          ((~word >> j) & 1u) << 31);
                        }
                acc[p * OB_NCO + j] = a;
            }
        return;
    }
    uint32_t ones = 0xFFFFFFFFu;        /* outputs whose weights are all +1 (e.g. a block's padding) */
    int first_one = -1;
    size_t t;
    for (t = 0; t < (size_t)k * (size_t)k * (size_t)cin; t++) {
        uint32_t word;
        memcpy(&word, w + 4 * t, 4);
        ones &= word;
    }
    for (j = 0; j < OB_NCO; j++) {
        float a0 = 0.0f, a1 = 0.0f, a2 = 0.0f, a3 = 0.0f, a4 = 0.0f, a5 = 0.0f, a6 = 0.0f, a7 = 0.0f;
        if ((ones >> j) & 1u) {         /* all-+1 outputs have the same sums: compute them once */
            if (first_one >= 0) {
                for (p = 0; p < OB_MR; p++) acc[p * OB_NCO + j] = acc[p * OB_NCO + first_one];
                continue;
            }
            first_one = j;
        }
        for (ky = 0; ky < k; ky++) {
            for (kx = 0; kx < k; kx++) {
                const float *xr = x + ky * row + (ptrdiff_t)kx * cin;
                const uint8_t *wr = w + (size_t)(ky * k + kx) * (size_t)cin * 4;
                for (ci = 0; ci < cin; ci++) {
                    const float *xc = xr + ci;
                    uint32_t word, m;
                    memcpy(&word, wr + 4 * ci, 4);
                    m = ((~word >> j) & 1u) << 31;          /* sign flip where the weight is -1 */
                    a0 += ob_bitsf(ob_fbits(xc) ^ m);
                    a1 += ob_bitsf(ob_fbits(xc + pix) ^ m);
                    a2 += ob_bitsf(ob_fbits(xc + 2 * pix) ^ m);
                    a3 += ob_bitsf(ob_fbits(xc + 3 * pix) ^ m);
                    a4 += ob_bitsf(ob_fbits(xc + 4 * pix) ^ m);
                    a5 += ob_bitsf(ob_fbits(xc + 5 * pix) ^ m);
                    a6 += ob_bitsf(ob_fbits(xc + 6 * pix) ^ m);
                    a7 += ob_bitsf(ob_fbits(xc + 7 * pix) ^ m);
                }
            }
        }
        acc[j] = a0; acc[OB_NCO + j] = a1; acc[2 * OB_NCO + j] = a2; acc[3 * OB_NCO + j] = a3;
        acc[4 * OB_NCO + j] = a4; acc[5 * OB_NCO + j] = a5; acc[6 * OB_NCO + j] = a6; acc[7 * OB_NCO + j] = a7;
    }
}

#if ONEBIT_HAS_INT
/* P += b x for one weight lane pair b and the eight pixels' channel pairs x0..x7 */
#define OB_SMLAD8(P, b)                                                                                 \
    do {                                                                                                \
        (P)[0] = __smlad(x0, (b), (P)[0]); (P)[1] = __smlad(x1, (b), (P)[1]);                           \
        (P)[2] = __smlad(x2, (b), (P)[2]); (P)[3] = __smlad(x3, (b), (P)[3]);                           \
        (P)[4] = __smlad(x4, (b), (P)[4]); (P)[5] = __smlad(x5, (b), (P)[5]);                           \
        (P)[6] = __smlad(x6, (b), (P)[6]); (P)[7] = __smlad(x7, (b), (P)[7]);                           \
    } while (0)

static inline int32_t ob_pair(const int16_t *p)
{
    int32_t v;
    memcpy(&v, p, 4);                   /* (p[0], p[1]) as the low and high 16-bit lanes */
    return v;
}

/* P (channel-major [j][8]) and S of a full tile of eight pixels */
static __attribute__((noinline)) void ob_ki_sums8(const int16_t *x, ptrdiff_t pix, ptrdiff_t row, int cin,
                                                  int k, const uint8_t *w, int halves, int32_t (*pos)[8],
                                                  int32_t *tot)
{
    int j, ky, kx, ci;
    for (ky = 0; ky < k; ky++) {
        for (kx = 0; kx < k; kx++) {
            const int16_t *xr = x + ky * row + (ptrdiff_t)kx * cin;
            const uint8_t *wr = w + (size_t)(ky * k + kx) * (size_t)cin * 4;
            for (ci = 0; ci < cin; ci += 2) {
                const int16_t *xc = xr + ci;
                const int32_t x0 = ob_pair(xc), x1 = ob_pair(xc + pix), x2 = ob_pair(xc + 2 * pix),
                              x3 = ob_pair(xc + 3 * pix), x4 = ob_pair(xc + 4 * pix), x5 = ob_pair(xc + 5 * pix),
                              x6 = ob_pair(xc + 6 * pix), x7 = ob_pair(xc + 7 * pix);
                uint32_t wa, wb, lo, hi;
                memcpy(&wa, wr + 4 * ci, 4);            /* bits of input channel ci, outputs 0..31 */
                memcpy(&wb, wr + 4 * ci + 4, 4);        /* input channel ci + 1 */
                lo = (wa & 0xFFFFu) | (wb << 16);        /* lane pairs of outputs 0..15 */
                hi = (wa >> 16) | (wb & 0xFFFF0000u);    /* outputs 16..31 */
                OB_SMLAD8(tot, 0x00010001);
                if (halves == 2) {
                    for (j = 0; j < OB_NCO / 2; j++) {
                        const int32_t bl = (int32_t)((lo >> j) & 0x00010001u);
                        const int32_t bh = (int32_t)((hi >> j) & 0x00010001u);
                        OB_SMLAD8(pos[j], bl);
                        OB_SMLAD8(pos[OB_NCO / 2 + j], bh);
                    }
                } else {
                    for (j = 0; j < OB_NCO / 2; j++) {
                        const int32_t bl = (int32_t)((lo >> j) & 0x00010001u);
                        OB_SMLAD8(pos[j], bl);
                    }
                }
            }
        }
    }
}

/* the same for a partial tile of mr < 8 pixels */
static void ob_ki_sums(const int16_t *x, ptrdiff_t pix, ptrdiff_t row, int cin, int k, const uint8_t *w,
                       int mr, int32_t (*pos)[8], int32_t *tot)
{
    int p, j, ky, kx, ci;
    for (ky = 0; ky < k; ky++)
        for (kx = 0; kx < k; kx++)
            for (ci = 0; ci < cin; ci += 2) {
                const uint8_t *wr = w + ((size_t)(ky * k + kx) * (size_t)cin + (size_t)ci) * 4;
                uint32_t wa, wb;
                memcpy(&wa, wr, 4);
                memcpy(&wb, wr + 4, 4);
                for (p = 0; p < mr; p++) {
                    const int32_t xp = ob_pair(x + ky * row + (ptrdiff_t)kx * cin + p * pix + ci);
                    tot[p] = __smlad(xp, 0x00010001, tot[p]);
                    for (j = 0; j < OB_NCO; j++)
                        pos[j][p] = __smlad(xp, (int32_t)(((wa >> j) & 1u) | (((wb >> j) & 1u) << 16)), pos[j][p]);
                }
            }
}

static void ob_ki(const int16_t *x, ptrdiff_t pix, ptrdiff_t row, int cin, int k, const uint8_t *w, int mr,
                  int nco, int32_t *acc)
{
    int32_t pos[OB_NCO][8], tot[8];
    int p, j;
    uint32_t all = 0xFFFFFFFFu;
    size_t t;
    (void)nco;                          /* the padding outputs are all +1: skipped below */
    /* Outputs 16..31 whose bits are all 1 (the padding of a 16-channel layer, or a real channel with
     * every weight +1) have P = S exactly: skip their half of the work. */
    for (t = 0; t < (size_t)k * (size_t)k * (size_t)cin; t++) {
        uint32_t word;
        memcpy(&word, w + 4 * t, 4);
        all &= word;
    }
    memset(pos, 0, sizeof pos);
    memset(tot, 0, sizeof tot);
    if (mr == 8) ob_ki_sums8(x, pix, row, cin, k, w, (all >> 16) == 0xFFFFu ? 1 : 2, pos, tot);
    else ob_ki_sums(x, pix, row, cin, k, w, mr, pos, tot);
    for (p = 0; p < mr; p++)                    /* acc = 2 P - S, in wrapping unsigned arithmetic */
        for (j = 0; j < OB_NCO; j++)
            acc[p * OB_NCO + j] = (int32_t)(2u * (uint32_t)(mr == 8 && j >= OB_NCO / 2 && (all >> 16) == 0xFFFFu
                                                                ? tot[p] : pos[j][p]) - (uint32_t)tot[p]);
}
#endif

#if ONEBIT_HAS_INT8
/* 8-bit mode (ob_kernels8_portable.h): USADA8 adds |u_c - x_c| over the four bytes of a word to an
 * accumulator in one instruction. With x_c = 0 where the weight is +1 and 255 where it is -1, each term
 * is u (weight +1) or 255 - u (weight -1), so sum |u - x| = sum s * u + 255 * (number of -1 weights): one
 * instruction per 4 multiply-accumulates of one pixel and one output. That constant is per output
 * channel: the output step subtracts it with the zero code's share (OB_K8_NEG_BIAS: q8_zwn = zw + 255 *
 * the -1 weights, instead of q8_zw). The words x of the 32 outputs of
 * four input channels are made from their four sign words once per (tap, channel group): the bits of
 * each byte column are spread four apart by a table (ob_spread4) and or-ed into a nibble per output, which
 * indexes the sixteen possible x (ob_negmask), shared by up to 16 pixels, four at a time. */
#define OB_HAVE_K8
#define OB_K8_NEG_BIAS
#define OB_KERNEL8_NAME "dsp"

#define OB_S4(v) ((((v) & 1u)) | (((v) & 2u) << 3) | (((v) & 4u) << 6) | (((v) & 8u) << 9) | \
                  (((v) & 16u) << 12) | (((v) & 32u) << 15) | (((v) & 64u) << 18) | (((v) & 128u) << 21))
#define OB_S4_4(b) OB_S4(b), OB_S4((b) + 1), OB_S4((b) + 2), OB_S4((b) + 3)
#define OB_S4_16(b) OB_S4_4(b), OB_S4_4((b) + 4), OB_S4_4((b) + 8), OB_S4_4((b) + 12)
#define OB_S4_64(b) OB_S4_16(b), OB_S4_16((b) + 16), OB_S4_16((b) + 32), OB_S4_16((b) + 48)
/* bit i of a byte -> bit 4i of a word */
static const uint32_t ob_spread4[256] = {OB_S4_64(0u), OB_S4_64(64u), OB_S4_64(128u), OB_S4_64(192u)};
#define OB_NM(n) ((((n) & 1u) ? 0u : 0xFFu) | (((n) & 2u) ? 0u : 0xFF00u) | (((n) & 4u) ? 0u : 0xFF0000u) | \
                  (((n) & 8u) ? 0u : 0xFF000000u))
/* nibble of four weight bits (bit c: channel c, 1 = +1) -> byte c = 0 (+1) or 255 (-1) */
static const uint32_t ob_negmask[16] = {OB_NM(0u), OB_NM(1u), OB_NM(2u), OB_NM(3u), OB_NM(4u), OB_NM(5u),
                                        OB_NM(6u), OB_NM(7u), OB_NM(8u), OB_NM(9u), OB_NM(10u), OB_NM(11u),
                                        OB_NM(12u), OB_NM(13u), OB_NM(14u), OB_NM(15u)};

static inline uint32_t ob_word(const uint8_t *p)
{
    uint32_t v;
    memcpy(&v, p, 4);
    return v;
}

/* sums[j][0..3] += |u_p - x_j| for four pixels' channel words u0..u3 and the outputs' x words xm[0..nj) (nj a
 * multiple of 4): with GCC / Clang on Thumb-2, four outputs an iteration, an LDRD for two outputs' x words and
 * one LDM / STM for each output's four sums (28 instructions per 64 multiply-accumulates); else the same loop
 * in C. */
#if defined(__GNUC__) && defined(__thumb2__)
/* one output: its four pixels' sums (LDM), += |u_p - x| for the x word in operand m, stored back (STM) */
#define OB_K8_OUTPUT(m) \
    "ldm %[s], {r8, r9, r10, r11}\n\t" \
    "usada8 r8, %[u0], %[" m "], r8\n\t" \
    "usada8 r9, %[u1], %[" m "], r9\n\t" \
    "usada8 r10, %[u2], %[" m "], r10\n\t" \
    "usada8 r11, %[u3], %[" m "], r11\n\t" \
    "stmia %[s]!, {r8, r9, r10, r11}\n\t"
static __attribute__((noinline)) void ob_k8_group(uint32_t u0, uint32_t u1, uint32_t u2, uint32_t u3,
                                                  const uint32_t *xm, int nj, uint32_t *sums)
{
    const uint32_t *end = xm + nj;
    uint32_t m0, m1;
    __asm__ __volatile__(
        "1:\n\t"
        "ldrd %[m0], %[m1], [%[xm]], #8\n\t"
        OB_K8_OUTPUT("m0") OB_K8_OUTPUT("m1")
        "ldrd %[m0], %[m1], [%[xm]], #8\n\t"
        OB_K8_OUTPUT("m0") OB_K8_OUTPUT("m1")
        "cmp %[xm], %[end]\n\t"
        "bne 1b\n\t"
        : [xm] "+r"(xm), [s] "+r"(sums), [m0] "=&r"(m0), [m1] "=&r"(m1)
        : [u0] "r"(u0), [u1] "r"(u1), [u2] "r"(u2), [u3] "r"(u3), [end] "r"(end)
        : "r8", "r9", "r10", "r11", "cc", "memory");
}
#else
static void ob_k8_group(uint32_t u0, uint32_t u1, uint32_t u2, uint32_t u3, const uint32_t *xm, int nj,
                        uint32_t *sums)
{
    const uint32_t *end = xm + nj;
    do {
        const uint32_t m = *xm++;
        sums[0] = __usada8(u0, m, sums[0]);
        sums[1] = __usada8(u1, m, sums[1]);
        sums[2] = __usada8(u2, m, sums[2]);
        sums[3] = __usada8(u3, m, sums[3]);
        sums += 4;
    } while (xm != end);
}
#endif

/* up to 16 pixels (four groups of four) share each (tap, channel group)'s 32 x words */
static __attribute__((noinline)) void ob_k8(const uint8_t *x, ptrdiff_t pix, ptrdiff_t row, int cin, int k,
                                            const uint8_t *w, int mr, int nco, int32_t *acc)
{
    uint32_t sums[4][OB_NCO][4], xm[OB_NCO];
    const int nj = nco > OB_NCO / 2 ? OB_NCO : OB_NCO / 2;      /* a 16-channel block: half the outputs */
    const int groups = (mr + 3) / 4;
    ptrdiff_t o[16];
    int ky, kx, ci, j, p, b, g;
    for (p = 0; p < 16; p++) o[p] = (p < mr ? p : mr - 1) * pix;
    memset(sums, 0, sizeof sums[0] * (size_t)groups);
    for (ky = 0; ky < k; ky++) {
        for (kx = 0; kx < k; kx++) {
            const uint8_t *xr = x + ky * row + (ptrdiff_t)kx * cin;
            const uint8_t *wr = w + (size_t)(ky * k + kx) * (size_t)cin * 4;
            for (ci = 0; ci < cin; ci += 4) {
                const uint32_t w0 = ob_word(wr + 4 * ci), w1 = ob_word(wr + 4 * ci + 4);
                const uint32_t w2 = ob_word(wr + 4 * ci + 8), w3 = ob_word(wr + 4 * ci + 12);
                const uint8_t *xc = xr + ci;
                for (b = 0; b < nj / 8; b++) {          /* outputs 8b..8b+7: nibble jj of n is output 8b+jj */
                    const int s = 8 * b;
                    uint32_t n = ob_spread4[(w0 >> s) & 255u] | (ob_spread4[(w1 >> s) & 255u] << 1) |
                                 (ob_spread4[(w2 >> s) & 255u] << 2) | (ob_spread4[(w3 >> s) & 255u] << 3);
                    for (j = 0; j < 8; j++, n >>= 4) xm[s + j] = ob_negmask[n & 15u];
                }
                for (g = 0; g < groups; g++)
                    ob_k8_group(ob_word(xc + o[4 * g]), ob_word(xc + o[4 * g + 1]), ob_word(xc + o[4 * g + 2]),
                                ob_word(xc + o[4 * g + 3]), xm, nj, sums[g][0]);
            }
        }
    }
    for (p = 0; p < mr; p++)                    /* the sum of |u - x| is sum s u + 255 * (-1 weights) */
        for (j = 0; j < nj; j++) acc[p * OB_NCO + j] = (int32_t)sums[p >> 2][j][p & 3];
}
#define OB_MR8 16
#endif
