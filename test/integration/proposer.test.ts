/**
 * `safekeeper propose` end to end, with real processes: a PostgreSQL 15 primary whose
 * synchronous_standby_names names the proposer, the proposer as a CLI process, and three safekeeper nodes
 * (fsync on) on fixed ephemeral ports so a killed node can come back at the same address.
 * The tests share the cluster and run in order: pgbench through the quorum with one safekeeper killed and
 * restarted mid-run; a proposer killed and restarted (new term, no gap); a protocol v2 proposer; synthetic
 * load; and the ways the proposer fails. After each phase every safekeeper's WAL must equal the primary's
 * pg_wal byte for byte from the timeline start to the common flush_lsn.
 */
import assert from 'node:assert/strict';
import { spawn, execFile, type ChildProcess } from 'node:child_process';
import { copyFile, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { after, before, describe, it } from 'node:test';
import { PgClient } from '../../src/pg/client.js';
import { encodeHotStandbyFeedback, postgresNowUs } from '../../src/pg/replication_messages.js';
import { formatLsn, parseLsn, segmentFileName, segmentNumber, segmentStartLsn, type Lsn } from '../../src/wal/lsn.js';
import { killAllNodes, MAIN_PATH, REPO_ROOT, runCli, spawnNode, testNodeArgs, type ExitStatus, type NodeProcess } from '../harness/node_process.js';
import { freePort, PG_BIN_DIR, pgWaldump, startPostgres, type PostgresInstance } from '../harness/pg.js';
import { makeTempDir, removeAllTempDirs } from '../harness/tmp.js';
import { waitFor } from '../harness/wait.js';

const execFileAsync = promisify(execFile);
const APP = 'sk_test_proposer';
const TENANT = '1f'.repeat(16);
const TIMELINE = '2e'.repeat(16);
const SEGMENT_BYTES = 16 * 1024 * 1024;

interface Safekeeper {
  id: number;
  dir: string;
  port: number;
  node: NodeProcess | null;
}

interface ProposerProcess {
  child: ChildProcess;
  stdout(): string;
  stderr(): string;
  exited: Promise<ExitStatus>;
}

const proposers = new Set<ChildProcess>();

function startProposer(args: readonly string[]): ProposerProcess {
  const child = spawn(process.execPath, ['--import', 'tsx', MAIN_PATH, 'propose', ...args, '--log-format', 'json'], { cwd: REPO_ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
  proposers.add(child);
  const out = { stdout: '', stderr: '' };
  child.stdout?.setEncoding('utf8').on('data', (chunk: string) => (out.stdout += chunk));
  child.stderr?.setEncoding('utf8').on('data', (chunk: string) => (out.stderr += chunk));
  const exited = new Promise<ExitStatus>((resolve) => child.once('close', (code, signal) => (proposers.delete(child), resolve({ code, signal }))));
  return { child, exited, stdout: () => out.stdout, stderr: () => out.stderr };
}

async function elected(proposer: ProposerProcess): Promise<{ term: bigint; termStartLsn: Lsn }> {
  const match = await waitFor(() => {
    if (proposer.child.exitCode !== null) throw new Error(`proposer exited: ${proposer.stderr().slice(-3000)}`);
    return /elected term=(\d+) term_start_lsn=(\S+)/.exec(proposer.stdout());
  }, { timeoutMs: 30_000, what: 'the proposer to be elected' }).catch((error: unknown) => {
    throw new Error(`${error instanceof Error ? error.message : String(error)}\nproposer stderr:\n${proposer.stderr().slice(-3000)}`);
  });
  return { term: BigInt(match[1] as string), termStartLsn: parseLsn(match[2] as string) };
}

describe('safekeeper propose', { timeout: 170_000 }, () => {
  let primary: PostgresInstance;
  const safekeepers: Safekeeper[] = [];
  const safekeeperList = (): string => safekeepers.map((each) => `127.0.0.1:${each.port}`).join(',');
  const primaryUrl = (): string => `postgres://postgres@127.0.0.1:${primary.port}/postgres`;

  async function startSafekeeper(safekeeper: Safekeeper): Promise<void> {
    safekeeper.node = await spawnNode(testNodeArgs(safekeeper.dir, ['--id', String(safekeeper.id), '--listen-pg', `127.0.0.1:${safekeeper.port}`]));
  }

  async function status(safekeeper: Safekeeper, timelineId = TIMELINE): Promise<{ flushLsn: Lsn; timelineStartLsn: Lsn; term: bigint }> {
    assert(safekeeper.node !== null);
    const response = await fetch(`${safekeeper.node.httpUrl}/v1/tenant/${TENANT}/timeline/${timelineId}`);
    assert.equal(response.status, 200);
    const body = (await response.json()) as { flush_lsn: string; timeline_start_lsn: string; acceptor_state: { term: number } };
    return { flushLsn: parseLsn(body.flush_lsn), timelineStartLsn: parseLsn(body.timeline_start_lsn), term: BigInt(body.acceptor_state.term) };
  }

  const primaryFlushLsn = async (): Promise<Lsn> => parseLsn((await primary.psql('SELECT pg_current_wal_flush_lsn()')).trim());

  /** Waits until every safekeeper's flush_lsn equals the primary's flush position; returns it. */
  async function waitConverged(): Promise<Lsn> {
    return await waitFor(async () => {
      const target = await primaryFlushLsn();
      for (const safekeeper of safekeepers) if ((await status(safekeeper)).flushLsn !== target) return null;
      return target;
    }, { timeoutMs: 30_000, intervalMs: 100, what: 'all safekeepers to reach the primary flush_lsn' });
  }

  /** A segment of a safekeeper: local (complete or `.partial`), or from its remote storage once WAL removal took it. */
  async function readSegment(safekeeper: Safekeeper, dir: string, name: string): Promise<Buffer> {
    for (const path of [join(dir, name), join(dir, `${name}.partial`), join(safekeeper.dir, 'remote', TENANT, TIMELINE, name)]) {
      try {
        return await readFile(path);
      } catch (error) {
        if ((error as { code?: string }).code !== 'ENOENT') throw error;
      }
    }
    throw new Error(`safekeeper ${safekeeper.id} has no segment ${name}, locally or remotely`);
  }

  /** Every safekeeper's segments equal the primary's pg_wal over [timeline start, flushLsn). */
  async function assertWalMatchesPrimary(flushLsn: Lsn): Promise<void> {
    for (const safekeeper of safekeepers) {
      const { timelineStartLsn } = await status(safekeeper);
      const dir = join(safekeeper.dir, TENANT, TIMELINE);
      for (let segno = segmentNumber(timelineStartLsn, SEGMENT_BYTES); segno <= segmentNumber(flushLsn - 1n, SEGMENT_BYTES); segno += 1n) {
        const name = segmentFileName(segno, SEGMENT_BYTES);
        const ours = await readSegment(safekeeper, dir, name);
        const theirs = await readFile(join(primary.dataDir, 'pg_wal', name));
        const segmentStart = segmentStartLsn(segno, SEGMENT_BYTES);
        const from = Number((timelineStartLsn > segmentStart ? timelineStartLsn : segmentStart) - segmentStart);
        const to = Number((flushLsn < segmentStart + BigInt(SEGMENT_BYTES) ? flushLsn : segmentStart + BigInt(SEGMENT_BYTES)) - segmentStart);
        assert.ok(ours.subarray(from, to).equals(theirs.subarray(from, to)), `safekeeper ${safekeeper.id} segment ${name} differs from the primary in [${from}, ${to})`);
      }
    }
  }

  const pgbench = async (args: readonly string[]): Promise<string> =>
    (await execFileAsync(join(PG_BIN_DIR, 'pgbench'), ['-h', '127.0.0.1', '-p', String(primary.port), '-U', 'postgres', ...args, 'postgres'])).stdout;

  before(async () => {
    primary = await startPostgres({ extraConf: { synchronous_standby_names: APP, wal_level: 'replica', max_wal_senders: '10', wal_keep_size: '2GB', fsync: 'off' } });
    for (let id = 1; id <= 3; id += 1) {
      const safekeeper: Safekeeper = { id, dir: makeTempDir(`sk-prop-${id}-`), port: await freePort(), node: null };
      safekeepers.push(safekeeper);
      await startSafekeeper(safekeeper);
    }
  });

  after(async () => {
    for (const child of proposers) child.kill('SIGKILL');
    await killAllNodes();
    await primary?.stop();
    await removeAllTempDirs();
  });

  let proposer: ProposerProcess;

  it('commits pgbench through a quorum while a safekeeper is killed and restarted, and every WAL equals the primary', async () => {
    // A 1 MiB window: the killed safekeeper misses more than that, so it must recover from a donor.
    proposer = startProposer(['--safekeepers', safekeeperList(), '--tenant-id', TENANT, '--timeline-id', TIMELINE, '--from', primaryUrl(), '--application-name', APP, '--wal-window-bytes', '1MiB']);
    const first = await elected(proposer);
    assert.equal(first.term, 1n);
    await pgbench(['-i', '-s', '1', '-q']);
    const sync = (await primary.psql(`SELECT sync_state FROM pg_stat_replication WHERE application_name = '${APP}'`)).trim();
    assert.equal(sync, 'sync');
    const run = pgbench(['-c', '4', '-T', '5', '-N']);
    const beforeKill = await primaryFlushLsn();
    await waitFor(async () => (await primaryFlushLsn()) > beforeKill + 256n * 1024n, { timeoutMs: 20_000, what: 'pgbench to write WAL' });
    const victim = safekeepers[2] as Safekeeper;
    await victim.node?.kill9();
    const afterKill = await primaryFlushLsn();
    // More WAL than the window holds, committed synchronously with two of three safekeepers.
    await primary.psql("CREATE TABLE filler (t text); INSERT INTO filler SELECT repeat('x', 1000) FROM generate_series(1, 3000)");
    assert.ok((await primaryFlushLsn()) > afterKill + 2n * 1024n * 1024n);
    await waitFor(async () => (await primaryFlushLsn()) > afterKill + 2n * 1024n * 1024n + 64n * 1024n, { timeoutMs: 20_000, what: 'pgbench to go on with two of three safekeepers' });
    await startSafekeeper(victim);
    const output = await run;
    assert.match(output, /number of failed transactions: 0 /);
    assert.ok(Number(/number of transactions actually processed: (\d+)/.exec(output)?.[1]) > 100, output);
    const flushLsn = await waitConverged();
    await assertWalMatchesPrimary(flushLsn);
    assert.match(proposer.stderr(), /recovering safekeeper from a donor/);
  });

  it('a proposer killed with -9 and started again takes a new term with no gap and no divergence', async () => {
    const termBefore = (await status(safekeepers[0] as Safekeeper)).term;
    const flushBefore = await waitConverged();
    proposer.child.kill('SIGKILL');
    await proposer.exited;
    proposer = startProposer(['--safekeepers', safekeeperList(), '--tenant-id', TENANT, '--timeline-id', TIMELINE, '--from', primaryUrl(), '--application-name', APP]);
    const again = await elected(proposer);
    assert.equal(again.term, termBefore + 1n);
    assert.equal(again.termStartLsn, flushBefore, 'the new term starts where the quorum WAL ends');
    const output = await pgbench(['-c', '4', '-T', '2', '-N']);
    assert.match(output, /number of failed transactions: 0 /);
    const flushLsn = await waitConverged();
    assert.ok(flushLsn > flushBefore);
    await assertWalMatchesPrimary(flushLsn);
  });

  it('relays hot standby feedback of a safekeeper reader to the primary slot', async () => {
    const xid = BigInt((await primary.psql('SELECT txid_current()')).trim());
    const safekeeper = safekeepers[0] as Safekeeper;
    const reader = await PgClient.connect({ host: '127.0.0.1', port: safekeeper.port, user: 'standby', applicationName: 'test_standby', options: `-c timeline_id=${TIMELINE} tenant_id=${TENANT}` }, new AbortController().signal);
    try {
      const { timelineStartLsn } = await status(safekeeper);
      await reader.startCopyBoth(`START_REPLICATION PHYSICAL ${formatLsn(timelineStartLsn)}`, new AbortController().signal);
      reader.sendCopyData(encodeHotStandbyFeedback({ timestampUs: postgresNowUs(), xmin: xid, catalogXmin: 0n }));
      await waitFor(async () => (await primary.psql(`SELECT xmin FROM pg_replication_slots WHERE slot_name = '${APP}'`)).trim() === String(xid), { what: 'the slot xmin to follow the reader feedback' });
    } finally {
      reader.destroy();
    }
  });

  it('a protocol v2 proposer drives the same nodes', async () => {
    proposer.child.kill('SIGTERM');
    assert.deepEqual(await proposer.exited, { code: 0, signal: null });
    proposer = startProposer(['--safekeepers', safekeeperList(), '--tenant-id', TENANT, '--timeline-id', TIMELINE, '--from', primaryUrl(), '--application-name', APP, '--proto-version', '2']);
    await elected(proposer);
    const output = await pgbench(['-c', '4', '-T', '2', '-N']);
    assert.match(output, /number of failed transactions: 0 /);
    const flushLsn = await waitConverged();
    await assertWalMatchesPrimary(flushLsn);
    proposer.child.kill('SIGTERM');
    assert.deepEqual(await proposer.exited, { code: 0, signal: null });
  });

  it('synthetic load against three nodes prints its summary and writes valid WAL', async () => {
    const timelineId = '3d'.repeat(16);
    const result = await runCli(['propose', '--safekeepers', safekeeperList(), '--tenant-id', TENANT, '--timeline-id', timelineId, '--synthetic', '--total-bytes', '4MiB', '--log-format', 'json'], { timeoutMs: 60_000 });
    assert.equal(result.code, 0, result.stderr.slice(-3000));
    const summary = /synthetic summary records=(\d+) .*commit_latency_ms_p50=([\d.]+) .*commit_lsn=(\S+) end_lsn=(\S+)/.exec(result.stdout);
    assert.ok(summary !== null, result.stdout);
    assert.ok(Number(summary[1]) > 1000);
    assert.equal(summary[3], summary[4], 'everything generated was committed');
    const endLsn = parseLsn(summary[4] as string);
    await waitFor(async () => {
      for (const safekeeper of safekeepers) if ((await status(safekeeper, timelineId)).flushLsn < endLsn) return false;
      return true;
    }, { what: 'all three safekeepers to flush the synthetic WAL' });
    const copy = makeTempDir('sk-prop-waldump-');
    const source = join((safekeepers[0] as Safekeeper).dir, TENANT, timelineId);
    await copyFile(join(source, '000000010000000000000001.partial'), join(copy, '000000010000000000000001'));
    const records = await pgWaldump([join(copy, '000000010000000000000001')]);
    assert.ok(records.length > 1000, `pg_waldump read ${records.length} records`);
    assert.ok(records.every((record) => record.rmgr === 'LogicalMessage'));
    assert.equal(formatLsn(records[0]?.lsn ?? 0n), '0/1000028');
  });

  it('fails with a clear error and exit code 1 or 2', async () => {
    const deadPort = await freePort();
    const common = ['propose', '--tenant-id', TENANT, '--log-format', 'json'];
    const noQuorum = await runCli([...common, '--timeline-id', '4c'.repeat(16), '--safekeepers', `127.0.0.1:${deadPort},127.0.0.1:${deadPort},${`127.0.0.1:${(safekeepers[0] as Safekeeper).port}`}`, '--synthetic', '--quorum-timeout', '1s']);
    assert.equal(noQuorum.code, 1);
    assert.match(noQuorum.stderr, /safekeeper propose: no quorum: [01] of 3 safekeepers voted within 1000 ms, 2 needed \(127\.0\.0\.1:\d+: connection failed: connect ECONNREFUSED/);
    const unreachable = await runCli([...common, '--timeline-id', TIMELINE, '--safekeepers', safekeeperList(), '--from', `postgres://postgres@127.0.0.1:${deadPort}/postgres`]);
    assert.equal(unreachable.code, 1);
    assert.match(unreachable.stderr, /connecting to the primary at 127\.0\.0\.1:\d+: .*ECONNREFUSED/);
    const wrongSystem = await runCli([...common, '--timeline-id', TIMELINE, '--safekeepers', safekeeperList(), '--synthetic', '--duration', '1s']);
    assert.equal(wrongSystem.code, 1);
    assert.match(wrongSystem.stderr, /wrong system id/);
    const usage = await runCli([...common, '--timeline-id', TIMELINE, '--safekeepers', safekeeperList()]);
    assert.equal(usage.code, 2);
    assert.match(usage.stderr, /exactly one of --from POSTGRES_URL and --synthetic/);
    // Two proposers on one timeline: the second takes a higher term, the first learns it and stops.
    const timelineId = '5b'.repeat(16);
    const first = startProposer(['--safekeepers', safekeeperList(), '--tenant-id', TENANT, '--timeline-id', timelineId, '--synthetic', '--rate', '200', '--duration', '60s']);
    const firstTerm = (await elected(first)).term;
    const second = await runCli([...common, '--timeline-id', timelineId, '--safekeepers', safekeeperList(), '--synthetic', '--duration', '1s', '--rate', '200'], { timeoutMs: 60_000 });
    assert.equal(second.code, 0, second.stderr.slice(-3000));
    assert.match(second.stdout, new RegExp(`elected term=${firstTerm + 1n} `));
    assert.deepEqual(await first.exited, { code: 1, signal: null });
    assert.match(first.stderr(), /term conflict/);
  });
});
