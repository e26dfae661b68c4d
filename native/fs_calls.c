/*
 * fs_calls: the two file system calls the node needs and Node does not have.
 *
 * lockExclusive(fd: number) -> boolean  (the data directory lock, src/data_dir.ts and src/native_fs.ts)
 *   Why native: Node has no flock, and a pid file alone cannot tell a live owner from a stale one when the
 *   owner runs in another PID namespace (two pods on one node mounting one volume during a rolling update,
 *   each safekeeper PID 1). An flock is held by the open file description, seen by every process on the host
 *   whatever its PID namespace, and dropped by the kernel when the holder dies.
 *   flock(fd, LOCK_EX | LOCK_NB): true when this file description now holds the lock, false when another
 *   one holds it (EWOULDBLOCK). Never waits. Locks are per open file description, so a second open() of the
 *   same file in the same process is refused as well.
 *   The lock lasts until the fd is closed (or the process dies); there is no unlock: closing the fd is it.
 *
 * zeroRange(fd: number, offset: number, length: number) -> boolean  (segment preparation, src/storage/segment_file.ts)
 *   Why native: Node has no fallocate. fallocate(fd, FALLOC_FL_ZERO_RANGE, offset, length) makes the range
 *   read as zeros by marking its blocks unwritten, without writing them: a recycled WAL segment becomes a
 *   zero-filled one for the price of a metadata update instead of 16 MiB of zeros through the page cache and
 *   the device. True when done; false when this file system or kernel cannot (EOPNOTSUPP, ENOSYS), and the
 *   caller writes the zeros itself. Linux only; elsewhere always false.
 *
 * Errors: both throw an Error whose message names the call and carries the errno text, with `errno` (the
 * number) and, for the usual ones, `code` (e.g. "ENOSPC", "EIO"), so callers map them like Node's own fs
 * errors; and a TypeError for arguments that are not non-negative integers.
 * Not built on Windows (no flock, no fallocate): the module then exports nothing and the callers keep their
 * fallbacks (a pid-file lock; writing zeros).
 */
#define _GNU_SOURCE /* fallocate and its FALLOC_FL_ flags */
#include <node_api.h>

#ifndef _WIN32
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/file.h>
#if defined(__linux__)
#include <fcntl.h>
#include <linux/falloc.h>
#endif

/* The errno names callers may branch on; others get only the number and the text. */
static const char *errno_name(int error) {
  switch (error) {
    case EBADF: return "EBADF";
    case EINVAL: return "EINVAL";
    case ENOLCK: return "ENOLCK";
    case ENOSYS: return "ENOSYS";
    case EIO: return "EIO";
    case ENOSPC: return "ENOSPC";
    case EDQUOT: return "EDQUOT";
    case EROFS: return "EROFS";
    case EFBIG: return "EFBIG";
#if defined(EOPNOTSUPP)
    case EOPNOTSUPP: return "EOPNOTSUPP";
#endif
    default: return NULL;
  }
}

/* Throws the Error described in the header for `call` (e.g. "flock(3, LOCK_EX | LOCK_NB)") failing with `error`. */
static napi_value throw_errno(napi_env env, int error, const char *call) {
  char message[200];
  snprintf(message, sizeof message, "%s failed: %s (errno %d)", call, strerror(error), error);
  napi_value text;
  napi_value code = NULL;
  napi_value thrown;
  napi_value number;
  const char *name = errno_name(error);
  if (napi_create_string_utf8(env, message, NAPI_AUTO_LENGTH, &text) != napi_ok ||
      (name != NULL && napi_create_string_utf8(env, name, NAPI_AUTO_LENGTH, &code) != napi_ok) ||
      napi_create_error(env, code, text, &thrown) != napi_ok || napi_create_int32(env, error, &number) != napi_ok ||
      napi_set_named_property(env, thrown, "errno", number) != napi_ok) {
    napi_throw_error(env, name, message); /* could not build the richer error: the text still says it all */
    return NULL;
  }
  napi_throw(env, thrown);
  return NULL;
}

/* Reads argument `value` as a non-negative integer no larger than 2^53 (a JS number that is exact). */
static bool get_count(napi_env env, napi_value value, int64_t *out) {
  napi_valuetype type;
  double number;
  if (napi_typeof(env, value, &type) != napi_ok || type != napi_number || napi_get_value_double(env, value, &number) != napi_ok) return false;
  if (!(number >= 0 && number <= 9007199254740992.0) || (double)(int64_t)number != number) return false;
  *out = (int64_t)number;
  return true;
}

static napi_value lock_exclusive(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  int64_t fd = -1;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 1 || !get_count(env, argv[0], &fd) || fd > INT32_MAX) {
    napi_throw_type_error(env, NULL, "lockExclusive(fd): fd must be a non-negative integer file descriptor");
    return NULL;
  }
  int result;
  do {
    result = flock((int)fd, LOCK_EX | LOCK_NB);
  } while (result != 0 && errno == EINTR);
  if (result != 0 && errno != EWOULDBLOCK && errno != EAGAIN) {
    int error = errno;
    char call[64];
    snprintf(call, sizeof call, "flock(%d, LOCK_EX | LOCK_NB)", (int)fd);
    return throw_errno(env, error, call);
  }
  napi_value locked;
  if (napi_get_boolean(env, result == 0, &locked) != napi_ok) return NULL;
  return locked;
}

static napi_value zero_range(napi_env env, napi_callback_info info) {
  size_t argc = 3;
  napi_value argv[3];
  int64_t fd = -1, offset = -1, length = -1;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 3 || !get_count(env, argv[0], &fd) || fd > INT32_MAX ||
      !get_count(env, argv[1], &offset) || !get_count(env, argv[2], &length) || length == 0) {
    napi_throw_type_error(env, NULL, "zeroRange(fd, offset, length): fd and offset must be non-negative integers and length a positive one");
    return NULL;
  }
  bool done = false;
#if defined(__linux__) && defined(FALLOC_FL_ZERO_RANGE)
  int result;
  do {
    result = fallocate((int)fd, FALLOC_FL_ZERO_RANGE, (off_t)offset, (off_t)length);
  } while (result != 0 && errno == EINTR);
  if (result != 0 && errno != EOPNOTSUPP && errno != ENOSYS) {
    int error = errno;
    char call[96];
    snprintf(call, sizeof call, "fallocate(%d, FALLOC_FL_ZERO_RANGE, %lld, %lld)", (int)fd, (long long)offset, (long long)length);
    return throw_errno(env, error, call);
  }
  done = result == 0;
#endif
  napi_value value;
  if (napi_get_boolean(env, done, &value) != napi_ok) return NULL;
  return value;
}
#endif

static napi_value init(napi_env env, napi_value exports) {
#ifndef _WIN32
  napi_value lock;
  napi_value zero;
  if (napi_create_function(env, "lockExclusive", NAPI_AUTO_LENGTH, lock_exclusive, NULL, &lock) != napi_ok ||
      napi_set_named_property(env, exports, "lockExclusive", lock) != napi_ok ||
      napi_create_function(env, "zeroRange", NAPI_AUTO_LENGTH, zero_range, NULL, &zero) != napi_ok ||
      napi_set_named_property(env, exports, "zeroRange", zero) != napi_ok) {
    return NULL;
  }
#endif
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, init)
