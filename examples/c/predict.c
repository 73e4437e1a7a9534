/* Predictions of an nnc model compiled ahead of time, from raw samples.
 *
 *   nnc compile examples/lenet.nn --weights lenet.safetensors -o lenet.o
 *   cargo build --release -p nnc-kernels
 *   cc -O2 -DMODEL=lenet -I. examples/c/predict.c lenet.o \
 *      target/release/libnnc_kernels.a -lpthread -ldl -lm -o predict
 *   ./predict t10k-images-idx3-ubyte          (IDX, not gzipped)
 *   ./predict samples.csv                     (one sample per row)
 *   ./predict samples.csv lenet.safetensors   (an object compiled with
 *                                              --weights-external)
 *
 * For each sample it prints the outputs (`%.9g`: every f32 exactly) and,
 * for a classifier's single output, the arg-max class, as CSV; these are
 * the values `nnc run --weights W --predict FILE` gives, bit for bit. The
 * samples go through the model's `<model>_prepare` (the data block's
 * transforms, from the header). MODEL names the object (its symbols and
 * `MODEL.h`). */

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define STR2(x) #x
#define STR(x) STR2(x)
#define CAT2(a, b) a##b
#define CAT(a, b) CAT2(a, b)
#define M(name) CAT(MODEL, name)

#include STR(MODEL.h)

static void fail(const char *what, const char *path) {
    fprintf(stderr, "error: %s: %s\n", path, what);
    exit(1);
}

/* Reads a whole file. */
static unsigned char *slurp(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    unsigned char *buf = NULL;
    size_t cap = 0, n = 0, got;
    if (!f) fail(strerror(errno), path);
    do {
        if (n == cap) {
            cap = cap ? 2 * cap : 1 << 16;
            buf = realloc(buf, cap);
            if (!buf) fail("out of memory", path);
        }
        got = fread(buf + n, 1, cap - n, f);
        n += got;
    } while (got > 0);
    if (ferror(f)) fail("read error", path);
    fclose(f);
    *len = n;
    return buf;
}

static uint32_t be32(const unsigned char *p) {
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* An IDX file of unsigned bytes (MNIST's images): samples of the product
   of all dims but the first. */
static float *read_idx(const unsigned char *b, size_t len, size_t *samples, size_t *per,
                       const char *path) {
    size_t dims, i, total = 1;
    float *out;
    if (len < 4 || b[0] != 0 || b[1] != 0) fail("not an IDX file", path);
    if (b[2] != 0x08) fail("IDX data is not unsigned bytes (type 0x08)", path);
    dims = b[3];
    if (dims < 1 || len < 4 + 4 * dims) fail("IDX header is truncated", path);
    *samples = be32(b + 4);
    *per = 1;
    for (i = 1; i < dims; i++) *per *= be32(b + 4 + 4 * i);
    total = *samples * *per;
    if (len < 4 + 4 * dims + total) fail("IDX data is shorter than its header says", path);
    out = malloc((total ? total : 1) * sizeof(float));
    if (!out) fail("out of memory", path);
    for (i = 0; i < total; i++) out[i] = (float)b[4 + 4 * dims + i];
    return out;
}

/* Comma-separated numbers, one sample per line. */
static float *read_csv(unsigned char *b, size_t len, size_t *samples, size_t *per,
                       const char *path) {
    size_t cap = 1024, n = 0, row = 0, line = 1;
    float *out = malloc(cap * sizeof(float));
    char *p = (char *)b, *end = (char *)b + len;
    *samples = 0;
    *per = 0;
    if (!out) fail("out of memory", path);
    while (p < end) {
        char *next;
        float v;
        if (*p == '\n' || *p == '\r') {
            if (*p == '\n') {
                if (row) {
                    if (*per == 0) *per = row;
                    if (row != *per) {
                        fprintf(stderr, "error: %s:%zu: %zu values, expected %zu\n", path, line,
                                row, *per);
                        exit(1);
                    }
                    (*samples)++;
                }
                row = 0;
                line++;
            }
            p++;
            continue;
        }
        if (*p == ',' || *p == ' ') {
            p++;
            continue;
        }
        v = strtof(p, &next);
        if (next == p) {
            fprintf(stderr, "error: %s:%zu: expected a number\n", path, line);
            exit(1);
        }
        if (n == cap) {
            cap *= 2;
            out = realloc(out, cap * sizeof(float));
            if (!out) fail("out of memory", path);
        }
        out[n++] = v;
        row++;
        p = next;
    }
    if (row) {
        if (*per == 0) *per = row;
        if (row != *per) fail("the last row has another number of values", path);
        (*samples)++;
    }
    return out;
}

int main(int argc, char **argv) {
    size_t len, samples, per, s, j, batch = M(_batch);
    size_t in_size = M(_input_size) / batch, out_size = M(_output_size) / batch;
    unsigned char *bytes;
    float *raw, *in, *out;
    const void *weights;
    void *arena;
    if (argc != 2 && argc != 3) {
        fprintf(stderr, "usage: %s SAMPLES.idx|SAMPLES.csv [WEIGHTS.safetensors]\n", argv[0]);
        return 2;
    }
    /* Embedded weights ignore the path; external ones read it. */
    weights = M(_weights_load)(argc == 3 ? argv[2] : NULL);
    if (!weights) {
        fprintf(stderr, "error: %s\n", nnc_last_error());
        return 1;
    }
    bytes = slurp(argv[1], &len);
    if (len >= 2 && bytes[0] == 0 && bytes[1] == 0)
        raw = read_idx(bytes, len, &samples, &per, argv[1]);
    else
        raw = read_csv(bytes, len, &samples, &per, argv[1]);
    if (per != in_size) {
        fprintf(stderr, "error: %s: samples of %zu values, the model takes %zu\n", argv[1], per,
                in_size);
        return 1;
    }
    in = calloc(M(_input_size), sizeof(float));
    out = malloc(M(_output_size) * sizeof(float));
    arena = aligned_alloc(64, (M(_arena_bytes) + 63) / 64 * 64);
    if (!in || !out || !arena || M(_init)(arena, weights) != 0) fail("out of memory", argv[1]);
    for (s = 0; s < samples; s += batch) {
        size_t n = samples - s < batch ? samples - s : batch, k;
        /* A last, short batch is padded with zeros, whose outputs are not printed. */
        memset(in, 0, M(_input_size) * sizeof(float));
        M(_prepare)(raw + s * in_size, in, n);
        if (M(_predict)(in, out, arena) != 0) fail("an index was out of range", argv[1]);
        for (k = 0; k < n; k++) {
            const float *o = out + k * out_size;
            size_t best = 0;
            for (j = 0; j < out_size; j++) {
                printf(j ? ",%.9g" : "%.9g", o[j]);
                if (o[j] > o[best]) best = j;
            }
            if (out_size > 1) printf(",%zu", best);
            printf("\n");
        }
    }
    M(_free)(arena);
    M(_weights_free)(weights);
    free(arena);
    free(in);
    free(out);
    free(raw);
    free(bytes);
    return 0;
}
