/* onebit C inference runtime: public API.
 *
 * A 1-bit wide residual network (McDonnell et al. 2019, arXiv 1907.06916) compiled into C: every
 * convolution is computed directly from its packed sign bits (acc = sum of +-x, then one multiplication
 * by c = sqrt(2 / (kh*kw*C_in))), with the activation, the residual add and the shortcut pool fused
 * into the convolution's output. All activations live in a caller-provided arena of a size fixed at
 * export time (ONEBIT_ARENA_BYTES per worker); nothing is allocated during inference.
 *
 * Two arithmetic modes:
 *   ONEBIT_FLOAT  float32 activations.
 *   ONEBIT_INT    int16 fixed-point activations with per-layer power-of-two scales; a convolution is
 *                 additions and subtractions of integers, and the only multiplications are the
 *                 fixed-point rescales of the outputs (int32 multiplier, int64 product, rounding shift).
 *   ONEBIT_INT8   8-bit activations: every convolution input is a byte u with real value s (u - z)
 *                 (a shifted ReLU's -1 is the byte 0), the residual stream stays int16 as in ONEBIT_INT;
 *                 same rescales, half the bytes per activation.
 *
 * Images are uint8 CHW planar (the CIFAR-10 binary layout), ONEBIT_IN_C x ONEBIT_IN_H x ONEBIT_IN_W
 * raw pixel values 0..255.
 */
#ifndef ONEBIT_H
#define ONEBIT_H

#include <stddef.h>
#include <stdint.h>

#include "onebit_config.h"

/* ONEBIT_FLOAT / ONEBIT_INT, the error codes ONEBIT_OK, ONEBIT_EARENA (arena too small or not
 * ONEBIT_ARENA_ALIGN-byte aligned), ONEBIT_EARGS, ONEBIT_ENOINT, ONEBIT_ETHREAD (see onebit_contract.h) */
#include "onebit_contract.h"

#define ONEBIT_INPUT_BYTES (ONEBIT_IN_C * ONEBIT_IN_H * ONEBIT_IN_W)

/* SHA-256 of the model this library was generated from (config, sign bits, BN statistics). */
const char *onebit_model_id(void);
/* "avx512", "avx2", "neon" or "portable": the convolution kernels selected at build time. */
const char *onebit_kernel_name(void);
/* Largest thread count this build accepts (ONEBIT_THREADS at build time, 1 without pthreads). */
int onebit_max_threads(void);
/* "vnni", "dsp", "portable", ... : the 8-bit mode's convolution kernels ("none" without that mode). */
const char *onebit_kernel8_name(void);
/* Logits per image, bytes per input image, whether the integer (int16) and 8-bit modes were exported. */
int onebit_num_classes(void);
size_t onebit_input_bytes(void);
int onebit_has_int(void);
int onebit_has_int8(void);
/* Arena bytes one worker needs in `mode`. */
size_t onebit_arena_bytes(int mode);

/* Logits of one image, single-threaded. `arena`: onebit_arena_bytes(mode) bytes, ONEBIT_ARENA_ALIGN-byte aligned. */
int onebit_infer(int mode, const uint8_t *image, float *logits, void *arena);

/* Logits of `n` images (n * ONEBIT_INPUT_BYTES bytes) into logits[n * ONEBIT_NUM_CLASSES].
 * `logits_q` (may be NULL; integer modes only) receives the integer logits, whose real value is
 * logits_q * ONEBIT_LOGIT_SCALE; in the integer modes `logits` may be NULL if `logits_q` is not, and then no
 * floating-point operation is executed at all. With threads > 1 (and a build with ONEBIT_THREADS > 1), one image is
 * split into spatial tiles over the threads; several images are split over the threads, each with its
 * own arena (arena_bytes >= workers * onebit_arena_bytes(mode); fewer workers are used if it is not).
 * Results do not depend on the thread count. */
int onebit_run(int mode, const uint8_t *images, int n, float *logits, int32_t *logits_q,
               void *arena, size_t arena_bytes, int threads);

#endif
