/* The cgo helpers' shared part (included by every preamble of the package): each helper makes
 * one library call and, when it fails, copies bn_last_error() into the caller's buffer before
 * returning, since the message is per thread and a goroutine may run its next cgo call on
 * another thread. */
#ifndef BNG_H
#define BNG_H

#include <stddef.h>
#include <string.h>
#include <batchnorm/batchnorm.h>

/* The message buffer of every helper: the caller passes bng_err_len bytes. */
enum { bng_err_len = 1024 };

static inline bn_status bng_keep(bn_status s, char* err) {
	if (s != BN_OK) {
		strncpy(err, bn_last_error(), bng_err_len - 1);
		err[bng_err_len - 1] = '\0';
	}
	return s;
}

#endif
