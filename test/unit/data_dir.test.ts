import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { fileURLToPath } from 'node:url';
import { after, describe, it } from 'node:test';
import { acquireLock, FLOCK_FILE_NAME, LOCK_FILE_NAME, releaseLock } from '../../src/data_dir.js';
import { DataDirLockedError, StorageIoError } from '../../src/errors.js';
import { createLogger } from '../../src/log.js';
import { NATIVE_LOCK_EXCLUSIVE } from '../../src/native_fs.js';
import { makeDirectories } from '../../src/storage/layout.js';
import { waitFor } from '../harness/wait.js';

const ADDON = fileURLToPath(new URL('../../native/build/Release/fs_calls.node', import.meta.url));
const NATIVE_SKIP = NATIVE_LOCK_EXCLUSIVE === null ? 'native/fs_calls is not built here' : false;

const directories: string[] = [];
const children: ChildProcess[] = [];
after(async () => {
  for (const child of children) if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  await Promise.all(directories.map((directory) => rm(directory, { recursive: true, force: true })));
});

async function newDataDir(): Promise<string> {
  const directory = await mkdtemp(join(tmpdir(), 'sk-data-dir-'));
  directories.push(directory);
  return directory;
}

function capturingLogger(): { log: ReturnType<typeof createLogger>; lines: () => Record<string, unknown>[] } {
  const chunks: string[] = [];
  const stream = new Writable({ write: (chunk: Buffer, _encoding, done) => (chunks.push(chunk.toString('utf8')), done()) });
  const log = createLogger({ logLevel: 'info', logFormat: 'json' }, stream);
  return { log, lines: () => chunks.join('').split('\n').filter((line) => line !== '').map((line) => JSON.parse(line) as Record<string, unknown>) };
}

/**
 * Another process, as a second container on the same host would be: it takes the flock on `<dataDir>/safekeeper.lock`
 * through the addon and waits. Resolves once it reports `locked` (or `busy`, when someone else holds it).
 */
async function lockInChild(dataDir: string): Promise<{ child: ChildProcess; state: string }> {
  const script = [
    `const fd = require('node:fs').openSync(${JSON.stringify(join(dataDir, FLOCK_FILE_NAME))}, 'a+');`,
    `const locked = require(${JSON.stringify(ADDON)}).lockExclusive(fd);`,
    `process.stdout.write(locked ? 'locked\\n' : 'busy\\n');`,
    'setInterval(() => {}, 60_000);',
  ].join('\n');
  const child = spawn(process.execPath, ['-e', script], { stdio: ['ignore', 'pipe', 'inherit'] });
  children.push(child);
  const state = await new Promise<string>((resolve, reject) => {
    let text = '';
    child.stdout?.on('data', (chunk: Buffer) => {
      text += chunk.toString('utf8');
      if (text.includes('\n')) resolve(text.trim());
    });
    child.once('exit', (code, signal) => reject(new Error(`lock child exited early (${code ?? signal})`)));
  });
  return { child, state };
}

async function killed(child: ChildProcess): Promise<void> {
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  child.kill('SIGKILL');
  await exited;
}

const pidFileText = async (dataDir: string): Promise<string | null> => readFile(join(dataDir, LOCK_FILE_NAME), 'utf8').catch(() => null);

describe('data directory lock with flock', { skip: NATIVE_SKIP }, () => {
  it('uses the native flock whenever the addon is built (a silent fallback would hide a broken build)', () => {
    if (process.platform === 'linux' && existsSync(ADDON)) assert.notEqual(NATIVE_LOCK_EXCLUSIVE, null);
  });

  it('refuses a directory flocked by another process although its pid file holds our pid, and takes it once that process is killed', async () => {
    const dataDir = await newDataDir();
    const { child, state } = await lockInChild(dataDir);
    assert.equal(state, 'locked');
    // What a second container sees: the holder is PID 1 in its namespace, and so are we in ours.
    await writeFile(join(dataDir, LOCK_FILE_NAME), `${process.pid}\n`);
    const { log, lines } = capturingLogger();
    await assert.rejects(acquireLock(dataDir, log), (error: unknown) => {
      assert.ok(error instanceof DataDirLockedError);
      assert.equal(error.code, 'SK_DATA_DIR_LOCKED');
      assert.match(error.message, new RegExp(`data directory ${dataDir} is in use by process ${process.pid} of another PID namespace`));
      assert.match(error.message, new RegExp(`${FLOCK_FILE_NAME} is locked`));
      return true;
    });
    assert.equal(await pidFileText(dataDir), `${process.pid}\n`, 'the holder keeps its pid file');

    await killed(child);
    await acquireLock(dataDir, log);
    assert.equal(await pidFileText(dataDir), `${process.pid}\n`);
    const takeover = lines().find((line) => line.msg === 'taking over a stale lock file: no process holds its flock');
    assert.equal(takeover?.stale_pid, process.pid);

    await assert.rejects(acquireLock(dataDir, log), /is in use by process \d+ \(this process\)/);
    const other = await lockInChild(dataDir);
    assert.equal(other.state, 'busy', 'another process cannot take the flock while we hold it');
    await killed(other.child);

    await releaseLock(dataDir);
    assert.equal(await pidFileText(dataDir), null, 'the pid file is removed at release');
    assert.ok(existsSync(join(dataDir, FLOCK_FILE_NAME)), 'the lock file is never removed');
    const released = await lockInChild(dataDir);
    assert.equal(released.state, 'locked', 'release drops the flock');
    await killed(released.child);
  });

  it('takes over a pid file naming a live process when no process holds the flock: flock is the authority', async () => {
    const dataDir = await newDataDir();
    const bystander = spawn(process.execPath, ['-e', 'setInterval(() => {}, 60_000)'], { stdio: 'ignore' });
    children.push(bystander);
    assert.ok(bystander.pid !== undefined);
    await writeFile(join(dataDir, LOCK_FILE_NAME), `${bystander.pid}\n`);
    const { log, lines } = capturingLogger();
    await acquireLock(dataDir, log);
    assert.equal(await pidFileText(dataDir), `${process.pid}\n`);
    assert.equal(lines().find((line) => line.msg === 'taking over a stale lock file: no process holds its flock')?.stale_pid, bystander.pid);
    await releaseLock(dataDir);
    await killed(bystander);
  });

  it('refuses this process a second lock on its directory through another path', async () => {
    const dataDir = await newDataDir();
    const { log } = capturingLogger();
    await acquireLock(dataDir, log);
    await assert.rejects(acquireLock(`${dataDir}/`, log), DataDirLockedError); // not in lockedDataDirs: the flock refuses it
    assert.equal(await pidFileText(dataDir), `${process.pid}\n`);
    await releaseLock(`${dataDir}/`); // not held under that name: does nothing
    assert.equal(await pidFileText(dataDir), `${process.pid}\n`);
    await releaseLock(dataDir);
    assert.equal(await pidFileText(dataDir), null);
  });

  it('locks and releases one directory repeatedly in one process, as tests that restart nodes do', async () => {
    const dataDir = await newDataDir();
    const { log, lines } = capturingLogger();
    for (let round = 0; round < 5; round++) {
      await acquireLock(dataDir, log);
      assert.equal(await pidFileText(dataDir), `${process.pid}\n`);
      await releaseLock(dataDir);
      assert.equal(await pidFileText(dataDir), null);
    }
    assert.deepEqual(lines().filter((line) => line.level !== 'info'), [], 'a clean stop leaves nothing stale to warn about');
  });

  it('reports a failing flock as a storage error and leaves the directory unlocked', async () => {
    const dataDir = await newDataDir();
    const { log } = capturingLogger();
    const failing = (): boolean => {
      throw Object.assign(new Error('flock(9, LOCK_EX | LOCK_NB) failed: Input/output error (errno 5)'), { code: 'EIO' });
    };
    await assert.rejects(acquireLock(dataDir, log, failing), (error: unknown) => {
      assert.ok(error instanceof StorageIoError);
      assert.match(error.message, /cannot lock .*safekeeper\.lock: flock\(9, LOCK_EX \| LOCK_NB\) failed: Input\/output error/);
      return true;
    });
    assert.equal(await pidFileText(dataDir), null);
    await acquireLock(dataDir, log);
    await releaseLock(dataDir);
  });

  it('on a filesystem without flock (ENOLCK), falls back to the pid file with a warning', async () => {
    const dataDir = await newDataDir();
    const { log, lines } = capturingLogger();
    const unsupported = (): boolean => {
      throw Object.assign(new Error('flock(9, LOCK_EX | LOCK_NB) failed: No locks available (errno 37)'), { code: 'ENOLCK' });
    };
    await acquireLock(dataDir, log, unsupported);
    assert.equal(await pidFileText(dataDir), `${process.pid}\n`);
    assert.match(String(lines().find((line) => line.level === 'warn')?.data_dir_lock), /does not support flock/);
    await releaseLock(dataDir);
  });

  /** A process whose command line is a node's (`safekeeper run --data-dir DIR`) and that holds no flock, as a build before the flock. */
  async function pidFileOnlyNode(dataDir: string): Promise<ChildProcess & { pid: number }> {
    const node = spawn(process.execPath, ['-e', 'setInterval(() => {}, 60_000)', 'safekeeper', 'run', '--data-dir', dataDir], { stdio: 'ignore' });
    children.push(node);
    assert.ok(node.pid !== undefined);
    await waitFor(async () => (await readFile(`/proc/${node.pid}/cmdline`, 'utf8')).includes('--data-dir'));
    return node as ChildProcess & { pid: number };
  }

  it('refuses a directory whose pid file names a live safekeeper on it that locks by pid file alone (an older build during an upgrade)', async () => {
    const dataDir = await newDataDir();
    const olderNode = await pidFileOnlyNode(dataDir);
    await writeFile(join(dataDir, LOCK_FILE_NAME), `${olderNode.pid}\n`);
    const { log } = capturingLogger();
    await assert.rejects(acquireLock(dataDir, log), (error: unknown) => error instanceof DataDirLockedError && new RegExp(`in use by process ${olderNode.pid}, a safekeeper that locks it by .* alone`).test(error.message));
    assert.equal(await pidFileText(dataDir), `${olderNode.pid}\n`, 'its pid file is left alone');
    await killed(olderNode);
    await acquireLock(dataDir, log); // gone: stale
    await releaseLock(dataDir);
  });

  it('takes over a pid file whose pid is now another live safekeeper on another directory (pids reused after a reboot)', async () => {
    const dataDir = await newDataDir();
    const otherNode = await pidFileOnlyNode(await newDataDir());
    await writeFile(join(dataDir, LOCK_FILE_NAME), `${otherNode.pid}\n`);
    const { log } = capturingLogger();
    await acquireLock(dataDir, log);
    assert.equal(await pidFileText(dataDir), `${process.pid}\n`);
    await releaseLock(dataDir);
    await killed(otherNode);
  });

  it('throws the errno text for a bad file descriptor and a TypeError for a non-descriptor', () => {
    const lockExclusive = NATIVE_LOCK_EXCLUSIVE;
    assert.ok(lockExclusive !== null);
    assert.throws(() => lockExclusive(1_000_000), (error: unknown) => {
      assert.ok(error instanceof Error);
      assert.match(error.message, /^flock\(1000000, LOCK_EX \| LOCK_NB\) failed: .+ \(errno \d+\)$/);
      assert.equal((error as NodeJS.ErrnoException).code, 'EBADF');
      return true;
    });
    assert.throws(() => lockExclusive(-1), TypeError);
    assert.throws(() => lockExclusive(1.5), TypeError);
  });
});

describe('data directory lock without the native addon (pid file only)', () => {
  it('warns that it cannot see another PID namespace, and still refuses this process a second lock', async () => {
    const dataDir = await newDataDir();
    const { log, lines } = capturingLogger();
    await acquireLock(dataDir, log, null);
    const warning = lines().find((line) => line.level === 'warn');
    assert.match(String(warning?.msg), /cannot detect a second node in another PID namespace/);
    assert.match(String(warning?.data_dir_lock), /^pid file only/);
    assert.equal(await pidFileText(dataDir), `${process.pid}\n`);
    assert.equal(existsSync(join(dataDir, FLOCK_FILE_NAME)), false);
    await assert.rejects(acquireLock(dataDir, log, null), /\(this process\)/);
    await releaseLock(dataDir);
    assert.equal(await pidFileText(dataDir), null);
  });

  it('refuses a pid file naming a live process, and (its known limit) takes over one holding our own pid', async () => {
    const dataDir = await newDataDir();
    const { log } = capturingLogger();
    const bystander = spawn(process.execPath, ['-e', 'setInterval(() => {}, 60_000)'], { stdio: 'ignore' });
    children.push(bystander);
    await writeFile(join(dataDir, LOCK_FILE_NAME), `${bystander.pid}\n`);
    await assert.rejects(acquireLock(dataDir, log, null), new RegExp(`is in use by process ${bystander.pid}`));
    await killed(bystander);
    await writeFile(join(dataDir, LOCK_FILE_NAME), `${process.pid}\n`); // a second container's PID 1, seen from ours
    await acquireLock(dataDir, log, null);
    await releaseLock(dataDir);
  });
});

describe('makeDirectories (mkdir -p without Node recursive mkdir)', () => {
  it('creates missing ancestors and returns the first one it created, undefined when the directory exists', async () => {
    const base = await mkdtemp(join(tmpdir(), 'sk-mkdirs-'));
    try {
      assert.equal(await makeDirectories(join(base, 'a', 'b', 'c')), join(base, 'a'));
      assert.ok(existsSync(join(base, 'a', 'b', 'c')));
      assert.equal(await makeDirectories(join(base, 'a', 'b', 'c')), undefined);
      assert.equal(await makeDirectories(join(base, 'a', 'd')), join(base, 'a', 'd'));
      await writeFile(join(base, 'file'), 'x');
      await assert.rejects(makeDirectories(join(base, 'file')), { code: 'EEXIST' });
      await assert.rejects(makeDirectories(join(base, 'file', 'below')), { code: 'ENOTDIR' });
    } finally {
      await rm(base, { recursive: true, force: true });
    }
  });

  it('fails with ENOENT under /proc, where Node 20 recursive mkdir spins forever', { skip: process.platform !== 'linux' ? 'no /proc' : false }, async () => {
    await assert.rejects(makeDirectories('/proc/no-such-safekeeper-dir/data'), { code: 'ENOENT' });
  });
});
