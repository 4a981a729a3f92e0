/* libFuzzer harness for the checkpoint loader above safetensors: the header
 * checksum and the tensor checksums, the "format"/"config"/"state" metadata
 * (JSON parsed and validated into a run config and a train state), and the
 * model load (every tensor's presence, shape and finiteness, allocation bounded
 * by the file). Any bytes must be refused with a message naming the input, or
 * accepted with: a header whose CRC-32C, recomputed here, matches the one it
 * stores (or a format version 1 file, which predates header checksums) and
 * that is refused once its stored checksum is changed by one bit alone, a
 * config that survives a JSON round trip, and a model whose weights are all
 * finite and within +-DDPM_MAX_ABS_WEIGHT. Build and run: see README.md in
 * this folder. */
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ddpm/checkpoint.h"
#include "ddpm/crc32c.h"
#include "ddpm/error.h"

static void check_refusal(void)
{
    if (strncmp(ddpm_last_error(), "fuzz", 4) != 0)
        abort();
}

/* An accepted input's header checksum, checked from the bytes and the format
 * (safetensors.h) without the reader's code: the header begins with
 * {"__metadata__":{"header_crc32c":"XXXXXXXX" and XXXXXXXX is the CRC-32C of
 * the length field and the header with those digits as "00000000". */
static void check_header_checksum(const uint8_t *data, size_t size)
{
    static const char prefix[] = "{\"__metadata__\":{\"header_crc32c\":\"";
    const size_t at = 8 + sizeof prefix - 1;
    uint64_t h = 0;
    for (int i = 7; i >= 0; i--)
        h = h << 8 | data[i];
    if (size < 8 || h > size - 8 || h < sizeof prefix + 8 || memcmp(data + 8, prefix, sizeof prefix - 1))
        abort();
    uint8_t *copy = malloc(8 + (size_t)h);
    if (!copy)
        abort();
    memcpy(copy, data, 8 + (size_t)h);
    memcpy(copy + at, "00000000", 8);
    char hex[9];
    uint32_t crc = ddpm_crc32c(0, copy, 8 + (size_t)h);
    snprintf(hex, sizeof hex, "%08x", (unsigned)crc);
    free(copy);
    if (memcmp(data + at, hex, 8) != 0)
        abort();
    /* The same input with a stored checksum one bit off (still 8 lower-case
       digits, the JSON unchanged): the checksum alone must refuse it. */
    copy = malloc(size);
    if (!copy)
        abort();
    memcpy(copy, data, size);
    snprintf(hex, sizeof hex, "%08x", (unsigned)(crc ^ 1u));
    memcpy(copy + at, hex, 8);
    ddpm_checkpoint *ck = NULL;
    if (ddpm_checkpoint_open_memory(&ck, copy, size, "fuzz") == 0 || !strstr(ddpm_last_error(), "checksum"))
        abort();
    free(copy);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    ddpm_checkpoint *ck = NULL;
    if (ddpm_checkpoint_open_memory(&ck, data, size, "fuzz") != 0) {
        check_refusal();
        if (ck)
            abort();
        return 0;
    }
    /* A version 2 file verified its header and tensors; only version 1 may lack
       the header checksum. */
    int version = ddpm_checkpoint_format_version(ck);
    if (version != 1 && version != 2)
        abort();
    if (ddpm_checkpoint_header_checksummed(ck))
        check_header_checksum(data, size);
    else if (version != 1)
        abort();
    if (version == 2 && !ddpm_checkpoint_checksummed(ck))
        abort();
    /* The config and state it accepted are valid and survive a round trip. */
    const ddpm_run_config *cfg = ddpm_checkpoint_config(ck);
    char *cj = ddpm_run_config_to_json(cfg), *sj = ddpm_train_state_to_json(ddpm_checkpoint_state(ck));
    ddpm_run_config again;
    ddpm_train_state st;
    if (!cj || !sj || ddpm_run_config_from_json(&again, cj, "fuzz") != 0 ||
        ddpm_train_state_from_json(&st, sj, "fuzz") != 0)
        abort();
    char *cj2 = ddpm_run_config_to_json(&again);
    if (!cj2 || strcmp(cj, cj2) != 0)
        abort();
    free(cj);
    free(sj);
    free(cj2);
    for (int prefer_ema = 0; prefer_ema < 2; prefer_ema++) {
        ddpm_unet *net = NULL;
        float *params = NULL;
        int used_ema = 0;
        if (ddpm_checkpoint_load_model(ck, prefer_ema, &net, &params, &used_ema) != 0) {
            check_refusal();
            if (net || params)
                abort();
            continue;
        }
        for (size_t i = 0; i < net->n_params; i++)
            if (!isfinite(params[i]) || fabsf(params[i]) > DDPM_MAX_ABS_WEIGHT)
                abort();
        free(params);
        ddpm_unet_free(net);
    }
    for (int i = 0; i < ddpm_checkpoint_tensor_count(ck); i++) {
        int ndim;
        int64_t shape[8];
        if (!ddpm_checkpoint_tensor(ck, i, &ndim, shape))
            abort();
    }
    ddpm_checkpoint_close(ck);
    return 0;
}
