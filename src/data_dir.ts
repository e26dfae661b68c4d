/**
 * What a node keeps in its data directory besides timelines: the lock that makes one process its only
 * owner, and the node id file that ties the directory to one node id. SafekeeperNode takes the lock first
 * and settles the id second, at start; it releases the lock last, at stop.
 *
 * The lock, with the native addon (src/native_fs.ts): an flock(LOCK_EX | LOCK_NB) on
 * `<data_dir>/safekeeper.lock`, held by a file handle kept open (in `lockedDataDirs`) for as long as this
 * process owns the directory. The kernel drops it when the process dies, and it is seen by every process on
 * the host whatever its PID namespace: during a rolling update two pods on one node mount the same volume,
 * each safekeeper PID 1, so no pid can tell them apart, while the flock can. The flock is the authority: when
 * it is held elsewhere the directory is in use, whatever the pid file says; when we get it, any pid file is
 * stale and is replaced. The lock file is never deleted nor truncated: a node that deleted it at stop could
 * leave a starting node holding an flock on the unlinked file while a third one locks a new file.
 * libuv opens files with O_CLOEXEC, so a child process we spawn never inherits (and outlives us with) the lock.
 * NFS: Linux (2.6.12+) emulates flock there with a POSIX byte-range lock taken through the server, so it
 * still works across hosts, but the fd must be writable (hence O_RDWR), a lock can be lost when the server
 * restarts and its lease recovery fails, and with the `local_lock=flock` or `nolock` mount options the lock
 * is local to one client host. Prefer a local volume.
 *
 * `<data_dir>/safekeeper.pid` holds the owner's pid, for operators and for the error message (the pid is as
 * the owner sees it, in its own PID namespace). Without the addon it is the lock itself, as it was before:
 * created exclusively (a complete temp file hard-linked into place, so no reader ever sees it empty), and a
 * lock whose pid is dead is stale and is taken over with a warning: it is first renamed aside and checked, so
 * two starting nodes cannot both take over one stale lock. That lock cannot see a node in another PID
 * namespace (its pid is dead or ours from here) and a reused pid can make a stale lock look alive, so the
 * node warns at startup and the error message says which process to check.
 *
 * The id file is written once (temp file, fsync, rename, fsync of the directory), so a crash leaves the
 * old state or the complete new file. Main thread, async fs (fs/promises); startup and shutdown only.
 */
import { randomUUID } from 'node:crypto';
import { constants } from 'node:fs';
import { link, open, readdir, readFile, readlink, realpath, rename, rm, unlink, type FileHandle } from 'node:fs/promises';
import { dirname, join, resolve } from 'node:path';
import type { Config } from './config/schema.js';
import { ConfigError, DataDirLockedError, StorageIoError } from './errors.js';
import type { Logger } from './log.js';
import { NATIVE_LOCK_EXCLUSIVE, type LockExclusive } from './native_fs.js';

export const NODE_ID_FILE_NAME = 'safekeeper.id';
/** The pid file: who holds the directory (and, without the native addon, the lock itself). */
export const LOCK_FILE_NAME = 'safekeeper.pid';
/** The file whose flock is the lock when the native addon is available. Never deleted. */
export const FLOCK_FILE_NAME = 'safekeeper.lock';
/** Lock takeover retries: each one means another process changed the lock file meanwhile. */
const LOCK_ATTEMPTS_MAX = 5;

/**
 * Data directories locked (or being locked) by this process, so a lock holding our own pid is known to be ours
 * or stale, each with the handle that holds its flock (null: pid file only, or not locked yet). Keeping the
 * handle referenced here also keeps Node from closing it, and so dropping the lock, on garbage collection.
 */
const lockedDataDirs = new Map<string, FileHandle | null>();

/** Names of the lock and pid files, and of the id file's temp files (`writeFileDurably`). */
const isStartupFileName = (name: string): boolean => name === FLOCK_FILE_NAME || name === LOCK_FILE_NAME || (name.startsWith(`${NODE_ID_FILE_NAME}.`) && name.endsWith('.tmp'));

/**
 * Refuses a data directory that holds anything but has no node id file: it is not a safekeeper's (a mistyped
 * path, `/`, a home directory), and a start would take it over: it empties `<data_dir>/tmp` (`clearTmpDir`) and
 * opens every id-named subdirectory as a tenant. Accepted: an empty directory (a new node), one with the id file
 * (a node's directory: the id is written at first start, before anything else), and one holding only what a
 * first start that stopped before writing the id leaves (the lock and pid files, an id temp file). Run before
 * the lock, which creates files in the directory.
 */
export async function checkDataDirIsOurs(config: Config): Promise<void> {
  const names = await readdir(config.dataDir);
  if (names.includes(NODE_ID_FILE_NAME) || names.every(isStartupFileName)) return;
  const shown = names.filter((name) => !isStartupFileName(name)).sort();
  const listed = shown.slice(0, 5).map((name) => JSON.stringify(name)).join(', ') + (shown.length > 5 ? `, and ${shown.length - 5} more` : '');
  throw new ConfigError(
    'data_dir',
    config.sources.data_dir,
    `${config.dataDir} is not a safekeeper data directory: it is not empty (${listed}) and has no ${NODE_ID_FILE_NAME}; ` +
      'the node would take it over (and empty its tmp/), so point data_dir at a new or empty directory',
  );
}

/**
 * The node id file: written (and fsynced, with its directory) on first start; afterwards it wins over
 * a defaulted `id`, and an explicit different `id` is refused.
 */
export async function settleNodeId(config: Config, log: Logger): Promise<bigint> {
  const path = join(config.dataDir, NODE_ID_FILE_NAME);
  const text = await readFile(path, 'utf8').catch((error: NodeJS.ErrnoException) => {
    if (error.code === 'ENOENT') return null;
    throw error;
  });
  if (text === null) {
    await writeFileDurably(path, `${config.nodeId}\n`);
    log.info({ node_id: config.nodeId, path }, 'node id written');
    return config.nodeId;
  }
  if (!/^\d{1,20}$/.test(text.trim())) throw new StorageIoError(`${path} does not hold a node id: ${JSON.stringify(text.slice(0, 40))}`);
  const storedId = BigInt(text.trim());
  if (storedId === config.nodeId) return storedId;
  if (config.sources.id === 'default') return storedId;
  throw new ConfigError('id', config.sources.id, `data directory ${config.dataDir} belongs to node ${storedId}, not ${config.nodeId}`);
}

async function writeFileDurably(path: string, text: string): Promise<void> {
  const temporaryPath = `${path}.${randomUUID()}.tmp`;
  const file = await open(temporaryPath, 'wx');
  try {
    await file.writeFile(text);
    await file.sync();
  } finally {
    await file.close();
  }
  await rename(temporaryPath, path);
  const directory = await open(dirname(path), 'r');
  try {
    await directory.sync();
  } finally {
    await directory.close();
  }
}

function isProcessAlive(pid: number): boolean {
  if (pid === process.pid) return false; // ours only if lockedDataDirs says so; checked by the caller
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === 'EPERM'; // alive, owned by another user
  }
}

/**
 * Locks `dataDir` for this process: with `lockExclusive` (the native flock by default) through an flock on
 * `safekeeper.lock`, then writes our pid to `safekeeper.pid`; with null, through the pid file alone. Throws
 * DataDirLockedError when another process (or this one) holds the directory.
 */
export async function acquireLock(dataDir: string, log: Logger, lockExclusive: LockExclusive | null = NATIVE_LOCK_EXCLUSIVE): Promise<void> {
  if (lockedDataDirs.has(dataDir)) throw new DataDirLockedError(`data directory ${dataDir} is in use by process ${process.pid} (this process)`);
  lockedDataDirs.set(dataDir, null); // reserved: a second call for this directory is refused while this one runs
  try {
    const handle = lockExclusive === null ? 'no addon' : await takeFlock(dataDir, lockExclusive);
    if (handle === 'no addon' || handle === null) {
      const why = handle === null ? 'this filesystem does not support flock' : 'native/fs_calls not built or not usable here';
      log.warn(
        { data_dir_lock: `pid file only (${why})`, lock_file: join(dataDir, LOCK_FILE_NAME) },
        'the data directory lock cannot detect a second node in another PID namespace (container): do not share the volume',
      );
      await acquirePidFileLock(dataDir, log);
      return;
    }
    lockedDataDirs.set(dataDir, handle);
    await replacePidFile(dataDir, log);
  } catch (error) {
    const handle = lockedDataDirs.get(dataDir);
    lockedDataDirs.delete(dataDir);
    await handle?.close();
    throw error;
  }
}

/** Opens `safekeeper.lock` and takes its flock; DataDirLockedError naming the pid file's process when another holds it. */
async function takeFlock(dataDir: string, lockExclusive: LockExclusive): Promise<FileHandle | null> {
  const flockPath = join(dataDir, FLOCK_FILE_NAME);
  // O_RDWR: on NFS flock becomes a POSIX write lock, which needs a writable fd. Never truncated: its content is unused.
  const handle = await open(flockPath, constants.O_RDWR | constants.O_CREAT, 0o644).catch((error: unknown) => {
    throw new StorageIoError(`cannot open the lock file ${flockPath}: ${(error as Error).message}`, { cause: error });
  });
  let locked: boolean;
  try {
    locked = lockExclusive(handle.fd);
  } catch (error) {
    await handle.close();
    // A filesystem without flock (some network filesystems): the pid file is all there is, as without the addon.
    if (FLOCK_UNSUPPORTED.has((error as NodeJS.ErrnoException).code ?? '')) return null;
    throw new StorageIoError(`cannot lock ${flockPath}: ${(error as Error).message}`, { cause: error });
  }
  if (locked) return handle;
  await handle.close();
  const pidPath = join(dataDir, LOCK_FILE_NAME);
  const holderPid = parsePid(await readFile(pidPath, 'utf8').catch(() => null));
  const holder =
    holderPid === null ? `another process (${pidPath} names none yet)`
    : holderPid === process.pid ? `process ${holderPid} of another PID namespace (the same pid as this process: another container, or this process by another path)`
    : `process ${holderPid} (as its own PID namespace sees it, per ${pidPath})`;
  throw new DataDirLockedError(`data directory ${dataDir} is in use by ${holder}: ${flockPath} is locked`);
}

/**
 * With the flock held, a pid file left behind is stale (no flock-taking node holds the directory), unless it
 * names a live safekeeper running on this very directory that locks by pid file alone: a build before the
 * flock, or one without the addon, still running during an upgrade. That one is refused; otherwise our pid
 * replaces it (a reused pid may well be another node's, on another directory, after a reboot).
 */
async function replacePidFile(dataDir: string, log: Logger): Promise<void> {
  const pidPath = join(dataDir, LOCK_FILE_NAME);
  const previousText = await readFile(pidPath, 'utf8').catch((error: NodeJS.ErrnoException) => {
    if (error.code === 'ENOENT') return null;
    throw error;
  });
  const previousPid = parsePid(previousText);
  if (previousPid !== null && isProcessAlive(previousPid) && (await safekeeperDataDir(previousPid)) === (await realpath(dataDir))) {
    throw new DataDirLockedError(`data directory ${dataDir} is in use by process ${previousPid}, a safekeeper that locks it by ${pidPath} alone (an older build, or one without the native addon)`);
  }
  await writeFileDurably(pidPath, `${process.pid}\n`);
  if (previousText !== null) {
    log.warn({ lock_file: pidPath, stale_pid: parsePid(previousText) }, 'taking over a stale lock file: no process holds its flock');
  }
}

/** flock errors that mean the filesystem has no flock, not that the lock is broken. */
const FLOCK_UNSUPPORTED = new Set(['ENOLCK', 'ENOSYS', 'EOPNOTSUPP']);

/**
 * The data directory of live process `pid` if it is a safekeeper node (`... main.js run ...` or
 * `safekeeper run ...`) whose command line shows it: `--data-dir`, or none and no `--config` (the default
 * `./.safekeeper`), resolved against its working directory. Null when it is not a node, is gone, or its
 * directory is in a config file: the flock we hold is then the lock.
 */
async function safekeeperDataDir(pid: number): Promise<string | null> {
  const commandLine = await readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => null);
  const cwd = await readlink(`/proc/${pid}/cwd`).catch(() => null);
  if (commandLine === null || cwd === null) return null;
  const args = commandLine.split('\0');
  if (!args.includes('run') || !args.some((arg) => /(^|\/)(main\.js|safekeeper)$/.test(arg))) return null;
  const flagAt = args.indexOf('--data-dir');
  const inline = args.find((arg) => arg.startsWith('--data-dir='));
  const dir = flagAt >= 0 ? args[flagAt + 1] : inline !== undefined ? inline.slice('--data-dir='.length) : args.some((arg) => arg === '--config' || arg.startsWith('--config=')) ? undefined : './.safekeeper';
  return dir === undefined ? null : realpath(resolve(cwd, dir)).catch(() => null);
}

function parsePid(text: string | null): number | null {
  return text !== null && /^\d{1,10}$/.test(text.trim()) ? Number(text.trim()) : null;
}

/** Takes `<dataDir>/safekeeper.pid` for this process, taking over a stale one; DataDirLockedError when a live process holds it. */
async function acquirePidFileLock(dataDir: string, log: Logger): Promise<void> {
  const lockPath = join(dataDir, LOCK_FILE_NAME);
  const temporaryPath = `${lockPath}.${process.pid}.${randomUUID()}.tmp`;
  const file = await open(temporaryPath, 'wx');
  await file.writeFile(`${process.pid}\n`).finally(() => file.close());
  try {
    for (let attempt = 0; attempt < LOCK_ATTEMPTS_MAX; attempt += 1) {
      try {
        await link(temporaryPath, lockPath);
        return;
      } catch (error) {
        if ((error as NodeJS.ErrnoException).code !== 'EEXIST') throw error;
      }
      const holderText = await readFile(lockPath, 'utf8').catch(() => null);
      if (holderText === null) continue; // removed meanwhile: try again
      const holderPid = parsePid(holderText);
      if (holderPid !== null && isProcessAlive(holderPid)) {
        throw new DataDirLockedError(`data directory ${dataDir} is in use by process ${holderPid} (lock file ${lockPath})`);
      }
      // Stale. Move it aside first, so that we never delete a lock another node created meanwhile.
      const asidePath = `${lockPath}.${process.pid}.${randomUUID()}.stale`;
      if (!(await rename(lockPath, asidePath).then(() => true, () => false))) continue;
      const movedText = await readFile(asidePath, 'utf8');
      if (movedText !== holderText) {
        await link(asidePath, lockPath).catch(() => undefined); // put the newer lock back
        await unlink(asidePath);
        continue;
      }
      await unlink(asidePath);
      log.warn({ lock_file: lockPath, stale_pid: holderPid }, 'taking over a stale lock file: its process is gone');
    }
    throw new DataDirLockedError(`could not lock data directory ${dataDir}: the lock file ${lockPath} kept changing`);
  } finally {
    await rm(temporaryPath, { force: true });
  }
}

/**
 * Releases this process's lock on `dataDir`: removes the pid file if it holds our pid, then closes the flock
 * handle. The pid file goes first, while the flock is still held, so a node that takes the lock after us
 * never loses its new pid file to us. Does nothing when this process does not hold the directory.
 */
export async function releaseLock(dataDir: string): Promise<void> {
  if (!lockedDataDirs.has(dataDir)) return;
  const handle = lockedDataDirs.get(dataDir);
  lockedDataDirs.delete(dataDir);
  try {
    const lockPath = join(dataDir, LOCK_FILE_NAME);
    const text = await readFile(lockPath, 'utf8').catch(() => null);
    if (text !== null && text.trim() === String(process.pid)) await unlink(lockPath);
  } finally {
    await handle?.close(); // drops the flock
  }
}
