/* onebit C runtime: portable C99 convolution kernels (the reference for the SIMD ones).
 *
 * A kernel computes, for `mr` output pixels of one row and the 32 output channels of one block,
 * acc[p][j] = sum over (ky, kx, ci) in that order of s * x, s = +1 if the weight bit is set else -1.
 * The integer kernel adds or subtracts (x ^ m) - m with m = 0 or -1: no multiplication at all.
 * Float sums are accumulated one term at a time in that order, so every kernel gives bit-identical
 * results; integer sums are exact in any order. Pixel p's window starts at x + p * pix. Only the first
 * `nco` outputs are needed (the others are a block's padding): a kernel may leave them unset.
 */
#define OB_MR 8
#define OB_KERNEL_NAME "portable"

static void ob_kf(const float *x, ptrdiff_t pix, ptrdiff_t row, int cin, int k, const uint8_t *w,
                  int mr, int nco, float *acc)
{
    int p, j, ky, kx, ci;
    (void)nco;
    for (p = 0; p < mr * OB_NCO; p++) acc[p] = 0.0f;
    for (ky = 0; ky < k; ky++) {
        for (kx = 0; kx < k; kx++) {
            const float *xr = x + ky * row + (ptrdiff_t)kx * cin;
            const uint8_t *wr = w + (size_t)(ky * k + kx) * (size_t)cin * OB_TAP_BYTES;
            for (ci = 0; ci < cin; ci++) {
                float s[OB_NCO];            /* this tap's signs as +-1.0f: v * s[j] is exactly +-v */
                for (j = 0; j < OB_NCO; j++) s[j] = ((wr[OB_TAP_BYTES * ci + (j >> 3)] >> (j & 7)) & 1) ? 1.0f : -1.0f;
                for (p = 0; p < mr; p++) {
                    const float v = xr[p * pix + ci];
                    float *a = acc + p * OB_NCO;
                    for (j = 0; j < OB_NCO; j++) a[j] += v * s[j];
                }
            }
        }
    }
}

#if ONEBIT_HAS_INT
static void ob_ki(const int16_t *x, ptrdiff_t pix, ptrdiff_t row, int cin, int k, const uint8_t *w,
                  int mr, int nco, int32_t *acc)
{
    int p, j, ky, kx, ci;
    (void)nco;
    for (p = 0; p < mr * OB_NCO; p++) acc[p] = 0;
    for (ky = 0; ky < k; ky++) {
        for (kx = 0; kx < k; kx++) {
            const int16_t *xr = x + ky * row + (ptrdiff_t)kx * cin;
            const uint8_t *wr = w + (size_t)(ky * k + kx) * (size_t)cin * OB_TAP_BYTES;
            for (ci = 0; ci < cin; ci++) {
                int32_t m[OB_NCO];          /* 0 where the weight is +1, -1 where it is -1 */
                for (j = 0; j < OB_NCO; j++) m[j] = ((wr[OB_TAP_BYTES * ci + (j >> 3)] >> (j & 7)) & 1) - 1;
                for (p = 0; p < mr; p++) {
                    const int32_t v = xr[p * pix + ci];
                    int32_t *a = acc + p * OB_NCO;
                    for (j = 0; j < OB_NCO; j++) a[j] += (v ^ m[j]) - m[j];   /* +v or -v: no multiply */
                }
            }
        }
    }
}
#endif
