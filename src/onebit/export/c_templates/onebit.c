/* onebit C inference runtime: layer driver, fused epilogues, threads. See onebit.h.
 *
 * Build: cc -std=c99 -O2 -Wall -Wextra -Werror [-march=native | -mavx2 -mfma | -DONEBIT_PORTABLE]
 *        [-DONEBIT_THREADS=N -pthread] -c onebit.c
 * The kernels are chosen at build time: AVX-512 (F+BW), else AVX2+FMA, else NEON on AArch64, else
 * portable C99; all give bit-identical results (see ob_kernels_portable.h). -DONEBIT_NO_AVX512 skips the AVX-512 kernels.
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
#else
#include "ob_kernels_portable.h"
#endif

/* The integer mode's rounding shifts need >> of negative values to be arithmetic (all C99 compilers
 * in use do this, but the standard leaves it implementation-defined). */
typedef char ob_arithmetic_shift_check[((-7) >> 1) == -4 ? 1 : -1];
/* The kernels are written for blocks of 32 output channels, one 32-bit word of sign bits per tap. */
typedef char ob_block_check[OB_NCO == 32 && OB_TAP_BYTES * 8 == OB_NCO ? 1 : -1];

#define OB_F(arena, slot) ((float *)((arena) + ob_slot_f[slot]))
#define OB_Q(arena, slot) ((int16_t *)((arena) + ob_slot_i[slot]))
#define OB_QH(arena) ((int32_t *)((arena) + ob_slot_i[ONEBIT_HEAD_SLOT]))
#define OB_PER(mode) (((mode) == ONEBIT_INT ? (size_t)ONEBIT_ARENA_BYTES_I : (size_t)ONEBIT_ARENA_BYTES_F))

const char *onebit_model_id(void) { return ONEBIT_MODEL_ID; }
const char *onebit_kernel_name(void) { return OB_KERNEL_NAME; }
int onebit_max_threads(void) { return OB_MAXT; }
size_t onebit_arena_bytes(int mode) { return OB_PER(mode); }
int onebit_num_classes(void) { return ONEBIT_NUM_CLASSES; }
size_t onebit_input_bytes(void) { return ONEBIT_INPUT_BYTES; }
int onebit_has_int(void) { return ONEBIT_HAS_INT; }

/* ---------------------------------------------------------------------------------------------- */
/* zero border of an output tensor: the cells next to output row oy (and the top/bottom rows) */

static void ob_border(unsigned char *buf, size_t esz, const ob_layer *L, int oy, int co0, int nco)
{
    const size_t w2 = (size_t)L->ow + 2, c = (size_t)L->cout, n = (size_t)nco * esz;
    size_t x;
    memset(buf + (((size_t)(oy + 1) * w2) * c + (size_t)co0) * esz, 0, n);
    memset(buf + (((size_t)(oy + 1) * w2 + w2 - 1) * c + (size_t)co0) * esz, 0, n);
    if (oy == 0)
        for (x = 0; x < w2; x++) memset(buf + (x * c + (size_t)co0) * esz, 0, n);
    if (oy == L->oh - 1)
        for (x = 0; x < w2; x++) memset(buf + (((size_t)(L->oh + 1) * w2 + x) * c + (size_t)co0) * esz, 0, n);
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

static float ob_act_f(const ob_layer *L, float v, int co)
{
    float t;
    if (L->act == OB_ACT_SRELU) return v < -1.0f ? -1.0f : v;
    if (L->act != OB_ACT_AFFINE_RELU) return v;
    t = v * L->act_a[co];
    t = t + L->act_b[co];
    return t > 0.0f ? t : 0.0f;
}

static float ob_pool_f(const float *r, const ob_layer *L, int oy, int ox, int co)
{
    int y0, x0, dy, dx;
    const int count = ob_pool_window(L, oy, ox, &y0, &x0);
    const size_t w2 = (size_t)L->res_w + 2;
    float s = 0.0f;
    for (dy = 0; dy < 3; dy++)
        for (dx = 0; dx < 3; dx++)
            s += r[((size_t)(y0 + dy + 1) * w2 + (size_t)(x0 + dx + 1)) * (size_t)L->res_c + (size_t)co];
    return s / (float)count;
}

#if defined(OB_VW)
/* Vector forms of ob_act_f / ob_pool_f / ob_epi_f: the same IEEE operations in the same order on OB_VW
 * channels at once, so they give the scalar code's results bit for bit (max(-1, v) = v < -1 ? -1 : v;
 * max(t, 0) = t > 0 ? t : 0, NaN included). */
static ob_vf ob_act_v(const ob_layer *L, ob_vf v, int co)
{
    ob_vf t;
    if (L->act == OB_ACT_SRELU) return ob_vmax(ob_vset1(-1.0f), v);
    if (L->act != OB_ACT_AFFINE_RELU) return v;
    t = ob_vmul(v, ob_vload(L->act_a + co));
    t = ob_vadd(t, ob_vload(L->act_b + co));
    return ob_vmax(t, ob_vzero());
}

static ob_vf ob_pool_v(const float *r, const ob_layer *L, int oy, int ox, int co)
{
    int y0, x0, dy, dx;
    const int count = ob_pool_window(L, oy, ox, &y0, &x0);
    const size_t w2 = (size_t)L->res_w + 2;
    ob_vf s = ob_vzero();
    for (dy = 0; dy < 3; dy++)
        for (dx = 0; dx < 3; dx++)
            s = ob_vadd(s, ob_vload(r + ((size_t)(y0 + dy + 1) * w2 + (size_t)(x0 + dx + 1)) * (size_t)L->res_c +
                                    (size_t)co));
    return ob_vdiv(s, ob_vset1((float)count));
}

/* full 32-channel blocks of act / res epilogues; returns 0 when the scalar code must do it */
static int ob_epi_f_vec(const ob_layer *L, unsigned char *arena, int oy, int ox0, int mr, int co0, int nco,
                        const float *acc)
{
    float *dst = L->dst >= 0 ? OB_F(arena, L->dst) : NULL;
    float *adst = L->act_dst >= 0 ? OB_F(arena, L->act_dst) : NULL;
    const float *res = L->res_src >= 0 ? OB_F(arena, L->res_src) : NULL;
    const ob_vf scale = ob_vset1(L->scale);
    int p, h;
    if (nco != OB_NCO || L->epi == OB_EPI_HEAD || (L->res == OB_RES_POOL && L->res_c % OB_VW)) return 0;
    for (p = 0; p < mr; p++) {
        const int ox = ox0 + p;
        const size_t o = ((size_t)(oy + 1) * ((size_t)L->ow + 2) + (size_t)ox + 1) * (size_t)L->cout;
        for (h = 0; h < OB_NCO; h += OB_VW) {
            const int co = co0 + h;
            ob_vf v = ob_vmul(ob_vload(acc + p * OB_NCO + h), scale);
            if (L->epi == OB_EPI_ACT) {
                ob_vstore(dst + o + co, ob_act_v(L, v, co));
                continue;
            }
            if (L->res == OB_RES_IDENTITY) v = ob_vadd(v, ob_vload(res + o + co));
            else if (L->res == OB_RES_POOL && co < L->res_c) v = ob_vadd(v, ob_pool_v(res, L, oy, ox, co));
            if (dst) ob_vstore(dst + o + co, v);
            ob_vstore(adst + o + co, ob_act_v(L, v, co));
        }
    }
    return 1;
}
#endif

static void ob_epi_f(const ob_layer *L, unsigned char *arena, int oy, int ox0, int mr, int co0, int nco,
                     const float *acc)
{
    float *dst = L->dst >= 0 ? OB_F(arena, L->dst) : NULL;
    float *adst = L->act_dst >= 0 ? OB_F(arena, L->act_dst) : NULL;
    const float *res = L->res_src >= 0 ? OB_F(arena, L->res_src) : NULL;
    float *head = OB_F(arena, ONEBIT_HEAD_SLOT);
    int p, j;
#if defined(OB_VW)
    if (ob_epi_f_vec(L, arena, oy, ox0, mr, co0, nco, acc)) return;
#endif
    for (p = 0; p < mr; p++) {
        const int ox = ox0 + p;
        const size_t o = ((size_t)(oy + 1) * ((size_t)L->ow + 2) + (size_t)ox + 1) * (size_t)L->cout;
        for (j = 0; j < nco; j++) {
            const int co = co0 + j;
            float v = acc[p * OB_NCO + j] * L->scale;
            if (L->epi == OB_EPI_ACT) {
                dst[o + co] = ob_act_f(L, v, co);
            } else if (L->epi == OB_EPI_RES) {
                if (L->res == OB_RES_IDENTITY) v = v + res[o + co];
                else if (L->res == OB_RES_POOL && co < L->res_c) v = v + ob_pool_f(res, L, oy, ox, co);
                if (dst) dst[o + co] = v;
                adst[o + co] = ob_act_f(L, v, co);
            } else {
                float y = v * ob_head_a[co];
                y = y + ob_head_b[co];
                head[((size_t)oy * (size_t)L->ow + (size_t)ox) * ONEBIT_NUM_CLASSES + (size_t)co] = y;
            }
        }
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

static int16_t ob_sat16(int64_t v)
{
    return (int16_t)(v > 32767 ? 32767 : (v < -32767 ? -32767 : v));
}

static int16_t ob_act_q(const ob_layer *L, int64_t v, int co)
{
    if (L->act == OB_ACT_SRELU) return ob_sat16(v < L->q_lo ? L->q_lo : v);
    if (L->act == OB_ACT_AFFINE_RELU) {
        const int64_t t = ob_rq(v, L->q_act_m[co], L->q_act_sh) + L->q_act_b[co];
        return ob_sat16(t > 0 ? t : 0);
    }
    return ob_sat16(v);
}

static int64_t ob_pool_q(const int16_t *r, const ob_layer *L, int oy, int ox, int co)
{
    int y0, x0, dy, dx;
    const int count = ob_pool_window(L, oy, ox, &y0, &x0);
    const size_t w2 = (size_t)L->res_w + 2;
    int64_t s = 0;
    for (dy = 0; dy < 3; dy++)
        for (dx = 0; dx < 3; dx++)
            s += r[((size_t)(y0 + dy + 1) * w2 + (size_t)(x0 + dx + 1)) * (size_t)L->res_c + (size_t)co];
    return ob_rq(s, L->q_pool_m[count], L->q_pool_sh);
}

#if defined(OB_KERNEL_AVX512_INT)
/* AVX-512 form of ob_epi_q for full 32-channel blocks: the same int64 arithmetic, 8 lanes per vector
 * (products of int32 values by int32 multipliers with vpmuldq), so results are identical. */
typedef struct { __m512i lo, hi; } ob_q16;        /* 16 channels as two vectors of 8 int64 */

static ob_q16 ob_q_widen32(__m512i v)
{
    ob_q16 r;
    r.lo = _mm512_cvtepi32_epi64(_mm512_castsi512_si256(v));
    r.hi = _mm512_cvtepi32_epi64(_mm512_extracti64x4_epi64(v, 1));
    return r;
}

static ob_q16 ob_q_load16(const int16_t *p)
{
    return ob_q_widen32(_mm512_cvtepi16_epi32(_mm256_loadu_si256((const __m256i *)p)));
}

static __m512i ob_q_rq8(__m512i v, __m512i m, int sh)
{
    const __m512i half = _mm512_set1_epi64((long long)((int64_t)1 << (sh - 1)));
    return _mm512_sra_epi64(_mm512_add_epi64(_mm512_mul_epi32(v, m), half), _mm_cvtsi32_si128(sh));
}

static ob_q16 ob_q_rq(ob_q16 v, int32_t m, int sh)
{
    const __m512i mv = _mm512_set1_epi64(m);
    v.lo = ob_q_rq8(v.lo, mv, sh);
    v.hi = ob_q_rq8(v.hi, mv, sh);
    return v;
}

/* per channel: rq(v, m[c], sh) + b[c] */
static ob_q16 ob_q_affine(ob_q16 v, const int32_t *m, const int32_t *b, int sh)
{
    const ob_q16 mv = ob_q_widen32(_mm512_loadu_si512(m)), bv = ob_q_widen32(_mm512_loadu_si512(b));
    v.lo = _mm512_add_epi64(ob_q_rq8(v.lo, mv.lo, sh), bv.lo);
    v.hi = _mm512_add_epi64(ob_q_rq8(v.hi, mv.hi, sh), bv.hi);
    return v;
}

static ob_q16 ob_q_add(ob_q16 a, ob_q16 b)
{
    a.lo = _mm512_add_epi64(a.lo, b.lo);
    a.hi = _mm512_add_epi64(a.hi, b.hi);
    return a;
}

static ob_q16 ob_q_max(ob_q16 a, int64_t lo)
{
    const __m512i l = _mm512_set1_epi64((long long)lo);
    a.lo = _mm512_max_epi64(a.lo, l);
    a.hi = _mm512_max_epi64(a.hi, l);
    return a;
}

static ob_q16 ob_q_sat(ob_q16 a)
{
    const __m512i lo = _mm512_set1_epi64(-32767), hi = _mm512_set1_epi64(32767);
    a.lo = _mm512_min_epi64(_mm512_max_epi64(a.lo, lo), hi);
    a.hi = _mm512_min_epi64(_mm512_max_epi64(a.hi, lo), hi);
    return a;
}

static void ob_q_store16(int16_t *p, ob_q16 a)
{
    _mm_storeu_si128((__m128i *)p, _mm512_cvtepi64_epi16(a.lo));
    _mm_storeu_si128((__m128i *)(p + 8), _mm512_cvtepi64_epi16(a.hi));
}

static ob_q16 ob_q_act(const ob_layer *L, ob_q16 v, int co)
{
    if (L->act == OB_ACT_SRELU) return ob_q_sat(ob_q_max(v, L->q_lo));
    if (L->act == OB_ACT_AFFINE_RELU)
        return ob_q_sat(ob_q_max(ob_q_affine(v, L->q_act_m + co, L->q_act_b + co, L->q_act_sh), 0));
    return ob_q_sat(v);
}

static int ob_epi_q_vec(const ob_layer *L, unsigned char *arena, int oy, int ox0, int mr, int co0, int nco,
                        const int32_t *acc)
{
    int16_t *dst = L->dst >= 0 ? OB_Q(arena, L->dst) : NULL;
    int16_t *adst = L->act_dst >= 0 ? OB_Q(arena, L->act_dst) : NULL;
    const int16_t *res = L->res_src >= 0 ? OB_Q(arena, L->res_src) : NULL;
    int p, h;
    if (nco != OB_NCO || L->epi == OB_EPI_HEAD || (L->res == OB_RES_POOL && L->res_c % 16)) return 0;
    for (p = 0; p < mr; p++) {
        const int ox = ox0 + p;
        const size_t o = ((size_t)(oy + 1) * ((size_t)L->ow + 2) + (size_t)ox + 1) * (size_t)L->cout;
        for (h = 0; h < OB_NCO; h += 16) {
            const int co = co0 + h;
            const ob_q16 a = ob_q_widen32(_mm512_loadu_si512(acc + p * OB_NCO + h));
            ob_q16 v, r;
            if (L->epi == OB_EPI_ACT) {
                v = L->act == OB_ACT_SRELU ? ob_q_rq(a, L->q_m, L->q_sh) : a;
                ob_q_store16(dst + o + co, ob_q_act(L, v, co));
                continue;
            }
            v = ob_q_rq(a, L->q_m, L->q_sh);
            if (L->res == OB_RES_IDENTITY) {
                v = ob_q_add(v, ob_q_rq(ob_q_load16(res + o + co), L->q_res_m, L->q_res_sh));
            } else if (L->res == OB_RES_POOL && co < L->res_c) {
                int y0, x0, dy, dx;
                const int count = ob_pool_window(L, oy, ox, &y0, &x0);
                const size_t w2 = (size_t)L->res_w + 2;
                __m512i s = _mm512_setzero_si512();
                for (dy = 0; dy < 3; dy++)
                    for (dx = 0; dx < 3; dx++)
                        s = _mm512_add_epi32(s, _mm512_cvtepi16_epi32(_mm256_loadu_si256((const __m256i *)(
                            res + ((size_t)(y0 + dy + 1) * w2 + (size_t)(x0 + dx + 1)) * (size_t)L->res_c + co))));
                v = ob_q_add(v, ob_q_rq(ob_q_widen32(s), L->q_pool_m[count], L->q_pool_sh));
            }
            r = ob_q_sat(v);
            if (dst) ob_q_store16(dst + o + co, r);
            ob_q_store16(adst + o + co, ob_q_act(L, r, co));
        }
    }
    return 1;
}
#endif

static void ob_epi_q(const ob_layer *L, unsigned char *arena, int oy, int ox0, int mr, int co0, int nco,
                     const int32_t *acc)
{
    int16_t *dst = L->dst >= 0 ? OB_Q(arena, L->dst) : NULL;
    int16_t *adst = L->act_dst >= 0 ? OB_Q(arena, L->act_dst) : NULL;
    const int16_t *res = L->res_src >= 0 ? OB_Q(arena, L->res_src) : NULL;
    int32_t *head = OB_QH(arena);
    int p, j;
#if defined(OB_KERNEL_AVX512_INT)
    if (ob_epi_q_vec(L, arena, oy, ox0, mr, co0, nco, acc)) return;
#endif
    for (p = 0; p < mr; p++) {
        const int ox = ox0 + p;
        const size_t o = ((size_t)(oy + 1) * ((size_t)L->ow + 2) + (size_t)ox + 1) * (size_t)L->cout;
        for (j = 0; j < nco; j++) {
            const int co = co0 + j;
            const int32_t a = acc[p * OB_NCO + j];
            if (L->epi == OB_EPI_ACT) {
                dst[o + co] = ob_act_q(L, L->act == OB_ACT_SRELU ? ob_rq(a, L->q_m, L->q_sh) : a, co);
            } else if (L->epi == OB_EPI_RES) {
                int64_t v = ob_rq(a, L->q_m, L->q_sh);
                int16_t r;
                if (L->res == OB_RES_IDENTITY) v += ob_rq(res[o + co], L->q_res_m, L->q_res_sh);
                else if (L->res == OB_RES_POOL && co < L->res_c) v += ob_pool_q(res, L, oy, ox, co);
                r = ob_sat16(v);
                if (dst) dst[o + co] = r;
                adst[o + co] = ob_act_q(L, r, co);
            } else {
                head[((size_t)oy * (size_t)L->ow + (size_t)ox) * ONEBIT_NUM_CLASSES + (size_t)co] = a;
            }
        }
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

static void ob_head_q(const unsigned char *arena, float *logits, int32_t *lq)
{
    const ob_layer *L = &ob_layers[ONEBIT_NUM_LAYERS - 1];
    const int32_t *head = (const int32_t *)(arena + ob_slot_i[ONEBIT_HEAD_SLOT]);
    const size_t npix = (size_t)L->oh * (size_t)L->ow;
    size_t p;
    int c;
    for (c = 0; c < ONEBIT_NUM_CLASSES; c++) {
        int64_t s = 0, q;
        for (p = 0; p < npix; p++) s += head[p * ONEBIT_NUM_CLASSES + (size_t)c];
        q = ob_rq(s, ob_head_qm[c], ONEBIT_HEAD_QSH) + ob_head_qb[c];
        q = q > INT32_MAX ? INT32_MAX : (q < -INT32_MAX ? -INT32_MAX : q);
        if (lq) lq[c] = (int32_t)q;
        if (logits) logits[c] = (float)q * ONEBIT_LOGIT_SCALE;   /* the only float operation of the mode */
    }
}
#endif

/* ---------------------------------------------------------------------------------------------- */
/* layer driver: work item = (32-channel block, output row) */

static void ob_layer_run(const ob_layer *L, unsigned char *arena, int mode, long i0, long i1)
{
    const ptrdiff_t pix = (ptrdiff_t)L->stride * L->cin, row = ((ptrdiff_t)L->iw + 2) * L->cin;
    const size_t wblk = (size_t)L->k * (size_t)L->k * (size_t)L->cin * OB_TAP_BYTES;
    long it;
    for (it = i0; it < i1; it++) {
        const int blk = (int)(it / L->oh), oy = (int)(it % L->oh);
        const int co0 = blk * OB_NCO, nco = L->cout - co0 < OB_NCO ? L->cout - co0 : OB_NCO;
        const uint8_t *w = L->bits + (size_t)blk * wblk;
        int ox0;
        for (ox0 = 0; ox0 < L->ow; ox0 += OB_MR) {
            const int mr = L->ow - ox0 < OB_MR ? L->ow - ox0 : OB_MR;
            const size_t off = ((size_t)(oy * L->stride - L->pad + 1) * ((size_t)L->iw + 2) +
                                (size_t)(ox0 * L->stride - L->pad + 1)) * (size_t)L->cin;
            if (mode == ONEBIT_FLOAT) {
                float acc[OB_MR * OB_NCO];
                ob_kf(OB_F(arena, L->src) + off, pix, row, L->cin, L->k, w, mr, acc);
                ob_epi_f(L, arena, oy, ox0, mr, co0, nco, acc);
            } else {
#if ONEBIT_HAS_INT
                int32_t acc[OB_MR * OB_NCO];
                ob_ki(OB_Q(arena, L->src) + off, pix, row, L->cin, L->k, w, mr, acc);
                ob_epi_q(L, arena, oy, ox0, mr, co0, nco, acc);
#endif
            }
        }
        if (L->epi != OB_EPI_HEAD) {
            const size_t esz = mode == ONEBIT_FLOAT ? sizeof(float) : sizeof(int16_t);
            const size_t *slots = mode == ONEBIT_FLOAT ? ob_slot_f : ob_slot_i;
            if (L->dst >= 0) ob_border(arena + slots[L->dst], esz, L, oy, co0, nco);
            if (L->act_dst >= 0) ob_border(arena + slots[L->act_dst], esz, L, oy, co0, nco);
        }
    }
}

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
    if (tid == 0) {
        if (mode == ONEBIT_FLOAT) ob_input_f(img, arena);
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
    if (mode != ONEBIT_FLOAT && mode != ONEBIT_INT) return ONEBIT_EARGS;
    if (mode == ONEBIT_INT && !ONEBIT_HAS_INT) return ONEBIT_ENOINT;
    if (n < 0 || (n > 0 && (!images || (!logits && !(mode == ONEBIT_INT && logits_q))))) return ONEBIT_EARGS;
    if (!arena || ((uintptr_t)arena % ONEBIT_ARENA_ALIGN) || arena_bytes < per) return ONEBIT_EARENA;
    if (n == 0) return ONEBIT_OK;
    if (threads > OB_MAXT) threads = OB_MAXT;
    if (threads < 1) threads = 1;
    task.mode = mode; task.n = n; task.tid = 0; task.nth = 1; task.tiles = 0; task.images = images;
    task.logits = logits; task.lq = mode == ONEBIT_INT ? logits_q : NULL; task.arena = (unsigned char *)arena;
    task.per = per; task.sync = NULL;
#if OB_MAXT > 1
    if (threads > 1) {
        const size_t fit = arena_bytes / per;
        if (n > 1 && fit >= 2) {     /* images over threads, one arena each */
            int nth = fit < (size_t)threads ? (int)fit : threads;
            ob_team_run(&task, nth < n ? nth : n);
        } else {                     /* spatial tiles of each image over threads, one arena */
            task.tiles = 1;
            ob_team_run(&task, threads);
        }
        return ONEBIT_OK;
    }
#endif
    ob_task_run(&task);
    return ONEBIT_OK;
}

int onebit_infer(int mode, const uint8_t *image, float *logits, void *arena)
{
    return onebit_run(mode, image, 1, logits, NULL, arena, OB_PER(mode), 1);
}
