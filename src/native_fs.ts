/**
 * Loads the native fs_calls addon (native/fs_calls.c): the two file system calls the node needs and Node does
 * not have.
 *   - `lockExclusive`, flock(LOCK_EX | LOCK_NB), for the data directory lock (src/data_dir.ts). Without it the
 *     lock is a pid file only, which cannot tell a live owner in another PID namespace (another container on
 *     the same host) from a dead one.
 *   - `zeroRange`, fallocate(FALLOC_FL_ZERO_RANGE), for preparing a recycled WAL segment for a timeline that
 *     writes large batches (src/storage/segment_file.ts). Without it those zeros are written.
 *
 * Implementations:
 *   - `native/fs_calls.c` (built by `npm ci`/`npm install` through node-gyp, see native/build.mjs). Used when it
 *     built, loads and exports the function (it exports nothing on Windows).
 *   - otherwise `null` for that function, and the caller keeps its fallback (data_dir.ts warns at startup that
 *     it cannot detect a second node in another PID namespace).
 * Loaded once per thread at import: the main thread takes the lock, the writer workers prepare segments.
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

/**
 * fallocate(fd, FALLOC_FL_ZERO_RANGE, offset, length): the range reads as zeros from now on, its blocks
 * allocated and marked unwritten, nothing written through the page cache. True when done, false when the file
 * system or kernel cannot (the caller writes zeros instead). Throws an Error with `code` (ENOSPC, EIO, ...)
 * like Node's fs errors on any other failure. Durable only after an fsync of `fd`.
 */
export type ZeroRange = (fd: number, offset: number, length: number) => boolean;

/** Where native/build.mjs puts the addon, seen from src/ (under tsx) and from dist/src/ (built). */
const ADDON_PATHS = ['../native/build/Release/fs_calls.node', '../../native/build/Release/fs_calls.node'];

function loadAddon(): { lockExclusive?: unknown; zeroRange?: unknown } {
  const require = createRequire(import.meta.url);
  for (const relative of ADDON_PATHS) {
    const path = fileURLToPath(new URL(relative, import.meta.url));
    if (!existsSync(path)) continue;
    try {
      return require(path) as { lockExclusive?: unknown; zeroRange?: unknown };
    } catch {
      return {}; // built for another Node ABI, or not loadable here: every caller has a fallback
    }
  }
  return {};
}

const addon = loadAddon();

/** The native flock, or null when the addon is not built or not usable here. */
export const NATIVE_LOCK_EXCLUSIVE: LockExclusive | null = typeof addon.lockExclusive === 'function' ? (addon.lockExclusive as LockExclusive) : null;

/** The native FALLOC_FL_ZERO_RANGE, or null when the addon is not built or not usable here. */
export const NATIVE_ZERO_RANGE: ZeroRange | null = typeof addon.zeroRange === 'function' ? (addon.zeroRange as ZeroRange) : null;
