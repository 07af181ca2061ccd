/* onebit C runtime: the 8-bit mode's portable C99 convolution kernel (the reference for the SIMD ones).
 *
 * For `mr` output pixels of one row and the 32 output channels of one block:
 * acc[p][j] = sum over (ky, kx, ci) of s * u, u the stored byte (0..255), s = +1 if the weight bit is set
 * else -1, each term +u or -u by a sign mask (no multiplication). The zero code's share (z * sum of
 * the signs) is removed by the output step. Integer sums are exact in any order, so every 8-bit kernel
 * gives these sums bit for bit. Pixel p's window
 * starts at x + p * pix. Only the first `nco` channels are needed (a kernel may skip the others: the
 * padding of a 16-channel layer). Kernel headers with their own 8-bit kernel define OB_HAVE_K8 and ob_k8.
 */
static void ob_k8_portable(const uint8_t *x, ptrdiff_t pix, ptrdiff_t row, int cin, int k, const uint8_t *w,
                           int mr, int nco, int32_t *acc)
{
    int p, j, ky, kx, ci;
    (void)nco;
    for (p = 0; p < mr * OB_NCO; p++) acc[p] = 0;
    for (ky = 0; ky < k; ky++) {
        for (kx = 0; kx < k; kx++) {
            const uint8_t *xr = x + ky * row + (ptrdiff_t)kx * cin;
            const uint8_t *wr = w + (size_t)(ky * k + kx) * (size_t)cin * OB_TAP_BYTES;
            for (ci = 0; ci < cin; ci++) {
                int32_t m[OB_NCO];          /* 0 where the weight is +1, -1 where it is -1 */
                for (j = 0; j < OB_NCO; j++) m[j] = ((wr[OB_TAP_BYTES * ci + (j >> 3)] >> (j & 7)) & 1) - 1;
                for (p = 0; p < mr; p++) {
                    const int32_t v = xr[p * pix + ci];
                    int32_t *a = acc + p * OB_NCO;
                    for (j = 0; j < OB_NCO; j++) a[j] += (v ^ m[j]) - m[j];   /* +u or -u: no multiply */
                }
            }
        }
    }
}
