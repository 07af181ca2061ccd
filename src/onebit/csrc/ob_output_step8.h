/* onebit C runtime: the 8-bit mode's output step, written once for every lane width.
 *
 * onebit.c includes this file once per lane width after defining OS_NAME (the function), OS_ATTR (its
 * attributes: OB_NOINLINE for the scalar steps, which then keep their values in registers), OS_W (lanes),
 * OS_V (OS_W lanes of int64 working values) and the lane primitives os_*; the file #undefs them all. For
 * the n output channels co0.. of one pixel (n a multiple of OS_W; element offset o of the pixel in the
 * NHWC R tensors; out8: the pixel's bytes (T, or A; NULL: A not stored, a streamed block), from
 * the kernel's sums acc' (see
 * ob_kernels8_portable.h) and zw = z_src * sum of the signs (OB_ZW: q8_zw, or q8_zwn for a kernel that
 * adds 255 per -1 weight), acc = acc' - zw (the convolution of the real
 * values' codes u - z) and, with rq(v, m, sh) = (v * m + 2^(sh-1)) >> sh and byte(v) = clamp(v, 0, 255):
 *
 *   EPI_ACT:  T = byte(rq(acc, q8_m, q8_sh) + q8_z)                 (srelu: s_T = 1/z, the clamp at 0 is -1)
 *             T = byte(rq(acc, q8_act_m[co], q8_act_sh) + q8_act_b[co])         (affine_relu: BN + ReLU)
 *   EPI_RES:  R = sat16(rq(acc, q8_m, q8_sh) + shortcut(R_prev))    (shortcut as in the integer mode:
 *             rq(R_prev, q_res_m, q_res_sh), or the pool's rq(window sum, q_pool_m[count], q_pool_sh))
 *             A = byte(rq(R, q8_a_m, q8_a_sh) + q8_z)  |  byte(rq(R, q8_act_m[co], q8_act_sh) + q8_act_b[co])
 *
 * Every rq operand fits in int32 (sums of bytes, int16 values, pool sums of nine). R is stored (int16)
 * when a later step reads it, T and A as bytes. Every width executes the same
 * operations in the same order on each lane, so the results agree bit for bit with onebit/export/int8.py.
 */

static OS_ATTR void OS_NAME(const ob_layer *L, uint8_t *out8, int16_t *dst, const int16_t *res, size_t o,
                    int oy, int ox, int co0, int n, const int32_t *acc)
{
    /* the layer's constants in locals: byte stores may alias anything, so the compiler would reload them */
    const int32_t *const zw = OB_ZW(L), *const act_m = L->q8_act_m, *const act_b = L->q8_act_b;
    const int32_t m = L->q8_m, a_m = L->q8_a_m, z = L->q8_z, res_m = L->q_res_m;
    const int sh = L->q8_sh, a_sh = L->q8_a_sh, act_sh = L->q8_act_sh, res_sh = L->q_res_sh;
    const int srelu = L->act == OB_ACT_SRELU, kind = L->res, res_c = L->res_c;
    int j;
    if (L->epi == OB_EPI_ACT) {
        for (j = 0; j < n; j += OS_W) {
            const int co = co0 + j;
            const OS_V v = os_sub(os_acc(acc + j), os_acc(zw + co));
            if (srelu) os_store8(out8 + co, os_add(os_rq(v, m, sh), os_set1(z)));
            else os_store8(out8 + co, os_affine(v, act_m + co, act_b + co, act_sh));
        }
        return;
    }
    {
        int y0 = 0, x0 = 0, count = 0, pool_sh = L->q_pool_sh;
        int32_t pool_m = 0;
        const size_t w2 = (size_t)L->res_w + 2;
        if (kind == OB_RES_POOL) {
            count = ob_pool_window(L, oy, ox, &y0, &x0);
            pool_m = L->q_pool_m[count];
        }
        for (j = 0; j < n; j += OS_W) {
            const int co = co0 + j;
            OS_V v = os_rq(os_sub(os_acc(acc + j), os_acc(zw + co)), m, sh);
            if (kind == OB_RES_IDENTITY) {
                v = os_add(v, os_rq(os_load16(res + o + co), res_m, res_sh));
            } else if (kind == OB_RES_POOL && co < res_c) {
                int dy, dx;
                OS_V s = os_set1(0);
                for (dy = 0; dy < 3; dy++)
                    for (dx = 0; dx < 3; dx++)
                        s = os_add(s, os_load16(res + ((size_t)(y0 + dy + 1) * w2 + (size_t)(x0 + dx + 1)) *
                                                (size_t)res_c + (size_t)co));
                v = os_add(v, os_rq(s, pool_m, pool_sh));
            }
            v = os_sat(v);
            if (dst) os_store16(dst + o + co, v);
            if (!out8) continue;
            if (srelu) os_store8(out8 + co, os_add(os_rq(v, a_m, a_sh), os_set1(z)));
            else os_store8(out8 + co, os_affine(v, act_m + co, act_b + co, act_sh));
        }
    }
}

#undef OS_NAME
#undef OS_ATTR
#undef OS_W
#undef OS_V
#undef os_acc
#undef os_sub
#undef os_add
#undef os_set1
#undef os_rq
#undef os_affine
#undef os_sat
#undef os_load16
#undef os_store16
#undef os_store8
