/* Tests of the run config's defaults and the list syntax of the list flags. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <string.h>

#include "ddpm/config.h"

static void test_defaults_are_the_documented_recipe(void **state)
{
    (void)state;
    ddpm_run_config c;
    memset(&c, 0x5a, sizeof c); /* every field must be set, not left over */
    ddpm_run_config_default(&c);
    assert_int_equal(c.model.image_size, 28);
    assert_int_equal(c.model.in_channels, 1);
    assert_int_equal(c.model.ch, 32);
    assert_int_equal(c.model.n_levels, 3);
    assert_int_equal(c.model.ch_mult[0], 1);
    assert_int_equal(c.model.ch_mult[1], 2);
    assert_int_equal(c.model.ch_mult[2], 2);
    assert_int_equal(c.model.n_attn, 1);
    assert_int_equal(c.model.attn_res[0], 14);
    assert_int_equal(c.schedule, DDPM_SCHEDULE_LINEAR);
    assert_int_equal(c.timesteps, 1000);
    assert_true(c.beta_start == 1e-4 && c.beta_end == 0.02);
    assert_int_equal(c.batch, 32); /* docs/defaults.md, batch size */
    assert_int_equal(c.flip, 0);
    assert_true(c.seed == 0);
}

static void test_int_lists_parse_strictly_and_round_trip(void **state)
{
    (void)state;
    int v[4];
    assert_int_equal(ddpm_parse_int_list("1,2,2", v, 4), 3);
    assert_true(v[0] == 1 && v[1] == 2 && v[2] == 2);
    assert_int_equal(ddpm_parse_int_list("", v, 4), 0);
    assert_int_equal(ddpm_parse_int_list("14", v, 4), 1);
    assert_int_equal(v[0], 14);
    const char *bad[] = {"1,,2", "1,2,", ",1", "a", "1;2", "-1", "1,2,3,4,5", "2000000"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        assert_int_equal(ddpm_parse_int_list(bad[i], v, 4), -1);
    char buf[64];
    const int w[3] = {1, 20, 300};
    ddpm_format_int_list(buf, sizeof buf, w, 3);
    assert_string_equal(buf, "1,20,300");
    assert_int_equal(ddpm_parse_int_list(buf, v, 4), 3);
    assert_memory_equal(v, w, sizeof w);
    ddpm_format_int_list(buf, sizeof buf, w, 0);
    assert_string_equal(buf, "");
    ddpm_format_int_list(buf, 5, w, 3); /* truncated, still terminated */
    assert_string_equal(buf, "1,20");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_defaults_are_the_documented_recipe),
        cmocka_unit_test(test_int_lists_parse_strictly_and_round_trip),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
