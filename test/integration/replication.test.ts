/**
 * Replication out of a real `safekeeper run` process (reference §2.2, §5; neon-safekeeper-tests §9, §13 #9,
 * #10): real PostgreSQL 15 WAL goes in through the test proposer (START_WAL_PUSH), and comes out through
 * START_REPLICATION to pg_receivewal and to raw replication clients. What a user sees is checked: segment
 * files byte-identical to the primary's WAL over the streamed range, the synthesised initial segment image
 * below the timeline start, the XLogData framing rules, many readers at once, a stalled reader that slows
 * nobody else, cleanup after a disconnect, ErrorResponses for what cannot be served, term mode, the
 * feedback readers send (hot standby feedback relayed to the proposer, pageserver feedback) and the
 * pageserver termination rule. Every process, connection and temp dir is cleaned up in after().
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { before, describe, test } from 'node:test';
import { encodePageserverFeedback, emptyPageserverFeedback } from '../../src/acceptor/pageserver_feedback.js';
import { encodeHotStandbyFeedback, encodeStandbyReply, postgresNowUs } from '../../src/pg/replication_messages.js';
import { type Lsn, formatLsn, segmentFileName, segmentNumber, segmentStartLsn } from '../../src/wal/lsn.js';
import { initialSegmentImage } from '../../src/wal/segment_image.js';
import { newIds } from '../harness/background.js';
import { spawnNode, testNodeArgs, type NodeProcess } from '../harness/node_process.js';
import { PG_BIN_DIR } from '../harness/pg.js';
import { DatabaseError, PgTestClient } from '../harness/pg_client.js';
import { electAndStream } from '../harness/proposer_session.js';
import { realWal, recordEndLsn, type RealWal } from '../harness/real_wal.js';
import { tearDownAfterAll } from '../harness/teardown.js';
import { TestProposer, type TestProposerOptions } from '../harness/test_proposer.js';
import { assertSameWal } from '../harness/timeline_wal.js';
import { makeTempDir } from '../harness/tmp.js';
import { waitFor } from '../harness/wait.js';
import { walRange, type WalSource } from '../harness/wal_source.js';

const execFileAsync = promisify(execFile);
const TEST_TIMEOUT_MS = 60_000;
const XLOG_DATA_WAL_BYTES_MAX = 128 * 1024;
const XLOG_DATA_HEADER_BYTES = 25;

let wal: RealWal;
let node: NodeProcess;
let dataDir: string;
/** The timeline holding the whole fixture, committed, with no proposer connected. */
let full: { tenantId: string; timelineId: string };
const proposers = new Set<TestProposer>();
const clients = new Set<PgTestClient>();

const source = (): WalSource => ({ bytes: wal.bytes, baseLsn: wal.startLsn, endLsn: wal.endLsn });
const server = (): Pick<TestProposerOptions, 'pgVersion' | 'systemId' | 'walSegSizeBytes'> => ({ pgVersion: wal.pgVersion, systemId: wal.systemId, walSegSizeBytes: wal.segmentSizeBytes });
/** Where every test timeline starts: the first record of the fixture. */
const timelineStartLsn = (): Lsn => wal.records[0]!.lsn;

/** A proposer elected in term 1 on a new timeline starting at `startLsn`, with no WAL streamed yet (tracked). */
async function electedWithoutWal(ids: { tenantId: string; timelineId: string }, startLsn: Lsn): Promise<TestProposer> {
  const session = await electAndStream({ port: node.pgPort, ...ids, protoVersion: 3, ...server(), source: source(), timelineStartLsn: startLsn, toLsn: startLsn });
  return track(session.proposer);
}
const firstSegmentStartLsn = (): Lsn => segmentStartLsn(segmentNumber(timelineStartLsn(), wal.segmentSizeBytes), wal.segmentSizeBytes);

before(async () => {
  wal = await realWal();
  dataDir = makeTempDir('sk-repl-');
  node = await spawnNode(testNodeArgs(dataDir, ['--no-sync']));
  full = newIds();
  const session = await electAndStream({ port: node.pgPort, ...full, protoVersion: 3, ...server(), source: source(), timelineStartLsn: timelineStartLsn() });
  await session.proposer.heartbeat(wal.endLsn); // carries commit_lsn = the end
  await waitFor(async () => (await timelineStatus(full)).commit_lsn === formatLsn(wal.endLsn), { what: 'commit_lsn at the end of the fixture' });
  await session.proposer.close();
});

tearDownAfterAll(proposers, {
  beforeProposers: () => {
    for (const client of clients) client.destroy();
  },
});

function track<T extends TestProposer | PgTestClient>(item: T): T {
  if (item instanceof TestProposer) proposers.add(item);
  else clients.add(item);
  return item;
}

async function timelineStatus(ids: { tenantId: string; timelineId: string }): Promise<{ commit_lsn: string; flush_lsn: string; remote_consistent_lsn: string; walsenders: { conn_id: number; sent_lsn: string; appname: string | null; feedback: Record<string, unknown> }[] }> {
  const response = await fetch(`${node.httpUrl}/v1/tenant/${ids.tenantId}/timeline/${ids.timelineId}`);
  assert.equal(response.status, 200);
  return (await response.json()) as never;
}

/** What a reader must receive over [fromLsn, toLsn): the initial segment image below the timeline start, then the fixture. */
function expectedWal(fromLsn: Lsn, toLsn: Lsn): Uint8Array {
  const out = new Uint8Array(Number(toLsn - fromLsn));
  const startLsn = timelineStartLsn();
  if (fromLsn < startLsn) {
    const image = initialSegmentImage({ lsn: startLsn, segmentSizeBytes: wal.segmentSizeBytes, systemId: wal.systemId, pgVersion: wal.pgVersion });
    const imageStart = firstSegmentStartLsn();
    out.set(image.subarray(Number(fromLsn - imageStart), Number((toLsn < startLsn ? toLsn : startLsn) - imageStart)));
  }
  if (toLsn > startLsn) {
    const from = fromLsn > startLsn ? fromLsn : startLsn;
    out.set(walRange(source(), from, toLsn), Number(from - fromLsn));
  }
  return out;
}

async function replicationClient(ids: { tenantId: string; timelineId: string }, applicationName = 'replication-test'): Promise<PgTestClient> {
  return track(await PgTestClient.connect({ port: node.pgPort, options: `-c tenant_id=${ids.tenantId} timeline_id=${ids.timelineId}`, applicationName, waitMs: 20_000 }));
}

interface Received {
  bytes: Uint8Array;
  keepalives: number;
  lastWalEndLsn: Lsn;
}

/** Reads XLogData from `fromLsn` to `toLsn`, checking the framing rules of §5.2 on every message. */
async function receiveWal(client: PgTestClient, fromLsn: Lsn, toLsn: Lsn): Promise<Received> {
  const out = new Uint8Array(Number(toLsn - fromLsn));
  const segmentBytes = BigInt(wal.segmentSizeBytes);
  let lsn = fromLsn;
  let keepalives = 0;
  let lastWalEndLsn = 0n;
  while (lsn < toLsn) {
    const message = await client.nextCopyData();
    if (message[0] === 0x6b) {
      assert.equal(message.length, 18, 'keepalive length');
      keepalives += 1;
      continue;
    }
    assert.equal(message[0], 0x77, `XLogData or keepalive, got 0x${message[0]?.toString(16)}`);
    const walStartLsn = message.readBigUInt64BE(1);
    const walEndLsn = message.readBigUInt64BE(9);
    const data = message.subarray(XLOG_DATA_HEADER_BYTES);
    assert.equal(walStartLsn, lsn, 'XLogData is contiguous');
    assert.ok(data.length > 0 && data.length <= XLOG_DATA_WAL_BYTES_MAX, `XLogData carries 1..128 KiB (${data.length})`);
    const endLsn = lsn + BigInt(data.length);
    assert.equal((endLsn - 1n) / segmentBytes, lsn / segmentBytes, 'XLogData never crosses a segment boundary');
    assert.ok(walEndLsn >= endLsn, 'wal_end is at or past the data');
    // Stopping before the end, a chunk ends at a page boundary, a segment end, or where real WAL starts.
    if (endLsn < walEndLsn && endLsn % segmentBytes !== 0n && endLsn !== timelineStartLsn()) {
      assert.equal(endLsn % 8192n, 0n, `a chunk that stops before the end (${formatLsn(endLsn)} < ${formatLsn(walEndLsn)}) stops at a page boundary`);
    }
    lastWalEndLsn = walEndLsn;
    const take = endLsn > toLsn ? Number(toLsn - lsn) : data.length;
    out.set(data.subarray(0, take), Number(lsn - fromLsn));
    lsn = endLsn;
  }
  return { bytes: out, keepalives, lastWalEndLsn };
}

async function expectStreamError(client: PgTestClient): Promise<DatabaseError> {
  for (;;) {
    try {
      await client.nextCopyData();
    } catch (error) {
      assert.ok(error instanceof DatabaseError, `a DatabaseError, got ${String(error)}`);
      return error;
    }
  }
}

describe('pg_receivewal', { timeout: TEST_TIMEOUT_MS }, () => {
  test('follows a live timeline and writes segment files byte-identical to the primary WAL over the streamed range', async () => {
    const ids = newIds();
    const startLsn = timelineStartLsn();
    const proposer = await electedWithoutWal(ids, startLsn); // IDENTIFY_SYSTEM reports commit_lsn = the timeline start

    const dir = makeTempDir('sk-receivewal-');
    // --endpos stops once the received position is past it; -n: fail instead of reconnecting.
    const conninfo = `host=127.0.0.1 port=${node.pgPort} options='-c tenant_id=${ids.tenantId} timeline_id=${ids.timelineId}'`;
    const receiving = execFileAsync(join(PG_BIN_DIR, 'pg_receivewal'), ['-D', dir, '--no-sync', '-n', '-v', '--endpos', formatLsn(wal.endLsn - 1n), '-d', conninfo], { timeout: 40_000 });
    await waitFor(async () => (await timelineStatus(ids)).walsenders.length === 1, { what: 'pg_receivewal connected' });

    await proposer.streamWal(walRange(source(), startLsn), startLsn);
    await proposer.waitForFlush(wal.endLsn);
    await proposer.heartbeat(wal.endLsn); // commit the end
    const { stderr } = await receiving;
    assert.match(stderr, /starting log streaming at 0\/1000000 \(timeline 1\)/);
    assert.match(stderr, /stopped log streaming at/);

    const names = (await readdir(dir)).sort();
    const firstSegno = segmentNumber(startLsn, wal.segmentSizeBytes);
    const lastSegno = segmentNumber(wal.endLsn, wal.segmentSizeBytes);
    const expectedNames: string[] = [];
    for (let segno = firstSegno; segno <= lastSegno; segno += 1n) expectedNames.push(segmentFileName(segno, wal.segmentSizeBytes) + (segno === lastSegno ? '.partial' : ''));
    assert.deepEqual(names, expectedNames);
    const received = new Uint8Array(Number(segmentStartLsn(lastSegno + 1n, wal.segmentSizeBytes) - firstSegmentStartLsn()));
    for (const [index, name] of names.entries()) received.set(await readFile(join(dir, name)), index * wal.segmentSizeBytes);
    const streamed = received.subarray(Number(startLsn - firstSegmentStartLsn()), Number(wal.endLsn - firstSegmentStartLsn()));
    assertSameWal(streamed, walRange(source(), startLsn), startLsn, 'pg_receivewal output over the streamed range');
    assertSameWal(received.subarray(0, Number(startLsn - firstSegmentStartLsn())), expectedWal(firstSegmentStartLsn(), startLsn), firstSegmentStartLsn(), 'initial segment image below the timeline start');
    await proposer.close();
  });
});

describe('replication clients', { timeout: TEST_TIMEOUT_MS }, () => {
  test('eight readers at once, in every START_REPLICATION form, receive identical bytes from files and ring', async () => {
    const segmentStart = firstSegmentStartLsn();
    const midRecordLsn = wal.records[Math.floor(wal.records.length / 2)]!.lsn + 3n; // not 8-aligned on purpose
    const secondSegmentLsn = segmentStart + BigInt(wal.segmentSizeBytes);
    const forms: [string, Lsn][] = [
      [`START_REPLICATION ${formatLsn(segmentStart)}`, segmentStart],
      [`START_REPLICATION PHYSICAL ${formatLsn(segmentStart)}`, segmentStart],
      [`START_REPLICATION SLOT standby_1 PHYSICAL ${formatLsn(segmentStart)} TIMELINE 1`, segmentStart],
      [`START_REPLICATION SLOT "Quoted Slot" ${formatLsn(segmentStart)} TIMELINE 1`, segmentStart],
      [`START_REPLICATION PHYSICAL ${formatLsn(timelineStartLsn())};`, timelineStartLsn()],
      [`START_REPLICATION PHYSICAL ${formatLsn(midRecordLsn)}`, midRecordLsn],
      [`start_replication physical ${formatLsn(secondSegmentLsn).toLowerCase()} timeline 1`, secondSegmentLsn],
      [`START_REPLICATION PHYSICAL ${formatLsn(wal.endLsn - 100_000n)} TIMELINE 1`, wal.endLsn - 100_000n],
    ];
    const results = await Promise.all(
      forms.map(async ([command, fromLsn]) => {
        const client = await replicationClient(full);
        await client.startCopyBoth(command);
        const received = await receiveWal(client, fromLsn, wal.endLsn);
        client.destroy();
        return { command, fromLsn, received };
      }),
    );
    for (const { command, fromLsn, received } of results) {
      assertSameWal(received.bytes, expectedWal(fromLsn, wal.endLsn), fromLsn, command);
      assert.equal(received.lastWalEndLsn, wal.endLsn, `${command}: wal_end is commit_lsn`);
    }
    await waitFor(async () => (await timelineStatus(full)).walsenders.length === 0, { what: 'every reader unregistered' });
  });

  test('a stalled reader slows neither ingest nor the other readers, and is cleaned up when it goes away', async () => {
    const ids = newIds();
    const startLsn = timelineStartLsn();
    const proposer = await electedWithoutWal(ids, startLsn);

    const stalled = await replicationClient(ids, 'stalled');
    await stalled.startCopyBoth(`START_REPLICATION PHYSICAL ${formatLsn(firstSegmentStartLsn())}`);
    stalled.socket.pause(); // never reads again: its socket buffers fill up
    const readers = await Promise.all([replicationClient(ids, 'live-1'), replicationClient(ids, 'live-2')]);
    for (const reader of readers) await reader.startCopyBoth(`START_REPLICATION PHYSICAL ${formatLsn(firstSegmentStartLsn())}`);
    const receiving = readers.map((reader) => receiveWal(reader, firstSegmentStartLsn(), wal.endLsn));

    // Ingest completes while the stalled reader's socket stays full (a stall that blocked it would hang here).
    await proposer.streamWal(walRange(source(), startLsn), startLsn);
    await proposer.waitForFlush(wal.endLsn);
    await proposer.heartbeat(wal.endLsn);
    for (const received of await Promise.all(receiving)) assertSameWal(received.bytes, expectedWal(firstSegmentStartLsn(), wal.endLsn), firstSegmentStartLsn(), 'live reader');

    const status = await timelineStatus(ids);
    const stalledSender = status.walsenders.find((sender) => sender.appname === 'stalled');
    assert.ok(stalledSender !== undefined, 'the stalled reader is still connected');
    assert.notEqual(stalledSender.sent_lsn, formatLsn(wal.endLsn), 'the stalled reader is behind: its socket is full');

    stalled.destroy();
    for (const reader of readers) reader.destroy();
    await waitFor(async () => (await timelineStatus(ids)).walsenders.length === 0, { what: 'readers unregistered after disconnecting' });
    await proposer.close();
  });

  test('a reader that disconnects mid-stream is unregistered; the next reader is served', async () => {
    const client = await replicationClient(full, 'leaver');
    await client.startCopyBoth(`START_REPLICATION PHYSICAL ${formatLsn(firstSegmentStartLsn())}`);
    for (let i = 0; i < 3; i += 1) await client.nextCopyData();
    assert.equal((await timelineStatus(full)).walsenders.length, 1);
    client.destroy();
    await waitFor(async () => (await timelineStatus(full)).walsenders.length === 0, { what: 'the reader unregistered' });
    const next = await replicationClient(full);
    const fromLsn = wal.endLsn - 200_000n;
    await next.startCopyBoth(`START_REPLICATION PHYSICAL ${formatLsn(fromLsn)}`);
    assertSameWal((await receiveWal(next, fromLsn, wal.endLsn)).bytes, expectedWal(fromLsn, wal.endLsn), fromLsn, 'next reader');
    next.destroy();
  });
});

describe('WAL removed locally', { timeout: TEST_TIMEOUT_MS }, () => {
  test('after WAL removal (backed up to remote storage), a reader gets the removed segments from remote storage', async () => {
    const ids = newIds();
    const session = await electAndStream({ port: node.pgPort, ...ids, protoVersion: 3, ...server(), source: source(), timelineStartLsn: timelineStartLsn() });
    await session.proposer.heartbeat(wal.endLsn);
    await waitFor(async () => (await timelineStatus(ids)).commit_lsn === formatLsn(wal.endLsn), { what: 'commit_lsn at the end' });
    await session.proposer.close();
    const firstSegment = join(dataDir, ids.tenantId, ids.timelineId, segmentFileName(segmentNumber(timelineStartLsn(), wal.segmentSizeBytes), wal.segmentSizeBytes));
    await waitFor(async () => {
      const response = await fetch(`${node.httpUrl}/v1/tenant/${ids.tenantId}/timeline/${ids.timelineId}/checkpoint`, { method: 'POST' });
      assert.equal(response.status, 200);
      return !(await readdir(join(dataDir, ids.tenantId, ids.timelineId))).some((name) => join(dataDir, ids.tenantId, ids.timelineId, name).startsWith(firstSegment));
    }, { timeoutMs: 30_000, intervalMs: 200, what: 'the first segment to be backed up and removed locally' });

    const remoteBytes = async (): Promise<number> => Number(/^safekeeper_wal_sent_bytes_total\{source="remote"\} (\S+)$/m.exec(await (await fetch(`${node.httpUrl}/metrics`)).text())?.[1] ?? 0);
    const remoteBefore = await remoteBytes();
    const client = await replicationClient(ids);
    await client.startCopyBoth(`START_REPLICATION PHYSICAL ${formatLsn(firstSegmentStartLsn())}`);
    const received = await receiveWal(client, firstSegmentStartLsn(), wal.endLsn);
    assertSameWal(received.bytes, expectedWal(firstSegmentStartLsn(), wal.endLsn), firstSegmentStartLsn(), 'reader over removed WAL');
    assert.ok((await remoteBytes()) - remoteBefore >= wal.segmentSizeBytes - 40, 'at least the removed first segment came from remote storage');
    client.destroy();
  });
});

describe('errors', { timeout: TEST_TIMEOUT_MS }, () => {
  test('a start below the timeline WAL gets ErrorResponse after CopyBothResponse, and the stream ends', async () => {
    const client = await replicationClient(full);
    await client.startCopyBoth('START_REPLICATION PHYSICAL 0/0');
    const error = await expectStreamError(client);
    assert.equal(error.code, '58P01');
    assert.match(error.message, /requested WAL at 0\/0 is below the timeline's WAL: it starts at 0\/1000028/);
    await client.closed;
  });

  test('an unknown timeline or PostgreSQL timeline is refused before CopyBothResponse, and the connection stays usable', async () => {
    const client = await replicationClient(newIds());
    await assert.rejects(client.startCopyBoth('START_REPLICATION PHYSICAL 0/1000000'), (error: unknown) => error instanceof DatabaseError && /not found/.test(error.message));
    assert.equal((await client.next()).name, 'readyForQuery');
    const known = await replicationClient(full);
    await assert.rejects(known.startCopyBoth('START_REPLICATION 0/1000000 TIMELINE 2'), (error: unknown) => error instanceof DatabaseError && /timeline 2 is not in this server's history/.test(error.message));
    assert.equal((await known.next()).name, 'readyForQuery');
    await assert.rejects(known.simpleQuery('TIMELINE_HISTORY 1'), (error: unknown) => error instanceof DatabaseError && error.code === '58P01' && error.message === 'could not open file "pg_wal/00000001.history": No such file or directory');
    const identify = await known.simpleQuery('IDENTIFY_SYSTEM');
    assert.deepEqual(identify.rows[0], [wal.systemId.toString(), '1', formatLsn(wal.endLsn), null]);
    const mode = await known.simpleQuery('SHOW data_directory_mode');
    assert.deepEqual(mode.rows, [['0700']]);
    await client.terminate();
    await known.terminate();
  });

  test('a malformed standby status update ends the stream with a protocol violation', async () => {
    const client = await replicationClient(full);
    await client.startCopyBoth(`START_REPLICATION PHYSICAL ${formatLsn(wal.endLsn)}`);
    client.sendCopyData(Buffer.from([0x72, 1, 2, 3]));
    const error = await expectStreamError(client);
    assert.equal(error.code, '08P01');
    assert.match(error.message, /StandbyStatusUpdate/);
  });
});

describe('term mode, feedback and the end of streaming', { timeout: TEST_TIMEOUT_MS }, () => {
  test('with a term, uncommitted WAL up to flush_lsn is streamed; without, only committed WAL; a new term ends the stream', async () => {
    const ids = newIds();
    const middle = wal.records[Math.floor(wal.records.length / 3)]!;
    const flushLsn = recordEndLsn(middle.lsn, middle.totalLengthBytes, wal.segmentSizeBytes);
    const session = await electAndStream({ port: node.pgPort, ...ids, protoVersion: 3, ...server(), source: source(), timelineStartLsn: timelineStartLsn(), toLsn: flushLsn, commit: 'none' });
    track(session.proposer);
    const status = await timelineStatus(ids);
    assert.equal(status.flush_lsn, formatLsn(flushLsn));
    assert.equal(status.commit_lsn, formatLsn(timelineStartLsn()), 'nothing is committed past the start');

    const termReader = await replicationClient(ids, 'wal_proposer_recovery');
    await termReader.startCopyBoth(`START_REPLICATION PHYSICAL ${formatLsn(timelineStartLsn())} (term='1')`);
    const received = await receiveWal(termReader, timelineStartLsn(), flushLsn);
    assertSameWal(received.bytes, expectedWal(timelineStartLsn(), flushLsn), timelineStartLsn(), 'term-mode reader');
    assert.equal(received.lastWalEndLsn, flushLsn, 'wal_end is flush_lsn in term mode');

    const commitReader = await replicationClient(ids);
    await commitReader.startCopyBoth(`START_REPLICATION PHYSICAL ${formatLsn(timelineStartLsn())}`);
    const keepalive = await commitReader.nextCopyData();
    assert.equal(keepalive[0], 0x6b, 'only a keepalive: nothing committed to send');
    assert.equal(keepalive.readBigUInt64BE(1), timelineStartLsn(), 'keepalive wal_end is commit_lsn');
    assert.equal(keepalive[17], 1, 'keepalive asks for a reply');

    const wrongTerm = await replicationClient(ids);
    await wrongTerm.startCopyBoth(`START_REPLICATION PHYSICAL ${formatLsn(timelineStartLsn())} (term='2')`);
    assert.match((await expectStreamError(wrongTerm)).message, /failed to acquire term 2, current term 1/);

    // A new proposer is elected in term 2: the term-1 reader is stopped.
    await session.proposer.close();
    const next = await electAndStream({ port: node.pgPort, ...ids, protoVersion: 3, ...server(), source: source(), timelineStartLsn: timelineStartLsn(), toLsn: flushLsn, commit: 'none' });
    track(next.proposer);
    assert.equal(next.term, 2n);
    assert.match((await expectStreamError(termReader)).message, /failed to acquire term 1, current term 2|term changed: requested 1, now 2/);
    commitReader.destroy();
    await next.proposer.close();
  });

  test('hot standby feedback is aggregated and relayed in AppendResponses; standby replies and pageserver feedback are recorded', async () => {
    const ids = newIds();
    const session = await electAndStream({ port: node.pgPort, ...ids, protoVersion: 3, ...server(), source: source(), timelineStartLsn: timelineStartLsn(), toLsn: wal.records[100]!.lsn });
    const proposer = track(session.proposer);
    const endLsn = session.endLsn;
    const standbys = await Promise.all([replicationClient(ids, 'standby-a'), replicationClient(ids, 'standby-b'), replicationClient(ids, 'standby-c')]);
    for (const standby of standbys) await standby.startCopyBoth(`START_REPLICATION PHYSICAL ${formatLsn(timelineStartLsn())}`);
    const nowUs = postgresNowUs();
    standbys[0]!.sendCopyData(encodeHotStandbyFeedback({ timestampUs: nowUs, xmin: (1n << 32n) | 900n, catalogXmin: 0n }));
    standbys[1]!.sendCopyData(encodeHotStandbyFeedback({ timestampUs: nowUs + 5n, xmin: (1n << 32n) | 800n, catalogXmin: 700n }));
    standbys[2]!.sendCopyData(encodeHotStandbyFeedback({ timestampUs: nowUs + 9n, xmin: 0n, catalogXmin: 0n })); // contributes nothing
    standbys[2]!.sendCopyData(encodeStandbyReply({ writeLsn: endLsn, flushLsn: endLsn - 8n, applyLsn: 0n, replyTimeUs: nowUs, replyRequested: false }));
    const aggregate = await waitFor(async () => {
      await proposer.heartbeat(endLsn);
      const reply = await proposer.nextAppendResponse();
      return reply.hsFeedback.xmin !== 0n ? reply.hsFeedback : null;
    }, { what: 'hot standby feedback in an AppendResponse' });
    assert.deepEqual(aggregate, { xmin: (1n << 32n) | 800n, catalogXmin: 700n, timestampUs: nowUs + 5n });

    const status = await timelineStatus(ids);
    const c = status.walsenders.find((sender) => sender.appname === 'standby-c');
    assert.deepEqual((c?.feedback['Standby'] as { reply: { flush_lsn: string } }).reply.flush_lsn, formatLsn(endLsn - 8n));

    // A pageserver's `z` raises remote_consistent_lsn (u64 length first, which Neon skips).
    const pageserver = await replicationClient(ids, 'pageserver-1');
    await pageserver.startCopyBoth(`START_REPLICATION PHYSICAL ${formatLsn(endLsn)}`);
    const feedback = encodePageserverFeedback({ ...emptyPageserverFeedback(), lastReceivedLsn: endLsn, diskConsistentLsn: endLsn, remoteConsistentLsn: endLsn - 16n, replyTimeUs: nowUs });
    const payload = Buffer.alloc(1 + 8 + feedback.length);
    payload[0] = 0x7a;
    payload.writeBigUInt64BE(BigInt(feedback.length), 1);
    payload.set(feedback, 9);
    pageserver.sendCopyData(payload);
    await waitFor(async () => (await timelineStatus(ids)).remote_consistent_lsn === formatLsn(endLsn - 16n), { what: 'remote_consistent_lsn from pageserver feedback' });

    for (const standby of standbys) standby.destroy();
    pageserver.destroy();
    await proposer.close();
  });

  test('a caught-up pageserver is sent away with 00000 "ending streaming" when no compute is connected', async () => {
    const pageserver = await replicationClient(full, 'pageserver-7');
    await pageserver.startCopyBoth(`START_REPLICATION PHYSICAL ${formatLsn(wal.endLsn)}`);
    const feedback = encodePageserverFeedback({ ...emptyPageserverFeedback(), lastReceivedLsn: wal.endLsn, diskConsistentLsn: wal.endLsn, remoteConsistentLsn: wal.endLsn });
    const payload = Buffer.concat([Buffer.from([0x7a]), Buffer.alloc(8), feedback]);
    pageserver.sendCopyData(payload);
    const error = await expectStreamError(pageserver);
    assert.equal(error.code, '00000');
    assert.equal(error.message, `ending streaming to Some("pageserver-7") at ${formatLsn(wal.endLsn)}, receiver is caughtup and there is no computes`);

    // A standby (it sent `r`) is never sent away.
    const standby = await replicationClient(full, 'standby');
    await standby.startCopyBoth(`START_REPLICATION PHYSICAL ${formatLsn(wal.endLsn)}`);
    standby.sendCopyData(encodeStandbyReply({ writeLsn: wal.endLsn, flushLsn: wal.endLsn, applyLsn: wal.endLsn, replyTimeUs: postgresNowUs(), replyRequested: true }));
    for (let keepalives = 0; keepalives < 3; ) if ((await standby.nextCopyData())[0] === 0x6b) keepalives += 1;
    standby.sendCopyDone();
    const afterDone: string[] = [];
    for (;;) {
      const message = await standby.next();
      afterDone.push(message.name);
      if (message.name === 'readyForQuery') break;
    }
    assert.deepEqual(afterDone.filter((name) => name !== 'copyData'), ['copyDone', 'commandComplete', 'readyForQuery']);
    await standby.closed;
  });
});
