/* sha256.h: SHA-256 (FIPS 180-4), to name a checkpoint by its bytes in the
 * recipe of every PNG ddpm writes (recipe.h). */
#ifndef DDPM_SHA256_H
#define DDPM_SHA256_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
    uint32_t h[8];
    uint64_t n_bytes;
    uint8_t block[64];
    size_t used;
} ddpm_sha256;

void ddpm_sha256_init(ddpm_sha256 *s);
void ddpm_sha256_update(ddpm_sha256 *s, const void *data, size_t n);
void ddpm_sha256_final(ddpm_sha256 *s, uint8_t digest[32]);
/* The digest as 64 lowercase hex digits and a NUL. */
void ddpm_sha256_hex(char hex[65], const uint8_t digest[32]);
/* hex[65] = SHA-256 of the n bytes at data. */
void ddpm_sha256_bytes_hex(const void *data, size_t n, char hex[65]);
/* hex[65] = SHA-256 of the bytes of the file at path; DDPM_EIO with a message
 * when it cannot be read. */
int ddpm_sha256_file(const char *path, char hex[65]);

#endif
