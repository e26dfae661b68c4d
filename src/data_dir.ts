/**
 * What a node keeps in its data directory besides timelines: the lock file that makes one process its
 * only owner, and the node id file that ties the directory to one node id. SafekeeperNode takes the lock
 * first and settles the id second, at start; it releases the lock last, at stop.
 *
 * The lock is `<data_dir>/safekeeper.pid`, holding the owner's pid. It is created exclusively (a
 * complete temp file hard-linked into place, so no reader ever sees it empty). A lock whose pid is dead is
 * stale and is taken over with a warning: it is first renamed aside and checked, so two starting nodes
 * cannot both take over one stale lock. Node has no flock; a reused pid can make a stale lock look alive,
 * and the error message says which process to check.
 *
 * The id file is written once (temp file, fsync, rename, fsync of the directory), so a crash leaves the
 * old state or the complete new file. Main thread, async fs (fs/promises); startup and shutdown only.
 */
import { randomUUID } from 'node:crypto';
import { link, open, readFile, rename, rm, unlink } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import type { Config } from './config/schema.js';
import { ConfigError, DataDirLockedError, StorageIoError } from './errors.js';
import type { Logger } from './log.js';

export const NODE_ID_FILE_NAME = 'safekeeper.id';
export const LOCK_FILE_NAME = 'safekeeper.pid';
/** Lock takeover retries: each one means another process changed the lock file meanwhile. */
const LOCK_ATTEMPTS_MAX = 5;

/** Data directories locked by this process, so a lock holding our own pid is known to be ours or stale. */
const lockedDataDirs = new Set<string>();

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

/** Takes `<dataDir>/safekeeper.pid` for this process, taking over a stale one; DataDirLockedError when a live process holds it. */
export async function acquireLock(dataDir: string, log: Logger): Promise<void> {
  const lockPath = join(dataDir, LOCK_FILE_NAME);
  if (lockedDataDirs.has(dataDir)) throw new DataDirLockedError(`data directory ${dataDir} is in use by process ${process.pid} (this process)`);
  const temporaryPath = `${lockPath}.${process.pid}.${randomUUID()}.tmp`;
  const file = await open(temporaryPath, 'wx');
  await file.writeFile(`${process.pid}\n`).finally(() => file.close());
  try {
    for (let attempt = 0; attempt < LOCK_ATTEMPTS_MAX; attempt += 1) {
      try {
        await link(temporaryPath, lockPath);
        lockedDataDirs.add(dataDir);
        return;
      } catch (error) {
        if ((error as NodeJS.ErrnoException).code !== 'EEXIST') throw error;
      }
      const holderText = await readFile(lockPath, 'utf8').catch(() => null);
      if (holderText === null) continue; // removed meanwhile: try again
      const holderPid = /^\d+$/.test(holderText.trim()) ? Number(holderText.trim()) : null;
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

/** Removes the lock file if this process holds it. */
export async function releaseLock(dataDir: string): Promise<void> {
  if (!lockedDataDirs.delete(dataDir)) return;
  const lockPath = join(dataDir, LOCK_FILE_NAME);
  const text = await readFile(lockPath, 'utf8').catch(() => null);
  if (text !== null && text.trim() === String(process.pid)) await unlink(lockPath);
}
