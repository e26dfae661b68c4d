/**
 * Loads `lockExclusive` (flock(LOCK_EX | LOCK_NB)) from the native fs_lock addon, for the data directory lock
 * (src/data_dir.ts). Node has no flock, and without it the lock is a pid file only, which cannot tell a live
 * owner in another PID namespace (another container on the same host) from a dead one.
 *
 * Implementations:
 *   - `native/fs_lock.c` (built by `npm ci`/`npm install` through node-gyp, see native/build.mjs). Used when it
 *     built, loads and exports the function (it exports nothing on Windows).
 *   - otherwise `null`: data_dir.ts keeps the pid-file lock and warns at startup that it cannot detect a second
 *     node in another PID namespace.
 * Loaded once at import; main thread (the lock is taken and released at startup and shutdown only).
 */
import { createRequire } from 'node:module';
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

/**
 * flock(fd, LOCK_EX | LOCK_NB). True when the open file description behind `fd` now holds the lock (it lasts
 * until that fd is closed or the process dies), false when another open file description holds it, in this
 * process or any other on the host. Never waits. Throws an Error carrying the errno text (and `errno`, and
 * `code` for the usual ones such as ENOLCK) on any other failure.
 */
export type LockExclusive = (fd: number) => boolean;

/** Where native/build.mjs puts the addon, seen from src/ (under tsx) and from dist/src/ (built). */
const ADDON_PATHS = ['../native/build/Release/fs_lock.node', '../../native/build/Release/fs_lock.node'];

function loadNative(): LockExclusive | null {
  const require = createRequire(import.meta.url);
  for (const relative of ADDON_PATHS) {
    const path = fileURLToPath(new URL(relative, import.meta.url));
    if (!existsSync(path)) continue;
    try {
      const addon = require(path) as { lockExclusive?: unknown };
      return typeof addon.lockExclusive === 'function' ? (addon.lockExclusive as LockExclusive) : null;
    } catch {
      return null; // built for another Node ABI, or not loadable here: the pid-file lock still works within one PID namespace
    }
  }
  return null;
}

/** The native flock, or null when the addon is not built or not usable here. */
export const NATIVE_LOCK_EXCLUSIVE: LockExclusive | null = loadNative();
