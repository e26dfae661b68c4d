/**
 * The `walreceivers` list of the timeline status document (GET /v1/tenant/{t}/timeline/{l}), against the
 * real binary with test proposers over START_WAL_PUSH: Neon's `{conn_id, status}` per attached proposer
 * connection, `Voting` from the greeting until it sends ProposerElected, then `Streaming`; the entry goes
 * when the connection closes or the server ends it with an error; a proposer overtaken by a newer term stays
 * listed until it disconnects, as in Neon. `num_computes` (the proposer count the manager acts on) is the
 * list's length throughout. The node runs with --no-sync: nothing here is about durability. Every node,
 * proposer and temp dir is removed in after().
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { formatLsn } from '../../src/wal/lsn.js';
import { newIds } from '../harness/background.js';
import { INGEST_TEST_TIMEOUT_MS, SYNTHETIC_PG_VERSION, SYNTHETIC_SEGMENT_BYTES, SYNTHETIC_START_LSN, SYNTHETIC_SYSTEM_ID, startFsyncNode, syntheticServer } from '../harness/ingest.js';
import type { NodeProcess } from '../harness/node_process.js';
import { electAndStream } from '../harness/proposer_session.js';
import { trackedProposers } from '../harness/teardown.js';
import { TestProposer } from '../harness/test_proposer.js';
import { makeTempDir } from '../harness/tmp.js';
import { waitFor } from '../harness/wait.js';
import { syntheticWal, walRange } from '../harness/wal_source.js';

const { track } = trackedProposers();

interface WalReceiverJson {
  conn_id: number | null;
  status: string;
}

interface Ids {
  tenantId: string;
  timelineId: string;
}

/** The status document's `walreceivers`, checked against `num_computes`, which must always be its length. */
async function walReceivers(node: NodeProcess, ids: Ids): Promise<WalReceiverJson[]> {
  const response = await fetch(`${node.httpUrl}/v1/tenant/${ids.tenantId}/timeline/${ids.timelineId}`);
  assert.equal(response.status, 200);
  const status = (await response.json()) as { walreceivers: WalReceiverJson[]; num_computes: number };
  assert.ok(Array.isArray(status.walreceivers), 'the status document has a walreceivers list');
  assert.equal(status.num_computes, status.walreceivers.length, 'the proposer count is the number of listed receivers');
  for (const receiver of status.walreceivers) {
    assert.deepEqual(Object.keys(receiver), ['conn_id', 'status'], "Neon's WalReceiverState fields, nothing else");
    assert.ok(Number.isInteger(receiver.conn_id) && receiver.conn_id! > 0 && receiver.conn_id! <= 0xffff_ffff, `conn_id is a u32: ${receiver.conn_id}`);
  }
  return status.walreceivers;
}

/** Waits until the list is exactly `expected` (in order). */
async function waitForReceivers(node: NodeProcess, ids: Ids, expected: WalReceiverJson[], what: string): Promise<void> {
  await waitFor(async () => JSON.stringify(await walReceivers(node, ids)) === JSON.stringify(expected), { what });
}

const syntheticSource = (seed: number): ReturnType<typeof syntheticWal> =>
  syntheticWal({ startLsn: SYNTHETIC_START_LSN, segmentSizeBytes: SYNTHETIC_SEGMENT_BYTES, pgVersion: SYNTHETIC_PG_VERSION, systemId: SYNTHETIC_SYSTEM_ID, totalBytes: 2 * SYNTHETIC_SEGMENT_BYTES, seed });

describe('timeline status: walreceivers', { timeout: INGEST_TEST_TIMEOUT_MS }, () => {
  test('a proposer connection is listed as Voting from its greeting, Streaming from its ProposerElected, and unlisted once it closes', async () => {
    const node = await startFsyncNode(makeTempDir('sk-walreceivers-'), ['--no-sync']);

    // A timeline no proposer ever connected to.
    const idle = newIds();
    const created = await fetch(`${node.httpUrl}/v1/tenant/timeline`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ tenant_id: idle.tenantId, timeline_id: idle.timelineId, pg_version: SYNTHETIC_PG_VERSION, wal_seg_size: SYNTHETIC_SEGMENT_BYTES, start_lsn: formatLsn(SYNTHETIC_START_LSN) }),
    });
    assert.equal(created.status, 200);
    assert.deepEqual(await walReceivers(node, idle), []);

    const ids = newIds();
    const source = syntheticSource(11);
    const proposer = track(await TestProposer.connect({ port: node.pgPort, ...ids, protoVersion: 3, ...syntheticServer() }));
    const greeting = await proposer.greet();
    const [voting] = await walReceivers(node, ids);
    assert.ok(voting !== undefined);
    assert.equal(voting.status, 'Voting', 'after the greeting');
    const connId = voting.conn_id;

    const term = greeting.term + 1n;
    const vote = await proposer.vote(term);
    assert.equal(vote.voteGiven, true);
    assert.deepEqual(await walReceivers(node, ids), [{ conn_id: connId, status: 'Voting' }], 'a granted vote is not an election yet');

    const startLsn = source.firstRecordLsn;
    await proposer.elect({ term, startStreamingAtLsn: startLsn, termHistory: [...vote.termHistory, { term, lsn: startLsn }] });
    await waitForReceivers(node, ids, [{ conn_id: connId, status: 'Streaming' }], 'Streaming after ProposerElected');
    await proposer.streamWal(walRange(source, startLsn), startLsn);
    await proposer.waitForFlush(source.endLsn);
    assert.deepEqual(await walReceivers(node, ids), [{ conn_id: connId, status: 'Streaming' }], 'still the same entry while appending');

    await proposer.close();
    await waitForReceivers(node, ids, [], 'the entry gone after the connection closed');
    assert.deepEqual(await walReceivers(node, idle), [], "another timeline's list is untouched");
    await node.stop();
  });

  test('two connections are two entries; one overtaken by a newer term stays until it disconnects; one ended by an error goes', async () => {
    const node = await startFsyncNode(makeTempDir('sk-walreceivers-two-'), ['--no-sync']);
    const ids = newIds();
    const base = { port: node.pgPort, ...ids, protoVersion: 3 as const, ...syntheticServer() };
    const source = syntheticSource(12);
    const first = await electAndStream({ ...base, source, timelineStartLsn: source.firstRecordLsn });
    track(first.proposer);
    const [firstEntry] = await walReceivers(node, ids);
    assert.ok(firstEntry !== undefined);
    assert.equal(firstEntry.status, 'Streaming');
    const firstId = firstEntry.conn_id;

    const second = track(await TestProposer.connect(base));
    await second.greet();
    const both = await walReceivers(node, ids);
    assert.equal(both.length, 2, 'one entry per connection');
    assert.deepEqual(both[0], { conn_id: firstId, status: 'Streaming' });
    assert.equal(both[1]!.status, 'Voting');
    const secondId = both[1]!.conn_id;
    assert.notEqual(secondId, firstId, 'each connection has its own conn_id');

    // The second proposer takes over with a higher term. The first is still attached (it learns of the new
    // term from its next AppendResponse and disconnects itself, as walproposer does), so both are listed.
    const newTerm = first.term + 1n;
    const vote = await second.vote(newTerm);
    assert.equal(vote.voteGiven, true);
    await second.elect({ term: newTerm, startStreamingAtLsn: vote.flushLsn, termHistory: [...vote.termHistory, { term: newTerm, lsn: vote.flushLsn }] });
    await waitForReceivers(node, ids, [{ conn_id: firstId, status: 'Streaming' }, { conn_id: secondId, status: 'Streaming' }], 'both Streaming after the second election');
    first.proposer.clearReplies();
    await first.proposer.heartbeat(first.endLsn, 0n);
    assert.equal((await first.proposer.nextAppendResponse()).term, newTerm, 'the overtaken proposer is told the newer term');
    await first.proposer.close();
    await waitForReceivers(node, ids, [{ conn_id: secondId, status: 'Streaming' }], 'the overtaken proposer unlisted after it disconnected');

    // A third connection breaks the protocol (an AppendRequest for a term it was never elected in): the server
    // ends it with an ErrorResponse, and its entry goes with it.
    const third = track(await TestProposer.connect(base));
    await third.greet();
    const withThird = await walReceivers(node, ids);
    assert.equal(withThird.length, 2);
    assert.equal(withThird[1]!.status, 'Voting');
    await third.append({ beginLsn: vote.flushLsn, wal: new Uint8Array(0), term: newTerm + 5n, commitLsn: 0n, truncateLsn: 0n });
    const error = await third.waitClosed();
    assert.ok(error !== null, 'the server ended the stream with an ErrorResponse');
    await waitForReceivers(node, ids, [{ conn_id: secondId, status: 'Streaming' }], 'the failed connection unlisted');

    await second.close();
    await waitForReceivers(node, ids, [], 'no entry once every proposer left');
    await node.stop();
  });
});
