/**
 * `safekeeper propose --from` against a primary connection that goes silent, at a clean stop, and pointed at
 * a standby, with real processes (`harness/proposer_cluster.ts`: a PostgreSQL 15 primary whose
 * synchronous_standby_names names the proposer, three safekeepers). The tests share the cluster and run in
 * order:
 * - the proposer reaches the primary through a proxy that can freeze connections (`harness/freezable_proxy.ts`).
 *   An idle connection is kept alive by reply requests at half of `--primary-timeout`; a frozen one (nothing
 *   forwarded, nothing closed) is dropped at the timeout and reconnected, and a commit waiting meanwhile
 *   completes, so the quorum flush reaches the primary over the new connection;
 * - SIGTERM under pgbench load: right after the exit every safekeeper's commit_lsn equals its flush_lsn and
 *   the proposer's final commit_lsn (without the stop's drain the last commit_lsn was still waiting for its
 *   broadcast, and WAL in flight ended past it);
 * - `--from` a hot standby: streaming works (cascading) and a warning says synchronous commit needs the primary.
 */
import assert from 'node:assert/strict';
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { appendFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { after, before, describe, it } from 'node:test';
import { slotNameFrom } from '../../src/proposer/primary_connection.js';
import { formatLsn, parseLsn } from '../../src/wal/lsn.js';
import { FreezableProxy } from '../harness/freezable_proxy.js';
import { freePort, PG_BIN_DIR, runAsPostgres } from '../harness/pg.js';
import { elected, linesWith, ProposerCluster, startProposer, type ProposerProcess } from '../harness/proposer_cluster.js';
import { makeTempDir } from '../harness/tmp.js';
import { waitFor, within } from '../harness/wait.js';

const execFileAsync = promisify(execFile);
const APP = 'sk_test_silence';
const TENANT = '8c'.repeat(16);
const TIMELINE = '9d'.repeat(16);
/** Generous: two cores shared with other test runs. */
const WAIT_MS = 60_000;
const PING_MSG = 'nothing from the primary for half of --primary-timeout; requesting a reply';
const TIMEOUT_MSG = 'nothing from the primary within --primary-timeout; dropping the connection';
const STOPPED_MSG = 'stopping: every connected safekeeper has the final commit_lsn';
const STANDBY_MSG = 'the --from server is a standby (in recovery): its WAL streams to the safekeepers, but synchronous commit through the proposer only works against the primary';

const standbys = new Set<ChildProcess>();

describe('safekeeper propose: a silent primary, a clean stop, a standby as --from', { timeout: 300_000 }, () => {
  let cluster: ProposerCluster;
  let proxy: FreezableProxy;
  let proposer: ProposerProcess;

  const proposerArgs = (from: string, extra: readonly string[]): string[] => [
    '--safekeepers', cluster.safekeeperList(), '--tenant-id', TENANT, '--timeline-id', TIMELINE, '--from', from, '--application-name', APP, ...extra,
  ];
  const running = (): void => {
    if (proposer.child.exitCode !== null) throw new Error(`proposer exited: ${proposer.stderr().slice(-3000)}`);
  };
  const syncInsert = (rows: number): Promise<string> =>
    within(cluster.primary.psql(`INSERT INTO silence_probe SELECT g, repeat('y', 200) FROM generate_series(1, ${rows}) g`), WAIT_MS, 'a synchronous commit');

  before(async () => {
    cluster = await ProposerCluster.start({ applicationName: APP, tenantId: TENANT, timelineId: TIMELINE });
    proxy = await FreezableProxy.start(cluster.primary.port);
  });

  after(async () => {
    for (const child of standbys) child.kill('SIGKILL');
    await proxy?.close();
    await ProposerCluster.closeAll(cluster);
  });

  it('keeps an idle primary connection with reply requests, drops a frozen one after --primary-timeout, and commits after reconnecting', async () => {
    proposer = startProposer(proposerArgs(`postgres://postgres@127.0.0.1:${proxy.port}/postgres`, ['--primary-timeout', '2s', '--log-level', 'debug']));
    await elected(proposer);
    await within(cluster.primary.psql('CREATE TABLE silence_probe (id int, filler text)'), WAIT_MS, 'a synchronous commit'); // commits wait for the proposer
    await syncInsert(100);
    // An idle primary sends nothing of its own (our status updates satisfy its wal_sender_timeout): only the
    // keepalives that answer our reply requests keep a 2 s limit from dropping a healthy connection.
    await waitFor(() => (running(), linesWith(proposer, PING_MSG).length >= 3), { timeoutMs: WAIT_MS, what: 'three reply requests on the idle connection' });
    assert.equal(linesWith(proposer, TIMEOUT_MSG).length, 0, 'a connection whose primary answers is kept');
    assert.equal(proxy.freezeExisting(), 1, 'the replication connection (the first-record probe is closed)');
    const waiting = syncInsert(100); // needs the proposer's flush report, which the frozen connection cannot carry
    const timedOut = await waitFor(() => (running(), linesWith(proposer, TIMEOUT_MSG)[0]), { timeoutMs: WAIT_MS, what: 'the --primary-timeout to fire' });
    assert.equal(timedOut.level, 'warn');
    assert.ok((timedOut['silent_ms'] as number) >= 2000, `silent for ${String(timedOut['silent_ms'])} ms`);
    assert.equal(timedOut['primary_timeout_ms'], 2000);
    await waitFor(() => (running(), linesWith(proposer, 'reconnected to the primary').length === 1), { timeoutMs: WAIT_MS, what: 'the reconnect' });
    const lost = linesWith(proposer, 'lost the replication connection to the primary; reconnecting');
    assert.equal(lost.length, 1);
    assert.match(lost[0]?.['err'] as string, /nothing received from the primary for \d+ ms \(--primary-timeout 2000 ms\)/);
    await waiting;
    assert.equal(proxy.liveConnections, 1, 'streaming again, through a new connection');
    await syncInsert(100);
    const flushLsn = await cluster.waitConverged();
    await cluster.assertWalMatchesPrimary(flushLsn);
  });

  it('on SIGTERM under load, leaves every safekeeper with commit_lsn at the final quorum flush', async () => {
    await cluster.pgbench(['-i', '-s', '1', '-q']);
    // Long enough that a loaded machine (a few hundred synchronous commits in all) still has WAL in flight at
    // the SIGTERM: 3 s with a 512 KiB mark timed out once under a full test run plus other work.
    const load = cluster.pgbench(['-c', '4', '-T', '10', '-N']);
    const startLsn = await cluster.primaryFlushLsn();
    await waitFor(async () => (await cluster.primaryFlushLsn()) > startLsn + 64n * 1024n, { timeoutMs: WAIT_MS, what: 'pgbench to write WAL' });
    proposer.child.kill('SIGTERM');
    assert.deepEqual(await proposer.exited, { code: 0, signal: null });
    // Right after the exit: nothing can move a safekeeper's commit_lsn any more.
    const statuses = await Promise.all(cluster.safekeepers.map((safekeeper) => cluster.status(safekeeper)));
    for (const [index, status] of statuses.entries()) {
      assert.equal(formatLsn(status.commitLsn), formatLsn(status.flushLsn), `safekeeper ${index + 1}: commit_lsn at its flush_lsn`);
    }
    const stopped = linesWith(proposer, STOPPED_MSG);
    assert.equal(stopped.length, 1, proposer.stderr().slice(-3000));
    const finalCommitLsn = parseLsn(stopped[0]?.['commit_lsn'] as string);
    for (const status of statuses) assert.equal(formatLsn(status.commitLsn), formatLsn(finalCommitLsn), 'every safekeeper has the final commit_lsn');
    // The primary was told the final commit_lsn too (a physical slot's restart_lsn is the flush position its
    // standby reported), so its commits up to there were released by this stop, not by the next proposer.
    const slotRestartLsn = (await cluster.primary.psql(`SELECT restart_lsn FROM pg_replication_slots WHERE slot_name = '${slotNameFrom(APP)}'`)).trim();
    assert.equal(slotRestartLsn, formatLsn(finalCommitLsn), 'the primary has the final commit_lsn as our flush position');
    assert.ok(finalCommitLsn > startLsn);
    // The commits pgbench still waits on complete once a new proposer reports the quorum flush.
    proposer = startProposer(proposerArgs(cluster.primaryUrl(), []));
    await elected(proposer);
    assert.match(await within(load, WAIT_MS, 'pgbench'), /number of failed transactions: 0 /);
    const flushLsn = await cluster.waitConverged();
    await cluster.assertWalMatchesPrimary(flushLsn);
    proposer.child.kill('SIGTERM');
    assert.deepEqual(await proposer.exited, { code: 0, signal: null });
  });

  it('streams from a hot standby given as --from, warning that synchronous commit needs the primary', async () => {
    const standby = await startStandby(cluster.primary.port);
    try {
      const timelineId = 'ae'.repeat(16);
      proposer = startProposer(['--safekeepers', cluster.safekeeperList(), '--tenant-id', TENANT, '--timeline-id', timelineId, '--from', `postgres://postgres@127.0.0.1:${standby.port}/postgres`, '--application-name', 'sk_test_cascade']);
      await elected(proposer);
      const warned = linesWith(proposer, STANDBY_MSG);
      assert.equal(warned.length, 1);
      assert.equal(warned[0]?.level, 'warn');
      assert.equal(warned[0]?.['primary'], `127.0.0.1:${standby.port}`);
      assert.equal(linesWith(proposer, 'connected to the primary')[0]?.['in_recovery'], true);
      // Cascading works: WAL written on the primary (no synchronous standby is connected now) reaches the safekeepers through the standby.
      await cluster.primary.psql("SET synchronous_commit = local; INSERT INTO silence_probe VALUES (0, 'through the standby')");
      const targetLsn = await cluster.primaryFlushLsn();
      await waitFor(async () => {
        running();
        for (const safekeeper of cluster.safekeepers) if ((await cluster.status(safekeeper, timelineId)).flushLsn < targetLsn) return false;
        return true;
      }, { timeoutMs: WAIT_MS, what: 'the standby WAL to reach the safekeepers' });
      proposer.child.kill('SIGTERM');
      assert.deepEqual(await proposer.exited, { code: 0, signal: null });
    } finally {
      standby.process.kill('SIGINT'); // fast shutdown
      await waitFor(() => standby.process.exitCode !== null || standby.process.signalCode !== null, { timeoutMs: WAIT_MS, what: 'the standby to stop' });
    }
  });

  it('exits 1 naming the step when the primary stops answering during the first connection\'s setup', async () => {
    const setupProxy = await FreezableProxy.start(cluster.primary.port);
    try {
      setupProxy.freezeAtFirstQuery(); // startup and authentication pass; IDENTIFY_SYSTEM gets no answer
      const stuck = startProposer(['--safekeepers', cluster.safekeeperList(), '--tenant-id', TENANT, '--timeline-id', 'be'.repeat(16), '--from', `postgres://postgres@127.0.0.1:${setupProxy.port}/postgres`, '--application-name', 'sk_test_setup_silence', '--primary-timeout', '2s']);
      assert.deepEqual(await within(stuck.exited, WAIT_MS, 'the proposer to give up on the silent setup'), { code: 1, signal: null });
      assert.match(stuck.stderr(), /the primary did not answer within --primary-timeout \(2000 ms\) while connecting and setting up replication/);
    } finally {
      await setupProxy.close();
    }
  });
});

/** pg_basebackup of the primary, started as a hot standby streaming from it. */
async function startStandby(primaryPort: number): Promise<{ port: number; process: ChildProcess }> {
  const dir = makeTempDir('sk-silence-standby-');
  await execFileAsync('chown', ['postgres:postgres', dir]);
  const dataDir = join(dir, 'data');
  await runAsPostgres('pg_basebackup', ['-D', dataDir, '-h', '127.0.0.1', '-p', String(primaryPort), '-U', 'postgres', '-X', 'stream', '-c', 'fast', '--no-sync']);
  await appendFile(join(dataDir, 'postgresql.conf'), `\nprimary_conninfo = 'host=127.0.0.1 port=${primaryPort} user=postgres application_name=sk_test_standby'\nhot_standby = on\nfsync = off\nsynchronous_standby_names = ''\n`);
  await writeFile(join(dataDir, 'standby.signal'), '');
  await execFileAsync('chown', ['-R', 'postgres:postgres', dataDir]);
  const port = await freePort();
  const child = spawn('setpriv', ['--reuid=postgres', '--regid=postgres', '--init-groups', join(PG_BIN_DIR, 'postgres'), '-D', dataDir, '-p', String(port), '-k', dir, '-c', 'listen_addresses=127.0.0.1', '-c', 'dynamic_shared_memory_type=mmap'], { stdio: ['ignore', 'pipe', 'pipe'] });
  standbys.add(child);
  child.once('exit', () => standbys.delete(child));
  let log = '';
  child.stdout?.setEncoding('utf8').on('data', (chunk: string) => (log = (log + chunk).slice(-65536)));
  child.stderr?.setEncoding('utf8').on('data', (chunk: string) => (log = (log + chunk).slice(-65536)));
  await waitFor(async () => {
    if (child.exitCode !== null) throw new Error(`standby exited:\n${log.slice(-4000)}`);
    const { stdout } = await execFileAsync(join(PG_BIN_DIR, 'psql'), ['-h', '127.0.0.1', '-p', String(port), '-U', 'postgres', '-At', '-c', 'SELECT pg_is_in_recovery()', 'postgres']).catch(() => ({ stdout: '' }));
    return stdout.trim() === 't';
  }, { timeoutMs: WAIT_MS, intervalMs: 100, what: 'the standby accepting read-only connections' });
  return { port, process: child };
}
