/**
 * End to end: pgbench TPS (8 clients, simple-update with -N, ~10 s) on a PostgreSQL 15 primary with
 * synchronous commit, in three setups on the same machine in the same run:
 *   - standby:    a stock synchronous physical standby (pg_basebackup + primary_conninfo; the primary's
 *                 synchronous_standby_names names it);
 *   - 3 standbys: three stock standbys and synchronous_standby_names = 'ANY 2 (…)', PostgreSQL's own quorum
 *                 commit: the like-for-like baseline, as the proposer also waits for 2 of 3 fsyncs;
 *   - proposer:   `safekeeper propose --from` → 3 safekeepers (fsync on); synchronous_standby_names names
 *                 the proposer, which reports the quorum's commit_lsn as flushed.
 * Prints each TPS and the ratio to the one-standby TPS (the issue's goal: proposer ≥ 0.9 of it) and to the
 * three-standby TPS. Every replica shares the machine's cores with the primary and pgbench, so on a small
 * machine the replicas' CPU per commit decides the ratio. Each setup gets a fresh primary with the same
 * settings and `pgbench -i -s 10`. Run: `npm run build`, then `node --import tsx bench/e2e.bench.ts` (needs
 * PostgreSQL 15 and root, like the integration tests).
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { chownSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { promisify } from 'node:util';
import { cliEntry, killAllNodes, REPO_ROOT, spawnNode, testNodeArgs } from '../test/harness/node_process.js';
import { freePort, PG_BIN_DIR, runAsPostgres, startPostgres, type PostgresInstance } from '../test/harness/pg.js';
import { makeTempDir, removeTempDir } from '../test/harness/tmp.js';
import { waitFor } from '../test/harness/wait.js';

const execFileAsync = promisify(execFile);
const CLIENTS = 8;
const DURATION_S = Number(process.env['E2E_BENCH_SECONDS'] ?? 10);
const SCALE = 10;
const PROPOSER_APP = 'bench_proposer';
const STANDBY_APP = 'bench_standby';
/** PostgreSQL's quorum commit over three standbys: like the proposer, a commit waits for two of three. */
const QUORUM_STANDBYS = 3;
const QUORUM_ACKS = 2;
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
  /** Median of pg_stat_replication.flush_lag sampled during the run (with a quorum: the quorum-th smallest of each sample). */
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

/** The flush_lag a commit waits for, in ms: the `acks`-th smallest over `apps` (null when not all report one). */
async function commitFlushLagMs(primary: PostgresInstance, apps: readonly string[], acks: number): Promise<number | null> {
  const names = apps.map((app) => `'${app}'`).join(', ');
  const rows = (await primary.psql(`SELECT COALESCE(EXTRACT(EPOCH FROM flush_lag) * 1000, 0) FROM pg_stat_replication WHERE application_name IN (${names})`)).trim();
  const lags = rows === '' ? [] : rows.split('\n').map(Number).sort((a, b) => a - b);
  return lags.length < apps.length ? null : (lags[acks - 1] ?? null);
}

/** Whether every app streams as a synchronous (or, under ANY n, quorum) standby. */
async function allSynchronous(primary: PostgresInstance, apps: readonly string[]): Promise<boolean> {
  const names = apps.map((app) => `'${app}'`).join(', ');
  const states = (await primary.psql(`SELECT sync_state FROM pg_stat_replication WHERE application_name IN (${names})`)).trim().split('\n');
  return states.length === apps.length && states.every((state) => state === 'sync' || state === 'quorum');
}

async function measure(setup: string, primary: PostgresInstance, apps: readonly string[], acks: number, proposerPid?: number): Promise<E2eBenchResult> {
  await pgbench(primary, ['-i', '-s', String(SCALE), '-q']);
  await primary.psql('CHECKPOINT');
  if (!(await allSynchronous(primary, apps))) throw new Error(`${setup}: ${apps.join(', ')} are not all synchronous standbys`);
  const cpuBeforeMs = proposerPid === undefined ? 0 : cpuTimeMs(proposerPid);
  const startedMs = performance.now();
  const run = pgbench(primary, ['-c', String(CLIENTS), '-j', '2', '-T', String(DURATION_S), '-N']);
  // The primary's view of the replication round trip: flush_lag (local flush → standby's flush report).
  const lagsMs: number[] = [];
  let running = true;
  void run.finally(() => (running = false)).catch(() => undefined);
  while (running) {
    await new Promise((resolve) => setTimeout(resolve, LAG_SAMPLE_INTERVAL_MS));
    const lag = await commitFlushLagMs(primary, apps, acks);
    if (running && lag !== null) lagsMs.push(lag);
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

/** Starts a stock hot standby of `primary` named `app` (pg_basebackup into `dir`); resolves once it runs. */
async function startStandby(primary: PostgresInstance, dir: string, app: string): Promise<ChildProcess> {
  const dataDir = join(dir, `data-${app}`);
  await runAsPostgres('pg_basebackup', ['-h', '127.0.0.1', '-p', String(primary.port), '-U', 'postgres', '-D', dataDir, '-R', '-X', 'stream', '-c', 'fast']);
  const port = await freePort();
  const conninfo = `host=127.0.0.1 port=${primary.port} user=postgres application_name=${app}`;
  return spawn('setpriv', ['--reuid=postgres', '--regid=postgres', '--init-groups', join(PG_BIN_DIR, 'postgres'), '-D', dataDir, '-p', String(port), '-k', dir,
    '-c', 'listen_addresses=127.0.0.1', '-c', 'dynamic_shared_memory_type=mmap', '-c', `primary_conninfo=${conninfo}`, '-c', 'hot_standby=on', '-c', 'shared_buffers=256MB'], { stdio: 'ignore' });
}

/** One synchronous standby, or `count` of them under synchronous_standby_names = 'ANY acks (…)'. */
async function withStandbys(count: number, acks: number): Promise<E2eBenchResult> {
  const apps = count === 1 ? [STANDBY_APP] : Array.from({ length: count }, (_, index) => `${STANDBY_APP}_${index + 1}`);
  const names = count === 1 ? STANDBY_APP : `ANY ${acks} (${apps.join(', ')})`;
  const primary = await startPostgres({ extraConf: { ...PRIMARY_CONF, synchronous_standby_names: names } });
  const dir = makeTempDir('sk-bench-standby-');
  const standbys: ChildProcess[] = [];
  try {
    chownSync(dir, Number((await execFileAsync('id', ['-u', 'postgres'])).stdout), Number((await execFileAsync('id', ['-g', 'postgres'])).stdout));
    for (const app of apps) standbys.push(await startStandby(primary, dir, app));
    await waitFor(async () => allSynchronous(primary, apps), { timeoutMs: 30_000, what: 'the standbys to stream synchronously' });
    return await measure(count === 1 ? 'standby' : `${count} standbys (ANY ${acks})`, primary, apps, acks);
  } finally {
    for (const standby of standbys) {
      if (standby.exitCode !== null) continue;
      const exited = new Promise((resolve) => standby.once('exit', resolve));
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
    for (const [index, dir] of dirs.entries()) nodes.push(await spawnNode(testNodeArgs(dir, ['--id', String(index + 1), '--log-level', 'warn']), { built: true }));
    const safekeepers = nodes.map((node) => `${node.pgHost}:${node.pgPort}`).join(',');
    proposer = spawn(process.execPath, [...cliEntry(true), 'propose', '--safekeepers', safekeepers, '--tenant-id', TENANT, '--timeline-id', TIMELINE,
      '--from', `postgres://postgres@127.0.0.1:${primary.port}/postgres`, '--application-name', PROPOSER_APP, '--log-level', 'warn', '--log-format', 'json'], { cwd: REPO_ROOT, stdio: 'ignore' });
    await waitFor(async () => allSynchronous(primary, [PROPOSER_APP]), { timeoutMs: 60_000, what: 'the proposer to stream synchronously' });
    return await measure('proposer + 3 safekeepers', primary, [PROPOSER_APP], 1, proposer.pid);
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

export async function run(): Promise<(E2eBenchResult & { ratioToStandby: number; ratioToThreeStandbys: number })[]> {
  const standby = await withStandbys(1, 1);
  const threeStandbys = await withStandbys(QUORUM_STANDBYS, QUORUM_ACKS);
  const proposer = await withProposer();
  return [standby, threeStandbys, proposer].map((result) => ({
    ...result,
    ratioToStandby: Number((result.tps / standby.tps).toFixed(3)),
    ratioToThreeStandbys: Number((result.tps / threeStandbys.tps).toFixed(3)),
  }));
}

if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href) {
  const results = await run();
  console.table(results);
  const proposer = results[2];
  console.log(`proposer / standby TPS ratio: ${proposer?.ratioToStandby ?? 0} (goal >= 0.9); proposer / ${QUORUM_STANDBYS} standbys (ANY ${QUORUM_ACKS}): ${proposer?.ratioToThreeStandbys ?? 0}`);
}
