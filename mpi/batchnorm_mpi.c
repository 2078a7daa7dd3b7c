/* libbatchnorm_mpi: the cross-replica callback of libbatchnorm over MPI_Allreduce.
 *
 * The communicator travels as its Fortran integer handle inside user_data, so attaching it
 * allocates nothing and needs no destroy call; it is recovered with MPI_Comm_f2c on every
 * call. The communicator is never modified: MPI errors come back only if its error handler
 * returns them (see batchnorm_mpi.h). */
#include "batchnorm/batchnorm_mpi.h"

#include <limits.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

/* Largest piece of one MPI_Allreduce: MPI counts are int. A test build lowers it to check the
 * chunking without a 16 GiB buffer. */
#ifndef BN_MPI_MAX_CHUNK
#define BN_MPI_MAX_CHUNK INT_MAX
#endif

/* Fixed buffer: no allocation, as the core's message. */
static _Thread_local char g_last_error[512] = "";

static bn_status fail(bn_status status, const char* function, const char* format, ...) {
  int n = snprintf(g_last_error, sizeof g_last_error, "%s: ", function);
  if (n < 0 || (size_t)n >= sizeof g_last_error) return status;
  va_list args;
  va_start(args, format);
  vsnprintf(g_last_error + n, sizeof g_last_error - (size_t)n, format, args);
  va_end(args);
  return status;
}

/* BN_OK when MPI can be called now; else BN_ERR_STATE with a message naming `function`. */
static bn_status require_mpi(const char* function) {
  int initialized = 0, finalized = 0;
  MPI_Initialized(&initialized); /* both may be called at any time */
  MPI_Finalized(&finalized);
  if (!initialized) return fail(BN_ERR_STATE, function, "MPI is not initialized (call MPI_Init first)");
  if (finalized) return fail(BN_ERR_STATE, function, "MPI is finalized (MPI_Finalize was called)");
  return BN_OK;
}

/* `what` failed with the MPI error `code`: the status, and a message with MPI's own text. */
static bn_status mpi_error(bn_status status, const char* function, const char* what, int code) {
  char text[MPI_MAX_ERROR_STRING + 1] = "";
  int length = 0;
  if (MPI_Error_string(code, text, &length) != MPI_SUCCESS) snprintf(text, sizeof text, "unknown MPI error");
  return fail(status, function, "%s failed with MPI error %d: %s", what, code, text);
}

void* bn_mpi_user_data(MPI_Comm comm) {
  return (void*)(intptr_t)MPI_Comm_c2f(comm);
}

bn_status bn_mpi_allreduce(void* user_data, double* buffer, int64_t count) {
  static const char* const kFunction = "bn_mpi_allreduce";
  if (count < 0) return fail(BN_ERR_INVALID_ARGUMENT, kFunction, "count=%lld but expected >= 0", (long long)count);
  if (count == 0) return BN_OK; /* every rank has count 0: nothing to exchange */
  if (buffer == NULL)
    return fail(BN_ERR_INVALID_ARGUMENT, kFunction, "buffer is NULL with count=%lld", (long long)count);
  bn_status status = require_mpi(kFunction);
  if (status != BN_OK) return status;
  MPI_Comm comm = MPI_Comm_f2c((MPI_Fint)(intptr_t)user_data);
  if (comm == MPI_COMM_NULL)
    return fail(BN_ERR_INVALID_ARGUMENT, kFunction, "user_data=%lld encodes MPI_COMM_NULL",
                (long long)(intptr_t)user_data);
  for (int64_t offset = 0; offset < count;) {
    const int64_t left = count - offset;
    const int piece = left > BN_MPI_MAX_CHUNK ? BN_MPI_MAX_CHUNK : (int)left;
    const int code = MPI_Allreduce(MPI_IN_PLACE, buffer + offset, piece, MPI_DOUBLE, MPI_SUM, comm);
    if (code != MPI_SUCCESS) {
      char what[96];
      snprintf(what, sizeof what, "MPI_Allreduce of doubles [%lld, %lld) of %lld", (long long)offset,
               (long long)(offset + piece), (long long)count);
      return mpi_error(BN_ERR_CALLBACK, kFunction, what, code);
    }
    offset += piece;
  }
  return BN_OK;
}

bn_status bn_config_set_mpi(bn_config* cfg, MPI_Comm comm) {
  static const char* const kFunction = "bn_config_set_mpi";
  if (cfg == NULL) return fail(BN_ERR_INVALID_ARGUMENT, kFunction, "cfg is NULL");
  bn_status status = require_mpi(kFunction);
  if (status != BN_OK) return status;
  if (comm == MPI_COMM_NULL) return fail(BN_ERR_INVALID_ARGUMENT, kFunction, "comm is MPI_COMM_NULL");
  int inter = 0;
  const int code = MPI_Comm_test_inter(comm, &inter);
  if (code != MPI_SUCCESS) return mpi_error(BN_ERR_INVALID_ARGUMENT, kFunction, "MPI_Comm_test_inter(comm)", code);
  if (inter)
    return fail(BN_ERR_INVALID_ARGUMENT, kFunction,
                "comm is an intercommunicator but expected an intracommunicator (an allreduce over an "
                "intercommunicator sums the other group)");
  status = bn_config_set_allreduce(cfg, bn_mpi_allreduce, bn_mpi_user_data(comm));
  if (status != BN_OK) return fail(status, kFunction, "%s", bn_last_error());
  return BN_OK;
}

const char* bn_mpi_last_error(void) {
  return g_last_error;
}
