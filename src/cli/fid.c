/* fid.c: `ddpm fid A B` (FID, optionally KID, of two image folders or saved
 * statistics) and `ddpm fid --save-stats OUT DIR`. */
#include <cJSON.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "args.h"
#include "cli.h"
#include "guard.h"
#include "ddpm/error.h"
#include "ddpm/fid.h"
#include "ddpm/fsutil.h"
#include "ddpm/inception.h"

static void usage(FILE *f)
{
    fprintf(f,
            "usage: ddpm fid A B [options]\n"
            "       ddpm fid --save-stats OUT.safetensors DIR [options]\n\n"
            "Frechet Inception Distance between two sets of images, as pytorch-fid computes\n"
            "it: Inception-v3 with the TensorFlow 2015 weights, 2048 pool features, every\n"
            "image (any size; gray repeated to RGB) resized to 299x299 bilinearly.\n"
            "A and B are image folders (searched recursively) or statistics files written\n"
            "by --save-stats (made with the same weights).\n"
            "  --inception FILE   the weights, " CLI_INCEPTION_NAME "\n"
            "                     (default: $DDPM_INCEPTION, else ~/.cache/ddpm/" CLI_INCEPTION_NAME ")\n"
            "                     download once: " CLI_INCEPTION_URL "\n"
            "  --n N              use the first N images of each folder, in path order (default all)\n"
            "  --kid              also the Kernel Inception Distance, mean and std over 100\n"
            "                     subsets of 1000 images (fewer when a folder has fewer);\n"
            "                     folders only\n"
            "  --batch N          images decoded and featurised together (default 32)\n"
            "  --threads N        threads (default: all cores)\n"
            "  --json             one JSON object on stdout instead of text\n"
            "  --save-stats OUT   write mu and Sigma of DIR's features to OUT and stop\n"
            "  --quiet            no progress on stderr (warnings stay)\n"
            "  --no-warnings      do not print warnings\n"
            "Prints FID (and KID), the image counts, the time and the features per second;\n"
            "progress goes to stderr.\n"
            "exit codes: 0 ok, 1 error (missing weights, bad file, fewer than 2 images), 2 usage\n");
}

typedef struct {
    int quiet;
    const char *label;
} progress_ctx;

static void progress(void *user, int done, int total)
{
    const progress_ctx *p = user;
    if (!p->quiet)
        fprintf(stderr, "\rddpm fid: %s: %d/%d images", cli_q(p->label), done, total);
    if (!p->quiet && done == total)
        fputc('\n', stderr);
}

static int is_regular_file(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

/* Features of the first max_n images of dir (all when max_n is 0). */
static int folder_features(ddpm_inception *net, const char *dir, int max_n, int batch, int quiet, float **feat,
                           int *n_out)
{
    char **paths = NULL;
    int n = 0, n_listed = 0;
    if (ddpm_fid_list_images(dir, &paths, &n_listed)) {
        cli_error("%s", ddpm_last_error());
        return -1;
    }
    n = max_n > 0 && n_listed > max_n ? max_n : n_listed;
    int rc = 0;
    if (n < 2) {
        cli_error(n == 0 ? "%s: no images" : "%s: 1 image; FID needs at least 2", dir);
        rc = -1;
    } else {
        progress_ctx p = {quiet, dir};
        if (ddpm_fid_features(net, paths, n, batch, feat, progress, &p)) {
            if (!quiet)
                fputc('\n', stderr);
            cli_error("%s", ddpm_last_error());
            rc = -1;
        }
    }
    ddpm_fid_free_paths(paths, n_listed);
    *n_out = n;
    return rc;
}

int cmd_fid(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"inception", required_argument, 0, 'i'}, {"n", required_argument, 0, 'n'},
        {"kid", no_argument, 0, 'k'},              {"batch", required_argument, 0, 'b'},
        {"threads", required_argument, 0, 't'},    {"json", no_argument, 0, 'j'},
        {"save-stats", required_argument, 0, 's'}, {"quiet", no_argument, 0, 'q'},
        {"help", no_argument, 0, 'h'},             {0, 0, 0, 0}};
    const char *inception = NULL, *save = NULL;
    int max_n = 0, kid = 0, batch = 32, threads = 0, json = 0, quiet = 0, opt;
    opterr = 0;
    optind = 1;
    while ((opt = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
        switch (opt) {
        case 'h': usage(stdout); return DDPM_EXIT_OK;
        case 'i': inception = optarg; break;
        case 'n':
            if (arg_int("--n", optarg, 2, 100000000, &max_n))
                return DDPM_EXIT_USAGE;
            break;
        case 'k': kid = 1; break;
        case 'b':
            if (arg_int("--batch", optarg, 1, 4096, &batch))
                return DDPM_EXIT_USAGE;
            break;
        case 't':
            if (arg_int("--threads", optarg, 1, 4096, &threads))
                return DDPM_EXIT_USAGE;
            break;
        case 'j': json = 1; break;
        case 's': save = optarg; break;
        case 'q': quiet = 1; break;
        default: cli_error("fid: unknown option '%s'", argv[optind - 1]); return cli_usage_error("fid");
        }
    }
    int n_inputs = argc - optind;
    if ((save && n_inputs != 1) || (!save && n_inputs != 2)) {
        cli_error(save ? "fid: --save-stats takes one folder" : "fid: expected two folders or statistics files");
        return cli_usage_error("fid");
    }
    ddpm_threads_set(threads);
    const char *in[2] = {argv[optind], n_inputs == 2 ? argv[optind + 1] : NULL};
    int is_stats[2] = {in[0] && is_regular_file(in[0]), in[1] && is_regular_file(in[1])};
    if (save && is_stats[0]) {
        cli_error("%s: --save-stats takes a folder of images", in[0]);
        return DDPM_EXIT_ERROR;
    }
    if (kid && (is_stats[0] || is_stats[1])) {
        cli_error("%s: --kid needs the images' features, not statistics", is_stats[0] ? in[0] : in[1]);
        return DDPM_EXIT_ERROR;
    }
    char weights[4096];
    ddpm_inception *net = NULL;
    int need_net = save || !is_stats[0] || !is_stats[1];
    if (need_net && cli_find_inception(weights, sizeof weights, inception))
        return DDPM_EXIT_ERROR;
    if (save) {
        const cli_input inputs[2] = {{in[0], CLI_IN_FOLDER}, {weights, CLI_IN_FILE}};
        int rc = cli_check_output("--save-stats", save, 0, inputs, 2);
        if (!rc)
            rc = cli_check_writable_file("--save-stats", save, "stats.safetensors");
        if (rc)
            return rc;
    }
    if (need_net) {
        int rc = cli_check_input_file(weights, CLI_IN_FILE, "the Inception weights");
        if (rc)
            return rc;
        if (ddpm_inception_load(&net, weights)) {
            cli_error("%s", ddpm_last_error());
            return DDPM_EXIT_ERROR;
        }
    }
    double t0 = ddpm_now_seconds();
    ddpm_fid_stats st[2] = {{0}};
    float *feat[2] = {NULL, NULL};
    int n_img[2] = {0, 0}, n_featurised = 0, failed = 0;
    const char *sha = net ? ddpm_inception_sha256(net) : NULL;
    for (int k = 0; k < (save ? 1 : 2) && !failed; k++) {
        if (is_stats[k]) {
            if (ddpm_fid_stats_load(&st[k], in[k], sha ? sha : (k == 1 ? st[0].sha256 : NULL))) {
                cli_error("%s", ddpm_last_error());
                failed = 1;
            }
            n_img[k] = (int)st[k].n;
            continue;
        }
        if (folder_features(net, in[k], max_n, batch, quiet, &feat[k], &n_img[k])) {
            failed = 1;
            break;
        }
        n_featurised += n_img[k];
        if (ddpm_fid_stats_compute(&st[k], feat[k], n_img[k], ddpm_inception_n_features(net))) {
            cli_error("%s: %s", in[k], ddpm_last_error());
            failed = 1;
        }
        snprintf(st[k].sha256, sizeof st[k].sha256, "%s", sha);
    }
    double fid = 0.0, kid_mean = 0.0, kid_std = 0.0;
    if (!failed && save && ddpm_fid_stats_save(save, &st[0])) {
        cli_error("%s", ddpm_last_error());
        failed = 1;
    }
    if (!failed && !save && ddpm_fid_distance(&st[0], &st[1], &fid)) {
        cli_error("%s", ddpm_last_error());
        failed = 1;
    }
    if (!failed && kid &&
        ddpm_fid_kid(feat[0], n_img[0], feat[1], n_img[1], st[0].dim, DDPM_KID_SUBSETS, DDPM_KID_SUBSET_SIZE, 0,
                     &kid_mean, &kid_std)) {
        cli_error("%s", ddpm_last_error());
        failed = 1;
    }
    double seconds = ddpm_now_seconds() - t0;
    double per_sec = seconds > 0 ? n_featurised / seconds : 0.0;
    if (!failed) {
        if (save && json) {
            cJSON *name = cJSON_CreateString(save); /* a path with quotes or control bytes stays JSON */
            char *quoted = name ? cJSON_PrintUnformatted(name) : NULL;
            printf("{\"stats\": %s, \"n\": %d, \"dims\": %d, \"seconds\": %.3f, \"features_per_sec\": %.2f}\n",
                   quoted ? quoted : "null", n_img[0], st[0].dim, seconds, per_sec);
            free(quoted);
            cJSON_Delete(name);
        } else if (save)
            printf("wrote %s: mu and Sigma of %d images (%d features), %.1f s, %.1f images/s\n", cli_q(save),
                   n_img[0], st[0].dim, seconds, per_sec);
        else if (json) {
            printf("{\"fid\": %.10g", fid);
            if (kid)
                printf(", \"kid\": %.10g, \"kid_std\": %.10g", kid_mean, kid_std);
            printf(", \"n_a\": %d, \"n_b\": %d, \"dims\": %d, \"seconds\": %.3f, \"features_per_sec\": %.2f}\n",
                   n_img[0], n_img[1], st[0].dim, seconds, per_sec);
        } else {
            printf("FID %.4f\n", fid);
            if (kid)
                printf("KID %.6f +- %.6f (%d subsets)\n", kid_mean, kid_std, DDPM_KID_SUBSETS);
            printf("images: %d in %s, %d in %s; %d features; %.1f s, %.1f images/s\n", n_img[0], cli_q(in[0]),
                   n_img[1], cli_q(in[1]), st[0].dim, seconds, per_sec);
        }
    }
    for (int k = 0; k < 2; k++) {
        ddpm_fid_stats_free(&st[k]);
        free(feat[k]);
    }
    ddpm_inception_free(net);
    return failed ? DDPM_EXIT_ERROR : DDPM_EXIT_OK;
}
