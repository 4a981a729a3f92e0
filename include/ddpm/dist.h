/* dist.h: the processes of a data-parallel run (MPI), and single-process
 * stand-ins when ddpm is built without MPI or not started by mpirun.
 *
 * Every MPI call of ddpm is in src/dist.c. A data-parallel training step
 * (run.c) needs only this: which process am I, how many are we, and one
 * in-place sum of a float buffer over all of them (the gradient arena with the
 * step's scalars at its end). Process 0 writes the run's files; the library
 * still never prints, so what each process reports is the caller's choice. */
#ifndef DDPM_DIST_H
#define DDPM_DIST_H

#include <stddef.h>

/* Joins the run's processes when this one was started by an MPI launcher
 * (mpirun, mpiexec, srun: the environment says so) and ddpm was built with MPI;
 * otherwise a single process of rank 0, and nothing is initialised. Call once,
 * before any other function here; 0 or DDPM_EIO. */
int ddpm_dist_init(int *argc, char ***argv);
/* Leaves the run (MPI_Finalize) if ddpm_dist_init joined one. */
void ddpm_dist_finalize(void);

int ddpm_dist_rank(void); /* this process, 0..size-1 */
int ddpm_dist_size(void); /* processes in the run (1 without MPI) */
/* 1 when ddpm was built with MPI (whether or not it runs under mpirun). */
int ddpm_dist_built_with_mpi(void);

/* buf[0..n) = its sum over all processes, in place, the same bytes on every
 * process (one MPI_Allreduce). A no-op for a single process. 0 or DDPM_EIO. */
int ddpm_dist_sum(float *buf, size_t n);

#endif
