/**
 * WalReceiver (ingest/wal_receiver.ts) against a real registry, real timeline files and a real writer pool;
 * only the pg connection is a stand-in, so that it can close at an exact point of the greeting.
 */
import assert from 'node:assert/strict';
import { after, describe, test } from 'node:test';
import { setImmediate as nextTurn } from 'node:timers/promises';
import { decodeAcceptorMessage, encodeProposerMessage } from '../../src/acceptor/messages_codec.js';
import { parseTenantId, parseTimelineId } from '../../src/acceptor/state.js';
import { serveWalPush } from '../../src/ingest/wal_receiver.js';
import { walReceiversJson } from '../../src/ingest/wal_receiver_set.js';
import { createWriterPool } from '../../src/ingest/writer_pool.js';
import type { CopyBothSink, PgConnection } from '../../src/pg/connection.js';
import { CancelToken } from '../../src/sync/cancel.js';
import { TimelineRegistry } from '../../src/timeline/registry.js';
import { messageWal } from '../harness/message_wal.js';
import { makeTempDir } from '../harness/tmp.js';

const TENANT = parseTenantId('a'.repeat(32));
const TIMELINE = parseTimelineId('b'.repeat(32));
const SEGMENT_BYTES = 16 << 20;
const log = { info: () => undefined, warn: () => undefined, error: () => undefined, debug: () => undefined };
const pool = createWriterPool(1);
after(() => pool.close());

/** What WalReceiver uses of a PgConnection; `close()` calls the sink's onClose, as the real one does. */
class StandInConnection {
  readonly id = 1;
  sink: CopyBothSink | null = null;
  readonly sent: Uint8Array[] = [];
  /** False: the client is not reading (the socket is over its high-water mark) until `drain()`. */
  writable = true;
  #drainWaiters: { resolve: () => void; reject: (error: Error) => void }[] = [];
  #closed = false;
  drained(_signal: AbortSignal): Promise<void> {
    if (this.#closed) return Promise.reject(new Error('connection closed'));
    return this.writable ? Promise.resolve() : new Promise((resolve, reject) => this.#drainWaiters.push({ resolve, reject }));
  }
  drain(): void {
    this.writable = true;
    for (const waiter of this.#drainWaiters.splice(0)) waiter.resolve();
  }
  startCopyBoth(sink: CopyBothSink): void {
    this.sink = sink;
  }
  pauseReading(): void {}
  resumeReading(): void {}
  pauseReadingUntilDrained(): void {}
  sendCopyData(payload: Uint8Array): boolean {
    if (!this.#closed) this.sent.push(payload);
    return !this.#closed;
  }
  sendCopyDone(): boolean {
    return !this.#closed;
  }
  endWithError(error: unknown): void {
    this.#close(error);
  }
  close(): void {
    this.#close(undefined);
  }
  #close(error: unknown): void {
    if (this.#closed) return;
    this.#closed = true;
    for (const waiter of this.#drainWaiters.splice(0)) waiter.reject(new Error('connection closed'));
    this.sink?.onClose(error);
  }
}

const greeting = (systemId: bigint): Uint8Array =>
  encodeProposerMessage({ tag: 'greeting', tenantId: TENANT, timelineId: TIMELINE, mconf: { generation: 0, members: [], newMembers: null }, pgVersion: 150000, systemId, walSegSizeBytes: SEGMENT_BYTES }, 3);

/** Waits until the receiver has sent `count` replies: it takes one message at a time. */
async function repliesSent(conn: StandInConnection, count: number): Promise<void> {
  while (conn.sent.length < count) await nextTurn();
}

async function openRegistry(): Promise<TimelineRegistry> {
  return TimelineRegistry.load({ dataDir: await makeTempDir('wal-receiver'), nodeId: 1n, noSync: false, ringSizeBytes: 1 << 20, ringReleaseDelayMs: 0, pool, cancel: new CancelToken(), log });
}

function push(registry: TimelineRegistry, conn: StandInConnection): Promise<void> {
  return serveWalPush(conn as unknown as PgConnection, { protoVersion: 3, allowTimelineCreation: true }, { tenantId: TENANT, timelineId: TIMELINE }, { registry, log });
}

describe('WalReceiver: a proposer that leaves during its greeting', () => {
  test('while the greeting creates the timeline: the gate is not held, so a delete completes', async () => {
    const registry = await openRegistry();
    const conn = new StandInConnection();
    const serving = push(registry, conn);
    conn.sink!.onCopyData(greeting(7n));
    await nextTurn(); // the create is writing its files
    conn.close();
    await serving;
    const timeline = registry.get(TENANT, TIMELINE) ?? (await registry.create({ tenantId: TENANT, timelineId: TIMELINE, server: { pgVersion: 150000, systemId: 7n, walSegSizeBytes: SEGMENT_BYTES }, startLsn: 0n, commitLsn: 0n }));
    assert.deepEqual(timeline.gate.holderNames, [], 'nothing holds the timeline after the connection closed');
    assert.equal(timeline.state.get('proposerCount'), 0n);
    await registry.delete(TENANT, TIMELINE, { onlyLocal: true }); // waited for the gate forever
  });

  test('while the greeting persists a new system id: the proposer is not counted', async () => {
    for (const turns of [0, 1, 2, 3, 5]) {
      const registry = await openRegistry();
      const timeline = await registry.create({ tenantId: TENANT, timelineId: TIMELINE, server: { pgVersion: 150000, systemId: 0n, walSegSizeBytes: SEGMENT_BYTES }, startLsn: 0n, commitLsn: 0n });
      const conn = new StandInConnection();
      const serving = push(registry, conn);
      conn.sink!.onCopyData(greeting(42n)); // a system id where there was none: the greeting persists it
      for (let turn = 0; turn < turns; turn += 1) await nextTurn();
      conn.close();
      await serving;
      await timeline.acceptorLock.run(new AbortController().signal, async () => undefined); // the greeting is done
      assert.equal(timeline.state.get('proposerCount'), 0n, `closed after ${turns} turns: not counted as connected`);
      assert.deepEqual(walReceiversJson(timeline), [], `closed after ${turns} turns: not listed`);
      assert.deepEqual(timeline.gate.holderNames, []);
      await registry.delete(TENANT, TIMELINE, { onlyLocal: true });
    }
  });
});

describe('WalReceiver: a proposer that leaves during its election', () => {
  test('the election is applied whole, and the timeline stays held (gate, proposer count) until it has finished', async () => {
    const startLsn = BigInt(SEGMENT_BYTES) + 40n; // after the first page's long header: a record boundary
    let closedDuringElection = 0;
    for (let turns = 0; turns < 12; turns += 1) {
      const registry = await openRegistry();
      const timeline = await registry.create({ tenantId: TENANT, timelineId: TIMELINE, server: { pgVersion: 150000, systemId: 7n, walSegSizeBytes: SEGMENT_BYTES }, startLsn: 0n, commitLsn: 0n });
      const conn = new StandInConnection();
      let served = false;
      const serving = push(registry, conn).then(() => void (served = true));
      conn.sink!.onCopyData(greeting(7n));
      await repliesSent(conn, 1);
      conn.sink!.onCopyData(encodeProposerMessage({ tag: 'vote', generation: 0, term: 1n }, 3));
      await repliesSent(conn, 2);
      conn.sink!.onCopyData(encodeProposerMessage({ tag: 'elected', generation: 0, term: 1n, startStreamingAtLsn: startLsn, termHistory: [{ term: 1n, lsn: startLsn }] }, 3));
      for (let turn = 0; turn < turns; turn += 1) await nextTurn();
      if (timeline.acceptorLock.locked) closedDuringElection += 1;
      conn.close();
      while (!served) {
        if (timeline.acceptorLock.locked) {
          assert.equal(timeline.gate.holderNames.length, 1, `closed after ${turns} turns: the election still runs, so the receiver still holds the gate`);
          assert.equal(timeline.state.get('proposerCount'), 1n);
          assert.deepEqual(walReceiversJson(timeline), [{ conn_id: 1, status: 'Streaming' }], 'still listed while its election runs');
        }
        await nextTurn();
      }
      await serving;
      assert.equal(timeline.acceptorLock.locked, false, 'the stream ends after its election');
      // Whole or not at all: never the WAL moved to the start under a state that still says "no WAL yet".
      const history = timeline.acceptor!.state.acceptorState.termHistory;
      assert.deepEqual(history, timeline.wal!.writeLsn === 0n ? [] : [{ term: 1n, lsn: startLsn }], `closed after ${turns} turns: the election is applied whole or not at all`);
      assert.ok(timeline.wal!.writeLsn === 0n || timeline.wal!.writeLsn === startLsn);
      assert.deepEqual(timeline.gate.holderNames, []);
      assert.equal(timeline.state.get('proposerCount'), 0n);
      assert.deepEqual(walReceiversJson(timeline), []);
      await registry.delete(TENANT, TIMELINE, { onlyLocal: true });
    }
    assert.ok(closedDuringElection > 0, 'some trial closed the connection while the election ran');
  });
});

describe('WalReceiver: a proposer on a timeline that is deleted', () => {
  test('the delete ends the stream, and its walreceivers entry and proposer count go before the delete completes', async () => {
    const startLsn = BigInt(SEGMENT_BYTES) + 40n;
    const registry = await openRegistry();
    const conn = new StandInConnection();
    const serving = push(registry, conn);
    conn.sink!.onCopyData(greeting(7n));
    await repliesSent(conn, 1);
    const timeline = registry.get(TENANT, TIMELINE)!;
    assert.deepEqual(walReceiversJson(timeline), [{ conn_id: 1, status: 'Voting' }]);
    conn.sink!.onCopyData(encodeProposerMessage({ tag: 'vote', generation: 0, term: 1n }, 3));
    await repliesSent(conn, 2);
    conn.sink!.onCopyData(encodeProposerMessage({ tag: 'elected', generation: 0, term: 1n, startStreamingAtLsn: startLsn, termHistory: [{ term: 1n, lsn: startLsn }] }, 3));
    assert.deepEqual(walReceiversJson(timeline), [{ conn_id: 1, status: 'Streaming' }]);
    assert.equal(timeline.state.get('proposerCount'), 1n);
    await registry.delete(TENANT, TIMELINE, { onlyLocal: true }); // waits for the receiver to leave the gate
    assert.deepEqual(walReceiversJson(timeline), []);
    assert.equal(timeline.state.get('proposerCount'), 0n);
    await serving;
  });
});

describe('WalReceiver: a proposer that does not read its replies', () => {
  test('gets one AppendResponse, the latest, once its socket drains, however often flush_lsn moved meanwhile', async () => {
    const startLsn = BigInt(SEGMENT_BYTES); // a segment start: the WAL brings its long page header
    const wal = messageWal({ startLsn, segmentSizeBytes: SEGMENT_BYTES, pgVersion: 150000, count: 60, payloadBytes: 200 });
    const registry = await openRegistry();
    const conn = new StandInConnection();
    const serving = push(registry, conn);
    conn.sink!.onCopyData(greeting(7n));
    await repliesSent(conn, 1);
    conn.sink!.onCopyData(encodeProposerMessage({ tag: 'vote', generation: 0, term: 1n }, 3));
    await repliesSent(conn, 2);
    conn.sink!.onCopyData(encodeProposerMessage({ tag: 'elected', generation: 0, term: 1n, startStreamingAtLsn: startLsn, termHistory: [{ term: 1n, lsn: startLsn }] }, 3));
    const timeline = registry.get(TENANT, TIMELINE)!;
    const appendUpTo = async (fromLsn: bigint, toLsn: bigint): Promise<void> => {
      const bytes = wal.bytes.subarray(Number(fromLsn - startLsn), Number(toLsn - startLsn));
      conn.sink!.onCopyData(encodeProposerMessage({ tag: 'append', generation: 0, term: 1n, beginLsn: fromLsn, endLsn: toLsn, commitLsn: 0n, truncateLsn: 0n, wal: bytes }, 3));
      while (timeline.wal!.flushLsn < toLsn) await nextTurn();
    };
    const chunkEnds = wal.ends.filter((_, index) => index % 6 === 5); // ten appends of six records
    await appendUpTo(startLsn, chunkEnds[0]!);
    await repliesSent(conn, 3);
    conn.writable = false; // the proposer stops reading
    for (let index = 1; index < chunkEnds.length; index += 1) await appendUpTo(chunkEnds[index - 1]!, chunkEnds[index]!);
    for (let turn = 0; turn < 20; turn += 1) await nextTurn();
    assert.equal(conn.sent.length, 3, 'no reply is sent while the socket is over its high-water mark');
    conn.drain();
    await repliesSent(conn, 4);
    for (let turn = 0; turn < 20; turn += 1) await nextTurn();
    assert.equal(conn.sent.length, 4, 'one reply after the drain, not one per flush advance');
    const reply = decodeAcceptorMessage(conn.sent[3]!, 3);
    assert.ok(reply.tag === 'append' && reply.flushLsn === chunkEnds.at(-1), 'the reply carries the latest flush_lsn');
    conn.close();
    await serving;
    await registry.delete(TENANT, TIMELINE, { onlyLocal: true });
  });
});
