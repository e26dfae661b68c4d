/**
 * Unregister and delete_remote on the main ⇄ coordinator link (timeline/coordinator.ts,
 * timeline/coordinator_client.ts, timeline/must_land_retry.ts): a real Coordinator in process, reached
 * through a MessageChannel and main's RpcPort. Covered: delete_remote while the timeline's manager is still registered is an error reply
 * (SK_COORDINATOR_BUSY, HTTP 503), not an assertion, and the coordinator keeps serving; an unregister refused
 * because main's request budget is full is retried until it lands (`retryUntilLanded`), after which
 * delete_remote removes the timeline's remote objects; and the retry helper's own outcomes.
 */
import assert from 'node:assert/strict';
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import { MessageChannel } from 'node:worker_threads';
import { ttid as ttidOf, type TenantId, type TimelineId } from '../../src/acceptor/state.js';
import { InvalidArgumentError, SafekeeperError, ShutdownError } from '../../src/errors.js';
import { StateBlock, StateBlockChunk } from '../../src/ingest/state_block.js';
import { LocalFsBackend } from '../../src/remote/local_fs.js';
import { objectKey, RemoteStorage } from '../../src/remote/remote_storage.js';
import { timelineDir } from '../../src/storage/layout.js';
import { Coordinator } from '../../src/timeline/coordinator.js';
import type { CoordinatorOptions, MainNotice, MainRequest, TimelineRegistration } from '../../src/timeline/coordinator_protocol.js';
import { retryUntilLanded } from '../../src/timeline/must_land_retry.js';
import { CoordinatorBusyError, RpcPort, type MessageEndpoint } from '../../src/timeline/rpc_port.js';
import { makeTempDir, removeAllTempDirs } from '../harness/tmp.js';

const TENANT_ID = 'c'.repeat(32) as TenantId;
const TIMELINE_ID = 'd'.repeat(32) as TimelineId;
const TTID = ttidOf(TENANT_ID, TIMELINE_ID);
const SEGMENT_BYTES = 1 << 20;

after(() => removeAllTempDirs());

/** A coordinator with one registered, idle timeline (no WAL), and main's end of the link with `requestsInFlightMax`. */
async function setup(requestsInFlightMax: number): Promise<{ main: RpcPort; remote: RemoteStorage; close: () => Promise<void> }> {
  const dataDir = makeTempDir('sk-coordinator-');
  const remoteRoot = join(dataDir, 'remote');
  await mkdir(timelineDir(dataDir, TENANT_ID, TIMELINE_ID), { recursive: true });
  const options: CoordinatorOptions = {
    nodeId: 1n,
    dataDir,
    noSync: true,
    remoteStorage: { kind: 'file', url: `file://${remoteRoot}`, path: remoteRoot },
    remoteRequestTimeoutMs: 10_000,
    controlFileSaveIntervalMs: 300_000,
    partialBackupTimeoutMs: 900_000,
    evictionMinResidentMs: 600_000,
    enableOffload: false,
    deleteOffloadedWal: false,
    walBackupParallelJobs: 1,
    walRecycleSegments: 0,
    failpointsEnabled: false,
  };
  const { port1, port2 } = new MessageChannel();
  new Coordinator(port1 as unknown as MessageEndpoint, options);
  // Main answers the persists a checkpoint asks for, and ignores notices (logs, the active set).
  const main = new RpcPort(port2 as unknown as MessageEndpoint, { onRequest: async () => ({ value: null }), onNotify: () => {} }, requestsInFlightMax);
  const chunk = new StateBlockChunk(0, 1);
  new StateBlock(chunk, 0); // every LSN 0: the manager has nothing to do
  const notify = (notice: MainNotice): void => main.notify(notice);
  notify({ kind: 'state_chunk', chunkId: 0, blockCount: 1, buffer: chunk.buffer });
  const registration: TimelineRegistration = { ttid: TTID, tenantId: TENANT_ID, timelineId: TIMELINE_ID, segmentSizeBytes: SEGMENT_BYTES, stateChunkId: 0, stateBlockIndex: 0, partialSegments: [], evictionState: { kind: 'Present' } };
  notify({ kind: 'register', timeline: registration });
  const remote = new RemoteStorage(new LocalFsBackend(remoteRoot, { noSync: true }));
  await remote.put(objectKey(TENANT_ID, TIMELINE_ID, '000000010000000000000001'), new Uint8Array(16), new AbortController().signal, {});
  const close = async (): Promise<void> => {
    await main.request({ kind: 'shutdown' } satisfies MainRequest);
    main.close();
    port1.close();
    port2.close();
  };
  return { main, remote, close };
}

const deleteRemote = { kind: 'delete_remote', tenantId: TENANT_ID, timelineId: TIMELINE_ID } satisfies MainRequest;
const unregister = { kind: 'unregister', ttid: TTID } satisfies MainRequest;

describe('delete_remote and unregister through a real coordinator', () => {
  test('delete_remote while the manager is registered is a 503 error reply; the coordinator keeps serving', async () => {
    const { main, remote, close } = await setup(16);
    try {
      await assert.rejects(main.request(deleteRemote), (e: unknown) => e instanceof CoordinatorBusyError && e.httpStatus === 503 && e.message.includes(TTID));
      assert.equal((await remote.list(`${TENANT_ID}/`, new AbortController().signal)).length, 1, 'the objects are kept');
      assert.ok(await main.request({ kind: 'metrics' } satisfies MainRequest));
      await main.request({ kind: 'checkpoint', ttid: TTID } satisfies MainRequest);
      await main.request(unregister);
      assert.equal(await main.request(deleteRemote), 1);
      assert.deepEqual(await remote.list(`${TENANT_ID}/`, new AbortController().signal), []);
    } finally {
      await close();
    }
  });

  test('an unregister refused while the link is full is retried until it lands, then delete_remote goes through', async () => {
    const { main, remote, close } = await setup(1);
    try {
      const checkpoint = main.request({ kind: 'checkpoint', ttid: TTID } satisfies MainRequest); // takes the one slot
      await assert.rejects(main.request(unregister), CoordinatorBusyError, 'refused at once, as a dropped unregister was');
      const failures: Array<[string, number]> = [];
      const outcome = await retryUntilLanded(async () => void (await main.request(unregister)), {
        stopping: () => false,
        onFailure: (error, attempts) => failures.push([error.code, attempts]),
        random: () => 0,
      });
      await checkpoint;
      assert.equal(outcome, 'done');
      // The first retry runs before the checkpoint can have replied; later ones land once it has.
      assert.ok(failures.length >= 1, 'refused again while the checkpoint held the slot');
      assert.deepEqual(failures, failures.map((_, index) => ['SK_COORDINATOR_BUSY', index + 1]));
      assert.equal(await main.request(deleteRemote), 1);
      assert.deepEqual(await remote.list(`${TENANT_ID}/`, new AbortController().signal), []);
    } finally {
      await close();
    }
  });
});

describe('retryUntilLanded', () => {
  const busy = (): SafekeeperError => new CoordinatorBusyError('busy');

  test('retries operating errors with backoff until the attempt succeeds', async () => {
    let calls = 0;
    const seen: number[] = [];
    const outcome = await retryUntilLanded(
      async () => {
        calls += 1;
        if (calls < 4) throw calls === 2 ? new InvalidArgumentError('odd') : busy();
      },
      { stopping: () => false, onFailure: (_error, attempts) => seen.push(attempts), random: () => 0 },
    );
    assert.equal(outcome, 'done');
    assert.equal(calls, 4);
    assert.deepEqual(seen, [1, 2, 3]);
  });

  test('gives up when the coordinator is stopping or the link is closed', async () => {
    let stopping = false;
    const failures: number[] = [];
    const stopped = await retryUntilLanded(
      async () => {
        stopping = true;
        throw busy();
      },
      { stopping: () => stopping, onFailure: (_error, attempts) => failures.push(attempts) },
    );
    assert.equal(stopped, 'stopped');
    assert.deepEqual(failures, []);
    const closed = await retryUntilLanded(() => Promise.reject(new ShutdownError()), { stopping: () => false, onFailure: () => assert.fail('not a failure to retry') });
    assert.equal(closed, 'stopped');
  });

  test('a bug (not a SafekeeperError) propagates', async () => {
    const bug = new TypeError('x is undefined');
    await assert.rejects(retryUntilLanded(() => Promise.reject(bug), { stopping: () => false, onFailure: () => assert.fail('not retried') }), bug);
  });
});
