/* The only file that calls MPI (dist.h). Built without DDPM_HAVE_MPI, every
 * function is the single-process one. */
#include "ddpm/dist.h"

#include <limits.h>
#include <stdlib.h>

#include "ddpm/error.h"

#ifdef DDPM_HAVE_MPI
#include <mpi.h>

static int joined, rank, size = 1;

/* Launchers set these for each process they start: Open MPI, PMI (MPICH,
 * Slurm) and PMIx. A plain `ddpm train` has none and stays a single process
 * without MPI_Init, which would otherwise start a singleton runtime. */
static int started_by_launcher(void)
{
    return getenv("OMPI_COMM_WORLD_SIZE") || getenv("PMI_SIZE") || getenv("PMIX_RANK");
}

int ddpm_dist_init(int *argc, char ***argv)
{
    if (joined || !started_by_launcher())
        return DDPM_OK;
    if (MPI_Init(argc, argv) != MPI_SUCCESS)
        return ddpm_error(DDPM_EIO, "MPI_Init failed");
    joined = 1;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    return DDPM_OK;
}

void ddpm_dist_finalize(void)
{
    if (joined)
        MPI_Finalize();
    joined = 0, rank = 0, size = 1;
}

int ddpm_dist_rank(void)
{
    return rank;
}
int ddpm_dist_size(void)
{
    return size;
}
int ddpm_dist_built_with_mpi(void)
{
    return 1;
}

int ddpm_dist_sum(float *buf, size_t n)
{
    if (size == 1)
        return DDPM_OK;
    /* one call for any buffer below 2^31 floats (8 GB of gradients) */
    for (size_t done = 0; done < n;) {
        int count = n - done > INT_MAX ? INT_MAX : (int)(n - done);
        if (MPI_Allreduce(MPI_IN_PLACE, buf + done, count, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD) != MPI_SUCCESS)
            return ddpm_error(DDPM_EIO, "MPI_Allreduce failed");
        done += (size_t)count;
    }
    return DDPM_OK;
}

#else

int ddpm_dist_init(int *argc, char ***argv)
{
    (void)argc, (void)argv;
    return DDPM_OK;
}
void ddpm_dist_finalize(void) {}
int ddpm_dist_rank(void)
{
    return 0;
}
int ddpm_dist_size(void)
{
    return 1;
}
int ddpm_dist_built_with_mpi(void)
{
    return 0;
}
int ddpm_dist_sum(float *buf, size_t n)
{
    (void)buf, (void)n;
    return DDPM_OK;
}

#endif
