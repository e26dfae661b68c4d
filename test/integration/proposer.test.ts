/**
 * `safekeeper propose` end to end, with real processes: a PostgreSQL 15 primary whose
 * synchronous_standby_names names the proposer, the proposer as a CLI process, and three safekeeper nodes
 * (fsync on) on fixed ephemeral ports so a killed node can come back at the same address.
 * The cluster (`harness/proposer_cluster.ts`) is shared, and the tests run in order: pgbench through the
 * quorum with one safekeeper killed and restarted mid-run; a proposer killed and restarted (new term, no
 * gap); a protocol v2 proposer; synthetic load; and the ways the proposer fails. Losing the primary is
 * `proposer_reconnect.test.ts`. After each phase every safekeeper's WAL must equal the primary's
 * pg_wal byte for byte from the timeline start to the common flush_lsn.
 */
import assert from 'node:assert/strict';
import { copyFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { PgClient } from '../../src/pg/client.js';
import { encodeHotStandbyFeedback, postgresNowUs } from '../../src/pg/replication_messages.js';
import { formatLsn, parseLsn } from '../../src/wal/lsn.js';
import { runCli } from '../harness/node_process.js';
import { freePort, pgWaldump } from '../harness/pg.js';
import { elected, ProposerCluster, startProposer, type ProposerProcess, type Safekeeper } from '../harness/proposer_cluster.js';
import { makeTempDir } from '../harness/tmp.js';
import { waitFor } from '../harness/wait.js';

const APP = 'sk_test_proposer';
const TENANT = '1f'.repeat(16);
const TIMELINE = '2e'.repeat(16);

describe('safekeeper propose', { timeout: 170_000 }, () => {
  let cluster: ProposerCluster;
  const safekeepers = (): Safekeeper[] => cluster.safekeepers;
  const safekeeperList = (): string => cluster.safekeeperList();
  const primaryUrl = (): string => cluster.primaryUrl();
  const status = (safekeeper: Safekeeper, timelineId = TIMELINE): ReturnType<ProposerCluster['status']> => cluster.status(safekeeper, timelineId);
  const primaryFlushLsn = (): Promise<bigint> => cluster.primaryFlushLsn();
  const waitConverged = (): Promise<bigint> => cluster.waitConverged();
  const assertWalMatchesPrimary = (flushLsn: bigint): Promise<void> => cluster.assertWalMatchesPrimary(flushLsn);
  const pgbench = (args: readonly string[]): Promise<string> => cluster.pgbench(args);

  before(async () => {
    cluster = await ProposerCluster.start({ applicationName: APP, tenantId: TENANT, timelineId: TIMELINE });
  });

  after(async () => {
    await ProposerCluster.closeAll(cluster);
  });

  let proposer: ProposerProcess;

  it('commits pgbench through a quorum while a safekeeper is killed and restarted, and every WAL equals the primary', async () => {
    // A 1 MiB window: the killed safekeeper misses more than that, so it must recover from a donor.
    proposer = startProposer(['--safekeepers', safekeeperList(), '--tenant-id', TENANT, '--timeline-id', TIMELINE, '--from', primaryUrl(), '--application-name', APP, '--wal-window-bytes', '1MiB']);
    const first = await elected(proposer);
    assert.equal(first.term, 1n);
    await pgbench(['-i', '-s', '1', '-q']);
    const sync = (await cluster.primary.psql(`SELECT sync_state FROM pg_stat_replication WHERE application_name = '${APP}'`)).trim();
    assert.equal(sync, 'sync');
    const run = pgbench(['-c', '4', '-T', '5', '-N']);
    const beforeKill = await primaryFlushLsn();
    await waitFor(async () => (await primaryFlushLsn()) > beforeKill + 256n * 1024n, { timeoutMs: 20_000, what: 'pgbench to write WAL' });
    const victim = safekeepers()[2] as Safekeeper;
    await victim.node?.kill9();
    const afterKill = await primaryFlushLsn();
    // More WAL than the window holds, committed synchronously with two of three safekeepers.
    await cluster.primary.psql("CREATE TABLE filler (t text); INSERT INTO filler SELECT repeat('x', 1000) FROM generate_series(1, 3000)");
    assert.ok((await primaryFlushLsn()) > afterKill + 2n * 1024n * 1024n);
    await waitFor(async () => (await primaryFlushLsn()) > afterKill + 2n * 1024n * 1024n + 64n * 1024n, { timeoutMs: 20_000, what: 'pgbench to go on with two of three safekeepers' });
    await cluster.startSafekeeper(victim);
    const output = await run;
    assert.match(output, /number of failed transactions: 0 /);
    assert.ok(Number(/number of transactions actually processed: (\d+)/.exec(output)?.[1]) > 100, output);
    const flushLsn = await waitConverged();
    await assertWalMatchesPrimary(flushLsn);
    assert.match(proposer.stderr(), /recovering safekeeper from a donor/);
  });

  it('a proposer killed with -9 and started again takes a new term with no gap and no divergence', async () => {
    const termBefore = (await status(safekeepers()[0] as Safekeeper)).term;
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
    const xid = BigInt((await cluster.primary.psql('SELECT txid_current()')).trim());
    const safekeeper = safekeepers()[0] as Safekeeper;
    const reader = await PgClient.connect({ host: '127.0.0.1', port: safekeeper.port, user: 'standby', applicationName: 'test_standby', options: `-c timeline_id=${TIMELINE} tenant_id=${TENANT}` }, new AbortController().signal);
    try {
      const { timelineStartLsn } = await status(safekeeper);
      await reader.startCopyBoth(`START_REPLICATION PHYSICAL ${formatLsn(timelineStartLsn)}`, new AbortController().signal);
      reader.sendCopyData(encodeHotStandbyFeedback({ timestampUs: postgresNowUs(), xmin: xid, catalogXmin: 0n }));
      await waitFor(async () => (await cluster.primary.psql(`SELECT xmin FROM pg_replication_slots WHERE slot_name = '${APP}'`)).trim() === String(xid), { what: 'the slot xmin to follow the reader feedback' });
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
      for (const safekeeper of safekeepers()) if ((await status(safekeeper, timelineId)).flushLsn < endLsn) return false;
      return true;
    }, { what: 'all three safekeepers to flush the synthetic WAL' });
    const copy = makeTempDir('sk-prop-waldump-');
    const source = join((safekeepers()[0] as Safekeeper).dir, TENANT, timelineId);
    await copyFile(join(source, '000000010000000000000001.partial'), join(copy, '000000010000000000000001'));
    const records = await pgWaldump([join(copy, '000000010000000000000001')]);
    assert.ok(records.length > 1000, `pg_waldump read ${records.length} records`);
    assert.ok(records.every((record) => record.rmgr === 'LogicalMessage'));
    assert.equal(formatLsn(records[0]?.lsn ?? 0n), '0/1000028');
  });

  it('fails with a clear error and exit code 1 or 2', async () => {
    const deadPort = await freePort();
    const common = ['propose', '--tenant-id', TENANT, '--log-format', 'json'];
    const live = `127.0.0.1:${(safekeepers()[0] as Safekeeper).port}`;
    // Two dead addresses (127.0.0.2 is loopback too): the same one twice is refused as a duplicate, below.
    const noQuorum = await runCli([...common, '--timeline-id', '4c'.repeat(16), '--safekeepers', `127.0.0.1:${deadPort},127.0.0.2:${deadPort},${live}`, '--synthetic', '--quorum-timeout', '1s']);
    assert.equal(noQuorum.code, 1);
    assert.match(noQuorum.stderr, /safekeeper propose: no quorum: [01] of 3 safekeepers voted within 1000 ms, 2 needed \(127\.0\.0\.[12]:\d+: connection failed: connect ECONNREFUSED/);
    const duplicate = await runCli([...common, '--timeline-id', '4c'.repeat(16), '--safekeepers', `${live},127.0.0.1:${deadPort},${live}`, '--synthetic']);
    assert.equal(duplicate.code, 2);
    assert.match(duplicate.stderr, /listed twice|duplicate/i);
    const unreachable = await runCli([...common, '--timeline-id', TIMELINE, '--safekeepers', safekeeperList(), '--from', `postgres://postgres@127.0.0.1:${deadPort}/postgres`]);
    assert.equal(unreachable.code, 1);
    assert.match(unreachable.stderr, /connecting to the primary at 127\.0\.0\.1:\d+: .*ECONNREFUSED/);
    const wrongSystem = await runCli([...common, '--timeline-id', TIMELINE, '--safekeepers', safekeeperList(), '--synthetic', '--duration', '1s']);
    assert.equal(wrongSystem.code, 1);
    assert.match(wrongSystem.stderr, /wrong system id/);
    const usage = await runCli([...common, '--timeline-id', TIMELINE, '--safekeepers', safekeeperList()]);
    assert.equal(usage.code, 2);
    assert.match(usage.stderr, /exactly one of --from POSTGRES_URL and --synthetic/);
    for (const from of ['not a url', 'mysql://root@127.0.0.1/db']) {
      const badUrl = await runCli([...common, '--timeline-id', TIMELINE, '--safekeepers', safekeeperList(), '--from', from]);
      assert.equal(badUrl.code, 2, `--from ${from}: a bad flag\n${badUrl.stderr}`);
      assert.match(badUrl.stderr, /--from: not a PostgreSQL URL/);
    }
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
