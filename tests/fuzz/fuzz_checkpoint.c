/* libFuzzer harness for the checkpoint loader above safetensors: the checksums,
 * the "format"/"config"/"state" metadata (JSON parsed and validated into a run
 * config and a train state), and the model load (every tensor's presence, shape
 * and finiteness, allocation bounded by the file). Any bytes must be refused
 * with a message naming the input, or accepted with a config that survives a
 * JSON round trip and a model whose weights are all finite. Build and run: see
 * README.md in this folder. */
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "ddpm/checkpoint.h"
#include "ddpm/error.h"

static void check_refusal(void)
{
    if (strncmp(ddpm_last_error(), "fuzz", 4) != 0)
        abort();
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
            if (!isfinite(params[i]))
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
