/**
 * `safekeeper propose --from` losing its primary mid-stream, with real processes: a PostgreSQL 15 primary
 * whose synchronous_standby_names names the proposer, the proposer (with `--http-listen`), and three
 * safekeepers (`harness/proposer_cluster.ts`). The tests share the cluster and run in order: a terminated
 * walsender, a fast restart of the primary, the metrics after both, a dropped slot, SIGTERM during the
 * reconnect backoff, a primary that comes back as another cluster, the reconnect timeout, and a primary
 * that lost the WAL to resume at. A synchronous commit that completes after a reconnect proves the quorum
 * flush is reported to the primary again; after each reconnect every safekeeper's WAL must equal the
 * primary's pg_wal byte for byte.
 */
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { formatLsn, parseLsn, segmentFileName, segmentNumber } from '../../src/wal/lsn.js';
import { freePort, startPostgres } from '../harness/pg.js';
import { elected, linesWith, ProposerCluster, startProposer, type LogLine, type ProposerProcess } from '../harness/proposer_cluster.js';
import { waitFor, within } from '../harness/wait.js';

const APP = 'sk_test_reconnect';
const TENANT = '6a'.repeat(16);
const TIMELINE = '7b'.repeat(16);
/** Generous: two cores shared with other test runs. */
const RECONNECT_WAIT_MS = 60_000;
const SEGMENT_BYTES = 16 * 1024 * 1024;

/** The value of one series in Prometheus text (`name{labels} value`), or null. */
function metricValue(text: string, series: string): number | null {
  for (const line of text.split('\n')) if (line.startsWith(`${series} `)) return Number(line.slice(series.length + 1));
  return null;
}

describe('safekeeper propose: reconnecting to the primary', { timeout: 400_000 }, () => {
  let cluster: ProposerCluster;
  let proposer: ProposerProcess;
  let metricsUrl: string;
  let electedTerm: bigint;

  const proposerArgs = (extra: readonly string[]): string[] => [
    '--safekeepers', cluster.safekeeperList(), '--tenant-id', TENANT, '--timeline-id', TIMELINE, '--from', cluster.primaryUrl(), '--application-name', APP, ...extra,
  ];
  const syncState = async (): Promise<string> => (await cluster.primary.psql(`SELECT sync_state FROM pg_stat_replication WHERE application_name = '${APP}'`)).trim();
  const reconnects = (): number => linesWith(proposer, 'reconnected to the primary').length;
  const waitReconnects = (count: number): Promise<true> => waitFor(() => {
    if (proposer.child.exitCode !== null) throw new Error(`proposer exited: ${proposer.stderr().slice(-3000)}`);
    return reconnects() >= count;
  }, { timeoutMs: RECONNECT_WAIT_MS, what: `reconnect number ${count} to the primary` });
  /** A synchronous commit through the proposer; fails the test if it never returns. */
  const syncInsert = (rows: number): Promise<string> =>
    within(cluster.primary.psql(`INSERT INTO reconnect_probe SELECT g, repeat('y', 200) FROM generate_series(1, ${rows}) g`), RECONNECT_WAIT_MS, 'a synchronous commit');

  before(async () => {
    cluster = await ProposerCluster.start({ applicationName: APP, tenantId: TENANT, timelineId: TIMELINE });
    proposer = startProposer(proposerArgs(['--http-listen', '127.0.0.1:0', '--primary-reconnect-timeout', '2m']));
    electedTerm = (await elected(proposer)).term;
    const listening = await waitFor(() => /listening http=(\S+)\n/.exec(proposer.stdout()), { timeoutMs: 30_000, what: 'the metrics listener' });
    metricsUrl = `http://${listening[1] as string}/metrics`;
    await cluster.primary.psql('CREATE TABLE reconnect_probe (id int, filler text)');
  });

  after(async () => {
    await ProposerCluster.closeAll(cluster);
  });

  it('reconnects after its walsender is terminated, and a commit waiting meanwhile completes', async () => {
    await cluster.pgbench(['-i', '-s', '1', '-q']);
    assert.equal(await syncState(), 'sync');
    const oldPid = (await cluster.primary.psql(`SELECT pid FROM pg_stat_replication WHERE application_name = '${APP}'`)).trim();
    await cluster.primary.psql(`SELECT pg_terminate_backend(${oldPid})`);
    const waiting = syncInsert(1000); // needs the proposer's flush report, so it waits for the reconnect
    await waitReconnects(1);
    await waiting;
    const lost = linesWith(proposer, 'lost the replication connection to the primary; reconnecting');
    assert.equal(lost.length, 1);
    assert.equal(lost[0]?.level, 'warn');
    await waitFor(async () => (await cluster.primary.psql(`SELECT pid, sync_state FROM pg_stat_replication WHERE application_name = '${APP}'`)).trim().endsWith('|sync'), { what: 'the proposer to be the sync standby again' });
    const output = await within(cluster.pgbench(['-c', '4', '-T', '2', '-N']), RECONNECT_WAIT_MS, 'pgbench');
    assert.match(output, /number of failed transactions: 0 /);
    const flushLsn = await cluster.waitConverged();
    await cluster.assertWalMatchesPrimary(flushLsn);
  });

  it('reconnects after a fast restart of the primary, resumes where the quorum WAL ends, and keeps its term', async () => {
    await within(cluster.pgbench(['-c', '2', '-T', '2', '-N']), RECONNECT_WAIT_MS, 'pgbench');
    const flushBefore = await cluster.waitConverged();
    await cluster.primary.restart(); // pg_ctl restart -m fast: the shutdown checkpoint reaches the quorum first
    await waitReconnects(2);
    const reconnected = linesWith(proposer, 'reconnected to the primary')[1] as LogLine;
    const resumeLsn = parseLsn(reconnected['resume_lsn'] as string);
    const shutdownFlushLsn = await waitFor(async () => {
      const statuses = await Promise.all(cluster.safekeepers.map((safekeeper) => cluster.status(safekeeper)));
      return statuses.every((status) => status.flushLsn === statuses[0]?.flushLsn) ? statuses[0]?.flushLsn : null;
    }, { what: 'the safekeepers to agree on a flush_lsn' });
    assert.ok(resumeLsn > flushBefore, `resumed at ${formatLsn(resumeLsn)}, after the shutdown checkpoint (WAL was ${formatLsn(flushBefore)})`);
    assert.equal(resumeLsn, shutdownFlushLsn, 'resumes where the quorum WAL ends');
    assert.ok(resumeLsn <= (await cluster.primaryFlushLsn()));
    await syncInsert(100);
    const output = await within(cluster.pgbench(['-c', '4', '-T', '2', '-N']), RECONNECT_WAIT_MS, 'pgbench');
    assert.match(output, /number of failed transactions: 0 /);
    const flushLsn = await cluster.waitConverged();
    await cluster.assertWalMatchesPrimary(flushLsn);
    assert.equal(proposer.stdout().match(/elected term=/g)?.length, 1, 'elected once');
    for (const safekeeper of cluster.safekeepers) assert.equal((await cluster.status(safekeeper)).term, electedTerm);
  });

  it('serves /metrics that follow the run', async () => {
    const scrape = async (): Promise<string> => {
      const response = await fetch(metricsUrl);
      assert.equal(response.status, 200);
      assert.match(response.headers.get('content-type') ?? '', /^text\/plain/);
      return await response.text();
    };
    const first = await scrape();
    const commitBefore = metricValue(first, 'safekeeper_proposer_commit_lsn');
    assert.ok(commitBefore !== null && commitBefore > 0, 'commit_lsn is reported');
    assert.equal(metricValue(first, 'safekeeper_proposer_term'), Number(electedTerm));
    assert.equal(metricValue(first, 'safekeeper_proposer_primary_reconnects_total'), 2);
    assert.equal(metricValue(first, 'safekeeper_proposer_primary_connected'), 1);
    assert.ok((metricValue(first, 'safekeeper_proposer_primary_received_lsn') ?? 0) >= commitBefore);
    assert.equal(first.match(/^safekeeper_proposer_safekeeper_flush_lsn\{/gm)?.length, 3, 'one flush_lsn series per safekeeper');
    for (const safekeeper of cluster.safekeepers) {
      const label = `{safekeeper="127.0.0.1:${safekeeper.port}"}`;
      assert.ok((metricValue(first, `safekeeper_proposer_safekeeper_flush_lsn${label}`) ?? 0) > 0, label);
      assert.equal(metricValue(first, `safekeeper_proposer_safekeeper_connected${label}`), 1, label);
      assert.equal(metricValue(first, `safekeeper_proposer_safekeeper_reconnects_total${label}`), 0, label);
      assert.ok((metricValue(first, `safekeeper_proposer_safekeeper_sent_wal_bytes_total${label}`) ?? 0) > 1_000_000, label);
      assert.ok((metricValue(first, `safekeeper_proposer_append_ack_seconds_count${label}`) ?? 0) > 0, label);
    }
    await syncInsert(1000);
    const commitAfter = await waitFor(async () => {
      const value = metricValue(await scrape(), 'safekeeper_proposer_commit_lsn') ?? 0;
      return value > commitBefore ? value : null;
    }, { what: 'commit_lsn to move' });
    assert.ok(commitAfter > commitBefore);
    assert.equal((await fetch(metricsUrl.replace('/metrics', '/nope'))).status, 404);
  });

  it('creates a dropped slot again and goes on streaming', async () => {
    const port = cluster.primary.port;
    await cluster.primary.shutdown();
    await cluster.primary.start({ port: await freePort() }); // out of the proposer's reach while we drop its slot
    await cluster.primary.psql(`SELECT pg_drop_replication_slot('${APP}')`);
    await cluster.primary.shutdown();
    await cluster.primary.start({ port });
    await waitReconnects(3);
    assert.equal(linesWith(proposer, 'the replication slot was gone from the primary (dropped?); created it again').length, 1);
    await syncInsert(100);
    assert.equal((await cluster.primary.psql(`SELECT slot_type, active FROM pg_replication_slots WHERE slot_name = '${APP}'`)).trim(), 'physical|t');
    const flushLsn = await cluster.waitConverged();
    await cluster.assertWalMatchesPrimary(flushLsn);
  });

  it('stops at once and cleanly on SIGTERM during the reconnect backoff', async () => {
    const failedBefore = linesWith(proposer, 'reconnecting to the primary failed').length;
    await cluster.primary.shutdown();
    // Wait for a long backoff (≥ 4 s), so a prompt exit shows the sleep was cut short.
    const failed = await waitFor(() => linesWith(proposer, 'reconnecting to the primary failed').slice(failedBefore).find((line) => (line['next_delay_ms'] as number) >= 4000), {
      timeoutMs: RECONNECT_WAIT_MS, what: 'a reconnect attempt followed by a backoff of 4 s or more',
    });
    assert.equal(failed.level, 'warn');
    assert.ok((failed['attempt'] as number) >= 6);
    const stoppingMs = performance.now();
    proposer.child.kill('SIGTERM');
    assert.deepEqual(await proposer.exited, { code: 0, signal: null });
    const stopMs = performance.now() - stoppingMs;
    assert.ok(stopMs < 3000, `stopped after ${Math.round(stopMs)} ms, within the ${failed['next_delay_ms'] as number} ms backoff`);
  });

  it('refuses a primary that comes back as another cluster', async () => {
    await cluster.primary.start();
    proposer = startProposer(proposerArgs([]));
    await elected(proposer);
    await syncInsert(10);
    const flushLsn = await cluster.waitConverged();
    const port = cluster.primary.port;
    await cluster.primary.shutdown();
    const flushLsns = async (): Promise<bigint[]> => Promise.all(cluster.safekeepers.map(async (safekeeper) => (await cluster.status(safekeeper)).flushLsn));
    // Every safekeeper gets the shutdown checkpoint, the primary's last WAL, before the stranger appears.
    const shutdownLsn = await waitFor(async () => {
      const lsns = await flushLsns();
      return lsns.every((lsn) => lsn === lsns[0] && lsn > flushLsn) ? lsns[0] : null;
    }, { timeoutMs: RECONNECT_WAIT_MS, what: 'the safekeepers to flush the shutdown checkpoint' });
    const stranger = await startPostgres({ port });
    try {
      const exit = await within(proposer.exited, RECONNECT_WAIT_MS, 'the proposer to exit');
      assert.deepEqual(exit, { code: 1, signal: null });
      assert.match(proposer.stderr(), /safekeeper propose: the primary at 127\.0\.0\.1:\d+ came back as another cluster \(system id \d+, this timeline's is \d+\); refusing to stream its WAL/);
      assert.deepEqual(await flushLsns(), [shutdownLsn, shutdownLsn, shutdownLsn], 'no WAL of the other cluster');
      await cluster.assertWalMatchesPrimary(shutdownLsn);
    } finally {
      await stranger.stop();
    }
  });

  it('gives up after --primary-reconnect-timeout with a clear error and exit code 1', async () => {
    await cluster.primary.start();
    proposer = startProposer(proposerArgs(['--primary-reconnect-timeout', '2s']));
    await elected(proposer);
    await syncInsert(10);
    const lostMs = performance.now();
    await cluster.primary.shutdown();
    const exit = await within(proposer.exited, RECONNECT_WAIT_MS, 'the proposer to give up');
    assert.deepEqual(exit, { code: 1, signal: null });
    assert.ok(performance.now() - lostMs >= 2000);
    assert.match(proposer.stderr(), /safekeeper propose: lost the primary at 127\.0\.0\.1:\d+ and could not reconnect within 2000 ms \(--primary-reconnect-timeout; \d+ attempts\): /);
    const failures = linesWith(proposer, 'reconnecting to the primary failed');
    assert.ok(failures.length >= 2);
    assert.deepEqual(failures.map((line) => line['attempt']), failures.map((_line, index) => index + 1), 'attempts are numbered');
  });

  it('stops with a clear error when the primary no longer has the WAL to resume at', async () => {
    await cluster.primary.start();
    proposer = startProposer(proposerArgs([]));
    await elected(proposer);
    await syncInsert(10);
    const port = cluster.primary.port;
    await cluster.primary.shutdown();
    // Out of the proposer's reach: drop its slot and let checkpoints remove the WAL it would resume at.
    await cluster.primary.start({ port: await freePort(), extraConf: { wal_keep_size: '0', synchronous_standby_names: '' } });
    await cluster.primary.psql(`SELECT pg_drop_replication_slot('${APP}')`);
    for (let round = 0; round < 3; round += 1) {
      await cluster.primary.psql("INSERT INTO reconnect_probe VALUES (0, 'x')");
      await cluster.primary.psql('SELECT pg_switch_wal()');
      await cluster.primary.psql('CHECKPOINT');
    }
    // The walsender waited for our flush report before it shut down, so the highest flush_lsn is where we resume.
    let resumeLsn = 0n;
    for (const safekeeper of cluster.safekeepers) {
      const { flushLsn } = await cluster.status(safekeeper);
      if (flushLsn > resumeLsn) resumeLsn = flushLsn;
    }
    const resumeSegment = segmentFileName(segmentNumber(resumeLsn, SEGMENT_BYTES), SEGMENT_BYTES);
    assert.equal(existsSync(join(cluster.primary.dataDir, 'pg_wal', resumeSegment)), false, `${resumeSegment} was removed`);
    await cluster.primary.shutdown();
    await cluster.primary.start({ port });
    const exit = await within(proposer.exited, RECONNECT_WAIT_MS, 'the proposer to exit');
    assert.deepEqual(exit, { code: 1, signal: null });
    assert.match(proposer.stderr(), /safekeeper propose: the primary no longer has the WAL at [0-9A-F]+\/[0-9A-F]+ that the safekeepers need next \(.*has already been removed.*\); was the replication slot sk_test_reconnect dropped\?/);
    assert.equal(linesWith(proposer, 'the replication slot was gone from the primary (dropped?); created it again').length, 1);
  });
});
