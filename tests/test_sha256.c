/* SHA-256 against the known answers of FIPS 180-4's examples (NIST CSRC, "SHA-256"
 * example values) and the empty message. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ddpm/sha256.h"
#include "testutil.h"

static void hash_text(char hex[65], const char *text, size_t chunk)
{
    ddpm_sha256 s;
    ddpm_sha256_init(&s);
    size_t n = strlen(text);
    for (size_t i = 0; i < n; i += chunk) /* any split gives the same digest */
        ddpm_sha256_update(&s, text + i, n - i < chunk ? n - i : chunk);
    uint8_t d[32];
    ddpm_sha256_final(&s, d);
    ddpm_sha256_hex(hex, d);
}

static void test_sha256_known_answers_in_any_split(void **state)
{
    (void)state;
    static const char *cases[][2] = {
        {"", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"},
        {"abc", "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"},
        {"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq",
         "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"},
        {"abcdefghbcdefghicdefghijdefghijkefghijklfghijklmghijklmnhijklmnoijklmnopjklmnopqklmnopqrlmnopqrsmno"
         "pqrstnopqrstu",
         "cf5b16a778af8380036ce59e7b0492370b249b11e8f07a51afac45037afee9d1"},
    };
    char hex[65];
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        for (size_t chunk = 1; chunk <= 130; chunk += 43) {
            hash_text(hex, cases[i][0], chunk);
            assert_string_equal(hex, cases[i][1]);
        }
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) { /* in one call */
        ddpm_sha256_bytes_hex(cases[i][0], strlen(cases[i][0]), hex);
        assert_string_equal(hex, cases[i][1]);
    }
}

static void test_sha256_of_a_million_a_and_of_a_file(void **state)
{
    (void)state;
    char *a = malloc(1000001);
    assert_non_null(a);
    memset(a, 'a', 1000000);
    a[1000000] = '\0';
    char hex[65];
    hash_text(hex, a, 4096);
    assert_string_equal(hex, "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
    char dir[256], path[512];
    assert_int_equal(tu_make_tmpdir(dir, sizeof dir, "sha256"), 0);
    snprintf(path, sizeof path, "%s/a.bin", dir);
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(a, 1, 1000000, f), 1000000);
    fclose(f);
    assert_int_equal(ddpm_sha256_file(path, hex), 0);
    assert_string_equal(hex, "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
    snprintf(path, sizeof path, "%s/missing", dir);
    assert_int_not_equal(ddpm_sha256_file(path, hex), 0);
    free(a);
    tu_remove_tree(dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sha256_known_answers_in_any_split),
        cmocka_unit_test(test_sha256_of_a_million_a_and_of_a_file),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
