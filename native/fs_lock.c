/*
 * fs_lock: flock(2) for the data directory lock (see src/data_dir.ts and src/native_lock.ts).
 *
 * Why native: Node has no flock, and a pid file alone cannot tell a live owner from a stale one when the
 * owner runs in another PID namespace (two pods on one node mounting one volume during a rolling update,
 * each safekeeper PID 1). An flock is held by the open file description, seen by every process on the host
 * whatever its PID namespace, and dropped by the kernel when the holder dies.
 *
 * lockExclusive(fd: number) -> boolean
 *   flock(fd, LOCK_EX | LOCK_NB): true when this file description now holds the lock, false when another
 *   one holds it (EWOULDBLOCK). Never waits. Locks are per open file description, so a second open() of the
 *   same file in the same process is refused as well. Throws an Error whose message carries the errno text,
 *   with `errno` (the number) and, for the usual ones, `code` (e.g. "ENOLCK") on any other failure. Throws a
 *   TypeError when fd is not a non-negative integer.
 *   The lock lasts until the fd is closed (or the process dies); there is no unlock: closing the fd is it.
 *
 * Not built on Windows (no flock): the module then exports nothing and the caller keeps its pid-file lock.
 */
#include <node_api.h>

#ifndef _WIN32
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <sys/file.h>

/* The errno names callers may branch on; others get only the number and the text. */
static const char *errno_name(int error) {
  switch (error) {
    case EBADF: return "EBADF";
    case EINVAL: return "EINVAL";
    case ENOLCK: return "ENOLCK";
    case ENOSYS: return "ENOSYS";
    case EIO: return "EIO";
#if defined(EOPNOTSUPP)
    case EOPNOTSUPP: return "EOPNOTSUPP";
#endif
    default: return NULL;
  }
}

static napi_value throw_errno(napi_env env, int error, int fd) {
  char message[160];
  snprintf(message, sizeof message, "flock(%d, LOCK_EX | LOCK_NB) failed: %s (errno %d)", fd, strerror(error), error);
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

static napi_value lock_exclusive(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  napi_valuetype type;
  int32_t fd = -1;
  double fd_number = -1;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 1 || napi_typeof(env, argv[0], &type) != napi_ok ||
      type != napi_number || napi_get_value_double(env, argv[0], &fd_number) != napi_ok || napi_get_value_int32(env, argv[0], &fd) != napi_ok ||
      fd < 0 || (double)fd != fd_number) {
    napi_throw_type_error(env, NULL, "lockExclusive(fd): fd must be a non-negative integer file descriptor");
    return NULL;
  }
  int result;
  do {
    result = flock(fd, LOCK_EX | LOCK_NB);
  } while (result != 0 && errno == EINTR);
  if (result != 0 && errno != EWOULDBLOCK && errno != EAGAIN) return throw_errno(env, errno, fd);
  napi_value locked;
  if (napi_get_boolean(env, result == 0, &locked) != napi_ok) return NULL;
  return locked;
}
#endif

static napi_value init(napi_env env, napi_value exports) {
#ifndef _WIN32
  napi_value fn;
  if (napi_create_function(env, "lockExclusive", NAPI_AUTO_LENGTH, lock_exclusive, NULL, &fn) != napi_ok ||
      napi_set_named_property(env, exports, "lockExclusive", fn) != napi_ok) {
    return NULL;
  }
#endif
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, init)
