/* rng.h: a counter-based random number generator (Philox4x32-10, Salmon et al.,
 * "Parallel random numbers: as easy as 1, 2, 3", SC 2011).
 *
 * The state is three integers (seed, stream, counter), so it is trivially saved
 * in a checkpoint. Each Philox call maps (seed, stream, counter) to four 32-bit
 * words; the fill functions give element k the words of counter c0 + k/4, so a
 * fill is the same for any number of threads. Use one stream per purpose (data
 * order, noise, dropout) so that they do not shift each other. */
#ifndef DDPM_RNG_H
#define DDPM_RNG_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
    uint64_t seed;
    uint64_t stream;
    uint64_t counter;
} ddpm_rng;

/* Well-known streams. */
enum {
    DDPM_STREAM_DATA = 1,    /* shuffling and flips */
    DDPM_STREAM_NOISE = 2,   /* timesteps and eps during training */
    DDPM_STREAM_DROPOUT = 3, /* dropout masks */
    DDPM_STREAM_SAMPLE = 4,  /* sampling noise */
    DDPM_STREAM_INIT = 5,    /* weight initialisation */
    DDPM_STREAM_LABELS = 6,  /* label dropout of class-conditional training */
};

void ddpm_rng_init(ddpm_rng *rng, uint64_t seed, uint64_t stream);

/* Philox4x32-10 of (key = seed, counter = {counter, stream}): a pure function. */
void ddpm_philox(uint32_t out[4], uint64_t seed, uint64_t stream, uint64_t counter);
/* ddpm_philox of the 16 counters counter, counter + 1, ..., counter + 15 at once
 * (vector code): out[4 i + l] is word l of counter + i, the same bits. */
#define DDPM_PHILOX_BLOCK 16
void ddpm_philox_block(uint32_t out[4 * DDPM_PHILOX_BLOCK], uint64_t seed, uint64_t stream, uint64_t counter);

uint32_t ddpm_rng_u32(ddpm_rng *rng);
/* Uniform in the open interval (0, 1). */
double ddpm_rng_uniform(ddpm_rng *rng);
/* Uniform integer in [0, n), without modulo bias; n > 0. */
uint64_t ddpm_rng_below(ddpm_rng *rng, uint64_t n);
/* Standard normal (Box-Muller). */
double ddpm_rng_normal(ddpm_rng *rng);

/* n floats uniform in (0, 1) / standard normal; advance the counter by ceil(n/4).
 * Threaded with OpenMP; the result does not depend on the thread count. */
void ddpm_rng_uniform_fill(ddpm_rng *rng, float *out, size_t n);
void ddpm_rng_normal_fill(ddpm_rng *rng, float *out, size_t n);

/* In-place Fisher-Yates shuffle of idx[0..n). */
void ddpm_rng_shuffle(ddpm_rng *rng, int *idx, size_t n);

#endif
