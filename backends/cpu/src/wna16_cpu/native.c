/* wna16 native small-M CPU kernel: y = x @ W^T from wna16_cpu's own packed layout (see native_linear.py).
 *
 * Layout, for each block of 16 output columns (column-block-major), rows in the padded, group-sorted order of
 * wna16_cpu.int4.RowLayout (K_padded rows, every group a multiple of 32 rows):
 *   nibble codes (2/3/4-bit, value c in [0, 15], weight (c - 8) * scale + zs): units of 4 rows, 32 bytes each;
 *     byte j of unit u holds column j / 2, its low nibble row 4u + j % 2, its high nibble row 4u + 2 + j % 2;
 *   int8 codes (8-bit, weight c * scale + zs): units of 2 rows, 32 bytes; byte j = column j / 2, row 2u + j % 2.
 * so that widening one unit to 32 words gives, per 32-bit lane, the (row k, row k + 1) word pair of one column: the
 * operand _mm512_dpbf16_ps multiplies with a broadcast (x[k], x[k + 1]) bf16 pair.
 * scale and zs are float32 [N_padded / 16, K_padded / group_rows, 16] (each block's parameters contiguous); zs (NULL when every zero is folded into the codes) is
 * multiplied with the per-group sum of x. Codes enter as small integers, exact in bf16; x is split into bf16
 * hi + lo (exact for fp16 and bf16 inputs), so every product is exact and every sum is float32.
 *
 * Two implementations of the same math: AVX512-BF16 intrinsics, and plain C the compiler vectorises (any CPU).
 */
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(__AVX512BF16__) && defined(__AVX512BW__)
#include <immintrin.h>
#define WNA16_AVX512BF16 1
#else
#define WNA16_AVX512BF16 0
#endif

#define COLS 16
#define MAX_ROWS 4
/* Threads are created per call: each gets at least this many column blocks (256 columns), so that a small layer on
 * a many-core machine does not spend more on thread start-up than on its share of the work. */
#define MIN_BLOCKS_PER_THREAD 16

int wna16_native_isa(void) { return WNA16_AVX512BF16; }

static uint16_t bf16_bits(float f) { /* round to nearest even; inputs are finite */
    uint32_t u;
    memcpy(&u, &f, 4);
    return (uint16_t)((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
}

static float bf16_float(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

typedef struct {
    const uint8_t *codes;
    const float *scale; /* [groups, np] */
    const float *zs;    /* [groups, np] or NULL */
    const uint32_t *xh; /* [m, kp / 2] bf16 pairs of hi(x) */
    const uint32_t *xl; /* [m, kp / 2] bf16 pairs of lo(x), or NULL when x is bf16 */
    const float *xsum;  /* [m, groups] or NULL */
    float *y;           /* [m, np] float32 */
    int64_t m, kp, np, gk;
    int bits8;
    int64_t b0, b1; /* column blocks of this thread */
} job_t;

#if WNA16_AVX512BF16
/* vpermw table: word i = bf16((i & 15) - 8). vpermw reads only the low 5 bits of each index, so a word holding a
 * whole byte b indexes bf16((b & 15) - 8), its low nibble, without masking; b >> 4 indexes its high nibble. */
static inline __m512i nibble_table(void) {
    uint16_t t[32];
    for (int i = 0; i < 32; i++) t[i] = bf16_bits((float)((i & 15) - 8));
    return _mm512_loadu_si512(t);
}

static inline __m512 dot_pair(__m512 acc, __m512i w, const uint32_t *xh, const uint32_t *xl, int64_t p) {
    acc = _mm512_dpbf16_ps(acc, (__m512bh)w, (__m512bh)_mm512_set1_epi32((int)xh[p]));
    if (xl) acc = _mm512_dpbf16_ps(acc, (__m512bh)w, (__m512bh)_mm512_set1_epi32((int)xl[p]));
    return acc;
}

static inline __attribute__((always_inline)) void block_rows(const job_t *j, int64_t b, int64_t r0, const int rows) {
    const int64_t kp = j->kp, gk = j->gk, groups = kp / gk, half = kp / 2;
    __m512 y[MAX_ROWS];
    for (int r = 0; r < rows; r++) y[r] = _mm512_setzero_ps();
    const __m512i lut = nibble_table();
    const uint8_t *base = j->codes + b * kp * COLS; /* 16 columns x kp rows, one byte per 2 (4-bit) or 1 code */
    if (!j->bits8) base = j->codes + b * kp * COLS / 2;
    for (int64_t g = 0; g < groups; g++) {
        __m512 acc[MAX_ROWS][4];
        for (int r = 0; r < rows; r++)
            for (int c = 0; c < 4; c++) acc[r][c] = _mm512_setzero_ps();
        if (!j->bits8) {
            const uint8_t *p = base + g * gk * COLS / 2;
            for (int64_t u = 0; u < gk / 4; u += 2) { /* two units: rows 4u .. 4u + 7 */
                _mm_prefetch((const char *)(p + 32 * u + 1024), _MM_HINT_T0); /* the stream, 1 KiB ahead */
                __m512i w0 = _mm512_cvtepu8_epi16(_mm256_loadu_si256((const __m256i *)(p + 32 * u)));
                __m512i w1 = _mm512_cvtepu8_epi16(_mm256_loadu_si256((const __m256i *)(p + 32 * u + 32)));
                __m512i a0 = _mm512_permutexvar_epi16(w0, lut); /* index = byte & 31: the low nibble */
                __m512i a1 = _mm512_permutexvar_epi16(_mm512_srli_epi16(w0, 4), lut);
                __m512i a2 = _mm512_permutexvar_epi16(w1, lut);
                __m512i a3 = _mm512_permutexvar_epi16(_mm512_srli_epi16(w1, 4), lut);
                int64_t q = (g * gk + 4 * u) / 2; /* pair index of row 4u */
                for (int r = 0; r < rows; r++) {
                    const uint32_t *xh = j->xh + (r0 + r) * half, *xl = j->xl ? j->xl + (r0 + r) * half : NULL;
                    acc[r][0] = dot_pair(acc[r][0], a0, xh, xl, q);
                    acc[r][1] = dot_pair(acc[r][1], a1, xh, xl, q + 1);
                    acc[r][2] = dot_pair(acc[r][2], a2, xh, xl, q + 2);
                    acc[r][3] = dot_pair(acc[r][3], a3, xh, xl, q + 3);
                }
            }
        } else {
            const uint8_t *p = base + g * gk * COLS;
            for (int64_t u = 0; u < gk / 2; u += 4) { /* four units: rows 2u .. 2u + 7 */
                __m512i a[4];
                for (int c = 0; c < 4; c++) {
                    const uint8_t *s = p + 32 * (u + c);
                    __m512 f0 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)s)));
                    __m512 f1 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(s + 16))));
                    a[c] = (__m512i)_mm512_cvtne2ps_pbh(f1, f0);
                }
                int64_t q = (g * gk) / 2 + u;
                for (int r = 0; r < rows; r++) {
                    const uint32_t *xh = j->xh + (r0 + r) * half, *xl = j->xl ? j->xl + (r0 + r) * half : NULL;
                    for (int c = 0; c < 4; c++) acc[r][c] = dot_pair(acc[r][c], a[c], xh, xl, q + c);
                }
            }
        }
        __m512 s = _mm512_loadu_ps(j->scale + (b * groups + g) * COLS);
        __m512 z = j->zs ? _mm512_loadu_ps(j->zs + (b * groups + g) * COLS) : _mm512_setzero_ps();
        for (int r = 0; r < rows; r++) {
            __m512 t = _mm512_add_ps(_mm512_add_ps(acc[r][0], acc[r][1]), _mm512_add_ps(acc[r][2], acc[r][3]));
            y[r] = _mm512_fmadd_ps(t, s, y[r]);
            if (j->zs) y[r] = _mm512_fmadd_ps(_mm512_set1_ps(j->xsum[(r0 + r) * groups + g]), z, y[r]);
        }
    }
    for (int r = 0; r < rows; r++) _mm512_storeu_ps(j->y + (r0 + r) * j->np + b * COLS, y[r]);
}
#else
static inline float code_at(const job_t *j, const uint8_t *base, int64_t k, int c) {
    if (j->bits8) return (float)(int8_t)base[(k / 2) * 32 + 2 * c + (k & 1)];
    int64_t u = k / 4, w = k % 4;
    uint8_t byte = base[u * 32 + 2 * c + (w & 1)];
    return (float)((w < 2 ? byte & 15 : byte >> 4) - 8);
}

static inline __attribute__((always_inline)) void block_rows(const job_t *j, int64_t b, int64_t r0, const int rows) {
    const int64_t kp = j->kp, gk = j->gk, groups = kp / gk, half = kp / 2;
    const uint8_t *base = j->codes + (j->bits8 ? b * kp * COLS : b * kp * COLS / 2);
    float y[MAX_ROWS][COLS] = {{0}};
    for (int64_t g = 0; g < groups; g++) {
        float acc[MAX_ROWS][COLS] = {{0}};
        for (int64_t k = g * gk; k < (g + 1) * gk; k++) {
            float w[COLS];
            for (int c = 0; c < COLS; c++) w[c] = code_at(j, base, k, c);
            for (int r = 0; r < rows; r++) {
                int64_t i = (r0 + r) * half + k / 2, shift = (k & 1) * 16;
                float xv = bf16_float((uint16_t)(j->xh[i] >> shift));
                if (j->xl) xv += bf16_float((uint16_t)(j->xl[i] >> shift)); /* hi + lo = x, exact */
                for (int c = 0; c < COLS; c++) acc[r][c] += xv * w[c];
            }
        }
        for (int r = 0; r < rows; r++)
            for (int c = 0; c < COLS; c++) {
                y[r][c] += acc[r][c] * j->scale[(b * groups + g) * COLS + c];
                if (j->zs) y[r][c] += j->xsum[(r0 + r) * groups + g] * j->zs[(b * groups + g) * COLS + c];
            }
    }
    for (int r = 0; r < rows; r++) memcpy(j->y + (r0 + r) * j->np + b * COLS, y[r], sizeof y[r]);
}
#endif

static void *run_job(void *arg) {
    const job_t *j = (const job_t *)arg;
    for (int64_t b = j->b0; b < j->b1; b++) {
        int64_t r0 = 0;
        for (; r0 + 4 <= j->m; r0 += 4) block_rows(j, b, r0, 4);
        switch (j->m - r0) {
        case 3: block_rows(j, b, r0, 3); break;
        case 2: block_rows(j, b, r0, 2); break;
        case 1: block_rows(j, b, r0, 1); break;
        default: break;
        }
    }
    return NULL;
}

/* y [m, np] = x [m, kp] @ W^T. Returns 0, or -1 when memory for the bf16 copies of x is not available. */
int wna16_native_linear(const float *x, int64_t m, int64_t kp, const uint8_t *codes, int bits8, const float *scale,
                        const float *zs, int64_t np, int64_t gk, int split, float *y, int threads) {
    const int64_t half = kp / 2, groups = kp / gk;
    uint32_t *xh = malloc((size_t)(m * half) * 4 * (split ? 2 : 1));
    float *xsum = zs ? malloc((size_t)(m * groups) * sizeof(float)) : NULL;
    if (!xh || (zs && !xsum)) {
        free(xh);
        free(xsum);
        return -1;
    }
    uint32_t *xl = split ? xh + m * half : NULL;
    for (int64_t i = 0; i < m * half; i++) {
        uint16_t h0 = bf16_bits(x[2 * i]), h1 = bf16_bits(x[2 * i + 1]);
        xh[i] = (uint32_t)h0 | ((uint32_t)h1 << 16);
        if (xl) {
            uint16_t l0 = bf16_bits(x[2 * i] - bf16_float(h0)), l1 = bf16_bits(x[2 * i + 1] - bf16_float(h1));
            xl[i] = (uint32_t)l0 | ((uint32_t)l1 << 16);
        }
    }
    if (xsum)
        for (int64_t r = 0; r < m; r++)
            for (int64_t g = 0; g < groups; g++) {
                float s = 0.f;
                for (int64_t k = g * gk; k < (g + 1) * gk; k++) s += x[r * kp + k];
                xsum[r * groups + g] = s;
            }
    const int64_t blocks = np / COLS;
    job_t jobs[64];
    pthread_t tid[64];
    int64_t nt = threads > 64 ? 64 : threads;
    if (nt > blocks / MIN_BLOCKS_PER_THREAD) nt = blocks / MIN_BLOCKS_PER_THREAD;
    if (nt < 1) nt = 1;
    for (int64_t t = 0; t < nt; t++) {
        jobs[t] = (job_t){codes, scale, zs, xh, xl, xsum, y, m, kp, np, gk, bits8, blocks * t / nt,
                          blocks * (t + 1) / nt};
    }
    int64_t started = 1;
    for (; started < nt; started++)
        if (pthread_create(&tid[started], NULL, run_job, &jobs[started]) != 0) break;
    for (int64_t t = started; t < nt; t++) run_job(&jobs[t]); /* threads that could not start: run here */
    run_job(&jobs[0]);
    for (int64_t t = 1; t < started; t++) pthread_join(tid[t], NULL);
    free(xh);
    free(xsum);
    return 0;
}

#if WNA16_AVX512BF16
/* Rows k and k + 1 of one unpacked (k, k + 1) word-pair vector, scaled, stored as float32 or bf16. */
static inline void store_pair(__m512i w, __m512 s, __m512 z, void *out, int64_t at, int64_t width, int out_bf16) {
    __m512 even = _mm512_castsi512_ps(_mm512_slli_epi32(w, 16));
    __m512 odd = _mm512_castsi512_ps(_mm512_and_si512(w, _mm512_set1_epi32((int)0xFFFF0000u)));
    even = _mm512_fmadd_ps(even, s, z);
    odd = _mm512_fmadd_ps(odd, s, z);
    if (out_bf16) {
        _mm256_storeu_si256((__m256i *)((uint16_t *)out + at), (__m256i)_mm512_cvtneps_pbh(even));
        _mm256_storeu_si256((__m256i *)((uint16_t *)out + at + width), (__m256i)_mm512_cvtneps_pbh(odd));
    } else {
        _mm512_storeu_ps((float *)out + at, even);
        _mm512_storeu_ps((float *)out + at + width, odd);
    }
}
#endif

/* w [kp, (b1 - b0) * 16] = dequantized W^T of column blocks b0 .. b1, float32 (out_bf16 = 0) or bf16 (rounded once):
 * code * scale + zs, exact in float32 for fp16/bf16 scales. */
void wna16_native_dequant(const uint8_t *codes, int bits8, const float *scale, const float *zs, int64_t kp, int64_t gk,
                          int64_t b0, int64_t b1, void *out, int out_bf16) {
    const int64_t width = (b1 - b0) * COLS;
    /* Tiles of 32 rows (kp and gk are multiples of 32) across every block: the rows being written stay in cache. */
    for (int64_t k0 = 0; k0 < kp; k0 += 32)
        for (int64_t b = b0; b < b1; b++) {
            const uint8_t *base = codes + (bits8 ? b * kp * COLS : b * kp * COLS / 2);
            const int64_t g = k0 / gk;
            const float *s = scale + (b * (kp / gk) + g) * COLS, *z = zs ? zs + (b * (kp / gk) + g) * COLS : NULL;
#if WNA16_AVX512BF16
            const __m512i lut = nibble_table();
            const __m512 sv = _mm512_loadu_ps(s), zv = z ? _mm512_loadu_ps(z) : _mm512_setzero_ps();
            for (int64_t k = k0; k < k0 + 32; k += 4) {
                const int64_t at = k * width + (b - b0) * COLS;
                if (bits8) {
                    for (int h = 0; h < 2; h++) {
                        const uint8_t *p = base + (k / 2 + h) * 32;
                        __m512 f0 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)p)));
                        __m512 f1 =
                            _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(p + 16))));
                        store_pair((__m512i)_mm512_cvtne2ps_pbh(f1, f0), sv, zv, out, at + 2 * h * width, width,
                                   out_bf16);
                    }
                } else {
                    __m512i w = _mm512_cvtepu8_epi16(_mm256_loadu_si256((const __m256i *)(base + (k / 4) * 32)));
                    store_pair(_mm512_permutexvar_epi16(w, lut), sv, zv, out, at, width, out_bf16);
                    store_pair(_mm512_permutexvar_epi16(_mm512_srli_epi16(w, 4), lut), sv, zv, out, at + 2 * width,
                               width, out_bf16);
                }
            }
#else
            for (int64_t k = k0; k < k0 + 32; k++) {
                float w[COLS];
                if (bits8) {
                    const uint8_t *p = base + (k / 2) * 32 + (k & 1);
                    for (int c = 0; c < COLS; c++) w[c] = (float)(int8_t)p[2 * c] * s[c];
                } else {
                    const uint8_t *p = base + (k / 4) * 32 + (k & 1);
                    const int shift = (k % 4) < 2 ? 0 : 4;
                    for (int c = 0; c < COLS; c++) w[c] = (float)(((p[2 * c] >> shift) & 15) - 8) * s[c];
                }
                if (z)
                    for (int c = 0; c < COLS; c++) w[c] += z[c];
                const int64_t at = k * width + (b - b0) * COLS;
                if (out_bf16)
                    for (int c = 0; c < COLS; c++) ((uint16_t *)out)[at + c] = bf16_bits(w[c]);
                else
                    memcpy((float *)out + at, w, sizeof w);
            }
#endif
        }
}
