/* Tests of data-parallel training: `mpirun -np 2 ddpm train` against one
 * process, run to run, resumed across process counts, importance-sampled
 * timesteps, a killed process and Ctrl-C on mpirun. Skipped, with a message,
 * when ddpm was built without MPI or mpirun is not on PATH (scripts/setup.sh
 * installs Open MPI). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <dirent.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "ddpm/checkpoint.h"
#include "ddpm/dist.h"
#include "ddpm/error.h"
#include "ddpm/imageio.h"
#include "ddpm/train.h"
#include "testutil.h"
#include "trainutil.h"

static char tmp[256];

/* A tiny model; batch 5 splits 2 + 3 over two processes. One thread per
 * process so that one process and two do the same work per image. */
#define TINY                                                                                                 \
    "--ch 8 --ch-mult 1,2 --res-blocks 1 --attn 4 --groups 4 --timesteps 50 --batch 5 --preview-n 0 "        \
    "--threads 1 --quiet"

static void mpirun_prefix(char *buf, size_t size, int np)
{
    /* --oversubscribe: more processes than cores is fine for a test; root (a
       container, CI) must say so explicitly */
    snprintf(buf, size, "mpirun --oversubscribe %s -np %d", geteuid() == 0 ? "--allow-run-as-root" : "", np);
}

/* Runs `[mpirun -np NP] ddpm ARGS` in tmp (np 0: no mpirun), output to files;
 * returns the exit code. */
static int run(int np, const char *fmt, ...)
{
    char args[2048], cmd[4096], pre[256] = "";
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(args, sizeof args, fmt, ap);
    va_end(ap);
    if (np > 0)
        mpirun_prefix(pre, sizeof pre, np);
    snprintf(cmd, sizeof cmd, "cd '%s' && %s '%s' %s >out.txt 2>err.txt", tmp, pre, DDPM_BINARY, args);
    int st = system(cmd);
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

static void require_mpirun(void)
{
    if (!ddpm_dist_built_with_mpi()) {
        fprintf(stderr, "  SKIP: ddpm was built without MPI (-DDDPM_MPI=OFF or no libopenmpi-dev)\n");
        skip();
    }
    if (system("command -v mpirun >/dev/null 2>&1") != 0) {
        fprintf(stderr, "  SKIP: mpirun is not on PATH (scripts/setup.sh installs openmpi-bin)\n");
        skip();
    }
}

static int file_exists(const char *name);

/* The trainer saved in tmp/RUN (weights, EMA, Adam moments, state). */
static ddpm_trainer *load(const char *run_name)
{
    char path[512];
    snprintf(path, sizeof path, "%s/%s/checkpoint.safetensors", tmp, run_name);
    ddpm_checkpoint *ck;
    if (ddpm_checkpoint_open(&ck, path)) {
        fprintf(stderr, "  %s\n", ddpm_last_error());
        return NULL;
    }
    ddpm_trainer *tr = NULL;
    if (ddpm_trainer_from_checkpoint(&tr, ck, 0))
        fprintf(stderr, "  %s\n", ddpm_last_error());
    ddpm_checkpoint_close(ck);
    return tr;
}

/* The float sums over a batch's images are split differently across one process
 * and two (2 + 3 images, then one all-reduce), so the gradients differ by float
 * rounding only: a few ulp of the largest. After 30 Adam steps the weights
 * differ by 1.2e-7 of the largest one (measured here, 1 thread per process);
 * 1e-5 leaves room for other MPI reduction orders and is far below what a
 * wrong share (images computed twice or not at all) changes (3e-3). */
#define SUM_ORDER_TOL 1e-5

static void assert_same_run(const ddpm_trainer *a, const ddpm_trainer *b, double tol, const char *what)
{
    size_t n = a->net->n_params;
    double dw = tu_max_rel_diff(a->params, b->params, n), de = tu_max_rel_diff(a->ema, b->ema, n);
    fprintf(stderr, "  %s: weights max rel diff %.3g, EMA %.3g\n", what, dw, de);
    assert_int_equal(a->state.step, b->state.step);
    assert_true(a->state.noise_counter == b->state.noise_counter);
    assert_true(a->state.dropout_counter == b->state.dropout_counter);
    assert_true(a->state.data_epoch == b->state.data_epoch);
    assert_int_equal(a->state.data_position, b->state.data_position);
    assert_true(dw <= tol);
    assert_true(de <= tol);
}

static void test_two_processes_train_what_one_does(void **state)
{
    (void)state;
    require_mpirun();
    assert_int_equal(run(0, "train data --out one " TINY " --steps 30"), 0);
    assert_int_equal(run(2, "train data --out two " TINY " --steps 30"), 0);
    ddpm_trainer *one = load("one"), *two = load("two");
    assert_non_null(one);
    assert_non_null(two);
    assert_same_run(two, one, SUM_ORDER_TOL, "-np 2 against one process, 30 steps");
    ddpm_trainer_free(one);
    ddpm_trainer_free(two);
}

static void test_two_runs_of_two_processes_give_the_same_bytes(void **state)
{
    (void)state;
    require_mpirun();
    assert_int_equal(run(2, "train data --out twoA " TINY " --steps 12 --log-every 4"), 0);
    assert_int_equal(run(2, "train data --out twoB " TINY " --steps 12 --log-every 4"), 0);
    ddpm_trainer *a = load("twoA"), *b = load("twoB");
    assert_non_null(a);
    assert_non_null(b);
    size_t bytes = a->net->n_params * sizeof(float);
    assert_memory_equal(a->params, b->params, bytes);
    assert_memory_equal(a->ema, b->ema, bytes);
    assert_memory_equal(a->adam_m, b->adam_m, bytes);
    assert_memory_equal(a->adam_v, b->adam_v, bytes);
    assert_true(a->state.noise_counter == b->state.noise_counter);
    /* the logs agree on every number but the clock's */
    char *la = tu_slurp(tmp, "twoA/log.jsonl", NULL), *lb = tu_slurp(tmp, "twoB/log.jsonl", NULL);
    assert_non_null(la);
    assert_non_null(lb);
    for (char *p = la, *q = lb; (p = strstr(p, "\"loss\"")) && (q = strstr(q, "\"loss\"")); p++, q++)
        assert_int_equal(strncmp(p, q, strcspn(p, "i")), 0); /* "loss":..,"lr":..,"grad_norm":.. */
    free(la);
    free(lb);
    ddpm_trainer_free(a);
    ddpm_trainer_free(b);
}

static void test_resume_under_two_processes_from_a_one_process_checkpoint(void **state)
{
    (void)state;
    require_mpirun();
    assert_int_equal(run(0, "train data --out straight " TINY " --steps 20"), 0);
    assert_int_equal(run(0, "train data --out switched " TINY " --steps 10"), 0);
    assert_int_equal(
        run(2, "train data --out switched --resume --steps 20 --threads 1 --quiet --preview-n 0"), 0);
    ddpm_trainer *a = load("straight"), *b = load("switched");
    assert_non_null(a);
    assert_non_null(b);
    assert_same_run(b, a, SUM_ORDER_TOL,
                    "1 process 10 steps + 2 processes 10 steps against 1 process 20 steps");
    ddpm_trainer_free(a);
    ddpm_trainer_free(b);
}

/* The loss history of tmp/RUN's checkpoint (importance sampling). */
static void load_history(const char *run_name, ddpm_t_history *h)
{
    char path[512];
    snprintf(path, sizeof path, "%s/%s/checkpoint.safetensors", tmp, run_name);
    ddpm_checkpoint *ck;
    assert_int_equal(ddpm_checkpoint_open(&ck, path), 0);
    assert_int_equal(ddpm_t_history_init(h, ddpm_checkpoint_config(ck)->timesteps), 0);
    assert_int_equal(ddpm_checkpoint_read_t_history(ck, h), 0);
    ddpm_checkpoint_close(ck);
}

/* Importance-sampled timesteps under two processes: every image's term reaches
 * every process's loss history in batch order through the step's one all-reduce.
 * Two runs of two processes give the same bytes, history included; against one
 * process the weights differ by the float sums' order only (SUM_ORDER_TOL), the
 * same steps got the same number of values, and the values agree to the same
 * rounding (the network's outputs follow the weights). A process that kept only
 * its own share's terms would hold other counts and values 1e-3 or more apart. */
static void test_importance_sampling_under_two_processes(void **state)
{
    (void)state;
    require_mpirun();
#define IMPORTANCE TINY " --timesteps 10 --t-sampling importance --loss vlb --steps 40"
    assert_int_equal(run(0, "train data --out imp_one " IMPORTANCE), 0);
    assert_int_equal(run(2, "train data --out imp_twoA " IMPORTANCE), 0);
    assert_int_equal(run(2, "train data --out imp_twoB " IMPORTANCE), 0);
#undef IMPORTANCE
    ddpm_trainer *one = load("imp_one"), *a = load("imp_twoA"), *b = load("imp_twoB");
    assert_non_null(one);
    assert_non_null(a);
    assert_non_null(b);
    assert_same_run(a, one, SUM_ORDER_TOL, "importance sampling, -np 2 against one process, 40 steps");
    size_t bytes = a->net->n_params * sizeof(float);
    assert_memory_equal(a->params, b->params, bytes);
    assert_memory_equal(a->adam_v, b->adam_v, bytes);
    ddpm_t_history h_one, h_a, h_b;
    load_history("imp_one", &h_one);
    load_history("imp_twoA", &h_a);
    load_history("imp_twoB", &h_b);
    size_t n = (size_t)h_one.T * DDPM_T_HISTORY;
    assert_memory_equal(h_a.loss, h_b.loss, n * sizeof(float));
    assert_memory_equal(h_a.count, h_one.count, (size_t)h_one.T * sizeof(int));
    assert_true(ddpm_t_history_warm(&h_one));
    double worst = 0;
    for (size_t j = 0; j < n; j++)
        worst = fmax(worst, fabs((double)h_a.loss[j] - h_one.loss[j]) / fmax(fabs((double)h_one.loss[j]), 1e-30));
    fprintf(stderr, "  loss history, -np 2 against one process: max rel diff %.3g\n", worst);
    assert_true(worst <= SUM_ORDER_TOL);
    ddpm_t_history_free(&h_one);
    ddpm_t_history_free(&h_a);
    ddpm_t_history_free(&h_b);
    ddpm_trainer_free(one);
    ddpm_trainer_free(a);
    ddpm_trainer_free(b);
}

/* A process that cannot read its data (here process 1, given a folder that does
 * not exist, through mpirun's MPMD syntax) stops both before the run folder is
 * made, with one message, its own; the other stays silent. */
static void test_a_process_that_cannot_load_its_data_stops_all_with_one_message(void **state)
{
    (void)state;
    require_mpirun();
    int code = run(1,
                   "train data --out failed " TINY
                   " --steps 3 : -np 1 '%s' train no_such_folder --out failed " TINY " --steps 3",
                   DDPM_BINARY);
    char *err = tu_slurp(tmp, "err.txt", NULL);
    assert_non_null(err);
    fprintf(stderr, "  exit %d, stderr begins: %.300s\n", code, err);
    assert_true(code != 0);
    int lines = 0;
    for (const char *p = err; (p = strstr(p, "ddpm: ")); p++)
        lines++;
    assert_int_equal(lines, 1);
    assert_non_null(strstr(err, "process 1 of 2"));
    assert_non_null(strstr(err, "no_such_folder"));
    assert_false(file_exists("failed/log.jsonl")); /* no half-made run */
    free(err);
}

/* Starts `mpirun -np NP ddpm ARGS` in the background; returns mpirun's pid. */
static pid_t start(int np, const char *args)
{
    char pre[256], cmd[4096];
    mpirun_prefix(pre, sizeof pre, np);
    snprintf(cmd, sizeof cmd, "cd '%s' && exec %s '%s' %s >out.txt 2>err.txt", tmp, pre, DDPM_BINARY, args);
    pid_t pid = fork();
    if (pid == 0) {
        execl("/bin/sh", "sh", "-c", cmd, (char *)NULL);
        _exit(127);
    }
    return pid;
}

static int file_exists(const char *name)
{
    char path[1024];
    struct stat st;
    snprintf(path, sizeof path, "%s/%s", tmp, name);
    return stat(path, &st) == 0;
}

/* Waits up to `seconds` for tmp/NAME to exist. */
static int wait_for_file(const char *name, double seconds)
{
    for (double t = 0; t < seconds; t += 0.05) {
        if (file_exists(name))
            return 1;
        nanosleep(&(struct timespec){0, 50000000}, NULL);
    }
    return 0;
}

/* Exit code of pid, or -1 if it has not ended within `seconds`. */
static int wait_exit(pid_t pid, double seconds)
{
    for (double t = 0; t < seconds; t += 0.05) {
        int st;
        if (waitpid(pid, &st, WNOHANG) == pid)
            return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
        nanosleep(&(struct timespec){0, 50000000}, NULL);
    }
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    return -1;
}

/* The pid of the process of rank `rank` whose command line mentions `marker`
 * (Open MPI puts OMPI_COMM_WORLD_RANK in each process's environment), or 0. */
static pid_t find_rank(const char *marker, int rank)
{
    char want[64];
    snprintf(want, sizeof want, "OMPI_COMM_WORLD_RANK=%d", rank);
    DIR *d = opendir("/proc");
    struct dirent *e;
    pid_t found = 0;
    while (d && !found && (e = readdir(d))) {
        pid_t pid = (pid_t)atoi(e->d_name);
        if (pid <= 0)
            continue;
        char path[64], buf[16384];
        int hit = 0;
        for (int part = 0; part < 2; part++) {
            snprintf(path, sizeof path, "/proc/%d/%s", (int)pid, part ? "environ" : "cmdline");
            FILE *f = fopen(path, "rb");
            if (!f)
                break;
            size_t n = fread(buf, 1, sizeof buf - 1, f);
            fclose(f);
            for (size_t i = 0; i < n; i++)
                buf[i] = buf[i] ? buf[i] : '\n';
            buf[n] = '\0';
            const char *needle = part ? want : marker;
            hit += strstr(buf, needle) != NULL && (part || strstr(buf, "train"));
        }
        if (hit == 2)
            found = pid;
    }
    if (d)
        closedir(d);
    return found;
}

/* Starts a long two-process run in tmp/NAME, waits for tmp/NAME/FILE to appear,
 * and returns the pid of mpirun; *rank1: the pid of its process 1. */
static pid_t start_long_run(const char *name, const char *flags, const char *file, pid_t *rank1)
{
    char args[1024], path[512];
    snprintf(args, sizeof args, "train data --out %s " TINY " --steps 1000000 %s", name, flags);
    snprintf(path, sizeof path, "%s/%s", name, file);
    pid_t mp = start(2, args);
    assert_true(wait_for_file(path, 120));
    *rank1 = 0;
    for (int i = 0; i < 100 && !*rank1; i++, nanosleep(&(struct timespec){0, 50000000}, NULL))
        *rank1 = find_rank(name, 1);
    assert_true(*rank1 > 0);
    return mp;
}

static void test_a_killed_process_ends_the_run_and_the_checkpoint_loads(void **state)
{
    (void)state;
    require_mpirun();
    pid_t victim, mp = start_long_run("killed", "--save-every 5", "checkpoint.safetensors", &victim);
    assert_int_equal(kill(victim, SIGKILL), 0);
    int code = wait_exit(mp, 60);
    char *err = tu_slurp(tmp, "err.txt", NULL);
    fprintf(stderr, "  mpirun exit code %d; its stderr begins: %.200s\n", code, err ? err : "");
    free(err);
    assert_true(code > 0); /* ended (not hung: -1) and not successfully */
    ddpm_trainer *tr = load("killed");
    assert_non_null(tr);
    assert_true(tr->state.step % 5 == 0); /* a fresh run saves step 0 at once: 0 is possible */
    ddpm_trainer_free(tr);
}

/* Ctrl-C reaches mpirun, which sends SIGTERM to every process and SIGKILL a
 * timeout later (1 s by default; 2 s here, README says why to raise it): the
 * processes agree to stop in the next step's sum and process 0 saves once. */
static void test_ctrl_c_on_mpirun_saves_once(void **state)
{
    (void)state;
    require_mpirun();
    setenv("OMPI_MCA_odls_base_sigkill_timeout", "2", 1);
    pid_t rank1, mp = start_long_run("interrupted", "--save-every 0 --log-every 1", "log.jsonl", &rank1);
    assert_int_equal(kill(mp, SIGINT), 0);
    int code = wait_exit(mp, 60);
    unsetenv("OMPI_MCA_odls_base_sigkill_timeout");
    fprintf(stderr, "  mpirun exit code after SIGINT: %d\n", code);
    assert_true(code >= 0);
    ddpm_trainer *tr = load("interrupted"); /* --save-every 0: only the stop saved it */
    assert_non_null(tr);
    assert_true(tr->state.step > 0);
    ddpm_trainer_free(tr);
}

/* A stop signal that reaches one process only (here rank 1, not the one that
 * saves) still stops every process after the same step: the stop is voted in
 * the step's sum. Were each process to stop on its own signal, rank 0 would
 * wait for rank 1 forever and nothing would be saved. */
static void test_a_stop_seen_by_one_process_stops_all_and_saves(void **state)
{
    (void)state;
    require_mpirun();
    pid_t victim, mp = start_long_run("one_stop", "--save-every 0 --log-every 1", "log.jsonl", &victim);
    assert_int_equal(kill(victim, SIGTERM), 0);
    int code = wait_exit(mp, 30);
    fprintf(stderr, "  mpirun exit code after SIGTERM to rank 1: %d\n", code);
    assert_int_equal(code, 0);
    ddpm_trainer *tr = load("one_stop");
    assert_non_null(tr);
    assert_true(tr->state.step > 0);
    ddpm_trainer_free(tr);
}

static int setup(void **state)
{
    (void)state;
    if (tu_make_tmpdir(tmp, sizeof tmp, "mpi"))
        return -1;
    char dir[512];
    snprintf(dir, sizeof dir, "%s/data", tmp);
    return synthetic_png_folder(dir, 12);
}

static int teardown(void **state)
{
    (void)state;
    return tu_remove_tree(tmp);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_two_processes_train_what_one_does),
        cmocka_unit_test(test_two_runs_of_two_processes_give_the_same_bytes),
        cmocka_unit_test(test_resume_under_two_processes_from_a_one_process_checkpoint),
        cmocka_unit_test(test_importance_sampling_under_two_processes),
        cmocka_unit_test(test_a_process_that_cannot_load_its_data_stops_all_with_one_message),
        cmocka_unit_test(test_a_killed_process_ends_the_run_and_the_checkpoint_loads),
        cmocka_unit_test(test_ctrl_c_on_mpirun_saves_once),
        cmocka_unit_test(test_a_stop_seen_by_one_process_stops_all_and_saves),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
