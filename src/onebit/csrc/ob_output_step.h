/* onebit C runtime: the output step, written once for both modes and every lane width.
 *
 * onebit.c includes this file once per (mode, lane width) after defining OS_NAME (the function), OS_E
 * (stored element), OS_A (accumulator element), OS_V (OS_W lanes of working values) and the lane
 * primitives os_*; the file #undefs them all. For OS_W output channels co.. of one pixel (element
 * offset o of its NHWC row), from the convolution's accumulators acc (sum of +-x, see
 * ob_kernels_portable.h):
 *
 *   EPI_ACT:  T = act(t_in(acc))                                       -> dst
 *   EPI_RES:  R = sat(scale(acc) + shortcut(R_prev)),  A = act(R)      -> dst (when R is read later), act_dst
 *             shortcut: none | identity res(R_prev) | pool: the 3x3 stride-2 window sum of R_prev over
 *             its real pixels, pool_avg(sum, count)
 *   act:      none: sat(v) | srelu: sat(max(lo, v)) | affine_relu: sat(max(affine(v), 0))
 *
 * float: scale = t_in = c * acc, res = R_prev, pool_avg = sum / count, lo = -1, affine = a*v + b,
 *        sat = identity; max(a, b) = a > b ? a : b (NaN included) in every lane width.
 * int:   int64 working values, rq(v, m, sh) = (v * m + 2^(sh-1)) >> sh; scale = rq(acc, q_m, q_sh),
 *        t_in = scale for srelu (T's scale) and acc for affine_relu (its per-channel multipliers absorb
 *        c), res = rq(R_prev, q_res_m, q_res_sh), pool_avg = rq(sum, q_pool_m[count], q_pool_sh),
 *        lo = q_lo, affine = rq(v, q_act_m[co], q_act_sh) + q_act_b[co], sat = clamp to +-32767.
 * Every width executes the same operations in the same order on each lane, so the results agree bit
 * for bit. The head (EPI_HEAD) is not an output step: the layer driver stores its logits maps.
 */

static OS_V OB_CAT(OS_NAME, _act)(const ob_layer *L, OS_V v, int co)
{
    if (L->act == OB_ACT_SRELU) return os_sat(os_max(os_lo(L), v));
    if (L->act == OB_ACT_AFFINE_RELU) return os_sat(os_max(os_affine(L, v, co), os_zero()));
    return os_sat(v);
}

static void OS_NAME(const ob_layer *L, OS_E *dst, OS_E *adst, const OS_E *res, size_t o, int oy, int ox, int co,
                    const OS_A *acc)
{
    OS_V v = os_acc(acc);
    if (L->epi == OB_EPI_ACT) {
        os_store(dst + o + co, OB_CAT(OS_NAME, _act)(L, os_t_in(L, v), co));
        return;
    }
    v = os_scale(L, v);
    if (L->res == OB_RES_IDENTITY) {
        v = os_add(v, os_res(L, res + o + co));
    } else if (L->res == OB_RES_POOL && co < L->res_c) {
        int y0, x0, dy, dx;
        const int count = ob_pool_window(L, oy, ox, &y0, &x0);
        const size_t w2 = (size_t)L->res_w + 2;
        OS_V s = os_zero();
        for (dy = 0; dy < 3; dy++)
            for (dx = 0; dx < 3; dx++)
                s = os_add(s, os_load(res + ((size_t)(y0 + dy + 1) * w2 + (size_t)(x0 + dx + 1)) * (size_t)L->res_c +
                                      (size_t)co));
        v = os_add(v, os_pool_avg(L, s, count));
    }
    v = os_sat(v);
    if (dst) os_store(dst + o + co, v);
    os_store(adst + o + co, OB_CAT(OS_NAME, _act)(L, v, co));
}

#undef OS_NAME
#undef OS_E
#undef OS_A
#undef OS_V
#undef os_acc
#undef os_scale
#undef os_t_in
#undef os_res
#undef os_load
#undef os_store
#undef os_add
#undef os_max
#undef os_zero
#undef os_lo
#undef os_affine
#undef os_pool_avg
#undef os_sat
