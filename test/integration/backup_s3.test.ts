/**
 * WAL backup to S3 (s3rver over HTTP on 127.0.0.1) through `FaultProxy`, with a real `safekeeper run`:
 * objects appear under `<prefix>/<tenant>/<timeline>/<segment>` with their digests; 500s, hung requests
 * and resets are retried until every segment is up; during a full outage ingest keeps acknowledging at
 * its normal pace, backup_lsn stays, nothing that is not uploaded is removed, and once S3 answers again
 * the backlog goes up and local WAL is removed.
 */
import assert from 'node:assert/strict';
import { before, describe, test } from 'node:test';
import { xxhash64Hex } from '../../src/remote/digest.js';
import type { RemoteStorage } from '../../src/remote/remote_storage.js';
import { segmentStartLsn } from '../../src/wal/lsn.js';
import {
  SEGMENT_BYTES,
  checkpoint,
  localSegmentNames,
  makeWal,
  metricValue,
  newIds,
  remoteNames,
  s3Env,
  s3Remote,
  segmentBytes,
  segmentName,
  startNode,
  stream,
  timelineLsns,
} from '../harness/background.js';
import type { NodeProcess } from '../harness/node_process.js';
import { FaultProxy, startS3rver, type S3Server } from '../harness/s3.js';
import { tearDownAfterAll } from '../harness/teardown.js';
import type { TestProposer } from '../harness/test_proposer.js';
import { makeTempDir } from '../harness/tmp.js';
import { waitFor } from '../harness/wait.js';

const BUCKET = 'sk-backup-bucket';
const PREFIX = 'wal/node1';
const signal = new AbortController().signal;

let s3: S3Server;
let proxy: FaultProxy;
let node: NodeProcess;
let dataDir: string;
let remote: RemoteStorage;
const proposers: TestProposer[] = [];

before(async () => {
  s3 = await startS3rver(BUCKET);
  proxy = new FaultProxy(s3.port);
  await proxy.start();
  dataDir = makeTempDir('sk-s3-data-');
  const url = `s3://${BUCKET}/${PREFIX}?endpoint=${encodeURIComponent(proxy.endpoint)}&region=us-east-1`;
  node = await startNode(dataDir, url, ['--remote-request-timeout', '400ms'], s3Env());
  remote = s3Remote(s3.endpoint, BUCKET, PREFIX); // the test reads S3 directly, not through the proxy
});

tearDownAfterAll(proposers, {
  beforeTempDirs: async () => {
    await remote?.close();
    await proxy?.close();
    await s3?.close();
  },
});

describe('WAL backup to S3 through a faulting proxy', { timeout: 85_000 }, () => {
  test('segments appear under the prefix with their digests, despite 500s, hangs, resets and lost replies', async () => {
    let puts = 0;
    const faults = ['500', 'hang', 'reset', 'drop-response', '500'] as const;
    proxy.decide = (request) => (request.method === 'PUT' ? (faults[puts++] ?? 'pass') : 'pass');
    const ids = newIds();
    const wal = makeWal(4 * SEGMENT_BYTES + 50_000, 21);
    const session = await stream(node, ids, wal);
    proposers.push(session.proposer);
    const expected = [1n, 2n, 3n, 4n].map(segmentName);
    await waitFor(async () => (await timelineLsns(node, ids)).backupLsn === segmentStartLsn(5n, SEGMENT_BYTES), { what: 'backup_lsn = segment 5', timeoutMs: 30_000 });
    assert.deepEqual(await remoteNames(remote, ids), expected);
    for (const segno of [2n, 3n, 4n]) {
      const body = await remote.get(`${ids.tenantId}/${ids.timelineId}/${segmentName(segno)}`, signal);
      assert.deepEqual(body, segmentBytes(wal, segno));
      assert.equal((await remote.head(`${ids.tenantId}/${ids.timelineId}/${segmentName(segno)}`, signal))?.metadata.xxhash64, xxhash64Hex(body));
    }
    assert.ok(puts >= 4 + faults.length, `every fault was hit (${puts} PUTs)`);
    assert.ok((await metricValue(node, 'safekeeper_remote_storage_requests_total', '{operation="put",outcome="retry"}')) >= 3);
    await session.proposer.close();
  });

  test('during an outage ingest keeps its pace, nothing un-uploaded is removed; afterwards the backlog goes up', async () => {
    proxy.decide = () => 'pass';
    const baselineIds = newIds();
    const wal = makeWal(3 * SEGMENT_BYTES + 100_000, 22);
    const baseline = await stream(node, baselineIds, wal);
    proposers.push(baseline.proposer);
    await baseline.proposer.close();

    proxy.decide = (request) => (request.index % 2 === 0 ? 'hang' : 'reset'); // S3 is gone
    const ids = newIds();
    const session = await stream(node, ids, wal); // resolves once every byte is acknowledged
    proposers.push(session.proposer);
    // Acknowledged while not one upload had succeeded: acks never wait for remote storage. (How fast is
    // the benchmarks' business; a timed assertion here would only be flaky under load.)
    assert.equal((await timelineLsns(node, ids)).backupLsn, wal.firstRecordLsn, 'nothing was uploaded while ingest was acknowledged');
    await waitFor(async () => (await metricValue(node, 'safekeeper_remote_storage_requests_total', '{operation="put",outcome="error"}')) >= 1, { what: 'an upload gave up', timeoutMs: 20_000 });
    await checkpoint(node, ids);
    const local = await localSegmentNames(dataDir, ids);
    for (const segno of [1n, 2n, 3n]) assert.ok(local.includes(segmentName(segno)), `segment ${segno} kept: ${local.join(',')}`);
    assert.equal((await timelineLsns(node, ids)).backupLsn, wal.firstRecordLsn);
    assert.deepEqual(await remoteNames(remote, ids), []);

    proxy.decide = () => 'pass';
    await waitFor(async () => (await timelineLsns(node, ids)).backupLsn === segmentStartLsn(4n, SEGMENT_BYTES), { what: 'the backlog uploaded', timeoutMs: 30_000 });
    assert.deepEqual(await remoteNames(remote, ids), [1n, 2n, 3n].map(segmentName));
    await checkpoint(node, ids);
    const after = await localSegmentNames(dataDir, ids);
    assert.deepEqual(after.filter((name) => name < segmentName(4n)), [], `uploaded segments removed: ${after.join(',')}`);
    await session.proposer.close();
  });
});
