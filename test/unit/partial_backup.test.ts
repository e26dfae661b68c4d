/**
 * Partial segment backup under its coordinator-wide permits (remote/partial_backup.ts): many timelines due at
 * once (after a restart) against a remote store whose puts hang, as in an S3 slowdown. Only `permits` uploads
 * read their segment prefix into memory; the rest wait before step 1 (nothing persisted, nothing read), and
 * an aborted wait takes no permit. The remote store is an in-memory backend whose puts wait for the test.
 */
import assert from 'node:assert/strict';
import { setMaxListeners } from 'node:events';
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import type { PartialRemoteSegment, TenantId, TimelineId } from '../../src/acceptor/state.js';
import { uploadPartialSegment, type PartialBackupDeps } from '../../src/remote/partial_backup.js';
import { RemoteStorage, type ByteRange, type RemoteBackend, type RemoteObjectHead, type RemoteObjectInfo } from '../../src/remote/remote_storage.js';
import { segmentPath } from '../../src/storage/layout.js';
import { Failpoints } from '../../src/sync/failpoints.js';
import { Semaphore } from '../../src/sync/semaphore.js';
import { segmentStartLsn } from '../../src/wal/lsn.js';
import { makeTempDir, removeAllTempDirs } from '../harness/tmp.js';
import { waitFor } from '../harness/wait.js';

const SEGMENT_BYTES = 1 << 20;
const SEGNO = 5n;
/** Almost a whole segment: each upload holds about SEGMENT_BYTES while its put runs. */
const FLUSH_LSN = segmentStartLsn(SEGNO, SEGMENT_BYTES) + BigInt(SEGMENT_BYTES - 100);
const TENANT_ID = 'a'.repeat(32) as TenantId;
const TIMELINES = 12;
const PERMITS = 5;

after(() => removeAllTempDirs());

/** Puts wait until `open()` (or their attempt's abort); it counts the bodies they hold meanwhile. */
class HangingBackend implements RemoteBackend {
  readonly kind = 's3' as const;
  readonly description = 'hanging test backend';
  putsInFlight = 0;
  putsInFlightMax = 0;
  bytesInFlight = 0;
  bytesInFlightMax = 0;
  readonly #waiters = new Set<() => void>();
  #open = false;

  open(): void {
    this.#open = true;
    for (const wake of this.#waiters) wake();
  }

  async put(_key: string, body: Uint8Array, _metadata: Record<string, string>, signal: AbortSignal): Promise<void> {
    this.putsInFlight += 1;
    this.bytesInFlight += body.length;
    this.putsInFlightMax = Math.max(this.putsInFlightMax, this.putsInFlight);
    this.bytesInFlightMax = Math.max(this.bytesInFlightMax, this.bytesInFlight);
    try {
      if (this.#open) return;
      await new Promise<void>((resolve, reject) => {
        const wake = (): void => {
          this.#waiters.delete(wake);
          signal.removeEventListener('abort', onAbort);
          resolve();
        };
        const onAbort = (): void => {
          this.#waiters.delete(wake);
          reject(signal.reason);
        };
        this.#waiters.add(wake);
        signal.addEventListener('abort', onAbort, { once: true });
      });
    } finally {
      this.putsInFlight -= 1;
      this.bytesInFlight -= body.length;
    }
  }

  async get(key: string, _range: ByteRange | null, _signal: AbortSignal): Promise<{ body: Uint8Array; sizeBytes: number; metadata: Record<string, string> }> {
    throw new Error(`unexpected get ${key}`);
  }

  async head(_key: string, _signal: AbortSignal): Promise<RemoteObjectHead | null> {
    return null;
  }

  async list(_prefix: string, _signal: AbortSignal): Promise<RemoteObjectInfo[]> {
    return [];
  }

  async delete(_keys: readonly string[], _signal: AbortSignal): Promise<void> {}

  async copy(fromKey: string, _toKey: string, _signal: AbortSignal): Promise<void> {
    throw new Error(`unexpected copy ${fromKey}`);
  }

  async close(): Promise<void> {}
}

interface Upload {
  result: Promise<PartialRemoteSegment[] | Error>;
  /** Lists persisted by the upload, in order. */
  persisted: PartialRemoteSegment[][];
}

/** `TIMELINES` timelines, each with its `.partial` segment written up to FLUSH_LSN, uploading at once. */
async function startUploads(remote: RemoteStorage, permits: Semaphore, signal: AbortSignal): Promise<Upload[]> {
  const root = makeTempDir('sk-partial-permits-');
  const current = { flushLsn: FLUSH_LSN, commitLsn: FLUSH_LSN, term: 2n };
  const uploads: Upload[] = [];
  for (let index = 0; index < TIMELINES; index++) {
    const dir = join(root, String(index));
    await mkdir(dir);
    await writeFile(segmentPath(dir, SEGNO, SEGMENT_BYTES, true), Buffer.alloc(SEGMENT_BYTES, index + 1));
    const persisted: PartialRemoteSegment[][] = [];
    const deps: PartialBackupDeps = {
      tenantId: TENANT_ID,
      timelineId: index.toString(16).padStart(32, '0') as TimelineId,
      dir,
      segmentSizeBytes: SEGMENT_BYTES,
      nodeId: 1n,
      remote,
      permits,
      failpoints: new Failpoints(false),
      signal,
      persist: async (segments) => void persisted.push(structuredClone(segments)),
      current: () => current,
    };
    const result = uploadPartialSegment(deps, [], current).catch((error: unknown) => (error instanceof Error ? error : new Error(String(error))));
    uploads.push({ result, persisted });
  }
  return uploads;
}

/** A signal that never fires; every upload and its request listen on it. */
function testSignal(): AbortSignal {
  const { signal } = new AbortController();
  setMaxListeners(TIMELINES * 2, signal);
  return signal;
}

/** Uploads that got past their permit wait: step 1 persisted the InProgress record, then the prefix was read. */
const started = (uploads: readonly Upload[]): number => uploads.filter((upload) => upload.persisted.length > 0).length;

describe('partial backup permits', () => {
  test('while puts hang, only `permits` timelines hold a segment prefix in memory; the rest wait before persisting or reading', async () => {
    const backend = new HangingBackend();
    // Requests are not the bound here: more than TIMELINES may be in flight.
    const remote = new RemoteStorage(backend, { requestsMax: 16, requestTimeoutMs: 60_000, attemptsMax: 4, backoffBaseMs: 1, backoffMaxMs: 5 });
    const permits = new Semaphore(PERMITS);
    const uploads = await startUploads(remote, permits, testSignal());
    await waitFor(() => backend.putsInFlight === PERMITS, { what: `${PERMITS} puts hanging` });
    await new Promise((resolve) => setTimeout(resolve, 100)); // a window for any upload that would pass its permit
    assert.equal(started(uploads), PERMITS);
    assert.equal(permits.inUse, PERMITS);
    assert.equal(permits.waiting, TIMELINES - PERMITS);
    assert.equal(remote.requestsWaiting, 0, 'the request limit held nobody back');
    assert.ok(backend.bytesInFlight <= PERMITS * SEGMENT_BYTES, `${backend.bytesInFlight} bytes held by hanging puts`);

    backend.open(); // S3 recovers: the waiting uploads take their turns
    const results = await Promise.all(uploads.map((upload) => upload.result));
    for (const result of results) assert.ok(!(result instanceof Error), String(result));
    assert.equal(started(uploads), TIMELINES);
    assert.equal(backend.putsInFlightMax, PERMITS);
    assert.ok(backend.bytesInFlightMax <= PERMITS * SEGMENT_BYTES, `at most ${backend.bytesInFlightMax} bytes were held at once`);
    assert.equal(permits.inUse, 0);
  });

  test('puts that time out and retry keep their permit; the uploads behind them wait the whole time', async () => {
    const backend = new HangingBackend();
    const remote = new RemoteStorage(backend, { requestsMax: 16, requestTimeoutMs: 30, attemptsMax: 3, backoffBaseMs: 1, backoffMaxMs: 5 });
    const permits = new Semaphore(PERMITS);
    const uploads = await startUploads(remote, permits, testSignal());
    // RemoteStorage's backoff timers are unref'd: with every upload between attempts, nothing else would keep the test alive.
    const keepAlive = setInterval(() => {}, 1_000);
    const results = await Promise.all(uploads.map((upload) => upload.result)).finally(() => clearInterval(keepAlive));
    for (const result of results) assert.match(String(result), /timed out/);
    assert.equal(started(uploads), TIMELINES, 'each had its turn');
    assert.equal(backend.putsInFlightMax, PERMITS);
    assert.ok(backend.bytesInFlightMax <= PERMITS * SEGMENT_BYTES);
    assert.equal(permits.inUse, 0);
  });

  test('an abort ends the waits: the waiting uploads persist nothing and take no permit', async () => {
    const backend = new HangingBackend();
    const remote = new RemoteStorage(backend, { requestsMax: 16, requestTimeoutMs: 60_000, attemptsMax: 4, backoffBaseMs: 1, backoffMaxMs: 5 });
    const permits = new Semaphore(PERMITS);
    const controller = new AbortController();
    setMaxListeners(TIMELINES * 2, controller.signal);
    const uploads = await startUploads(remote, permits, controller.signal);
    await waitFor(() => backend.putsInFlight === PERMITS, { what: `${PERMITS} puts hanging` });
    const reason = new Error('manager stopping');
    controller.abort(reason);
    const results = await Promise.all(uploads.map((upload) => upload.result));
    for (const result of results) assert.equal(result, reason);
    assert.equal(started(uploads), PERMITS);
    assert.equal(permits.inUse, 0);
    assert.equal(permits.waiting, 0);
  });
});
