/* onebit C inference runtime: layer driver, fused epilogues, threads. See onebit.h.
 *
 * Build: cc -std=c99 -O2 -Wall -Wextra -Werror [-march=native | -mavx2 -mfma | -DONEBIT_PORTABLE]
 *        [-DONEBIT_THREADS=N -pthread] -c onebit.c
 * The kernels are chosen at build time: AVX-512 (F+BW), else AVX2+FMA, else NEON on AArch64, else the
 * Cortex-M DSP kernels (__ARM_FEATURE_DSP: M4, M7, M33, M55), else portable C99; all give bit-identical
 * results (see ob_kernels_portable.h). -DONEBIT_NO_AVX512 skips the AVX-512 kernels, -DONEBIT_NO_DSP the
 * Cortex-M ones. Every kernel's accumulators go through the one output step, ob_output_step.h.
 */
#if defined(ONEBIT_THREADS) && ONEBIT_THREADS > 1
#define _POSIX_C_SOURCE 200112L
#include <pthread.h>
#include <sched.h>
#define OB_MAXT ONEBIT_THREADS
#else
#define OB_MAXT 1
#endif

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "onebit.h"
#include "onebit_internal.h"
#include "onebit_model.h"

#if defined(ONEBIT_PORTABLE)
#include "ob_kernels_portable.h"
#elif defined(__AVX512F__) && defined(__AVX512BW__) && !defined(ONEBIT_NO_AVX512)
#include "ob_kernels_avx512.h"
#elif defined(__AVX2__) && defined(__FMA__)
#include "ob_kernels_avx2.h"
#elif defined(__aarch64__) && defined(__ARM_NEON)
#include "ob_kernels_neon.h"
#elif defined(__ARM_FEATURE_DSP) && !defined(ONEBIT_NO_DSP)
#include "ob_kernels_dsp.h"
#else
#include "ob_kernels_portable.h"
#endif
#if ONEBIT_HAS_INT8 && !defined(OB_HAVE_K8)
#include "ob_kernels8_portable.h"
#define ob_k8 ob_k8_portable
#define OB_KERNEL8_NAME "portable"
#endif
#if !defined(OB_MR8)
#define OB_MR8 OB_MR                    /* pixels per tile of the 8-bit kernel */
#endif
#if !defined(OB_K8_AMX)
static void ob_kernels_init(void) {}    /* what a kernel set must set up once per process (AMX: tile state) */
static void ob_kernels_done(void) {}    /* ... and release when a thread's work is done */
#endif
#if defined(OB_K8_NEG_BIAS)             /* the 8-bit kernel returns sum s u + 255 * (-1 weights) */
#define OB_ZW(L) ((L)->q8_zwn)
#else
#define OB_ZW(L) ((L)->q8_zw)
#endif

/* a function kept out of its caller: the per-pixel output steps get their own registers (GCC, Clang) */
#if defined(__GNUC__)
#define OB_NOINLINE __attribute__((noinline))
#else
#define OB_NOINLINE
#endif

/* The integer mode's rounding shifts need >> of negative values to be arithmetic (all C99 compilers
 * in use do this, but the standard leaves it implementation-defined). */
typedef char ob_arithmetic_shift_check[((-7) >> 1) == -4 ? 1 : -1];
/* The kernels are written for blocks of 32 output channels, one 32-bit word of sign bits per tap. */
typedef char ob_block_check[OB_NCO == 32 && OB_TAP_BYTES * 8 == OB_NCO ? 1 : -1];

#define OB_F(arena, slot) ((float *)((arena) + ob_slot_f[slot]))
#define OB_Q(arena, slot) ((int16_t *)((arena) + ob_slot_i[slot]))
#define OB_QH(arena) ((int32_t *)((arena) + ob_slot_i[ONEBIT_HEAD_SLOT]))
#define OB_U8(arena, slot) ((uint8_t *)((arena) + ob_slot_8[slot]))
#define OB_R8(arena, slot) ((int16_t *)((arena) + ob_slot_8[slot]))
#define OB_PER(mode) ((mode) == ONEBIT_INT ? (size_t)ONEBIT_ARENA_BYTES_I : \
                      (mode) == ONEBIT_INT8 ? (size_t)ONEBIT_ARENA_BYTES_8 : (size_t)ONEBIT_ARENA_BYTES_F)

const char *onebit_model_id(void) { return ONEBIT_MODEL_ID; }
const char *onebit_kernel_name(void) { return OB_KERNEL_NAME; }
int onebit_max_threads(void) { return OB_MAXT; }
size_t onebit_arena_bytes(int mode) { return OB_PER(mode); }
int onebit_num_classes(void) { return ONEBIT_NUM_CLASSES; }
size_t onebit_input_bytes(void) { return ONEBIT_INPUT_BYTES; }
int onebit_has_int(void) { return ONEBIT_HAS_INT; }
int onebit_has_int8(void) { return ONEBIT_HAS_INT8; }
#if ONEBIT_HAS_INT8
const char *onebit_kernel8_name(void) { ob_kernels_init(); return OB_KERNEL8_NAME; }
#else
const char *onebit_kernel8_name(void) { return "none"; }
#endif

/* ---------------------------------------------------------------------------------------------- */
/* border of an output tensor (the real value 0: byte `fill` for the 8-bit mode's bytes (esz 1), else
 * all-zero bytes): the cells next to output row oy (and the top/bottom rows) */

static void ob_border(unsigned char *buf, size_t esz, const ob_layer *L, int oy, int co0, int nco, int fill)
{
    const size_t w2 = (size_t)L->ow + 2, c = (size_t)L->cout, n = (size_t)nco * esz;
    size_t x;
    memset(buf + (((size_t)(oy + 1) * w2) * c + (size_t)co0) * esz, fill, n);
    memset(buf + (((size_t)(oy + 1) * w2 + w2 - 1) * c + (size_t)co0) * esz, fill, n);
    if (oy == 0)
        for (x = 0; x < w2; x++) memset(buf + (x * c + (size_t)co0) * esz, fill, n);
    if (oy == L->oh - 1)
        for (x = 0; x < w2; x++) memset(buf + (((size_t)(L->oh + 1) * w2 + x) * c + (size_t)co0) * esz, fill, n);
}

/* number of real pixels in the 3x3 stride-2 pool window of output (oy, ox) */
static int ob_pool_window(const ob_layer *L, int oy, int ox, int *y0, int *x0)
{
    int ylo, yhi, xlo, xhi;
    *y0 = 2 * oy - L->res_pad;
    *x0 = 2 * ox - L->res_pad;
    ylo = *y0 < 0 ? 0 : *y0;
    xlo = *x0 < 0 ? 0 : *x0;
    yhi = *y0 + 3 > L->res_h ? L->res_h : *y0 + 3;
    xhi = *x0 + 3 > L->res_w ? L->res_w : *x0 + 3;
    return (yhi - ylo) * (xhi - xlo);
}

/* ---------------------------------------------------------------------------------------------- */
/* float mode */

#define OB_CAT_(a, b) a##b
#define OB_CAT(a, b) OB_CAT_(a, b)

static float ob_max_f(float a, float b) { return a > b ? a : b; }

static float ob_affine_f(const ob_layer *L, float v, int co)
{
    const float t = v * L->act_a[co];
    return t + L->act_b[co];
}

/* the output step (ob_output_step.h) on one float channel */
#define OS_NAME ob_out_f1
#define OS_E float
#define OS_A float
#define OS_V float
#define os_acc(p) (*(p))
#define os_scale(L, v) ((v) * (L)->scale)
#define os_t_in(L, v) os_scale(L, v)
#define os_res(L, p) (*(p))
#define os_load(p) (*(p))
#define os_store(p, v) (*(p) = (v))
#define os_add(a, b) ((a) + (b))
#define os_max(a, b) ob_max_f(a, b)
#define os_zero() 0.0f
#define os_lo(L) (-1.0f)
#define os_affine(L, v, co) ob_affine_f(L, v, co)
#define os_pool_avg(L, s, n) ((s) / (float)(n))
#define os_sat(v) (v)
#include "ob_output_step.h"

#if defined(OB_VW)
/* ... and on OB_VW float channels with the kernel's vector operations (ob_v*) */
#define OS_NAME ob_out_fv
#define OS_E float
#define OS_A float
#define OS_V ob_vf
#define os_acc(p) ob_vload(p)
#define os_scale(L, v) ob_vmul(v, ob_vset1((L)->scale))
#define os_t_in(L, v) os_scale(L, v)
#define os_res(L, p) ob_vload(p)
#define os_load(p) ob_vload(p)
#define os_store(p, v) ob_vstore(p, v)
#define os_add(a, b) ob_vadd(a, b)
#define os_max(a, b) ob_vmax(a, b)
#define os_zero() ob_vzero()
#define os_lo(L) ob_vset1(-1.0f)
#define os_affine(L, v, co) ob_vadd(ob_vmul(v, ob_vload((L)->act_a + (co))), ob_vload((L)->act_b + (co)))
#define os_pool_avg(L, s, n) ob_vdiv(s, ob_vset1((float)(n)))
#define os_sat(v) (v)
#include "ob_output_step.h"
#endif

static void ob_epi_f(const ob_layer *L, unsigned char *arena, int oy, int ox0, int mr, int co0, int nco,
                     const float *acc)
{
    float *dst = L->dst >= 0 ? OB_F(arena, L->dst) : NULL;
    float *adst = L->act_dst >= 0 ? OB_F(arena, L->act_dst) : NULL;
    const float *res = L->res_src >= 0 ? OB_F(arena, L->res_src) : NULL;
    float *head = OB_F(arena, ONEBIT_HEAD_SLOT);
    int p, j;
    for (p = 0; p < mr; p++) {
        const int ox = ox0 + p;
        const float *a = acc + p * OB_NCO;
        const size_t o = ((size_t)(oy + 1) * ((size_t)L->ow + 2) + (size_t)ox + 1) * (size_t)L->cout;
        if (L->epi == OB_EPI_HEAD) {       /* per class: y = a_k * (c * acc) + b_k */
            for (j = 0; j < nco; j++) {
                float y = (a[j] * L->scale) * ob_head_a[co0 + j];
                y = y + ob_head_b[co0 + j];
                head[((size_t)oy * (size_t)L->ow + (size_t)ox) * ONEBIT_NUM_CLASSES + (size_t)(co0 + j)] = y;
            }
            continue;
        }
#if defined(OB_VW)
        if (nco % OB_VW == 0 && !(L->res == OB_RES_POOL && L->res_c % OB_VW)) {
            for (j = 0; j < nco; j += OB_VW) ob_out_fv(L, dst, adst, res, o, oy, ox, co0 + j, a + j);
            continue;
        }
#endif
        for (j = 0; j < nco; j++) ob_out_f1(L, dst, adst, res, o, oy, ox, co0 + j, a + j);
    }
}

static void ob_input_f(const uint8_t *img, unsigned char *arena)
{
    float *x = OB_F(arena, 0);
    const size_t w2 = ONEBIT_IN_W + 2, hw = (size_t)ONEBIT_IN_H * ONEBIT_IN_W;
    int y, xx, c;
    memset(x, 0, sizeof(float) * (ONEBIT_IN_H + 2) * w2 * ONEBIT_IN_CP);
    for (y = 0; y < ONEBIT_IN_H; y++)
        for (xx = 0; xx < ONEBIT_IN_W; xx++)
            for (c = 0; c < ONEBIT_IN_C; c++) {
                float v = (float)img[(size_t)c * hw + (size_t)y * ONEBIT_IN_W + (size_t)xx] * ob_in_a[c];
                v = v + ob_in_b[c];
                if (ONEBIT_STEM_RELU && v < 0.0f) v = 0.0f;
                x[((size_t)(y + 1) * w2 + (size_t)xx + 1) * ONEBIT_IN_CP + (size_t)c] = v;
            }
}

static void ob_head_f(const unsigned char *arena, float *logits)
{
    const ob_layer *L = &ob_layers[ONEBIT_NUM_LAYERS - 1];
    const float *head = (const float *)(arena + ob_slot_f[ONEBIT_HEAD_SLOT]);
    const size_t npix = (size_t)L->oh * (size_t)L->ow;
    size_t p;
    int c;
    for (c = 0; c < ONEBIT_NUM_CLASSES; c++) {
        float s = 0.0f;
        for (p = 0; p < npix; p++) s += head[p * ONEBIT_NUM_CLASSES + (size_t)c];
        logits[c] = ONEBIT_HEAD_SUM ? s : s / (float)npix;
    }
}

/* ---------------------------------------------------------------------------------------------- */
/* integer mode */

#if ONEBIT_HAS_INT
static int64_t ob_rq(int64_t v, int32_t m, int sh)
{
    return (v * (int64_t)m + ((int64_t)1 << (sh - 1))) >> sh;
}

static int64_t ob_max_q(int64_t a, int64_t b) { return a > b ? a : b; }

static int64_t ob_sat_q(int64_t v) { return v > 32767 ? 32767 : (v < -32767 ? -32767 : v); }

/* the output step (ob_output_step.h) on one integer channel */
#define OS_NAME ob_out_q1
#define OS_E int16_t
#define OS_A int32_t
#define OS_V int64_t
#define os_acc(p) ((int64_t)*(p))
#define os_scale(L, v) ob_rq(v, (L)->q_m, (L)->q_sh)
#define os_t_in(L, v) ((L)->act == OB_ACT_SRELU ? os_scale(L, v) : (v))
#define os_res(L, p) ob_rq(*(p), (L)->q_res_m, (L)->q_res_sh)
#define os_load(p) ((int64_t)*(p))
#define os_store(p, v) (*(p) = (int16_t)(v))
#define os_add(a, b) ((a) + (b))
#define os_max(a, b) ob_max_q(a, b)
#define os_zero() ((int64_t)0)
#define os_lo(L) ((int64_t)(L)->q_lo)
#define os_affine(L, v, co) (ob_rq(v, (L)->q_act_m[co], (L)->q_act_sh) + (L)->q_act_b[co])
#define os_pool_avg(L, s, n) ob_rq(s, (L)->q_pool_m[n], (L)->q_pool_sh)
#define os_sat(v) ob_sat_q(v)
#include "ob_output_step.h"

#if defined(OB_QW)
/* ... and on OB_QW integer channels with the kernel's vector int64 operations (ob_q*) */
#define OS_NAME ob_out_qv
#define OS_E int16_t
#define OS_A int32_t
#define OS_V ob_qv
#define os_acc(p) ob_q_acc(p)
#define os_scale(L, v) ob_q_rq(v, (L)->q_m, (L)->q_sh)
#define os_t_in(L, v) ((L)->act == OB_ACT_SRELU ? os_scale(L, v) : (v))
#define os_res(L, p) ob_q_rq(ob_q_load16(p), (L)->q_res_m, (L)->q_res_sh)
#define os_load(p) ob_q_load16(p)
#define os_store(p, v) ob_q_store16(p, v)
#define os_add(a, b) ob_q_add(a, b)
#define os_max(a, b) ob_q_max(a, b)
#define os_zero() ob_q_set1(0)
#define os_lo(L) ob_q_set1((L)->q_lo)
#define os_affine(L, v, co) ob_q_affine(v, (L)->q_act_m + (co), (L)->q_act_b + (co), (L)->q_act_sh)
#define os_pool_avg(L, s, n) ob_q_rq(s, (L)->q_pool_m[n], (L)->q_pool_sh)
#define os_sat(v) ob_q_sat(v)
#include "ob_output_step.h"
#endif

static void ob_epi_q(const ob_layer *L, unsigned char *arena, int oy, int ox0, int mr, int co0, int nco,
                     const int32_t *acc)
{
    int16_t *dst = L->dst >= 0 ? OB_Q(arena, L->dst) : NULL;
    int16_t *adst = L->act_dst >= 0 ? OB_Q(arena, L->act_dst) : NULL;
    const int16_t *res = L->res_src >= 0 ? OB_Q(arena, L->res_src) : NULL;
    int32_t *head = OB_QH(arena);
    int p, j;
    for (p = 0; p < mr; p++) {
        const int ox = ox0 + p;
        const int32_t *a = acc + p * OB_NCO;
        const size_t o = ((size_t)(oy + 1) * ((size_t)L->ow + 2) + (size_t)ox + 1) * (size_t)L->cout;
        if (L->epi == OB_EPI_HEAD) {       /* the accumulators; ob_head_q scales the sums */
            for (j = 0; j < nco; j++)
                head[((size_t)oy * (size_t)L->ow + (size_t)ox) * ONEBIT_NUM_CLASSES + (size_t)(co0 + j)] = a[j];
            continue;
        }
#if defined(OB_QW)
        if (nco % OB_QW == 0 && !(L->res == OB_RES_POOL && L->res_c % OB_QW)) {
            for (j = 0; j < nco; j += OB_QW) ob_out_qv(L, dst, adst, res, o, oy, ox, co0 + j, a + j);
            continue;
        }
#endif
        for (j = 0; j < nco; j++) ob_out_q1(L, dst, adst, res, o, oy, ox, co0 + j, a + j);
    }
}

static void ob_input_q(const uint8_t *img, unsigned char *arena)
{
    int16_t *x = OB_Q(arena, 0);
    const size_t w2 = ONEBIT_IN_W + 2, hw = (size_t)ONEBIT_IN_H * ONEBIT_IN_W;
    int y, xx, c;
    memset(x, 0, sizeof(int16_t) * (ONEBIT_IN_H + 2) * w2 * ONEBIT_IN_CP);
    for (y = 0; y < ONEBIT_IN_H; y++)
        for (xx = 0; xx < ONEBIT_IN_W; xx++)
            for (c = 0; c < ONEBIT_IN_C; c++)
                x[((size_t)(y + 1) * w2 + (size_t)xx + 1) * ONEBIT_IN_CP + (size_t)c] =
                    ob_in_lut[c][img[(size_t)c * hw + (size_t)y * ONEBIT_IN_W + (size_t)xx]];
}

/* the integer modes' logits from the head's per-pixel sums: rq(sum over space, qm_c, qsh) + qb_c, int32 */
static void ob_head_int(const int32_t *head, const int32_t *qm, const int32_t *qb, int qsh, float *logits,
                        int32_t *lq)
{
    const ob_layer *L = &ob_layers[ONEBIT_NUM_LAYERS - 1];
    const size_t npix = (size_t)L->oh * (size_t)L->ow;
    size_t p;
    int c;
    for (c = 0; c < ONEBIT_NUM_CLASSES; c++) {
        int64_t s = 0, q;
        for (p = 0; p < npix; p++) s += head[p * ONEBIT_NUM_CLASSES + (size_t)c];
        q = ob_rq(s, qm[c], qsh) + qb[c];
        q = q > INT32_MAX ? INT32_MAX : (q < -INT32_MAX ? -INT32_MAX : q);
        if (lq) lq[c] = (int32_t)q;
        if (logits) logits[c] = (float)q * ONEBIT_LOGIT_SCALE;   /* the only float operation of the mode */
    }
}

static void ob_head_q(const unsigned char *arena, float *logits, int32_t *lq)
{
    ob_head_int((const int32_t *)(arena + ob_slot_i[ONEBIT_HEAD_SLOT]), ob_head_qm, ob_head_qb, ONEBIT_HEAD_QSH,
                logits, lq);
}
#endif

/* ---------------------------------------------------------------------------------------------- */
/* 8-bit mode: convolution inputs are bytes u with real value s (u - z) (onebit/export/int8.py), the
 * residual stream R is int16 as in the integer mode. acc = acc' - zw (zw = z * sum of the signs),
 * byte outputs clamp(rq(.) + z, 0, 255): for a shifted ReLU (s = 1/z) the clamp at 0 is max(v, -1). */

#if ONEBIT_HAS_INT8
#if !ONEBIT_HAS_INT
#error "the 8-bit mode shares the integer mode's constants"
#endif
static uint8_t ob_byte(int64_t v) { return (uint8_t)(v > 255 ? 255 : (v < 0 ? 0 : v)); }

/* rq of an operand that fits in int32 (one 32 x 32 -> 64-bit multiply): ob_rq's value */
static int64_t ob_rq32(int32_t v, int32_t m, int sh)
{
    const int64_t p = (int64_t)v * m + ((int64_t)1 << (sh - 1));
    if (sh >= 32) return (int32_t)(p >> 32) >> (sh - 32);     /* the high word: no 64-bit shift */
    return p >> sh;
}

/* rq in 32-bit arithmetic, the same value as ob_rq where the exporter proved it (LayerQ8.i32, q8_i32):
 * sh >= 33: (hi32(v m) + 2^(sh-33)) >> (sh - 32), the rounding term being a multiple of 2^32;
 * sh <= 32: hi32((v << (32 - sh)) m + 2^31), v << (32 - sh) fitting in int32 (checked at export). */
static int32_t ob_rq_hi(int32_t v, int32_t m, int sh)
{
    if (sh >= 33) return ((int32_t)(((int64_t)v * m) >> 32) + (int32_t)(1u << (sh - 33))) >> (sh - 32);
    return (int32_t)(((int64_t)(int32_t)((uint32_t)v << (32 - sh)) * m + 0x80000000LL) >> 32);
}

static int32_t ob_sat32_16(int32_t v) { return v > 32767 ? 32767 : (v < -32767 ? -32767 : v); }

static uint8_t ob_byte32(int32_t v) { return (uint8_t)(v > 255 ? 255 : (v < 0 ? 0 : v)); }

/* the 8-bit output step (ob_output_step8.h) in 32-bit arithmetic, one channel at a time (q8_i32 layers) */
#define OS_NAME ob_out8_s32
#define OS_ATTR OB_NOINLINE
#define OS_W 1
#define OS_V int32_t
#define os_acc(p) (*(p))
#define os_sub(a, b) ((a) - (b))
#define os_add(a, b) ((a) + (b))
#define os_set1(x) ((int32_t)(x))
#define os_rq(v, m, sh) ob_rq_hi(v, m, sh)
#define os_affine(v, mp, bp, sh) (ob_rq_hi(v, *(mp), sh) + *(bp))
#define os_sat(v) ob_sat32_16(v)
#define os_load16(p) ((int32_t)*(p))
#define os_store16(p, v) (*(p) = (int16_t)(v))
#define os_store8(p, v) (*(p) = ob_byte32(v))
#include "ob_output_step8.h"

/* ... and in int64 arithmetic (any layer) */
#define OS_NAME ob_out8_1
#define OS_ATTR OB_NOINLINE
#define OS_W 1
#define OS_V int64_t
#define os_acc(p) ((int64_t)*(p))
#define os_sub(a, b) ((a) - (b))
#define os_add(a, b) ((a) + (b))
#define os_set1(x) ((int64_t)(x))
#define os_rq(v, m, sh) ob_rq32((int32_t)(v), m, sh)
#define os_affine(v, mp, bp, sh) (ob_rq32((int32_t)(v), *(mp), sh) + *(bp))
#define os_sat(v) ob_sat_q(v)
#define os_load16(p) ((int64_t)*(p))
#define os_store16(p, v) (*(p) = (int16_t)(v))
#define os_store8(p, v) (*(p) = ob_byte(v))
#include "ob_output_step8.h"

#if defined(OB_QW)
/* ... and on OB_QW channels with the kernel's vector int64 operations (ob_q*) */
#define OS_NAME ob_out8_v
#define OS_ATTR
#define OS_W OB_QW
#define OS_V ob_qv
#define os_acc(p) ob_q_acc(p)
#define os_sub(a, b) ob_q_sub(a, b)
#define os_add(a, b) ob_q_add(a, b)
#define os_set1(x) ob_q_set1(x)
#define os_rq(v, m, sh) ob_q_rq(v, m, sh)
#define os_affine(v, mp, bp, sh) ob_q_affine(v, mp, bp, sh)
#define os_sat(v) ob_q_sat(v)
#define os_load16(p) ob_q_load16(p)
#define os_store16(p, v) ob_q_store16(p, v)
#define os_store8(p, v) ob_q_store8(p, v)
#include "ob_output_step8.h"
#endif

/* the output steps of mr pixels from output row oy, column ox0 on; the byte output (T of an 'act' step, A of a
 * 'res' step) goes to its tensor's slot, or to the padded row `row8` (a streamed block's T or the head's A; a
 * streamed 'res' step stores no other A) */
static void ob_epi_8(const ob_layer *L, unsigned char *arena, int oy, int ox0, int mr, int co0, int nco,
                     const int32_t *acc, uint8_t *row8)
{
    const int byte_slot = L->epi == OB_EPI_ACT ? L->dst : (ONEBIT_STREAM8 ? -1 : L->act_dst);
    uint8_t *out8 = byte_slot >= 0 ? OB_U8(arena, byte_slot) : NULL;
    int16_t *dst = L->epi == OB_EPI_RES && L->dst >= 0 ? OB_R8(arena, L->dst) : NULL;
    const int16_t *res = L->res_src >= 0 ? OB_R8(arena, L->res_src) : NULL;
    int32_t *head = (int32_t *)(arena + ob_slot_8[ONEBIT_HEAD_SLOT]);
    int p, j;
    for (p = 0; p < mr; p++) {
        const int ox = ox0 + p;
        const int32_t *a = acc + p * OB_NCO;
        const size_t o = ((size_t)(oy + 1) * ((size_t)L->ow + 2) + (size_t)ox + 1) * (size_t)L->cout;
        uint8_t *px8 = row8 ? row8 + ((size_t)ox + 1) * (size_t)L->cout : (out8 ? out8 + o : NULL);
        if (L->epi == OB_EPI_HEAD) {       /* acc = acc' - zw; ob_head_8 scales the sums */
            for (j = 0; j < nco; j++)
                head[((size_t)oy * (size_t)L->ow + (size_t)ox) * ONEBIT_NUM_CLASSES + (size_t)(co0 + j)] =
                    a[j] - OB_ZW(L)[co0 + j];
            continue;
        }
#if defined(OB_QW)
        if (nco % OB_QW == 0 && !(L->res == OB_RES_POOL && L->res_c % OB_QW)) {
            ob_out8_v(L, px8, dst, res, o, oy, ox, co0, nco, a);
            continue;
        }
#endif
        if (L->q8_i32) ob_out8_s32(L, px8, dst, res, o, oy, ox, co0, nco, a);
        else ob_out8_1(L, px8, dst, res, o, oy, ox, co0, nco, a);
    }
}

static void ob_input_8(const uint8_t *img, unsigned char *arena)
{
    uint8_t *x = OB_U8(arena, 0);
    const size_t w2 = ONEBIT_IN_W + 2, hw = (size_t)ONEBIT_IN_H * ONEBIT_IN_W;
    int y, xx, c;
    memset(x, ONEBIT_IN_Z8, (ONEBIT_IN_H + 2) * w2 * ONEBIT_IN_CP);     /* border, padded channels: the real 0 */
    for (y = 0; y < ONEBIT_IN_H; y++)
        for (xx = 0; xx < ONEBIT_IN_W; xx++)
            for (c = 0; c < ONEBIT_IN_C; c++)
                x[((size_t)(y + 1) * w2 + (size_t)xx + 1) * ONEBIT_IN_CP + (size_t)c] =
                    ob_in_lut8[c][img[(size_t)c * hw + (size_t)y * ONEBIT_IN_W + (size_t)xx]];
}

static void ob_head_8(const unsigned char *arena, float *logits, int32_t *lq)
{
    ob_head_int((const int32_t *)(arena + ob_slot_8[ONEBIT_HEAD_SLOT]), ob_head_qm8, ob_head_qb8, ONEBIT_HEAD_QSH8,
                logits, lq);
}
#endif

#if ONEBIT_HAS_INT8
/* the 8-bit kernel and output steps over output row oy, channel block blk, of layer L: `in` is the padded input
 * row oy * stride - pad + 1 (rows after it `(iw + 2) * cin` bytes apart), row8 as in ob_epi_8 */
static void ob_tiles8(const ob_layer *L, unsigned char *arena, const uint8_t *in, int oy, int blk, uint8_t *row8)
{
    const ptrdiff_t pix = (ptrdiff_t)L->stride * L->cin, row = ((ptrdiff_t)L->iw + 2) * L->cin;
    const int co0 = blk * OB_NCO, nco = L->cout - co0 < OB_NCO ? L->cout - co0 : OB_NCO;
    const uint8_t *w = L->bits + (size_t)blk * ((size_t)L->k * (size_t)L->k * (size_t)L->cin * OB_TAP_BYTES);
    int ox0;
    for (ox0 = 0; ox0 < L->ow; ox0 += OB_MR8) {
        const int mr = L->ow - ox0 < OB_MR8 ? L->ow - ox0 : OB_MR8;
        int32_t acc[OB_MR8 * OB_NCO];
        ob_k8(in + (size_t)(ox0 * L->stride - L->pad + 1) * (size_t)L->cin, pix, row, L->cin, L->k, w, mr, nco, acc);
        ob_epi_8(L, arena, oy, ox0, mr, co0, nco, acc, row8);
    }
}
#endif

/* ---------------------------------------------------------------------------------------------- */
/* layer driver: work item = (output row, 32-channel block), rows in order (all blocks of a row before
 * the next row: an arena plan with ONEBIT_ARENA_OVERLAP relies on it) */

static void ob_layer_run(const ob_layer *L, unsigned char *arena, int mode, long i0, long i1)
{
    const ptrdiff_t pix = (ptrdiff_t)L->stride * L->cin, row = ((ptrdiff_t)L->iw + 2) * L->cin;
    const size_t wblk = (size_t)L->k * (size_t)L->k * (size_t)L->cin * OB_TAP_BYTES;
    const long nblk = (L->cout + OB_NCO - 1) / OB_NCO;
    long it;
    for (it = i0; it < i1; it++) {
        const int blk = (int)(it % nblk), oy = (int)(it / nblk);
        const int co0 = blk * OB_NCO, nco = L->cout - co0 < OB_NCO ? L->cout - co0 : OB_NCO;
        const uint8_t *w = L->bits + (size_t)blk * wblk;
        int ox0;
        for (ox0 = 0; ox0 < L->ow && mode != ONEBIT_INT8; ox0 += OB_MR) {
            const int mr = L->ow - ox0 < OB_MR ? L->ow - ox0 : OB_MR;
            const size_t off = ((size_t)(oy * L->stride - L->pad + 1) * ((size_t)L->iw + 2) +
                                (size_t)(ox0 * L->stride - L->pad + 1)) * (size_t)L->cin;
            if (mode == ONEBIT_FLOAT) {
                float acc[OB_MR * OB_NCO];
                ob_kf(OB_F(arena, L->src) + off, pix, row, L->cin, L->k, w, mr, nco, acc);
                ob_epi_f(L, arena, oy, ox0, mr, co0, nco, acc);
            } else if (mode == ONEBIT_INT) {
#if ONEBIT_HAS_INT
                int32_t acc[OB_MR * OB_NCO];
                ob_ki(OB_Q(arena, L->src) + off, pix, row, L->cin, L->k, w, mr, nco, acc);
                ob_epi_q(L, arena, oy, ox0, mr, co0, nco, acc);
#endif
            }
        }
#if ONEBIT_HAS_INT8
        if (mode == ONEBIT_INT8)
            ob_tiles8(L, arena, OB_U8(arena, L->src) + (size_t)(oy * L->stride - L->pad + 1) * (size_t)row, oy, blk,
                      NULL);
#endif
        if (L->epi != OB_EPI_HEAD) {
            if (mode == ONEBIT_INT8) {           /* R int16 (border 0), T and A bytes (border: zero code) */
#if ONEBIT_HAS_INT8
                if (L->epi == OB_EPI_ACT) ob_border(arena + ob_slot_8[L->dst], 1, L, oy, co0, nco, L->q8_z);
                if (L->epi == OB_EPI_RES && L->dst >= 0) ob_border(arena + ob_slot_8[L->dst], 2, L, oy, co0, nco, 0);
                if (L->act_dst >= 0 && !ONEBIT_STREAM8)
                    ob_border(arena + ob_slot_8[L->act_dst], 1, L, oy, co0, nco, L->q8_z);
#endif
            } else {
                const size_t esz = mode == ONEBIT_FLOAT ? sizeof(float) : sizeof(int16_t);
                const size_t *slots = mode == ONEBIT_FLOAT ? ob_slot_f : ob_slot_i;
                if (L->dst >= 0) ob_border(arena + slots[L->dst], esz, L, oy, co0, nco, 0);
                if (L->act_dst >= 0) ob_border(arena + slots[L->act_dst], esz, L, oy, co0, nco, 0);
            }
        }
    }
}

#if ONEBIT_HAS_INT8 && ONEBIT_STREAM8
/* 8-bit mode, streamed (bare-metal plans, one thread per image; onebit/export/arena.py, _stream_layout): a
 * residual block runs row by row. Before conv2 computes output row y, the T rows it reads are computed by conv1,
 * each from the A rows it reads, each A row from the stored R of the block before (A = act(R), the value the
 * layer-at-a-time run stores); the A and T slots hold the last k padded rows (a window), R stays whole. The
 * last block hands each A row to the head at once. Every value is the layer-at-a-time run's. */
typedef struct {
    uint8_t *buf;           /* `count` consecutive padded rows of a tensor from row `first` on */
    size_t rowb;            /* bytes a padded row */
    int first, count;
} ob_win;

/* drop the rows before padded row p (rows kept move to the top) */
static void ob_win_from(ob_win *w, int p)
{
    const int end = w->first + w->count;
    if (p >= end) {
        w->count = 0;
    } else if (p > w->first) {
        memmove(w->buf, w->buf + (size_t)(p - w->first) * w->rowb, (size_t)(end - p) * w->rowb);
        w->count = end - p;
    }
    if (p > w->first) w->first = p;
}

/* padded row p of A = act(R) after 'res' layer P (its R stored): the bytes the output step writes */
static void ob_a_row(const ob_layer *P, const int16_t *R, uint8_t *row, int p)
{
    const size_t c = (size_t)P->cout, w2 = (size_t)P->ow + 2;
    const int32_t z = P->q8_z, a_m = P->q8_a_m, *act_m = P->q8_act_m, *act_b = P->q8_act_b;
    const int a_sh = P->q8_a_sh, act_sh = P->q8_act_sh;
    const int16_t *r = R + ((size_t)p * w2 + 1) * c;
    size_t x, j;
    if (p == 0 || p == P->oh + 1) {                   /* the zero border rows */
        memset(row, z, w2 * c);
        return;
    }
    memset(row, z, c);
    memset(row + (w2 - 1) * c, z, c);
    if (P->act == OB_ACT_SRELU) {
        for (x = 0; x < w2 - 2; x++, r += c, row += c)
            for (j = 0; j < c; j++)
                row[c + j] = P->q8_i32 ? ob_byte32(ob_rq_hi(r[j], a_m, a_sh) + z) : ob_byte(ob_rq32(r[j], a_m, a_sh) + z);
    } else {
        for (x = 0; x < w2 - 2; x++, r += c, row += c)
            for (j = 0; j < c; j++)
                row[c + j] = P->q8_i32 ? ob_byte32(ob_rq_hi(r[j], act_m[j], act_sh) + act_b[j])
                                       : ob_byte(ob_rq32(r[j], act_m[j], act_sh) + act_b[j]);
    }
}

/* output row oy of layer L (every channel block) from window rows starting at padded row oy * stride - pad + 1;
 * a byte output row (row8) gets its zero-code border pixels */
static void ob_row8(const ob_layer *L, unsigned char *arena, const ob_win *in, int oy, uint8_t *row8)
{
    const uint8_t *src = in->buf + (size_t)(oy * L->stride - L->pad + 1 - in->first) * in->rowb;
    const int nblk = (L->cout + OB_NCO - 1) / OB_NCO;
    int blk;
    for (blk = 0; blk < nblk; blk++) {
        ob_tiles8(L, arena, src, oy, blk, row8);
        if (L->epi == OB_EPI_RES && L->dst >= 0)
            ob_border(arena + ob_slot_8[L->dst], 2, L, oy, blk * OB_NCO,
                      L->cout - blk * OB_NCO < OB_NCO ? L->cout - blk * OB_NCO : OB_NCO, 0);
    }
    if (row8) {
        memset(row8, L->q8_z, (size_t)L->cout);
        memset(row8 + ((size_t)L->ow + 1) * (size_t)L->cout, L->q8_z, (size_t)L->cout);
    }
}

/* the block conv1 = L1, conv2 = L2 after 'res' layer P; H: the head, when this is the last block */
static void ob_block8(const ob_layer *P, const ob_layer *L1, const ob_layer *L2, const ob_layer *H,
                      unsigned char *arena)
{
    const int16_t *R = OB_R8(arena, P->dst);
    uint8_t *hrow = H ? OB_U8(arena, H->src) : NULL;
    ob_win wa, wt, wh;
    int oy;
    wa.buf = OB_U8(arena, L1->src); wa.rowb = ((size_t)L1->iw + 2) * (size_t)L1->cin; wa.first = wa.count = 0;
    wt.buf = OB_U8(arena, L2->src); wt.rowb = ((size_t)L2->iw + 2) * (size_t)L2->cin; wt.first = wt.count = 0;
    for (oy = 0; oy < L2->oh; oy++) {
        ob_win_from(&wt, oy * L2->stride - L2->pad + 1);
        while (wt.count < L2->k) {                    /* T's padded row p: conv1's output row p - 1 */
            const int p = wt.first + wt.count;
            uint8_t *trow = wt.buf + (size_t)wt.count * wt.rowb;
            if (p == 0 || p == L1->oh + 1) {
                memset(trow, L1->q8_z, wt.rowb);
            } else {
                ob_win_from(&wa, (p - 1) * L1->stride - L1->pad + 1);
                for (; wa.count < L1->k; wa.count++)
                    ob_a_row(P, R, wa.buf + (size_t)wa.count * wa.rowb, wa.first + wa.count);
                ob_row8(L1, arena, &wa, p - 1, trow);
            }
            wt.count++;
        }
        ob_row8(L2, arena, &wt, oy, hrow);
        if (H) {                                      /* 1 x 1, stride 1, no padding: A's row oy + 1 */
            wh.buf = hrow; wh.rowb = 0; wh.first = oy + 1; wh.count = 1;
            ob_row8(H, arena, &wh, oy, NULL);
        }
    }
}

/* one image, streamed: the stem layer at a time (its R over the consumed input rows), then block by block */
static void ob_forward_stream8(const uint8_t *img, unsigned char *arena, float *logits, int32_t *lq)
{
    const long stem_items = (long)((ob_layers[0].cout + OB_NCO - 1) / OB_NCO) * ob_layers[0].oh;
    int b;
    ob_input_8(img, arena);
    ob_layer_run(&ob_layers[0], arena, ONEBIT_INT8, 0, stem_items);
    for (b = 1; b + 1 < ONEBIT_NUM_LAYERS - 1; b += 2)
        ob_block8(&ob_layers[b - 1], &ob_layers[b], &ob_layers[b + 1],
                  b + 2 == ONEBIT_NUM_LAYERS - 1 ? &ob_layers[ONEBIT_NUM_LAYERS - 1] : NULL, arena);
    ob_head_8(arena, logits, lq);
}
#endif

/* ---------------------------------------------------------------------------------------------- */
/* threads */

#if OB_MAXT > 1
typedef struct {
    int n, count, gen;
    pthread_mutex_t m;
    pthread_cond_t c;
} ob_sync;

static void ob_sync_wait(ob_sync *s)
{
    if (!s) return;
#if defined(__GNUC__)
    {   /* spin barrier (layers take tens of microseconds), yielding when the wait gets long */
        const int gen = __atomic_load_n(&s->gen, __ATOMIC_ACQUIRE);
        if (__atomic_add_fetch(&s->count, 1, __ATOMIC_ACQ_REL) == s->n) {
            __atomic_store_n(&s->count, 0, __ATOMIC_RELAXED);
            __atomic_store_n(&s->gen, gen + 1, __ATOMIC_RELEASE);
        } else {
            long spins = 0;
            while (__atomic_load_n(&s->gen, __ATOMIC_ACQUIRE) == gen)
                if (++spins > 4000) sched_yield();
        }
    }
#else
    pthread_mutex_lock(&s->m);
    {
        const int gen = s->gen;
        if (++s->count == s->n) {
            s->count = 0;
            s->gen++;
            pthread_cond_broadcast(&s->c);
        } else {
            while (gen == s->gen) pthread_cond_wait(&s->c, &s->m);
        }
    }
    pthread_mutex_unlock(&s->m);
#endif
}
#else
typedef int ob_sync;
static void ob_sync_wait(ob_sync *s) { (void)s; }
#endif

/* one image; with nth > 1 all nth threads call this together and split every layer */
static void ob_forward(int mode, const uint8_t *img, unsigned char *arena, int tid, int nth, ob_sync *sync,
                       float *logits, int32_t *lq)
{
    int l;
#if ONEBIT_HAS_INT8 && ONEBIT_STREAM8
    if (mode == ONEBIT_INT8) {          /* bare-metal plans: one thread per image (onebit_run) */
        ob_forward_stream8(img, arena, logits, lq);
        return;
    }
#endif
    if (tid == 0) {
        if (mode == ONEBIT_FLOAT) ob_input_f(img, arena);
#if ONEBIT_HAS_INT8
        else if (mode == ONEBIT_INT8) ob_input_8(img, arena);
#endif
#if ONEBIT_HAS_INT
        else ob_input_q(img, arena);
#endif
    }
    ob_sync_wait(sync);
    for (l = 0; l < ONEBIT_NUM_LAYERS; l++) {
        const ob_layer *L = &ob_layers[l];
        const long items = (long)((L->cout + OB_NCO - 1) / OB_NCO) * L->oh;
        ob_layer_run(L, arena, mode, items * tid / nth, items * (tid + 1) / nth);
        ob_sync_wait(sync);
    }
    if (tid == 0) {
        if (mode == ONEBIT_FLOAT) {
            ob_head_f(arena, logits);
            (void)lq;
        }
#if ONEBIT_HAS_INT8
        else if (mode == ONEBIT_INT8) ob_head_8(arena, logits, lq);
#endif
#if ONEBIT_HAS_INT
        else ob_head_q(arena, logits, lq);
#endif
    }
}

typedef struct {
    int mode, n, tid, nth, tiles;
    const uint8_t *images;
    float *logits;
    int32_t *lq;
    unsigned char *arena;
    size_t per;
    ob_sync *sync;
} ob_task;

static void ob_task_run(const ob_task *t)
{
    int i;
    if (t->tiles) {
        for (i = 0; i < t->n; i++)
            ob_forward(t->mode, t->images + (size_t)i * ONEBIT_INPUT_BYTES, t->arena, t->tid, t->nth, t->sync,
                       t->logits ? t->logits + (size_t)i * ONEBIT_NUM_CLASSES : NULL,
                       t->lq ? t->lq + (size_t)i * ONEBIT_NUM_CLASSES : NULL);
    } else {
        for (i = t->tid; i < t->n; i += t->nth)
            ob_forward(t->mode, t->images + (size_t)i * ONEBIT_INPUT_BYTES, t->arena + (size_t)t->tid * t->per,
                       0, 1, NULL, t->logits ? t->logits + (size_t)i * ONEBIT_NUM_CLASSES : NULL,
                       t->lq ? t->lq + (size_t)i * ONEBIT_NUM_CLASSES : NULL);
    }
    ob_kernels_done();
}

#if OB_MAXT > 1
typedef struct {
    ob_task task;
    pthread_mutex_t *m;
    pthread_cond_t *c;
    const int *go;
} ob_worker;

static void *ob_worker_main(void *arg)
{
    ob_worker *w = (ob_worker *)arg;
    pthread_mutex_lock(w->m);           /* wait until the team size is final */
    while (!*w->go) pthread_cond_wait(w->c, w->m);
    pthread_mutex_unlock(w->m);
    ob_task_run(&w->task);
    return NULL;
}

/* Run `task` on `nth` threads (this one included); if fewer threads can be started, the team shrinks,
 * which changes nothing in the results. */
static void ob_team_run(const ob_task *task, int nth)
{
    ob_worker ws[OB_MAXT];
    pthread_t th[OB_MAXT];
    pthread_mutex_t m;
    pthread_cond_t c;
    ob_sync sync;
    int t, started, go = 0;
    pthread_mutex_init(&m, NULL);
    pthread_cond_init(&c, NULL);
    pthread_mutex_init(&sync.m, NULL);
    pthread_cond_init(&sync.c, NULL);
    sync.count = 0;
    sync.gen = 0;
    for (t = 0; t < nth; t++) {
        ws[t].task = *task;
        ws[t].task.tid = t;
        ws[t].task.sync = task->tiles ? &sync : NULL;
        ws[t].m = &m;
        ws[t].c = &c;
        ws[t].go = &go;
    }
    for (started = 1; started < nth; started++)
        if (pthread_create(&th[started], NULL, ob_worker_main, &ws[started]) != 0) break;
    pthread_mutex_lock(&m);
    for (t = 0; t < started; t++) ws[t].task.nth = started;
    sync.n = started;
    go = 1;
    pthread_cond_broadcast(&c);
    pthread_mutex_unlock(&m);
    ob_task_run(&ws[0].task);
    for (t = 1; t < started; t++) pthread_join(th[t], NULL);
    pthread_mutex_destroy(&m);
    pthread_cond_destroy(&c);
    pthread_mutex_destroy(&sync.m);
    pthread_cond_destroy(&sync.c);
}
#endif

int onebit_run(int mode, const uint8_t *images, int n, float *logits, int32_t *logits_q,
               void *arena, size_t arena_bytes, int threads)
{
    ob_task task;
    const size_t per = OB_PER(mode);
    if (mode != ONEBIT_FLOAT && mode != ONEBIT_INT && mode != ONEBIT_INT8) return ONEBIT_EARGS;
    if ((mode == ONEBIT_INT && !ONEBIT_HAS_INT) || (mode == ONEBIT_INT8 && !ONEBIT_HAS_INT8)) return ONEBIT_ENOINT;
    if (n < 0 || (n > 0 && (!images || (!logits && !(mode != ONEBIT_FLOAT && logits_q))))) return ONEBIT_EARGS;
    if (!arena || ((uintptr_t)arena % ONEBIT_ARENA_ALIGN) || arena_bytes < per) return ONEBIT_EARENA;
    if (n == 0) return ONEBIT_OK;
    ob_kernels_init();                  /* before any worker thread starts */
    if (threads > OB_MAXT) threads = OB_MAXT;
    if (threads < 1) threads = 1;
    task.mode = mode; task.n = n; task.tid = 0; task.nth = 1; task.tiles = 0; task.images = images;
    task.logits = logits; task.lq = mode != ONEBIT_FLOAT ? logits_q : NULL; task.arena = (unsigned char *)arena;
    task.per = per; task.sync = NULL;
#if OB_MAXT > 1
    if (threads > 1) {
        const size_t fit = arena_bytes / per;
        if (n > 1 && fit >= 2) {     /* images over threads, one arena each */
            int nth = fit < (size_t)threads ? (int)fit : threads;
            ob_team_run(&task, nth < n ? nth : n);
            return ONEBIT_OK;
        } else if (!ONEBIT_ARENA_OVERLAP) {   /* spatial tiles of each image over threads, one arena */
            task.tiles = 1;
            ob_team_run(&task, threads);
            return ONEBIT_OK;
        }
    }
#endif
    ob_task_run(&task);
    return ONEBIT_OK;
}

int onebit_infer(int mode, const uint8_t *image, float *logits, void *arena)
{
    return onebit_run(mode, image, 1, logits, NULL, arena, OB_PER(mode), 1);
}
