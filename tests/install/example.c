/* example.c: libddpm from C. Trains a tiny U-Net for a few steps on synthetic
 * 8x8 images and samples a 2x2 grid of them into a PNG.
 *     cc example.c $(pkg-config --cflags --libs ddpm) -o example && ./example grid.png */
#include <stdio.h>

#include <ddpm/error.h>
#include <ddpm/sample.h>
#include <ddpm/train.h>

int main(int argc, char **argv)
{
    const char *out = argc > 1 ? argv[1] : "grid.png";
    ddpm_run_config cfg;
    ddpm_run_config_default(&cfg);
    cfg.model.image_size = 8;
    cfg.model.in_channels = 1;
    cfg.model.ch = 8;
    cfg.model.n_levels = 2; /* ch_mult 1,2 */
    cfg.model.ch_mult[1] = 2;
    cfg.model.n_attn = 0;
    cfg.model.groups = 4;
    cfg.timesteps = 50;
    cfg.batch = 4;

    ddpm_trainer *tr;
    int rc = ddpm_trainer_create(&tr, &cfg, 0);
    float x0[4 * 64]; /* 4 images: a bright square on black, in [-1, 1] */
    for (int step = 0; !rc && step < 10; step++) {
        for (int i = 0; i < 4 * 64; i++) {
            int b = i / 64, y = i % 64 / 8, x = i % 8;
            x0[i] = (y >= b && y < b + 4 && x >= b && x < b + 4) ? 1.0f : -1.0f;
        }
        rc = ddpm_trainer_step(tr, x0, NULL);
    }

    ddpm_sample_files_config sc;
    ddpm_sample_files_config_default(&sc);
    sc.n = 4;
    sc.sampler.steps = 10; /* DDIM */
    sc.grid_path = out;
    ddpm_model model; /* the EMA weights of the run, as a model */
    if (!rc && !(rc = ddpm_model_from_trainer(&model, tr, DDPM_WEIGHTS_EMA))) {
        rc = ddpm_sample_files(&model, &sc, NULL, NULL);
        ddpm_model_close(&model);
    }
    if (rc)
        fprintf(stderr, "example: %s\n", ddpm_last_error());
    ddpm_trainer_free(tr);
    return rc ? 1 : 0;
}
