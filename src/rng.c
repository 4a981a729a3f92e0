#include "ddpm/rng.h"

#include <math.h>

#define PHILOX_M0 0xD2511F53u
#define PHILOX_M1 0xCD9E8D57u
#define PHILOX_W0 0x9E3779B9u
#define PHILOX_W1 0xBB67AE85u

void ddpm_rng_init(ddpm_rng *rng, uint64_t seed, uint64_t stream)
{
    rng->seed = seed;
    rng->stream = stream;
    rng->counter = 0;
}

void ddpm_philox(uint32_t out[4], uint64_t seed, uint64_t stream, uint64_t counter)
{
    uint32_t c0 = (uint32_t)counter, c1 = (uint32_t)(counter >> 32);
    uint32_t c2 = (uint32_t)stream, c3 = (uint32_t)(stream >> 32);
    uint32_t k0 = (uint32_t)seed, k1 = (uint32_t)(seed >> 32);
    for (int round = 0; round < 10; round++) {
        uint64_t p0 = (uint64_t)PHILOX_M0 * c0;
        uint64_t p1 = (uint64_t)PHILOX_M1 * c2;
        uint32_t n0 = (uint32_t)(p1 >> 32) ^ c1 ^ k0;
        uint32_t n1 = (uint32_t)p1;
        uint32_t n2 = (uint32_t)(p0 >> 32) ^ c3 ^ k1;
        uint32_t n3 = (uint32_t)p0;
        c0 = n0, c1 = n1, c2 = n2, c3 = n3;
        k0 += PHILOX_W0;
        k1 += PHILOX_W1;
    }
    out[0] = c0, out[1] = c1, out[2] = c2, out[3] = c3;
}

#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#endif

#if defined(__AVX512F__)
/* The low and high words of the 32 x 32 -> 64-bit products m * c, lane by lane:
 * vpmuludq multiplies the even lanes; the odd ones are shifted down first. */
static inline void mulhilo16(__m512i m, __m512i c, __m512i *lo, __m512i *hi)
{
    const __m512i pe = _mm512_mul_epu32(m, c), po = _mm512_mul_epu32(m, _mm512_srli_epi64(c, 32));
    *lo = _mm512_mask_blend_epi32(0xAAAA, pe, _mm512_slli_epi64(po, 32));
    *hi = _mm512_mask_blend_epi32(0xAAAA, _mm512_srli_epi64(pe, 32), po);
}
#elif defined(__AVX2__)
static inline void mulhilo8(__m256i m, __m256i c, __m256i *lo, __m256i *hi)
{
    const __m256i pe = _mm256_mul_epu32(m, c), po = _mm256_mul_epu32(m, _mm256_srli_epi64(c, 32));
    *lo = _mm256_blend_epi32(pe, _mm256_slli_epi64(po, 32), 0xAA);
    *hi = _mm256_blend_epi32(_mm256_srli_epi64(pe, 32), po, 0xAA);
}
#endif

void ddpm_philox_block(uint32_t out[4 * DDPM_PHILOX_BLOCK], uint64_t seed, uint64_t stream, uint64_t counter)
{
    enum { N = DDPM_PHILOX_BLOCK };
    /* the counters' words lane by lane, so that each round is one vector
     * operation per word; the stream words and the key are the same in every lane */
    uint32_t c0[N], c1[N], c2[N], c3[N];
    for (int i = 0; i < N; i++) {
        const uint64_t ctr = counter + (uint64_t)i;
        c0[i] = (uint32_t)ctr, c1[i] = (uint32_t)(ctr >> 32);
        c2[i] = (uint32_t)stream, c3[i] = (uint32_t)(stream >> 32);
    }
    uint32_t k0 = (uint32_t)seed, k1 = (uint32_t)(seed >> 32);
#if defined(__AVX512F__)
    __m512i x0 = _mm512_loadu_si512(c0), x1 = _mm512_loadu_si512(c1);
    __m512i x2 = _mm512_loadu_si512(c2), x3 = _mm512_loadu_si512(c3);
    const __m512i m0 = _mm512_set1_epi32((int)PHILOX_M0), m1 = _mm512_set1_epi32((int)PHILOX_M1);
    for (int round = 0; round < 10; round++) {
        __m512i lo0, hi0, lo1, hi1;
        mulhilo16(m0, x0, &lo0, &hi0);
        mulhilo16(m1, x2, &lo1, &hi1);
        x0 = _mm512_xor_si512(_mm512_xor_si512(hi1, x1), _mm512_set1_epi32((int)k0));
        x2 = _mm512_xor_si512(_mm512_xor_si512(hi0, x3), _mm512_set1_epi32((int)k1));
        x1 = lo1, x3 = lo0;
        k0 += PHILOX_W0;
        k1 += PHILOX_W1;
    }
    _mm512_storeu_si512(c0, x0), _mm512_storeu_si512(c1, x1);
    _mm512_storeu_si512(c2, x2), _mm512_storeu_si512(c3, x3);
#elif defined(__AVX2__)
    for (int h = 0; h < N; h += 8) {
        __m256i x0 = _mm256_loadu_si256((const __m256i *)(c0 + h));
        __m256i x1 = _mm256_loadu_si256((const __m256i *)(c1 + h));
        __m256i x2 = _mm256_loadu_si256((const __m256i *)(c2 + h));
        __m256i x3 = _mm256_loadu_si256((const __m256i *)(c3 + h));
        const __m256i m0 = _mm256_set1_epi32((int)PHILOX_M0), m1 = _mm256_set1_epi32((int)PHILOX_M1);
        uint32_t j0 = k0, j1 = k1;
        for (int round = 0; round < 10; round++) {
            __m256i lo0, hi0, lo1, hi1;
            mulhilo8(m0, x0, &lo0, &hi0);
            mulhilo8(m1, x2, &lo1, &hi1);
            x0 = _mm256_xor_si256(_mm256_xor_si256(hi1, x1), _mm256_set1_epi32((int)j0));
            x2 = _mm256_xor_si256(_mm256_xor_si256(hi0, x3), _mm256_set1_epi32((int)j1));
            x1 = lo1, x3 = lo0;
            j0 += PHILOX_W0;
            j1 += PHILOX_W1;
        }
        _mm256_storeu_si256((__m256i *)(c0 + h), x0), _mm256_storeu_si256((__m256i *)(c1 + h), x1);
        _mm256_storeu_si256((__m256i *)(c2 + h), x2), _mm256_storeu_si256((__m256i *)(c3 + h), x3);
    }
#else
    for (int round = 0; round < 10; round++) {
        for (int i = 0; i < N; i++) {
            const uint64_t p0 = (uint64_t)PHILOX_M0 * c0[i];
            const uint64_t p1 = (uint64_t)PHILOX_M1 * c2[i];
            const uint32_t n0 = (uint32_t)(p1 >> 32) ^ c1[i] ^ k0;
            const uint32_t n2 = (uint32_t)(p0 >> 32) ^ c3[i] ^ k1;
            c1[i] = (uint32_t)p1, c3[i] = (uint32_t)p0;
            c0[i] = n0, c2[i] = n2;
        }
        k0 += PHILOX_W0;
        k1 += PHILOX_W1;
    }
#endif
    for (int i = 0; i < N; i++)
        out[4 * i] = c0[i], out[4 * i + 1] = c1[i], out[4 * i + 2] = c2[i], out[4 * i + 3] = c3[i];
}

/* 24 random bits, centred in their bin: never 0, never 1. */
static inline float u32_to_open_unit(uint32_t u) { return ((float)(u >> 8) + 0.5f) * (1.0f / 16777216.0f); }

uint32_t ddpm_rng_u32(ddpm_rng *rng)
{
    uint32_t out[4];
    ddpm_philox(out, rng->seed, rng->stream, rng->counter++);
    return out[0];
}

double ddpm_rng_uniform(ddpm_rng *rng)
{
    uint32_t out[4];
    ddpm_philox(out, rng->seed, rng->stream, rng->counter++);
    uint64_t bits = ((uint64_t)out[0] << 21) ^ (out[1] >> 11); /* 53 bits */
    return ((double)bits + 0.5) * (1.0 / 9007199254740992.0);
}

uint64_t ddpm_rng_below(ddpm_rng *rng, uint64_t n)
{
    /* Rejection on the top of the 64-bit range removes modulo bias. */
    uint64_t limit = UINT64_MAX - UINT64_MAX % n;
    for (;;) {
        uint32_t out[4];
        ddpm_philox(out, rng->seed, rng->stream, rng->counter++);
        uint64_t x = ((uint64_t)out[0] << 32) | out[1];
        if (x < limit)
            return x % n;
    }
}

double ddpm_rng_normal(ddpm_rng *rng)
{
    double u1 = ddpm_rng_uniform(rng), u2 = ddpm_rng_uniform(rng);
    return sqrt(-2.0 * log(u1)) * cos(2.0 * M_PI * u2);
}

static void uniform_block(const ddpm_rng *rng, uint64_t c0, float *out, size_t n, size_t blk)
{
    uint32_t w[4];
    ddpm_philox(w, rng->seed, rng->stream, c0 + blk);
    for (size_t l = 0; l < 4 && blk * 4 + l < n; l++)
        out[blk * 4 + l] = u32_to_open_unit(w[l]);
}

static void normal_block(const ddpm_rng *rng, uint64_t c0, float *out, size_t n, size_t blk)
{
    uint32_t w[4];
    ddpm_philox(w, rng->seed, rng->stream, c0 + blk);
    float z[4];
    for (int pair = 0; pair < 2; pair++) {
        /* Box-Muller in double so that the tails are exact to float precision. */
        double u1 = u32_to_open_unit(w[2 * pair]), u2 = u32_to_open_unit(w[2 * pair + 1]);
        double r = sqrt(-2.0 * log(u1));
        z[2 * pair] = (float)(r * cos(2.0 * M_PI * u2));
        z[2 * pair + 1] = (float)(r * sin(2.0 * M_PI * u2));
    }
    for (size_t l = 0; l < 4 && blk * 4 + l < n; l++)
        out[blk * 4 + l] = z[l];
}

/* Small fills stay out of OpenMP altogether: even a parallel region with a false
   if() clause costs microseconds in libgomp, and samplers draw per image per step. */
enum { PARALLEL_MIN_BLOCKS = 16384 };

void ddpm_rng_uniform_fill(ddpm_rng *rng, float *out, size_t n)
{
    size_t n_blocks = (n + 3) / 4;
    uint64_t c0 = rng->counter;
    if (n_blocks < PARALLEL_MIN_BLOCKS) {
        for (size_t blk = 0; blk < n_blocks; blk++)
            uniform_block(rng, c0, out, n, blk);
    } else {
#pragma omp parallel for schedule(static)
        for (size_t blk = 0; blk < n_blocks; blk++)
            uniform_block(rng, c0, out, n, blk);
    }
    rng->counter += n_blocks;
}

void ddpm_rng_normal_fill(ddpm_rng *rng, float *out, size_t n)
{
    size_t n_blocks = (n + 3) / 4;
    uint64_t c0 = rng->counter;
    if (n_blocks < PARALLEL_MIN_BLOCKS) {
        for (size_t blk = 0; blk < n_blocks; blk++)
            normal_block(rng, c0, out, n, blk);
    } else {
#pragma omp parallel for schedule(static)
        for (size_t blk = 0; blk < n_blocks; blk++)
            normal_block(rng, c0, out, n, blk);
    }
    rng->counter += n_blocks;
}

void ddpm_rng_shuffle(ddpm_rng *rng, int *idx, size_t n)
{
    for (size_t i = n; i > 1; i--) {
        size_t j = (size_t)ddpm_rng_below(rng, i);
        int tmp = idx[i - 1];
        idx[i - 1] = idx[j];
        idx[j] = tmp;
    }
}
