/**
 * The setup the `safekeeper propose` integration tests share: a PostgreSQL 15 primary whose
 * synchronous_standby_names names the proposer, three safekeeper nodes (fsync on) on fixed ephemeral ports
 * (so a killed node comes back at the same address), and the proposer as a CLI process. Helpers read a
 * safekeeper's timeline status over HTTP, wait until every safekeeper has the primary's flush position, and
 * compare every safekeeper's segments with the primary's pg_wal byte for byte. `close()` kills every
 * process it started and removes every temp dir (call it in `after()`).
 */
import assert from 'node:assert/strict';
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { parseLsn, segmentFileName, segmentNumber, segmentStartLsn, type Lsn } from '../../src/wal/lsn.js';
import { captureOutput, cliEntry, killAllNodes, REPO_ROOT, spawnNode, testNodeArgs, type ExitStatus, type NodeProcess } from './node_process.js';
import { freePort, PG_BIN_DIR, startPostgres, type PostgresInstance } from './pg.js';
import { makeTempDir, removeAllTempDirs } from './tmp.js';
import { waitFor } from './wait.js';

const execFileAsync = promisify(execFile);
const SEGMENT_BYTES = 16 * 1024 * 1024;

export interface Safekeeper {
  id: number;
  dir: string;
  port: number;
  node: NodeProcess | null;
}

export interface ProposerProcess {
  child: ChildProcess;
  stdout(): string;
  stderr(): string;
  exited: Promise<ExitStatus>;
}

/** One JSON log line of the proposer (`--log-format json`). */
export type LogLine = Record<string, unknown> & { msg: string; level: string };

/** The proposer's JSON log lines with message `msg`, so far. */
export function linesWith(proposer: ProposerProcess, msg: string): LogLine[] {
  return proposer.stderr().split('\n').filter((line) => line.startsWith('{')).map((line) => JSON.parse(line) as LogLine).filter((line) => line.msg === msg);
}

export interface TimelineStatus {
  flushLsn: Lsn;
  commitLsn: Lsn;
  timelineStartLsn: Lsn;
  term: bigint;
}

const proposers = new Set<ChildProcess>();

/** Spawns `safekeeper propose ARGS --log-format json`; output is captured. */
export function startProposer(args: readonly string[]): ProposerProcess {
  const child = spawn(process.execPath, [...cliEntry(false), 'propose', ...args, '--log-format', 'json'], { cwd: REPO_ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
  proposers.add(child);
  const out = captureOutput(child);
  const exited = new Promise<ExitStatus>((resolve) => child.once('close', (code, signal) => (proposers.delete(child), resolve({ code, signal }))));
  return { child, exited, stdout: () => out.stdout, stderr: () => out.stderr };
}

/** Waits for the `elected term=T term_start_lsn=X/Y` line. */
export async function elected(proposer: ProposerProcess): Promise<{ term: bigint; termStartLsn: Lsn }> {
  const match = await waitFor(() => {
    if (proposer.child.exitCode !== null) throw new Error(`proposer exited: ${proposer.stderr().slice(-3000)}`);
    return /elected term=(\d+) term_start_lsn=(\S+)/.exec(proposer.stdout());
  }, { timeoutMs: 30_000, what: 'the proposer to be elected' }).catch((error: unknown) => {
    throw new Error(`${error instanceof Error ? error.message : String(error)}\nproposer stderr:\n${proposer.stderr().slice(-3000)}`);
  });
  return { term: BigInt(match[1] as string), termStartLsn: parseLsn(match[2] as string) };
}

export class ProposerCluster {
  readonly safekeepers: Safekeeper[] = [];

  private constructor(readonly primary: PostgresInstance, readonly tenantId: string, readonly timelineId: string) {}

  /** A primary with `synchronous_standby_names = applicationName` and three running safekeepers. */
  static async start(options: { applicationName: string; tenantId: string; timelineId: string }): Promise<ProposerCluster> {
    const primary = await startPostgres({ extraConf: { synchronous_standby_names: options.applicationName, wal_level: 'replica', max_wal_senders: '10', wal_keep_size: '2GB', fsync: 'off' } });
    const cluster = new ProposerCluster(primary, options.tenantId, options.timelineId);
    for (let id = 1; id <= 3; id += 1) {
      const safekeeper: Safekeeper = { id, dir: makeTempDir(`sk-prop-${id}-`), port: await freePort(), node: null };
      cluster.safekeepers.push(safekeeper);
      await cluster.startSafekeeper(safekeeper);
    }
    return cluster;
  }

  /** Kills every proposer and node, stops the primary and removes every temp dir. */
  static async closeAll(cluster: ProposerCluster | undefined): Promise<void> {
    for (const child of proposers) child.kill('SIGKILL');
    await killAllNodes();
    await cluster?.primary.stop();
    await removeAllTempDirs();
  }

  safekeeperList(): string {
    return this.safekeepers.map((each) => `127.0.0.1:${each.port}`).join(',');
  }

  primaryUrl(): string {
    return `postgres://postgres@127.0.0.1:${this.primary.port}/postgres`;
  }

  async startSafekeeper(safekeeper: Safekeeper): Promise<void> {
    safekeeper.node = await spawnNode(testNodeArgs(safekeeper.dir, ['--id', String(safekeeper.id), '--listen-pg', `127.0.0.1:${safekeeper.port}`]));
  }

  async status(safekeeper: Safekeeper, timelineId = this.timelineId): Promise<TimelineStatus> {
    assert(safekeeper.node !== null);
    const response = await fetch(`${safekeeper.node.httpUrl}/v1/tenant/${this.tenantId}/timeline/${timelineId}`);
    assert.equal(response.status, 200);
    const body = (await response.json()) as { flush_lsn: string; commit_lsn: string; timeline_start_lsn: string; acceptor_state: { term: number } };
    return { flushLsn: parseLsn(body.flush_lsn), commitLsn: parseLsn(body.commit_lsn), timelineStartLsn: parseLsn(body.timeline_start_lsn), term: BigInt(body.acceptor_state.term) };
  }

  async primaryFlushLsn(): Promise<Lsn> {
    return parseLsn((await this.primary.psql('SELECT pg_current_wal_flush_lsn()')).trim());
  }

  /** Waits until every safekeeper's flush_lsn equals the primary's flush position; returns it. */
  async waitConverged(): Promise<Lsn> {
    return await waitFor(async () => {
      const target = await this.primaryFlushLsn();
      for (const safekeeper of this.safekeepers) if ((await this.status(safekeeper)).flushLsn !== target) return null;
      return target;
    }, { timeoutMs: 60_000, intervalMs: 100, what: 'all safekeepers to reach the primary flush_lsn' });
  }

  /** Every safekeeper's segments equal the primary's pg_wal over [timeline start, flushLsn). */
  async assertWalMatchesPrimary(flushLsn: Lsn): Promise<void> {
    for (const safekeeper of this.safekeepers) {
      const { timelineStartLsn } = await this.status(safekeeper);
      const dir = join(safekeeper.dir, this.tenantId, this.timelineId);
      for (let segno = segmentNumber(timelineStartLsn, SEGMENT_BYTES); segno <= segmentNumber(flushLsn - 1n, SEGMENT_BYTES); segno += 1n) {
        const name = segmentFileName(segno, SEGMENT_BYTES);
        const ours = await this.#readSegment(safekeeper, dir, name);
        const theirs = await readFile(join(this.primary.dataDir, 'pg_wal', name));
        const segmentStart = segmentStartLsn(segno, SEGMENT_BYTES);
        const from = Number((timelineStartLsn > segmentStart ? timelineStartLsn : segmentStart) - segmentStart);
        const to = Number((flushLsn < segmentStart + BigInt(SEGMENT_BYTES) ? flushLsn : segmentStart + BigInt(SEGMENT_BYTES)) - segmentStart);
        assert.ok(ours.subarray(from, to).equals(theirs.subarray(from, to)), `safekeeper ${safekeeper.id} segment ${name} differs from the primary in [${from}, ${to})`);
      }
    }
  }

  /** Runs pgbench against the primary; returns its stdout. */
  async pgbench(args: readonly string[]): Promise<string> {
    return (await execFileAsync(join(PG_BIN_DIR, 'pgbench'), ['-h', '127.0.0.1', '-p', String(this.primary.port), '-U', 'postgres', ...args, 'postgres'])).stdout;
  }

  /** A segment of a safekeeper: local (complete or `.partial`), or from its remote storage once WAL removal took it. */
  async #readSegment(safekeeper: Safekeeper, dir: string, name: string): Promise<Buffer> {
    for (const path of [join(dir, name), join(dir, `${name}.partial`), join(safekeeper.dir, 'remote', this.tenantId, this.timelineId, name)]) {
      try {
        return await readFile(path);
      } catch (error) {
        if ((error as { code?: string }).code !== 'ENOENT') throw error;
      }
    }
    throw new Error(`safekeeper ${safekeeper.id} has no segment ${name}, locally or remotely`);
  }
}
