/* onebit_demo: classify raw images with the onebit C runtime, or time it.
 *
 *   onebit_demo [--int | --int8] [--raw] [--threads N] [--labels] [--quiet] [--max N] FILE
 *   onebit_demo [--int | --int8] [--threads N] --bench RUNS [--batch B] FILE
 *
 * FILE holds images of ONEBIT_INPUT_BYTES bytes each: uint8 CHW planar, raw pixels (the CIFAR-10
 * binary layout); with --labels each image is preceded by its label byte (CIFAR-10 .bin files).
 * Prints one line per image: index, predicted class, its name (when the export knew the class names,
 * see onebit_classes.h), logits (--raw: the integer modes' int32 logits, whose real value is
 * logit * ONEBIT_LOGIT_SCALE). --int: int16 activations; --int8: 8-bit activations. Numbers on the command line must be plain decimal integers in range.
 */
#define _POSIX_C_SOURCE 200112L
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "onebit.h"
#include "onebit_classes.h"

#if defined(ONEBIT_THREADS) && ONEBIT_THREADS > 1
#define DEMO_WORKERS ONEBIT_THREADS
#else
#define DEMO_WORKERS 1
#endif
#define DEMO_MAX_BATCH 64
#define DEMO_MAX_RUNS 100000

#if defined(__GNUC__)
#define DEMO_ALIGN __attribute__((aligned(64)))
#else
#define DEMO_ALIGN
#endif

static union { long double align; unsigned char b[(size_t)ONEBIT_ARENA_BYTES * DEMO_WORKERS]; } arena DEMO_ALIGN;
static uint8_t images[DEMO_MAX_BATCH][ONEBIT_INPUT_BYTES];
static float logits[DEMO_MAX_BATCH][ONEBIT_NUM_CLASSES];
static int32_t logits_q[ONEBIT_NUM_CLASSES];
static double times[DEMO_MAX_RUNS];

static void usage(void)
{
    fprintf(stderr,
            "usage: onebit_demo [--int | --int8] [--raw] [--threads N] [--labels] [--quiet] [--max N] FILE\n"
            "       onebit_demo [--int | --int8] [--threads N] --bench RUNS [--batch B] FILE\n"
            "FILE: raw images of %d bytes (uint8 %dx%dx%d CHW, 0..255); --labels: a label byte before each\n",
            ONEBIT_INPUT_BYTES, ONEBIT_IN_C, ONEBIT_IN_H, ONEBIT_IN_W);
}

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec * 1e-6;
}

/* peak resident set of this process in KiB (VmHWM of /proc/self/status), -1 where unavailable. Unlike
 * getrusage's ru_maxrss it does not include the parent's memory from before exec. */
static long peak_rss_kb(void)
{
    char line[256];
    long kb = -1;
    FILE *f = fopen("/proc/self/status", "r");
    if (!f) return -1;
    while (fgets(line, sizeof line, f))
        if (!strncmp(line, "VmHWM:", 6)) kb = atol(line + 6);
    fclose(f);
    return kb;
}

static int cmp_double(const void *a, const void *b)
{
    const double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static int argmax(const float *v)
{
    int c, best = 0;
    for (c = 1; c < ONEBIT_NUM_CLASSES; c++)
        if (v[c] > v[best]) best = c;
    return best;
}

/* a whole decimal integer in lo..hi, else an error line and 0 */
static int parse_long(const char *opt, const char *s, long lo, long hi, long *out)
{
    char *end;
    long v;
    errno = 0;
    v = strtol(s, &end, 10);
    if (end == s || *end != '\0' || errno == ERANGE || v < lo || v > hi) {
        fprintf(stderr, "onebit_demo: %s: expected an integer in %ld..%ld, got '%s'\n", opt, lo, hi, s);
        return 0;
    }
    *out = v;
    return 1;
}

static int fail(const char *what, int rc)
{
    if (rc == ONEBIT_ENOINT)
        fprintf(stderr, "onebit_demo: this export has no such integer mode (export with --calibrate N)\n");
    else
        fprintf(stderr, "onebit_demo: %s failed (error %d)\n", what, rc);
    return 1;
}

static int bench(int mode, int threads, int runs, int batch, int have)
{
    int r, rc, i;
    const int warm = runs / 10 + 2;
    double t0, total;
    for (r = 0; r < warm + runs; r++) {
        t0 = now_ms();
        rc = onebit_run(mode, images[r % have], 1, logits[0], NULL, arena.b, sizeof arena.b, threads);
        if (rc != ONEBIT_OK) return fail("inference", rc);
        if (r >= warm) times[r - warm] = now_ms() - t0;
    }
    qsort(times, (size_t)runs, sizeof times[0], cmp_double);
    printf("latency_ms median %.4f p95 %.4f min %.4f runs %d threads %d kernels %s mode %s\n",
           times[runs / 2], times[(runs * 95 + 99) / 100 - 1], times[0], runs, threads,
           mode == ONEBIT_INT8 ? onebit_kernel8_name() : onebit_kernel_name(),
           mode == ONEBIT_INT ? "int" : mode == ONEBIT_INT8 ? "int8" : "float");
    if (batch > 0) {
        for (i = have; i < batch; i++) memcpy(images[i], images[i % have], ONEBIT_INPUT_BYTES);
        for (r = 0; r < warm + runs; r++) {
            t0 = now_ms();
            rc = onebit_run(mode, images[0], batch, logits[0], NULL, arena.b, sizeof arena.b, threads);
            if (rc != ONEBIT_OK) return fail("batch inference", rc);
            if (r >= warm) times[r - warm] = now_ms() - t0;
        }
        total = 0.0;
        for (r = 0; r < runs; r++) total += times[r];
        qsort(times, (size_t)runs, sizeof times[0], cmp_double);
        printf("throughput_ips %.3f batch %d median_ms %.4f runs %d threads %d\n",
               1e3 * batch / times[runs / 2], batch, times[runs / 2], runs, threads);
        (void)total;
    }
    printf("peak_rss_kb %ld arena_bytes %lu\n", peak_rss_kb(), (unsigned long)onebit_arena_bytes(mode));
    return 0;
}

int main(int argc, char **argv)
{
    int mode = ONEBIT_FLOAT, threads = 1, with_labels = 0, quiet = 0, raw = 0, runs = 0, batch = 0, i, rc;
    long max = -1, n = 0, correct = 0, v;
    const char *path = NULL;
    FILE *f;
    for (i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--int")) mode = ONEBIT_INT;
        else if (!strcmp(argv[i], "--int8")) mode = ONEBIT_INT8;
        else if (!strcmp(argv[i], "--labels")) with_labels = 1;
        else if (!strcmp(argv[i], "--quiet")) quiet = 1;
        else if (!strcmp(argv[i], "--raw")) raw = 1;
        else if (!strcmp(argv[i], "--threads") && i + 1 < argc) {
            if (!parse_long("--threads", argv[++i], 1, 4096, &v)) return 2;
            threads = (int)v;
        } else if (!strcmp(argv[i], "--bench") && i + 1 < argc) {
            if (!parse_long("--bench", argv[++i], 0, DEMO_MAX_RUNS, &v)) return 2;
            runs = (int)v;
        } else if (!strcmp(argv[i], "--batch") && i + 1 < argc) {
            if (!parse_long("--batch", argv[++i], 0, DEMO_MAX_BATCH, &v)) return 2;
            batch = (int)v;
        } else if (!strcmp(argv[i], "--max") && i + 1 < argc) {
            if (!parse_long("--max", argv[++i], 0, 2147483647L, &max)) return 2;
        } else if (argv[i][0] == '-' || path) { usage(); return 2; }
        else path = argv[i];
    }
    if (!path || threads < 1 || threads > onebit_max_threads() || runs < 0 || runs > DEMO_MAX_RUNS ||
        batch < 0 || batch > DEMO_MAX_BATCH) {
        usage();
        if (threads > onebit_max_threads())
            fprintf(stderr, "this build supports up to %d threads (build with THREADS=N)\n", onebit_max_threads());
        return 2;
    }
    if (raw && mode == ONEBIT_FLOAT) {
        fprintf(stderr, "onebit_demo: --raw prints an integer mode's logits; add --int or --int8\n");
        return 2;
    }
    f = fopen(path, "rb");
    if (!f) { perror(path); return 1; }
    if (runs > 0) {
        int have = 0;
        while (have < DEMO_MAX_BATCH && (!with_labels || fgetc(f) != EOF) &&
               fread(images[have], 1, ONEBIT_INPUT_BYTES, f) == ONEBIT_INPUT_BYTES)
            have++;
        fclose(f);
        if (have == 0) { fprintf(stderr, "onebit_demo: %s holds no complete image\n", path); return 1; }
        return bench(mode, threads, runs, batch, have);
    }
    while (max < 0 || n < max) {
        int label = -1, pred;
        size_t got;
        if (with_labels && (label = fgetc(f)) == EOF) break;
        if (label >= ONEBIT_NUM_CLASSES) {
            fprintf(stderr, "onebit_demo: %s: image %ld has label %d, outside the model's %d classes "
                    "(is this a labels file?)\n", path, n, label, ONEBIT_NUM_CLASSES);
            fclose(f);
            return 1;
        }
        got = fread(images[0], 1, ONEBIT_INPUT_BYTES, f);
        if (got != ONEBIT_INPUT_BYTES) {
            if (got == 0 && !with_labels && !ferror(f)) break;
            fprintf(stderr, "onebit_demo: %s: truncated or unreadable image %ld\n", path, n);
            fclose(f);
            return 1;
        }
        rc = onebit_run(mode, images[0], 1, logits[0], logits_q, arena.b, sizeof arena.b, threads);
        if (rc != ONEBIT_OK) { fclose(f); return fail("inference", rc); }
        pred = argmax(logits[0]);
        correct += pred == label;
        if (!quiet) {
            int c;
            printf("%ld %d", n, pred);
            if (ONEBIT_HAVE_CLASS_NAMES) printf(" %s", onebit_class_names[pred]);
            for (c = 0; c < ONEBIT_NUM_CLASSES; c++) {
                if (raw) printf(" %ld", (long)logits_q[c]);
                else printf(" %.9g", logits[0][c]);
            }
            printf("\n");
        }
        n++;
    }
    fclose(f);
    if (n == 0 && max != 0) {
        fprintf(stderr, "onebit_demo: %s holds no complete image\n", path);
        return 1;
    }
    if (with_labels && n > 0) printf("accuracy %.4f (%ld/%ld)\n", (double)correct / (double)n, correct, n);
    return 0;
}
