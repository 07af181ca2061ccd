/* onebit C runtime: the layer table that the generated onebit_model.h fills in. */
#ifndef ONEBIT_INTERNAL_H
#define ONEBIT_INTERNAL_H

#include <stdint.h>

#define OB_NCO 32            /* output channels per block of packed bits: one 32-bit word per tap */

enum { OB_EPI_ACT = 0, OB_EPI_RES = 1, OB_EPI_HEAD = 2 };
enum { OB_ACT_NONE = 0, OB_ACT_SRELU = 1, OB_ACT_AFFINE_RELU = 2 };
enum { OB_RES_NONE = 0, OB_RES_IDENTITY = 1, OB_RES_POOL = 2 };

/* One convolution with its fused epilogue. Activation buffers are NHWC with a one-pixel zero border:
 * element (y, x, c) of an H x W x C tensor is at ((y + 1) * (W + 2) + x + 1) * C + c.
 * Weights: bits[((blk * k + ky) * k + kx) * cin + ci][4 bytes]; bit j of the little-endian 32-bit word
 * is output channel 32 * blk + j, 1 = +c, 0 = -c. */
typedef struct {
    int cin, cout, k, stride, pad;     /* cin as stored (even), pad = padding before (top/left) */
    int ih, iw, oh, ow;
    int epi, act, res;
    int src, dst, act_dst, res_src;    /* arena slots, -1 = none */
    int res_c, res_h, res_w, res_pad;  /* shortcut source (pool: 3x3 stride 2, `res_pad` before) */
    const uint8_t *bits;
    float scale;                       /* c = sqrt(2 / (k*k*C_in)) */
    const float *act_a, *act_b;        /* OB_ACT_AFFINE_RELU: max(a*v + b, 0) per output channel */
    /* integer mode: rq(v, m, sh) = (v * m + 2^(sh-1)) >> sh, int64 */
    int32_t q_m; int q_sh;             /* acc -> output scale (EPI_ACT srelu: T; EPI_RES: R) */
    int32_t q_lo;                      /* -1 in the activation's scale (srelu) */
    const int32_t *q_act_m, *q_act_b; int q_act_sh;   /* affine_relu, per channel */
    int32_t q_res_m; int q_res_sh;     /* identity shortcut: R_prev scale -> R scale */
    const int32_t *q_pool_m; int q_pool_sh;           /* pool: by real-pixel count 0..9 */
} ob_layer;

#endif
