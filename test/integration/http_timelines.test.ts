/**
 * The HTTP timeline routes and timeline loading, against the real binary: create, list, status, delete,
 * JSON errors (an unsupported pg_version is refused before anything is written); a timeline whose control
 * file is corrupt, or names a PostgreSQL version we cannot decode, loads as `broken` while the node and the
 * other timelines go on.
 */
import assert from 'node:assert/strict';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import { loadControlFile, saveControlFile } from '../../src/storage/control_file.js';
import { killAllNodes, spawnNode, testNodeArgs } from '../harness/node_process.js';
import { PgTestClient } from '../harness/pg_client.js';
import { makeTempDir, removeAllTempDirs } from '../harness/tmp.js';

const TENANT = 'de200bd42b49cc1814412c7e592dd6e9';
const TIMELINE_A = '0123456789abcdef0123456789abcdef';
const TIMELINE_B = 'fedcba9876543210fedcba9876543210';
const TIMELINE_C = '00112233445566778899aabbccddeeff';

after(async () => {
  await killAllNodes();
  await removeAllTempDirs();
});

async function http(base: string, method: string, path: string, body?: unknown): Promise<{ status: number; json: unknown }> {
  const response = await fetch(base + path, {
    method,
    ...(body === undefined ? {} : { body: typeof body === 'string' ? body : JSON.stringify(body), headers: { 'content-type': 'application/json' } }),
  });
  const text = await response.text();
  return { status: response.status, json: text === '' ? null : JSON.parse(text) };
}

const createBody = (timelineId: string): object => ({ tenant_id: TENANT, timeline_id: timelineId, pg_version: 150008, system_id: 7335, start_lsn: '0/1000028' });

describe('HTTP timeline routes', () => {
  test('create, list, status and delete, with JSON errors', async () => {
    const dataDir = await makeTempDir('sk-http');
    const node = await spawnNode(testNodeArgs(dataDir));
    const base = node.httpUrl;
    assert.deepEqual(await http(base, 'GET', '/v1/tenant/timeline'), { status: 200, json: [] });
    assert.equal((await http(base, 'POST', '/v1/tenant/timeline', createBody(TIMELINE_A))).status, 200);
    assert.equal((await http(base, 'POST', '/v1/tenant/timeline', createBody(TIMELINE_A))).status, 200, 'create is idempotent');
    assert.deepEqual((await http(base, 'GET', '/v1/tenant/timeline')).json, [{ tenant_id: TENANT, timeline_id: TIMELINE_A }]);

    const status = (await http(base, 'GET', `/v1/tenant/${TENANT}/timeline/${TIMELINE_A}`)).json as Record<string, unknown>;
    assert.equal(status.status, 'active');
    assert.equal(status.flush_lsn, '0/1000028');
    assert.equal(status.commit_lsn, '0/1000028');
    assert.equal(status.timeline_start_lsn, '0/1000028');
    assert.deepEqual(status.pg_info, { pg_version: 150008, system_id: 7335, wal_seg_size: 16 * 1024 * 1024 });
    assert.deepEqual(status.acceptor_state, { term: 0, epoch: 0, term_history: [{ term: 0, lsn: '0/1000028' }] });
    // Ids in upper case name the same timeline (Neon takes either case); it is reported in lower case.
    const upper = (await http(base, 'GET', `/v1/tenant/${TENANT.toUpperCase()}/timeline/${TIMELINE_A.toUpperCase()}`)).json as Record<string, unknown>;
    assert.equal(upper.timeline_id, TIMELINE_A);
    assert.equal(upper.flush_lsn, '0/1000028');

    // u64s as JSON numbers, as Neon's clients send them: exact beyond 2^53 both ways; over 64 bits refused.
    const bigSystemId = '7361234567890123456';
    const bigBody = JSON.stringify(createBody(TIMELINE_C)).replace('"system_id":7335', `"system_id":${bigSystemId}`);
    assert.equal((await http(base, 'POST', '/v1/tenant/timeline', bigBody)).status, 200);
    const bigStatus = await (await fetch(`${base}/v1/tenant/${TENANT}/timeline/${TIMELINE_C}`)).text();
    assert.match(bigStatus, new RegExp(`"system_id":${bigSystemId},`));
    const tooBig = await http(base, 'POST', '/v1/tenant/timeline', bigBody.replace(bigSystemId, '18446744073709551616'));
    assert.equal(tooBig.status, 400);
    assert.match((tooBig.json as { msg: string }).msg, /system_id: must fit in 64 bits/);
    assert.equal((await http(base, 'DELETE', `/v1/tenant/${TENANT}/timeline/${TIMELINE_C}`)).status, 200);

    // The timeline is usable over the pg port: the server reports its PostgreSQL version.
    const client = await PgTestClient.connect({ port: node.pgPort, options: `-c tenant_id=${TENANT} timeline_id=${TIMELINE_A}` });
    const rows = await client.simpleQuery('TIMELINE_STATUS');
    assert.deepEqual(rows.rows, [['0/1000028', '0/1000028']]);
    const version = await client.simpleQuery('SHOW server_version');
    assert.deepEqual(version.rows, [['15.8']]);
    await client.terminate();

    const bad = [
      await http(base, 'POST', '/v1/tenant/timeline', { ...createBody(TIMELINE_B), start_lsn: 'nope' }),
      await http(base, 'POST', '/v1/tenant/timeline', { ...createBody(TIMELINE_B), tenant_id: 'XYZ' }),
      await http(base, 'POST', '/v1/tenant/timeline', { ...createBody(TIMELINE_B), wal_seg_size: 1000 }),
      await http(base, 'POST', '/v1/tenant/timeline', { ...createBody(TIMELINE_B), surprise: 1 }),
      await http(base, 'POST', '/v1/tenant/timeline', '{not json'),
      await http(base, 'POST', '/v1/tenant/timeline', { ...createBody(TIMELINE_B), pg_version: 90000 }),
      // Values the control file cannot hold: its encoder's checks are assertions, which used to end the process.
      await http(base, 'POST', '/v1/tenant/timeline', { ...createBody(TIMELINE_B), mconf: { generation: 1, members: [{ id: 1, host: 'a', pg_port: 1 }, { id: 1, host: 'b', pg_port: 2 }] } }),
      await http(base, 'POST', '/v1/tenant/timeline', { ...createBody(TIMELINE_B), system_id: '18446744073709551616' }),
      await http(base, 'POST', '/v1/tenant/timeline', { ...createBody(TIMELINE_B), mconf: { generation: 4294967296, members: [] } }),
      // Recovery decodes from commit_lsn: one where no record starts used to stop the node from ever starting again.
      await http(base, 'POST', '/v1/tenant/timeline', { ...createBody(TIMELINE_B), start_lsn: '0/1000003' }),
    ];
    for (const response of bad) {
      assert.equal(response.status, 400, JSON.stringify(response.json));
      assert.equal(typeof (response.json as { msg: unknown }).msg, 'string');
    }
    assert.match(((bad[0]!.json) as { msg: string }).msg, /start_lsn/);
    assert.match(((bad[5]!.json) as { msg: string }).msg, /unsupported PostgreSQL version 90000/);
    assert.match(((bad[6]!.json) as { msg: string }).msg, /mconf\.members: duplicate member id/);
    assert.match(((bad[7]!.json) as { msg: string }).msg, /system_id: must fit in 64 bits/);
    assert.match(((bad[8]!.json) as { msg: string }).msg, /mconf\.generation/);
    assert.match(((bad[9]!.json) as { msg: string }).msg, /start_lsn 0\/1000003 is not 8-byte aligned/);
    assert.equal(existsSync(join(dataDir, TENANT, TIMELINE_B)), false, 'a refused create leaves no directory');
    assert.equal((await http(base, 'GET', `/v1/tenant/${TENANT}/timeline/${TIMELINE_B}`)).status, 404);
    assert.equal((await http(base, 'GET', `/v1/tenant/not-hex/timeline/${TIMELINE_B}`)).status, 400);
    // A bad query parameter is named as one, not as a body field.
    assert.deepEqual(await http(base, 'DELETE', `/v1/tenant/${TENANT}/timeline/${TIMELINE_A}?only_local=maybe`), {
      status: 400,
      json: { msg: 'bad query: only_local: Invalid option: expected one of "true"|"false"' },
    });

    assert.deepEqual(await http(base, 'DELETE', `/v1/tenant/${TENANT}/timeline/${TIMELINE_A}`), { status: 200, json: { dir_existed: true } });
    assert.deepEqual(await http(base, 'DELETE', `/v1/tenant/${TENANT}/timeline/${TIMELINE_A}`), { status: 200, json: { dir_existed: false } });
    assert.equal((await http(base, 'GET', `/v1/tenant/${TENANT}/timeline/${TIMELINE_A}`)).status, 404);

    // A tenant's delete takes each of its timelines, and no other tenant's.
    const otherTenant = 'aa'.repeat(16);
    const [first, second] = ['b1'.repeat(16), 'c1'.repeat(16)]; // ids not deleted before (a deleted id stays refused)
    for (const timeline of [first, second]) assert.equal((await http(base, 'POST', '/v1/tenant/timeline', createBody(timeline))).status, 200);
    assert.equal((await http(base, 'POST', '/v1/tenant/timeline', { ...createBody(TIMELINE_A), tenant_id: otherTenant })).status, 200);
    assert.deepEqual(await http(base, 'DELETE', `/v1/tenant/${TENANT}`), { status: 200, json: { [first]: { dir_existed: true }, [second]: { dir_existed: true } } });
    assert.deepEqual((await http(base, 'GET', '/v1/tenant/timeline')).json, [{ tenant_id: otherTenant, timeline_id: TIMELINE_A }]);
    assert.equal(existsSync(join(dataDir, TENANT, first)), false);
    assert.deepEqual(await http(base, 'DELETE', `/v1/tenant/${TENANT}`), { status: 200, json: {} }, 'a tenant with no timelines left');
    assert.equal((await http(base, 'DELETE', '/v1/tenant/not-hex')).status, 400);
    assert.equal((await node.stop()).code, 0);
  });

  test('a corrupt control file, or one naming an unsupported PostgreSQL version, makes only its timeline broken', async () => {
    const dataDir = await makeTempDir('sk-broken');
    const first = await spawnNode(testNodeArgs(dataDir));
    for (const timeline of [TIMELINE_A, TIMELINE_B, TIMELINE_C]) assert.equal((await http(first.httpUrl, 'POST', '/v1/tenant/timeline', createBody(timeline))).status, 200);
    assert.equal((await first.stop()).code, 0);

    const controlPath = join(dataDir, TENANT, TIMELINE_A, 'safekeeper.control');
    const bytes = readFileSync(controlPath);
    bytes[20] = bytes[20]! ^ 0x01;
    writeFileSync(controlPath, bytes);
    // A valid control file (e.g. written by a later release) whose version this one cannot decode WAL of.
    const dirC = join(dataDir, TENANT, TIMELINE_C);
    const stateC = await loadControlFile(dirC);
    await saveControlFile(dirC, { ...stateC, server: { ...stateC.server, pgVersion: 90000 } }, { noSync: true });

    const second = await spawnNode(testNodeArgs(dataDir));
    const broken = (await http(second.httpUrl, 'GET', `/v1/tenant/${TENANT}/timeline/${TIMELINE_A}`)).json as Record<string, unknown>;
    assert.equal(broken.status, 'broken');
    assert.match(String(broken.broken_reason), /control file/);
    const unsupported = (await http(second.httpUrl, 'GET', `/v1/tenant/${TENANT}/timeline/${TIMELINE_C}`)).json as Record<string, unknown>;
    assert.equal(unsupported.status, 'broken');
    assert.match(String(unsupported.broken_reason), /unsupported PostgreSQL version 90000/);
    const healthy = (await http(second.httpUrl, 'GET', `/v1/tenant/${TENANT}/timeline/${TIMELINE_B}`)).json as Record<string, unknown>;
    assert.equal(healthy.status, 'active');

    const client = await PgTestClient.connect({ port: second.pgPort, options: `-c tenant_id=${TENANT} timeline_id=${TIMELINE_A}` });
    await assert.rejects(client.simpleQuery('IDENTIFY_SYSTEM'), (error: Error & { code?: string }) => error.code === 'XX001' && /broken/.test(error.message));
    await client.terminate();
    assert.equal((await second.stop()).code, 0);
  });
});
