/**
 * \file
 * libbatchnorm_mpi — synchronized batch normalization over MPI: the cross-replica callback
 * of bn_config_set_allreduce() implemented with MPI_Allreduce on a communicator.
 *
 * An optional companion of libbatchnorm (link `-lbatchnorm_mpi -lbatchnorm` and MPI, or the
 * CMake target `batchnorm::mpi`, or pkg-config `batchnorm-mpi`); the core library never
 * depends on MPI. One line attaches it to a configuration:
 *
 *     bn_config_set_mpi(cfg, MPI_COMM_WORLD);   // every rank, before bn_create
 *
 * Every layer created from `cfg` then computes its training statistics and its backward
 * reductions over the ranks' batches together (the "global batch"), and each rank's
 * bn_forward / bn_backward of such a layer is a collective over the communicator: all its
 * ranks must call them in the same order, an empty local batch included.
 *
 * Conventions beyond those of batchnorm.h:
 *  - The communicator is borrowed, never duplicated, freed or modified (its error handler
 *    included). It must stay valid as long as a layer built with it trains.
 *  - Errors: a failing bn_mpi function returns a status and sets bn_mpi_last_error() (the
 *    message of this library, thread-local, like bn_last_error() for the core). When the
 *    callback fails inside bn_forward / bn_backward, those return BN_ERR_CALLBACK,
 *    bn_last_error() names the call, and bn_mpi_last_error() says what MPI reported.
 *  - MPI errors reach this library only if the communicator's error handler returns them.
 *    Under MPI's default handler (MPI_ERRORS_ARE_FATAL) an MPI error aborts the job before
 *    the callback can report it. To get BN_ERR_CALLBACK instead, give the layers a
 *    communicator of their own that returns errors:
 *
 *        MPI_Comm bn_comm;
 *        MPI_Comm_dup(MPI_COMM_WORLD, &bn_comm);
 *        MPI_Comm_set_errhandler(bn_comm, MPI_ERRORS_RETURN);
 *        bn_config_set_mpi(cfg, bn_comm);   // MPI_Comm_free(&bn_comm) after the last layer
 *
 *    (A communicator of their own also keeps the layers' collectives apart from the
 *    application's on the same communicator, which MPI orders but a reader may not.)
 *  - Threads: the callback calls MPI on the thread that called bn_forward / bn_backward.
 *    MPI_THREAD_SINGLE or FUNNELED suffices when one thread drives the layers and MPI;
 *    several threads training layers at once need MPI_THREAD_MULTIPLE and a communicator
 *    per thread (collectives on one communicator must not overlap).
 *  - Results are the same bits on every rank as long as MPI_Allreduce gives every rank the
 *    same sums (an algorithm that reduces each element once and sends the result to all
 *    does; the tests check it with Open MPI). They differ from one process on the
 *    concatenated batch only by the order of the double-precision sums.
 *  - A BN_ERR_CALLBACK on some ranks only leaves the others waiting in a collective or
 *    with updated statistics: unless every rank failed alike, end the job (MPI_Abort).
 *
 * Every function here appeared in version 1.1.0.
 */
#ifndef BATCHNORM_BATCHNORM_MPI_H
#define BATCHNORM_BATCHNORM_MPI_H

#include <mpi.h>
#include <stdint.h>

#include "batchnorm.h"

#ifdef __cplusplus
extern "C" {
#endif

/** The cross-replica callback over MPI, of type bn_allreduce_fn: sums `count` doubles of
 *  `buffer` in place over the ranks of the communicator that `user_data` encodes (see
 *  bn_mpi_user_data()), with MPI_Allreduce(MPI_IN_PLACE, ..., MPI_DOUBLE, MPI_SUM),
 *  in pieces of at most INT_MAX doubles. A collective: every rank calls it with the same
 *  count. bn_config_set_mpi() attaches it; call it yourself to wrap it (to count or time
 *  the collectives, say) and attach the wrapper with bn_config_set_allreduce().
 *  Returns BN_OK (count 0 communicates nothing); BN_ERR_INVALID_ARGUMENT for a negative
 *  count, a NULL buffer with count > 0, or a `user_data` that encodes MPI_COMM_NULL;
 *  BN_ERR_STATE before MPI_Init or after MPI_Finalize; BN_ERR_CALLBACK when MPI returned an
 *  error (the message has MPI's error string). On an error the buffer may hold partial
 *  sums. Never unwinds. */
BN_API bn_status bn_mpi_allreduce(void* user_data, double* buffer, int64_t count);

/** The `user_data` that makes bn_mpi_allreduce() reduce over `comm`:
 *  `(void*)(intptr_t)MPI_Comm_c2f(comm)`, an integer handle (NULL for a communicator
 *  whose Fortran handle is 0, MPI_COMM_WORLD in Open MPI). No allocation; `comm` must be a
 *  valid communicator of an initialized MPI, and stays the caller's. */
BN_API void* bn_mpi_user_data(MPI_Comm comm);

/** Synchronized batch norm over `comm`: bn_config_set_allreduce(cfg, bn_mpi_allreduce,
 *  bn_mpi_user_data(comm)). Call it on every rank; the layers created from `cfg` must be
 *  used in the same order on all ranks of `comm`. Returns BN_OK;
 *  BN_ERR_INVALID_ARGUMENT for a NULL cfg, MPI_COMM_NULL or an intercommunicator;
 *  BN_ERR_STATE before MPI_Init or after MPI_Finalize; else the status of
 *  bn_config_set_allreduce() (whose bn_last_error() message is copied). On failure cfg is
 *  unchanged and bn_mpi_last_error() describes it. */
BN_API bn_status bn_config_set_mpi(bn_config* cfg, MPI_Comm comm);

/** Message of the last failed bn_mpi function on this thread ("<function>: <what>"); "" if
 *  none. Thread-local, never NULL, stays until the next failure on the same thread. */
BN_API const char* bn_mpi_last_error(void);

#ifdef __cplusplus
}
#endif

#endif /* BATCHNORM_BATCHNORM_MPI_H */
