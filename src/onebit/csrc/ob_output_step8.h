/* onebit C runtime: the 8-bit mode's output step, written once for every lane width.
 *
 * onebit.c includes this file once per lane width after defining OS_NAME (the function), OS_V (OS_W
 * lanes of int64 working values) and the lane primitives os_*; the file #undefs them all. For OS_W output
 * channels co.. of one pixel (element offset o of its NHWC row), from the kernel's sums acc' (see
 * ob_kernels8_portable.h) and zw = z_src * sum of the signs, acc = acc' - zw (the convolution of the real
 * values' codes u - z) and, with rq(v, m, sh) = (v * m + 2^(sh-1)) >> sh and byte(v) = clamp(v, 0, 255):
 *
 *   EPI_ACT:  T = byte(rq(acc, q8_m, q8_sh) + q8_z)                 (srelu: s_T = 1/z, the clamp at 0 is -1)
 *             T = byte(rq(acc, q8_act_m[co], q8_act_sh) + q8_act_b[co])         (affine_relu: BN + ReLU)
 *   EPI_RES:  R = sat16(rq(acc, q8_m, q8_sh) + shortcut(R_prev))    (shortcut as in the integer mode:
 *             rq(R_prev, q_res_m, q_res_sh), or the pool's rq(window sum, q_pool_m[count], q_pool_sh))
 *             A = byte(rq(R, q8_a_m, q8_a_sh) + q8_z)  |  byte(rq(R, q8_act_m[co], q8_act_sh) + q8_act_b[co])
 *
 * R is stored (int16) when a later step reads it, T and A as bytes. Every width executes the same
 * operations in the same order on each lane, so the results agree bit for bit with onebit/export/int8.py.
 */

static void OS_NAME(const ob_layer *L, uint8_t *dst8, int16_t *dst, uint8_t *adst, const int16_t *res, size_t o,
                    int oy, int ox, int co, const int32_t *acc)
{
    OS_V v = os_sub(os_acc(acc), os_acc(L->q8_zw + co));
    if (L->epi == OB_EPI_ACT) {
        if (L->act == OB_ACT_SRELU) os_store8(dst8 + o + co, os_add(os_rq(v, L->q8_m, L->q8_sh), os_set1(L->q8_z)));
        else os_store8(dst8 + o + co, os_affine(v, L->q8_act_m + co, L->q8_act_b + co, L->q8_act_sh));
        return;
    }
    v = os_rq(v, L->q8_m, L->q8_sh);
    if (L->res == OB_RES_IDENTITY) {
        v = os_add(v, os_rq(os_load16(res + o + co), L->q_res_m, L->q_res_sh));
    } else if (L->res == OB_RES_POOL && co < L->res_c) {
        int y0, x0, dy, dx;
        const int count = ob_pool_window(L, oy, ox, &y0, &x0);
        const size_t w2 = (size_t)L->res_w + 2;
        OS_V s = os_set1(0);
        for (dy = 0; dy < 3; dy++)
            for (dx = 0; dx < 3; dx++)
                s = os_add(s, os_load16(res + ((size_t)(y0 + dy + 1) * w2 + (size_t)(x0 + dx + 1)) * (size_t)L->res_c +
                                        (size_t)co));
        v = os_add(v, os_rq(s, L->q_pool_m[count], L->q_pool_sh));
    }
    v = os_sat(v);
    if (dst) os_store16(dst + o + co, v);
    if (L->act == OB_ACT_SRELU) os_store8(adst + o + co, os_add(os_rq(v, L->q8_a_m, L->q8_a_sh), os_set1(L->q8_z)));
    else os_store8(adst + o + co, os_affine(v, L->q8_act_m + co, L->q8_act_b + co, L->q8_act_sh));
}

#undef OS_NAME
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
