/**
 * End to end: pgbench TPS (8 clients, simple-update with -N, ~10 s) on a PostgreSQL 15 primary with
 * synchronous commit, in two setups on the same machine in the same run:
 *   - standby:  a stock synchronous physical standby (pg_basebackup + primary_conninfo; the primary's
 *               synchronous_standby_names names it);
 *   - proposer: `safekeeper propose --from` → 3 safekeepers (fsync on); synchronous_standby_names names
 *               the proposer, which reports the quorum's commit_lsn as flushed.
 * Prints both TPS and the ratio proposer / standby (goal ≥ 0.9). Each setup gets a fresh primary with
 * the same settings and `pgbench -i -s 10`. Run: `node --import tsx bench/e2e.bench.ts` (needs
 * PostgreSQL 15 and root, like the integration tests).
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { chownSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { promisify } from 'node:util';
import { killAllNodes, MAIN_PATH, REPO_ROOT, spawnNode, testNodeArgs } from '../test/harness/node_process.js';
import { freePort, PG_BIN_DIR, runAsPostgres, startPostgres, type PostgresInstance } from '../test/harness/pg.js';
import { makeTempDir, removeTempDir } from '../test/harness/tmp.js';
import { waitFor } from '../test/harness/wait.js';

const execFileAsync = promisify(execFile);
const CLIENTS = 8;
const DURATION_S = Number(process.env['E2E_BENCH_SECONDS'] ?? 10);
const SCALE = 10;
const PROPOSER_APP = 'bench_proposer';
const STANDBY_APP = 'bench_standby';
const TENANT = 'ab'.repeat(16);
const TIMELINE = 'cd'.repeat(16);
/** Same on both primaries; checkpoints spread over the run rather than forced by WAL volume. */
/** Sampling flush_lag is a benchmark-side measurement, not a wait for a condition. */
const LAG_SAMPLE_INTERVAL_MS = 500;
const PRIMARY_CONF = { wal_level: 'replica', max_wal_senders: '10', max_wal_size: '4GB', shared_buffers: '256MB', synchronous_commit: 'on' };

export interface E2eBenchResult {
  setup: string;
  tps: number;
  latencyMsAverage: number;
  /** Median of pg_stat_replication.flush_lag sampled during the run. */
  flushLagMsMedian: number;
  /** CPU used by the proposer process during the run, in % of one core (null for the standby setup). */
  proposerCpuPercent: number | null;
}

/* The run is a fixed-duration measurement, so it paces itself with timers rather than waiting for conditions. */
async function pgbench(primary: PostgresInstance, args: readonly string[]): Promise<string> {
  const connect = ['-h', '127.0.0.1', '-p', String(primary.port), '-U', 'postgres'];
  return (await execFileAsync(join(PG_BIN_DIR, 'pgbench'), [...connect, ...args, 'postgres'], { maxBuffer: 1 << 24 })).stdout;
}

/** CPU time (user + system) of process `pid` so far, in ms; Linux /proc. */
function cpuTimeMs(pid: number): number {
  const fields = readFileSync(`/proc/${pid}/stat`, 'utf8').replace(/^.*\) /s, '').split(' ');
  const ticksPerSecond = 100; // USER_HZ on Linux
  return ((Number(fields[11]) + Number(fields[12])) * 1000) / ticksPerSecond;
}

async function measure(setup: string, primary: PostgresInstance, app: string, proposerPid?: number): Promise<E2eBenchResult> {
  await pgbench(primary, ['-i', '-s', String(SCALE), '-q']);
  await primary.psql('CHECKPOINT');
  const state = (await primary.psql(`SELECT sync_state FROM pg_stat_replication WHERE application_name = '${app}'`)).trim();
  if (state !== 'sync') throw new Error(`${setup}: ${app} is not a synchronous standby (${state || 'not connected'})`);
  const cpuBeforeMs = proposerPid === undefined ? 0 : cpuTimeMs(proposerPid);
  const startedMs = performance.now();
  const run = pgbench(primary, ['-c', String(CLIENTS), '-j', '2', '-T', String(DURATION_S), '-N']);
  // The primary's view of the replication round trip: flush_lag (local flush → standby's flush report).
  const lagsMs: number[] = [];
  let running = true;
  void run.finally(() => (running = false)).catch(() => undefined);
  while (running) {
    await new Promise((resolve) => setTimeout(resolve, LAG_SAMPLE_INTERVAL_MS));
    const lag = (await primary.psql(`SELECT COALESCE(EXTRACT(EPOCH FROM flush_lag) * 1000, 0) FROM pg_stat_replication WHERE application_name = '${app}'`)).trim();
    if (running && lag !== '') lagsMs.push(Number(lag));
  }
  const output = await run;
  const proposerCpuPercent = proposerPid === undefined ? null : Math.round(((cpuTimeMs(proposerPid) - cpuBeforeMs) / (performance.now() - startedMs)) * 100);
  lagsMs.sort((a, b) => a - b);
  const flushLagMsMedian = Number((lagsMs[Math.floor(lagsMs.length / 2)] ?? 0).toFixed(2));
  const tps = Number(/tps = ([\d.]+) \(without initial connection time\)/.exec(output)?.[1]);
  const latencyMsAverage = Number(/latency average = ([\d.]+) ms/.exec(output)?.[1]);
  if (!Number.isFinite(tps)) throw new Error(`${setup}: no tps in pgbench output:\n${output}`);
  return { setup, tps: Math.round(tps), latencyMsAverage, flushLagMsMedian, proposerCpuPercent };
}

async function withStandby(): Promise<E2eBenchResult> {
  const primary = await startPostgres({ extraConf: { ...PRIMARY_CONF, synchronous_standby_names: STANDBY_APP } });
  const dir = makeTempDir('sk-bench-standby-');
  let standby: ChildProcess | null = null;
  try {
    chownSync(dir, Number((await execFileAsync('id', ['-u', 'postgres'])).stdout), Number((await execFileAsync('id', ['-g', 'postgres'])).stdout));
    const dataDir = join(dir, 'data');
    await runAsPostgres('pg_basebackup', ['-h', '127.0.0.1', '-p', String(primary.port), '-U', 'postgres', '-D', dataDir, '-R', '-X', 'stream', '-c', 'fast']);
    const port = await freePort();
    const conninfo = `host=127.0.0.1 port=${primary.port} user=postgres application_name=${STANDBY_APP}`;
    standby = spawn('setpriv', ['--reuid=postgres', '--regid=postgres', '--init-groups', join(PG_BIN_DIR, 'postgres'), '-D', dataDir, '-p', String(port), '-k', dir,
      '-c', 'listen_addresses=127.0.0.1', '-c', `primary_conninfo=${conninfo}`, '-c', 'hot_standby=on', '-c', 'shared_buffers=256MB'], { stdio: 'ignore' });
    await waitFor(async () => (await primary.psql(`SELECT sync_state FROM pg_stat_replication WHERE application_name = '${STANDBY_APP}'`)).trim() === 'sync', { timeoutMs: 30_000, what: 'the standby to stream synchronously' });
    return await measure('standby', primary, STANDBY_APP);
  } finally {
    if (standby !== null && standby.exitCode === null) {
      const exited = new Promise((resolve) => standby?.once('exit', resolve));
      standby.kill('SIGINT');
      await exited;
    }
    await primary.stop();
    await removeTempDir(dir);
  }
}

async function withProposer(): Promise<E2eBenchResult> {
  const primary = await startPostgres({ extraConf: { ...PRIMARY_CONF, synchronous_standby_names: PROPOSER_APP } });
  const dirs = [1, 2, 3].map((id) => makeTempDir(`sk-bench-e2e-${id}-`));
  let proposer: ChildProcess | null = null;
  try {
    const nodes = [];
    for (const [index, dir] of dirs.entries()) nodes.push(await spawnNode(testNodeArgs(dir, ['--id', String(index + 1), '--log-level', 'warn'])));
    const safekeepers = nodes.map((node) => `${node.pgHost}:${node.pgPort}`).join(',');
    proposer = spawn(process.execPath, ['--import', 'tsx', MAIN_PATH, 'propose', '--safekeepers', safekeepers, '--tenant-id', TENANT, '--timeline-id', TIMELINE,
      '--from', `postgres://postgres@127.0.0.1:${primary.port}/postgres`, '--application-name', PROPOSER_APP, '--log-level', 'warn', '--log-format', 'json'], { cwd: REPO_ROOT, stdio: 'ignore' });
    await waitFor(async () => (await primary.psql(`SELECT sync_state FROM pg_stat_replication WHERE application_name = '${PROPOSER_APP}'`)).trim() === 'sync', { timeoutMs: 60_000, what: 'the proposer to stream synchronously' });
    return await measure('proposer + 3 safekeepers', primary, PROPOSER_APP, proposer.pid);
  } finally {
    if (proposer !== null && proposer.exitCode === null) {
      const exited = new Promise((resolve) => proposer?.once('exit', resolve));
      proposer.kill('SIGTERM');
      await exited;
    }
    await killAllNodes();
    await primary.stop();
    for (const dir of dirs) await removeTempDir(dir);
  }
}

export async function run(): Promise<(E2eBenchResult & { ratioToStandby: number })[]> {
  const standby = await withStandby();
  const proposer = await withProposer();
  return [standby, proposer].map((result) => ({ ...result, ratioToStandby: Number((result.tps / standby.tps).toFixed(3)) }));
}

if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href) {
  const results = await run();
  console.table(results);
  const ratio = results[1]?.ratioToStandby ?? 0;
  console.log(`proposer / standby TPS ratio: ${ratio} (goal >= 0.9)`);
}
