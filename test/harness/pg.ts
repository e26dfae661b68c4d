/**
 * A PostgreSQL 15 fixture for integration tests, plus pg_waldump parsing.
 *
 * `startPostgres()` makes a temp dir owned by the postgres user (PostgreSQL refuses to run as root), runs
 * initdb, and starts the postmaster as a direct child through setpriv (ready in ~80 ms, and it stops on a
 * signal without a wrapper in between). The port comes from binding port 0; another cluster may grab it
 * before PostgreSQL does, so a start that fails to bind is retried on a fresh port. Readiness is a condition
 * wait on a real connection. `stop()` asks for a fast shutdown (SIGINT: a clean shutdown checkpoint that does
 * not wait for clients, unlike SIGTERM's smart mode), waits for the exit, then removes the temp dir;
 * `shutdown()`/`start()`/`restart()` stop and start the same cluster (what `pg_ctl stop|start|restart -m fast`
 * does, while the postmaster stays our direct child so the fixture still owns it). Servers
 * still running when the process exits are SIGKILLed so a failed test leaves nothing behind.
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { chownSync, existsSync } from 'node:fs';
import { createServer } from 'node:net';
import { join } from 'node:path';
import { promisify } from 'node:util';
import pg from 'pg';
import { type Lsn, parseLsn } from '../../src/wal/lsn.js';
import { makeTempDir, removeTempDir } from './tmp.js';
import { waitFor } from './wait.js';

const execFileAsync = promisify(execFile);

export const PG_BIN_DIR = '/usr/lib/postgresql/15/bin';
export const PG_USER = 'postgres';
const START_ATTEMPTS_MAX = 5;
const READY_TIMEOUT_MS = 30_000;
const STOP_TIMEOUT_MS = 60_000;
const LOG_BYTES_MAX = 64 * 1024;
const OUTPUT_BYTES_MAX = 1 << 30; // pg_waldump over a few hundred MiB of WAL prints ~100 MB

export interface PostgresOptions {
  /** Extra `-c key=value` settings for the postmaster. */
  extraConf?: Record<string, string>;
  /** initdb --wal-segsize, in MiB (a power of two, 1..1024); PostgreSQL's default is 16. */
  walSegmentSizeMb?: number;
  /** Listen on this port (one attempt, no retry elsewhere); default: a free port. */
  port?: number;
}

export interface PostgresInstance {
  readonly host: string;
  /** The current port (`start({ port })` may move it). */
  readonly port: number;
  /** The temp dir holding the data dir and the socket; removed by stop(). */
  readonly dir: string;
  readonly dataDir: string;
  readonly binDir: string;
  readonly connectionString: string;
  readonly process: ChildProcess;
  /** Runs SQL through psql (unaligned, tuples only) and returns its stdout. */
  psql(sql: string): Promise<string>;
  /** The server log so far (the last 64 KiB) of the current postmaster. */
  log(): string;
  /** Whether the postmaster runs (false after `shutdown()`). */
  readonly running: boolean;
  /** Fast shutdown (like `pg_ctl stop -m fast`), keeping the data dir for `start()`. */
  shutdown(): Promise<void>;
  /** Immediate shutdown (like `pg_ctl stop -m immediate`): no shutdown checkpoint; `start()` then runs crash recovery. */
  immediateShutdown(): Promise<void>;
  /** Starts the stopped cluster again, on its port unless `port` says otherwise, with extra settings. */
  start(options?: { port?: number; extraConf?: Record<string, string> }): Promise<void>;
  /** `pg_ctl restart -m fast`: fast shutdown, then start on the same port and data dir. */
  restart(): Promise<void>;
  /** Fast shutdown, wait for exit, then remove the temp dir unless `keepDir`. */
  stop(options?: { keepDir?: boolean }): Promise<void>;
}

const liveServers = new Set<ChildProcess>();
process.once('exit', () => {
  for (const child of liveServers) child.kill('SIGKILL');
});

let postgresIds: { uid: number; gid: number } | null = null;

async function postgresUserIds(): Promise<{ uid: number; gid: number }> {
  if (postgresIds === null) {
    const uid = Number((await execFileAsync('id', ['-u', PG_USER])).stdout.trim());
    const gid = Number((await execFileAsync('id', ['-g', PG_USER])).stdout.trim());
    postgresIds = { uid, gid };
  }
  return postgresIds;
}

/** Runs `cmd` (a name in PG_BIN_DIR or a path) as the postgres user; returns stdout, throws with stderr on failure. */
export async function runAsPostgres(cmd: string, args: readonly string[]): Promise<string> {
  const path = cmd.includes('/') ? cmd : join(PG_BIN_DIR, cmd);
  try {
    const { stdout } = await execFileAsync('runuser', ['-u', PG_USER, '--', path, ...args], { maxBuffer: OUTPUT_BYTES_MAX });
    return stdout;
  } catch (error) {
    const stderr = (error as { stderr?: string }).stderr ?? '';
    throw new Error(`${cmd} ${args.join(' ')} failed: ${stderr.trim()}`, { cause: error });
  }
}

export async function freePort(): Promise<number> {
  return await new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const address = server.address();
      const port = typeof address === 'object' && address !== null ? address.port : 0;
      server.close(() => resolve(port));
    });
  });
}

export async function startPostgres(options: PostgresOptions = {}): Promise<PostgresInstance> {
  const dir = makeTempDir('sk-pg-');
  try {
    const { uid, gid } = await postgresUserIds();
    chownSync(dir, uid, gid);
    const dataDir = join(dir, 'data');
    const initdbArgs = ['-D', dataDir, '-U', PG_USER, '-A', 'trust', '-E', 'UTF8', '--locale=C', '--no-sync'];
    if (options.walSegmentSizeMb !== undefined) initdbArgs.push(`--wal-segsize=${options.walSegmentSizeMb}`);
    await runAsPostgres('initdb', initdbArgs);
    for (let attempt = 1; ; attempt++) {
      const port = options.port ?? (await freePort());
      const server = await tryStart(dir, dataDir, port, options.extraConf ?? {});
      if (server !== null) return makeInstance(dir, dataDir, port, options.extraConf ?? {}, server);
      if (options.port !== undefined) throw new Error(`postgres could not bind the requested port ${options.port}`);
      if (attempt >= START_ATTEMPTS_MAX) throw new Error(`postgres did not start after ${attempt} attempts`);
    }
  } catch (error) {
    await removeTempDir(dir);
    throw error;
  }
}

/** One running postmaster: the child process, its exit, and its log. */
interface Postmaster {
  readonly child: ChildProcess;
  readonly exitPromise: Promise<void>;
  exited(): boolean;
  log(): string;
}

/** Starts the postmaster on `port`; null if the port was taken (the caller retries), throws on other failures. */
async function tryStart(dir: string, dataDir: string, port: number, extraConf: Record<string, string>): Promise<Postmaster | null> {
  const confArgs = Object.entries(extraConf).flatMap(([key, value]) => ['-c', `${key}=${value}`]);
  // dynamic_shared_memory_type=mmap: DSM segments live under the data directory and go with the temp dir,
  // instead of piling up in /dev/shm when a test kills PostgreSQL.
  const args = ['--reuid=postgres', '--regid=postgres', '--init-groups', join(PG_BIN_DIR, 'postgres'), '-D', dataDir, '-p', String(port), '-k', dir, '-c', 'listen_addresses=127.0.0.1', '-c', 'dynamic_shared_memory_type=mmap', ...confArgs];
  const child = spawn('setpriv', args, { stdio: ['ignore', 'pipe', 'pipe'] });
  liveServers.add(child);
  let log = '';
  const append = (data: Buffer): void => {
    log = (log + data.toString('utf8')).slice(-LOG_BYTES_MAX);
  };
  child.stdout.on('data', append);
  child.stderr.on('data', append);
  let exited = false;
  const exitPromise = new Promise<void>((resolve) => child.once('exit', () => {
    exited = true;
    liveServers.delete(child);
    resolve();
  }));
  const connectionString = `postgresql://${PG_USER}@127.0.0.1:${port}/postgres`;
  let outcome: 'ready' | 'exited' | 'timeout';
  try {
    outcome = await waitFor(async () => {
      if (exited) return 'exited' as const;
      const client = new pg.Client({ connectionString });
      try {
        await client.connect();
        await client.query('SELECT 1');
        return 'ready' as const;
      } finally {
        await client.end().catch(() => undefined); // a failed connect leaves nothing to close
      }
    }, { timeoutMs: READY_TIMEOUT_MS, intervalMs: 25, what: `postgres accepting connections on port ${port}` });
  } catch (error) {
    if (!(error instanceof Error && error.message.startsWith('timed out'))) throw error;
    outcome = 'timeout';
  }
  if (outcome !== 'ready') {
    if (!exited) {
      child.kill('SIGKILL');
      await exitPromise;
    }
    if (/could not bind|Address already in use/i.test(log)) return null;
    throw new Error(`postgres failed to start (${outcome}):\n${log.slice(-4000)}`);
  }
  return { child, exitPromise, exited: () => exited, log: () => log };
}

/** Fast shutdown (SIGINT: a shutdown checkpoint, clients are not waited for); SIGKILL after STOP_TIMEOUT_MS. */
async function fastShutdown(server: Postmaster): Promise<void> {
  await signalShutdown(server, 'SIGINT');
}

/**
 * Immediate shutdown (SIGQUIT, what `pg_ctl stop -m immediate` sends): the backends quit at once, with no
 * shutdown checkpoint, so the next start runs crash recovery as after a crash. SIGKILL after STOP_TIMEOUT_MS.
 */
async function immediateShutdown(server: Postmaster): Promise<void> {
  await signalShutdown(server, 'SIGQUIT');
}

async function signalShutdown(server: Postmaster, signal: 'SIGINT' | 'SIGQUIT'): Promise<void> {
  if (server.exited()) return;
  server.child.kill(signal);
  const timer = setTimeout(() => server.child.kill('SIGKILL'), STOP_TIMEOUT_MS);
  await server.exitPromise;
  clearTimeout(timer);
}

function makeInstance(dir: string, dataDir: string, firstPort: number, extraConf: Record<string, string>, first: Postmaster): PostgresInstance {
  let server = first;
  let port = firstPort;
  return {
    host: '127.0.0.1', dir, dataDir, binDir: PG_BIN_DIR,
    get port(): number {
      return port;
    },
    get connectionString(): string {
      return `postgresql://${PG_USER}@127.0.0.1:${port}/postgres`;
    },
    get process(): ChildProcess {
      return server.child;
    },
    async psql(sql: string): Promise<string> {
      const psqlArgs = ['-X', '-A', '-t', '-q', '-v', 'ON_ERROR_STOP=1', '-h', '127.0.0.1', '-p', String(port), '-U', PG_USER, '-d', 'postgres', '-c', sql];
      try {
        return (await execFileAsync(join(PG_BIN_DIR, 'psql'), psqlArgs, { maxBuffer: OUTPUT_BYTES_MAX })).stdout;
      } catch (error) {
        throw new Error(`psql failed: ${((error as { stderr?: string }).stderr ?? '').trim()}`, { cause: error });
      }
    },
    log: () => server.log(),
    get running(): boolean {
      return !server.exited();
    },
    async shutdown(): Promise<void> {
      await fastShutdown(server);
    },
    async immediateShutdown(): Promise<void> {
      await immediateShutdown(server);
    },
    async start(startOptions = {}): Promise<void> {
      if (!server.exited()) throw new Error('postgres is already running');
      const nextPort = startOptions.port ?? port;
      const next = await tryStart(dir, dataDir, nextPort, { ...extraConf, ...startOptions.extraConf });
      if (next === null) throw new Error(`postgres could not bind port ${nextPort}`);
      server = next;
      port = nextPort;
    },
    async restart(): Promise<void> {
      await fastShutdown(server);
      await this.start();
    },
    async stop(stopOptions = {}): Promise<void> {
      await fastShutdown(server);
      if (stopOptions.keepDir !== true) await removeTempDir(dir);
    },
  };
}

export interface WaldumpRecord {
  lsn: Lsn;
  prevLsn: Lsn;
  rmgr: string;
  /** xl_tot_len ("len (rec/tot)": the second number). */
  totalLengthBytes: number;
  desc: string;
}

const WALDUMP_LINE = /^rmgr: (\S+)\s+len \(rec\/tot\):\s*(\d+)\/\s*(\d+), tx:\s*\d+, lsn: ([0-9A-F]+\/[0-9A-F]+), prev ([0-9A-F]+\/[0-9A-F]+), desc: (.*)$/;

/**
 * Runs pg_waldump over a directory (with `startLsn`) or over segment files (first and last path are
 * STARTSEG/ENDSEG, all in one directory) and returns the records it prints. Reaching the end of valid WAL
 * (pg_waldump's "invalid record length ... got 0" or a missing next file) is not an error.
 */
export async function pgWaldump(source: string | readonly string[], startLsn?: Lsn, endLsn?: Lsn): Promise<WaldumpRecord[]> {
  const args: string[] = [];
  if (startLsn !== undefined) args.push('-s', formatPaddedLsn(startLsn));
  if (endLsn !== undefined) args.push('-e', formatPaddedLsn(endLsn));
  if (typeof source === 'string') {
    if (!existsSync(source)) throw new Error(`no such WAL directory: ${source}`);
    args.push('-p', source);
  } else {
    const first = source[0];
    const last = source[source.length - 1];
    if (first === undefined || last === undefined) throw new Error('pgWaldump needs at least one segment file');
    args.push(first);
    if (last !== first) args.push(last);
  }
  let stdout: string;
  try {
    stdout = (await execFileAsync(join(PG_BIN_DIR, 'pg_waldump'), args, { maxBuffer: OUTPUT_BYTES_MAX })).stdout;
  } catch (error) {
    const failed = error as { stdout?: string; stderr?: string; code?: number };
    const stderr = failed.stderr ?? '';
    if (failed.code !== 1 || !/invalid record length|could not find file|invalid magic number|unexpected pageaddr/.test(stderr)) {
      throw new Error(`pg_waldump ${args.join(' ')} failed: ${stderr.trim()}`, { cause: error });
    }
    stdout = failed.stdout ?? '';
  }
  const records: WaldumpRecord[] = [];
  for (const line of stdout.split('\n')) {
    const match = WALDUMP_LINE.exec(line);
    if (match === null) continue;
    records.push({ rmgr: match[1] ?? '', totalLengthBytes: Number(match[3]), lsn: parseLsn(match[4] ?? ''), prevLsn: parseLsn(match[5] ?? ''), desc: match[6] ?? '' });
  }
  return records;
}

function formatPaddedLsn(lsn: Lsn): string {
  const hex8 = (value: bigint): string => value.toString(16).toUpperCase().padStart(8, '0');
  return `${hex8(lsn >> 32n)}/${hex8(lsn & 0xffff_ffffn)}`;
}
