/**
 * Neon's term_bump and membership routes against the real binary. term_bump raises the acceptor's term (to
 * the asked one, or by one), durably, so a proposer streaming in an older term is told the newer term by its
 * next AppendResponse and stops; membership switches the timeline's configuration to a higher generation,
 * refuses one that does not name this node (403) and answers 409 when a lower generation was asked; exclude
 * drops the local copy for a configuration without this node that is not older than the timeline's.
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { newIds } from '../harness/background.js';
import { INGEST_TEST_TIMEOUT_MS, SYNTHETIC_PG_VERSION, SYNTHETIC_SEGMENT_BYTES, SYNTHETIC_START_LSN, SYNTHETIC_SYSTEM_ID, startFsyncNode, syntheticServer } from '../harness/ingest.js';
import type { NodeProcess } from '../harness/node_process.js';
import { electAndStream } from '../harness/proposer_session.js';
import { trackedProposers } from '../harness/teardown.js';
import { makeTempDir } from '../harness/tmp.js';
import { syntheticWal } from '../harness/wal_source.js';

const { track } = trackedProposers();

async function http(node: NodeProcess, method: string, path: string, body?: unknown): Promise<{ status: number; json: unknown; allow: string | null }> {
  const response = await fetch(node.httpUrl + path, {
    method,
    ...(body === undefined ? {} : { body: JSON.stringify(body), headers: { 'content-type': 'application/json' } }),
  });
  const text = await response.text();
  return { status: response.status, json: text === '' ? null : JSON.parse(text), allow: response.headers.get('allow') };
}

const timelinePath = (ids: { tenantId: string; timelineId: string }): string => `/v1/tenant/${ids.tenantId}/timeline/${ids.timelineId}`;

describe('HTTP term_bump, membership and exclude', { timeout: INGEST_TEST_TIMEOUT_MS }, () => {
  test('term_bump raises the term durably, and a proposer of the older term is told the newer one', async () => {
    const dataDir = makeTempDir('sk-term-bump-');
    let node = await startFsyncNode(dataDir, ['--no-sync']);
    const ids = newIds();
    const source = syntheticWal({ startLsn: SYNTHETIC_START_LSN, segmentSizeBytes: SYNTHETIC_SEGMENT_BYTES, pgVersion: SYNTHETIC_PG_VERSION, systemId: SYNTHETIC_SYSTEM_ID, totalBytes: SYNTHETIC_SEGMENT_BYTES, seed: 21 });
    const session = await electAndStream({ port: node.pgPort, ...ids, protoVersion: 3, ...syntheticServer(), source, timelineStartLsn: source.firstRecordLsn });
    track(session.proposer);
    const path = `${timelinePath(ids)}/term_bump`;

    assert.deepEqual(await http(node, 'POST', path, {}), { status: 200, json: { previous_term: Number(session.term), current_term: Number(session.term + 1n) }, allow: null });
    session.proposer.clearReplies();
    await session.proposer.heartbeat(session.endLsn, 0n);
    assert.equal((await session.proposer.nextAppendResponse()).term, session.term + 1n, 'the streaming proposer learns the newer term');

    assert.deepEqual((await http(node, 'POST', path, { term: 10 })).json, { previous_term: Number(session.term + 1n), current_term: 10 });
    assert.deepEqual((await http(node, 'POST', path, { term: 3 })).json, { previous_term: 10, current_term: 10 }, 'never lowered');
    assert.deepEqual((await http(node, 'POST', path, { term: null })).json, { previous_term: 10, current_term: 11 });
    assert.deepEqual((await http(node, 'POST', path)).json, { previous_term: 11, current_term: 12 }, 'no body is a bump by one');
    const bad = await http(node, 'POST', path, { term: -1 });
    assert.equal(bad.status, 400);
    assert.match((bad.json as { msg: string }).msg, /term/);
    assert.equal((await http(node, 'POST', `/v1/tenant/${newIds().tenantId}/timeline/${ids.timelineId}/term_bump`, {})).status, 404);
    assert.equal((await http(node, 'GET', path)).allow, 'POST', 'a wrong method is told the right one');

    await session.proposer.close();
    assert.equal((await node.stop()).code, 0);
    node = await startFsyncNode(dataDir, ['--no-sync']);
    const status = (await http(node, 'GET', timelinePath(ids))).json as { acceptor_state: { term: number } };
    assert.equal(status.acceptor_state.term, 12, 'the bumped term survives a restart');
    await node.stop();
  });

  test('membership switches to a higher generation that names this node (403 without it, 409 for a lower one); exclude drops the local copy', async () => {
    const node = await startFsyncNode(makeTempDir('sk-membership-'), ['--no-sync', '--id', '7']);
    const ids = newIds();
    const created = await http(node, 'POST', '/v1/tenant/timeline', { tenant_id: ids.tenantId, timeline_id: ids.timelineId, pg_version: SYNTHETIC_PG_VERSION, start_lsn: '0/1000028' });
    assert.equal(created.status, 200);
    const path = `${timelinePath(ids)}/membership`;
    const member = (id: number) => ({ id, host: `sk${id}.local`, pg_port: 5454 });
    const empty = { generation: 0, members: [], new_members: null };

    const gen2 = { generation: 2, members: [member(7), member(8), member(9)], new_members: null };
    const switched = await http(node, 'PUT', path, { mconf: gen2 });
    assert.equal(switched.status, 200);
    assert.deepEqual(switched.json, { previous_conf: empty, current_conf: gen2, last_log_term: 0, flush_lsn: '0/1000028' });
    assert.deepEqual(((await http(node, 'GET', timelinePath(ids))).json as { mconf: unknown }).mconf, gen2);
    assert.equal((await http(node, 'PUT', path, { mconf: gen2 })).status, 200, 'the same generation again is fine');

    const joint = { generation: 3, members: [member(8), member(9), member(10)], new_members: [member(7)] };
    assert.deepEqual(((await http(node, 'PUT', path, { mconf: joint })).json as { current_conf: unknown }).current_conf, joint, 'a member of new_members is a member');

    const without = await http(node, 'PUT', path, { mconf: { generation: 4, members: [member(8), member(9)], new_members: null } });
    assert.equal(without.status, 403);
    assert.match((without.json as { msg: string }).msg, /node 7 is not a member/);
    const lower = await http(node, 'PUT', path, { mconf: gen2 });
    assert.equal(lower.status, 409);
    assert.match((lower.json as { msg: string }).msg, /generation 2 ignored, current generation 3/);
    assert.equal((await http(node, 'PUT', path, { mconf: { generation: 5 } })).status, 400);

    // exclude: the local copy goes once a configuration without this node is at least as new as ours.
    const exclude = `${timelinePath(ids)}/exclude`;
    const named = await http(node, 'PUT', exclude, { mconf: { generation: 4, members: [member(7), member(8)], new_members: null } });
    assert.equal(named.status, 403, 'a configuration naming this node is the membership route\'s');
    assert.match((named.json as { msg: string }).msg, /node 7 is a member/);
    const older = await http(node, 'PUT', exclude, { mconf: { generation: 2, members: [member(8), member(9)], new_members: null } });
    assert.equal(older.status, 409, 'an exclusion older than our configuration is refused');
    assert.match((older.json as { msg: string }).msg, /excluding generation 2: current generation 3/);
    assert.equal((await http(node, 'GET', timelinePath(ids))).status, 200, 'and the timeline stays');
    assert.deepEqual(await http(node, 'PUT', exclude, { mconf: { generation: 4, members: [member(8), member(9), member(10)], new_members: null } }), { status: 200, json: { dir_existed: true }, allow: null });
    assert.equal((await http(node, 'GET', timelinePath(ids))).status, 404);
    assert.deepEqual((await http(node, 'PUT', exclude, { mconf: { generation: 4, members: [member(8)], new_members: null } })).json, { dir_existed: false }, 'again: nothing left');
    await node.stop();
  });
});
