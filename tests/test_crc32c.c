/* Tests of CRC-32C: the published check values (the "123456789" check of the
 * CRC catalogue and RFC 3720's iSCSI vectors), and that any split of the input
 * and any alignment give the same CRC as the byte-at-a-time definition. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <stdint.h>
#include <string.h>

#include "ddpm/crc32c.h"

static void test_crc32c_matches_the_published_check_values(void **state)
{
    (void)state;
    uint8_t buf[32];
    assert_int_equal(ddpm_crc32c(0, "123456789", 9), 0xE3069283u);
    assert_int_equal(ddpm_crc32c(0, "", 0), 0u);
    memset(buf, 0, 32); /* RFC 3720 B.4: 32 bytes of zeros */
    assert_int_equal(ddpm_crc32c(0, buf, 32), 0x8A9136AAu);
    memset(buf, 0xff, 32); /* 32 bytes of 0xff */
    assert_int_equal(ddpm_crc32c(0, buf, 32), 0x62A8AB43u);
    for (int i = 0; i < 32; i++) /* incrementing 0..31 */
        buf[i] = (uint8_t)i;
    assert_int_equal(ddpm_crc32c(0, buf, 32), 0x46DD794Eu);
    for (int i = 0; i < 32; i++) /* decrementing 31..0 */
        buf[i] = (uint8_t)(31 - i);
    assert_int_equal(ddpm_crc32c(0, buf, 32), 0x113FDB5Cu);
}

/* Bitwise reference: the definition, one bit at a time. */
static uint32_t crc_bitwise(const uint8_t *p, size_t n)
{
    uint32_t c = 0xffffffffu;
    for (size_t i = 0; i < n; i++) {
        c ^= p[i];
        for (int k = 0; k < 8; k++)
            c = c & 1 ? (c >> 1) ^ 0x82F63B78u : c >> 1;
    }
    return ~c;
}

static void test_crc32c_is_the_same_for_every_split_and_alignment(void **state)
{
    (void)state;
    static uint8_t buf[300];
    uint32_t x = 12345;
    for (size_t i = 0; i < sizeof buf; i++) {
        x = x * 1103515245u + 12345u;
        buf[i] = (uint8_t)(x >> 16);
    }
    for (size_t start = 0; start < 9; start++)
        for (size_t n = 0; n + start <= 120; n += 7) {
            uint32_t ref = crc_bitwise(buf + start, n);
            assert_int_equal(ddpm_crc32c(0, buf + start, n), ref);
            for (size_t cut = 0; cut <= n; cut += 5)
                assert_int_equal(ddpm_crc32c(ddpm_crc32c(0, buf + start, cut), buf + start + cut, n - cut), ref);
        }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_crc32c_matches_the_published_check_values),
        cmocka_unit_test(test_crc32c_is_the_same_for_every_split_and_alignment),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
