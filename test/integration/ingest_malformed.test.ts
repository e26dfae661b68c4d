/**
 * Malformed START_WAL_PUSH input to the real `safekeeper run` process: truncated greetings, AppendRequests
 * whose WAL is shorter than their LSN range, unknown message tags, CopyData above max_message_size, garbage
 * after startup, and messages out of order (before the greeting, before ProposerElected). Each ends the
 * stream with an ErrorResponse (08P01) naming the problem, and the node keeps serving new connections.
 * ProposerElected before any vote is accepted, as Neon does. Every node and temp dir is removed in after().
 */
import assert from 'node:assert/strict';
import { before, describe, test } from 'node:test';
import { encodeProposerMessage } from '../../src/acceptor/messages_codec.js';
import { emptyMembership, type TenantId, type TimelineId } from '../../src/acceptor/state.js';
import { newIds } from '../harness/background.js';
import {
  INGEST_TEST_TIMEOUT_MS,
  SYNTHETIC_PG_VERSION,
  SYNTHETIC_SEGMENT_BYTES,
  SYNTHETIC_START_LSN,
  SYNTHETIC_SYSTEM_ID,
  startFsyncNode,
  syntheticServer,
} from '../harness/ingest.js';
import type { NodeProcess } from '../harness/node_process.js';
import { DatabaseError, PgTestClient } from '../harness/pg_client.js';
import { timelineStatus } from '../harness/proposer_session.js';
import { trackedProposers } from '../harness/teardown.js';
import { TestProposer } from '../harness/test_proposer.js';
import { makeTempDir } from '../harness/tmp.js';

const { track } = trackedProposers();

describe('malformed START_WAL_PUSH input', { timeout: INGEST_TEST_TIMEOUT_MS }, () => {
  let node: NodeProcess;
  let dataDir: string;
  before(async () => {
    dataDir = makeTempDir('sk-malformed-');
    node = await startFsyncNode(dataDir);
  });

  const connectNew = async (protoVersion: 2 | 3 = 3): Promise<{ proposer: TestProposer; ids: { tenantId: string; timelineId: string } }> => {
    const ids = newIds();
    return { proposer: track(await TestProposer.connect({ port: node.pgPort, ...ids, protoVersion, ...syntheticServer() })), ids };
  };

  /** The stream ends with an ErrorResponse of `code` matching `message`, and the node still serves new connections. */
  async function expectStreamError(proposer: TestProposer, code: string, message: RegExp): Promise<void> {
    const error = await proposer.waitClosed();
    assert.ok(error !== null, 'an ErrorResponse before the close');
    assert.equal(error.code, code, `SQLSTATE of "${error.message}"`);
    assert.match(error.message, message);
    await assertNodeServes();
  }

  async function assertNodeServes(): Promise<void> {
    const ids = newIds();
    assert.equal(await timelineStatus(node.pgPort, ids.tenantId, ids.timelineId), null, 'a new connection is served');
  }

  const greeting = (ids: { tenantId: string; timelineId: string }, protoVersion: 2 | 3): Uint8Array =>
    encodeProposerMessage({ tag: 'greeting', tenantId: ids.tenantId as TenantId, timelineId: ids.timelineId as TimelineId, mconf: emptyMembership(), pgVersion: SYNTHETIC_PG_VERSION, systemId: SYNTHETIC_SYSTEM_ID, walSegSizeBytes: SYNTHETIC_SEGMENT_BYTES }, protoVersion);

  test('a truncated greeting', async () => {
    for (const protoVersion of [2, 3] as const) {
      const { proposer, ids } = await connectNew(protoVersion);
      await proposer.sendRaw(greeting(ids, protoVersion).subarray(0, 30));
      await expectStreamError(proposer, '08P01', /greeting/i);
    }
  });

  test('an AppendRequest whose WAL is shorter than its LSN range', async () => {
    const { proposer } = await connectNew();
    await proposer.greet();
    await proposer.vote(1n);
    const startLsn = SYNTHETIC_START_LSN;
    await proposer.elect({ term: 1n, startStreamingAtLsn: startLsn, termHistory: [{ term: 1n, lsn: startLsn }] });
    const header = new Uint8Array(45);
    const view = new DataView(header.buffer);
    view.setUint8(0, 0x61);
    view.setBigUint64(5, 1n);
    view.setBigUint64(13, startLsn);
    view.setBigUint64(21, startLsn + 1000n);
    await proposer.sendRaw(Buffer.concat([header, Buffer.alloc(10)]));
    await expectStreamError(proposer, '08P01', /AppendRequest message: reading WAL: only 10 bytes left, wanted 1000/);
  });

  test('a message with an unknown tag', async () => {
    for (const protoVersion of [2, 3] as const) {
      const { proposer } = await connectNew(protoVersion);
      await proposer.sendRaw(Buffer.from([0x7a, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4]));
      await expectStreamError(proposer, '08P01', /unknown proposer-acceptor message tag: 0x7a/);
    }
  });

  test('a CopyData above max_message_size', async () => {
    const { proposer } = await connectNew();
    const header = Buffer.alloc(5);
    header.write('d', 0, 'latin1');
    header.writeInt32BE(512 * 1024 + 4, 1); // the default limit is 256 KiB
    proposer.client.socket.write(Buffer.concat([header, Buffer.alloc(1024)]));
    await expectStreamError(proposer, '08P01', /declared length 524292/);
  });

  test('garbage after startup', async () => {
    for (const garbage of [Buffer.from('GARBAGE GARBAGE GARBAGE'), Buffer.from([0x3f, 0, 0, 0, 8, 1, 2, 3, 4])]) {
      const ids = newIds();
      const client = await PgTestClient.connect({ port: node.pgPort, options: `-c timeline_id=${ids.timelineId} tenant_id=${ids.tenantId}` });
      client.socket.write(garbage);
      const message = await client.next();
      assert.equal(message.name, 'error', `an ErrorResponse for ${JSON.stringify(garbage.toString('latin1'))}`);
      assert.equal((message as DatabaseError).code, '08P01');
      assert.match((message as DatabaseError).message, /declared length|unknown or unexpected message type/);
      await client.closed;
      await assertNodeServes();
    }
  });

  test('an AppendRequest or VoteRequest before the greeting', async () => {
    {
      const { proposer } = await connectNew();
      await proposer.append({ beginLsn: SYNTHETIC_START_LSN, wal: new Uint8Array(0), term: 1n, commitLsn: 0n, truncateLsn: 0n });
      await expectStreamError(proposer, '08P01', /instead of greeting/);
    }
    {
      const { proposer } = await connectNew(2);
      await proposer.send({ tag: 'vote', generation: 0, term: 1n });
      await expectStreamError(proposer, '08P01', /instead of greeting/);
    }
  });

  test('an AppendRequest before ProposerElected', async () => {
    const { proposer } = await connectNew();
    await proposer.greet();
    assert.equal((await proposer.vote(1n)).voteGiven, true);
    // The term the vote granted, but no ProposerElected: nothing may be written before the truncation point is known.
    await proposer.append({ beginLsn: SYNTHETIC_START_LSN, wal: new Uint8Array(0), term: 1n, commitLsn: 0n, truncateLsn: 0n });
    await expectStreamError(proposer, '08P01', /truncation pending|before ProposerElected/);
    // A term above the acceptor's, with no election at all.
    const second = (await connectNew()).proposer;
    await second.greet();
    await second.append({ beginLsn: SYNTHETIC_START_LSN, wal: new Uint8Array(0), term: 5n, commitLsn: 0n, truncateLsn: 0n });
    await expectStreamError(second, '08P01', /before ProposerElected/);
  });

  test('ProposerElected before any vote is handled as Neon does: the term is adopted, no error', async () => {
    // Neon's handle_elected has no "voted" precondition (safekeeper.rs): a higher term is persisted and the
    // election proceeds. A later vote for that same term is then refused.
    const { proposer, ids } = await connectNew();
    await proposer.greet();
    const startLsn = SYNTHETIC_START_LSN;
    await proposer.elect({ term: 4n, startStreamingAtLsn: startLsn, termHistory: [{ term: 4n, lsn: startLsn }] });
    await proposer.heartbeat(startLsn);
    const reply = await proposer.nextAppendResponse();
    assert.equal(reply.term, 4n);
    assert.equal(reply.flushLsn, startLsn);
    await proposer.close();
    const other = track(await TestProposer.connect({ port: node.pgPort, ...ids, protoVersion: 3, ...syntheticServer() }));
    assert.equal((await other.greet()).term, 4n);
    assert.equal((await other.vote(4n)).voteGiven, false);
    await other.close();
  });
});
