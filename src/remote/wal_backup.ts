/**
 * WAL backup of complete segments (storage reference §6.2): one ordered queue per timeline. The manager
 * calls `advance(targetSegno)` with segno(commit_lsn); every segment below it that is not uploaded yet is
 * read from local disk and put at `<tenant>/<timeline>/<24-hex name>`, at most `parallelJobs` at once and
 * only inside the window [uploadedEndSegno, uploadedEndSegno + parallelJobs), so uploads may finish out of
 * order but `uploadedEndSegno` (every segment below it confirmed) only moves over a contiguous run.
 * backup_lsn = segment start of `uploadedEndSegno`: it never claims a segment whose upload is unconfirmed.
 *
 * Memory: a segment is read only into the buffer of a coordinator-wide upload slot (`upload_slots.ts`), so
 * at most that many segment buffers exist at once, whatever the number of timelines, and they are reused.
 * Failures (after RemoteStorage's own retries) become state: a retry time that backs off
 * (`BACKUP_RETRY_MS_BASE` doubling per consecutive failure up to `BACKUP_RETRY_MS_MAX`); nothing new starts
 * before it, and the manager's timer calls `advance` again then. Nothing is thrown at the manager except bugs.
 * A segment below commit_lsn's segment is complete, but after an XLOG_SWITCH its tail may not have been
 * written yet and the file may still be `.partial`; its missing tail is zeros either way, so the `.partial`
 * is read when the complete name does not exist yet.
 * Abort: `signal` (the manager's) aborts running uploads; `stop()` waits for them. Coordinator thread.
 */
import type { TenantId, TimelineId } from '../acceptor/state.js';
import { SafekeeperError } from '../errors.js';
import { AssertionError, assert } from '../sync/assert.js';
import type { Failpoints } from '../sync/failpoints.js';
import { segmentFileName, segmentStartLsn, type Lsn } from '../wal/lsn.js';
import { objectKey, type RemoteStorage } from './remote_storage.js';
import { readUpTo } from '../storage/file_read.js';
import { openSegmentFile } from '../storage/segment_read.js';
import type { UploadSlots } from './upload_slots.js';

export const BACKUP_RETRY_MS_BASE = 200;
export const BACKUP_RETRY_MS_MAX = 10_000;

export interface SegmentBackupDeps {
  tenantId: TenantId;
  timelineId: TimelineId;
  dir: string;
  segmentSizeBytes: number;
  remote: RemoteStorage;
  uploadSlots: UploadSlots;
  parallelJobs: number;
  failpoints: Failpoints;
  signal: AbortSignal;
  /** An upload ended (either way): the manager takes a new snapshot. */
  onSettled: () => void;
  onUploaded: (bytes: number, durationMs: number) => void;
  onFailed: (segno: bigint, error: unknown) => void;
  nowMs: () => number;
}

export class SegmentBackup {
  #uploadedEndSegno: bigint;
  #targetSegno: bigint;
  readonly #running = new Map<bigint, Promise<void>>();
  readonly #done = new Set<bigint>();
  /** Consecutive failed uploads (reset by a success); they set the backoff. */
  #failures = 0;
  /** No upload starts before this time; null when nothing waits for a retry. */
  #retryAtMs: number | null = null;
  #lastError: unknown = null;

  constructor(private readonly deps: SegmentBackupDeps, startSegno: bigint) {
    assert(deps.parallelJobs >= 1, 'at least one upload at a time');
    this.#uploadedEndSegno = startSegno;
    this.#targetSegno = startSegno;
  }

  /** Every segment below this one is confirmed in remote storage. */
  get uploadedEndSegno(): bigint {
    return this.#uploadedEndSegno;
  }

  get uploadedEndLsn(): Lsn {
    return segmentStartLsn(this.#uploadedEndSegno, this.deps.segmentSizeBytes);
  }

  get running(): number {
    return this.#running.size;
  }

  /** When a failed upload may be retried; null when nothing failed. */
  get retryAtMs(): number | null {
    return this.#retryAtMs;
  }

  get lastError(): unknown {
    return this.#lastError;
  }

  /** Whether segments below `targetSegno` are all confirmed and nothing runs. */
  idleAt(targetSegno: bigint): boolean {
    return this.#running.size === 0 && this.#uploadedEndSegno >= targetSegno;
  }

  /** Someone else (a peer, a restart's control file) knows segments below `segno` are uploaded. */
  skipTo(segno: bigint): void {
    if (segno <= this.#uploadedEndSegno) return;
    this.#uploadedEndSegno = segno;
    for (const done of this.#done) if (done < segno) this.#done.delete(done);
  }

  /** Starts uploads towards `targetSegno` (exclusive) as the window and the retry time allow. */
  advance(targetSegno: bigint): void {
    if (targetSegno > this.#targetSegno) this.#targetSegno = targetSegno;
    if (this.#retryAtMs !== null) {
      if (this.deps.nowMs() < this.#retryAtMs) return;
      this.#retryAtMs = null; // retry now; a new failure sets a later time
    }
    const windowEnd = this.#uploadedEndSegno + BigInt(this.deps.parallelJobs);
    for (let segno = this.#uploadedEndSegno; segno < this.#targetSegno && segno < windowEnd; segno++) {
      if (this.deps.signal.aborted) return;
      if (this.#done.has(segno) || this.#running.has(segno)) continue;
      this.#running.set(segno, this.#upload(segno));
    }
  }

  /** Waits for every running upload to end (they stop early once the manager's signal fires). */
  async stop(): Promise<void> {
    await Promise.all(this.#running.values());
  }

  async #upload(segno: bigint): Promise<void> {
    const { deps } = this;
    const startedMs = deps.nowMs();
    try {
      const slot = await deps.uploadSlots.acquire(deps.signal);
      let settled = false;
      try {
        await deps.failpoints.hit('backup-before-upload', deps.signal);
        const body = await readSegment(deps.dir, segno, deps.segmentSizeBytes, slot.buffer(deps.segmentSizeBytes + 1));
        await deps.remote.put(objectKey(deps.tenantId, deps.timelineId, segmentFileName(segno, deps.segmentSizeBytes)), body, deps.signal, { sk_type: 'full_segment' });
        settled = true;
        await deps.failpoints.hit('backup-after-upload', deps.signal);
        deps.onUploaded(body.length, deps.nowMs() - startedMs);
      } finally {
        slot.release(settled);
      }
      // Below the end already (backup_lsn jumped ahead meanwhile: skipTo): nothing waits for it, so do not keep it.
      if (segno >= this.#uploadedEndSegno) this.#done.add(segno);
      while (this.#done.delete(this.#uploadedEndSegno)) this.#uploadedEndSegno += 1n;
      this.#failures = 0;
    } catch (error) {
      if (error instanceof AssertionError) throw error;
      if (!deps.signal.aborted) {
        this.#failures += 1;
        const delayMs = Math.min(BACKUP_RETRY_MS_MAX, BACKUP_RETRY_MS_BASE * 2 ** Math.min(this.#failures - 1, 16));
        this.#retryAtMs = Math.max(this.#retryAtMs ?? 0, deps.nowMs() + delayMs);
        this.#lastError = error;
        deps.onFailed(segno, error);
      }
    } finally {
      this.#running.delete(segno);
      deps.onSettled();
    }
  }
}

/**
 * A whole segment file: the complete name, else the `.partial` (see the header), else the complete name again.
 * Read into `into` (at least one byte longer than a segment) when given; the result is a view of it.
 */
export async function readSegment(dir: string, segno: bigint, segmentSizeBytes: number, into?: Buffer): Promise<Uint8Array> {
  assert(into === undefined || into.length > segmentSizeBytes, 'a segment buffer has room for one byte more than a segment');
  const opened = await openSegmentFile(dir, segno, segmentSizeBytes, true);
  if (opened === null) throw new SegmentMissingError(`segment ${segmentFileName(segno, segmentSizeBytes)} is not on local disk (${dir})`);
  try {
    // One read request for the whole segment (fs.readFile reads 512 KiB at a time: 32 thread-pool round
    // trips per 16 MiB); one byte more than a segment shows a file that is too long.
    const body = into ?? Buffer.allocUnsafeSlow(segmentSizeBytes + 1);
    const length = await readUpTo(opened.handle, body, 0, segmentSizeBytes + 1, 0);
    const size = length > segmentSizeBytes ? `more than ${segmentSizeBytes}` : String(length);
    if (length !== segmentSizeBytes) throw new SegmentMissingError(`segment ${segmentFileName(segno, segmentSizeBytes)} has ${size} bytes, not ${segmentSizeBytes}`);
    return body.subarray(0, length);
  } finally {
    await opened.handle.close();
  }
}

/** A segment the backup needs is missing or short on local disk: an operator must look (it is retried). */
export class SegmentMissingError extends SafekeeperError {
  override readonly name = 'SegmentMissingError';
  readonly code = 'SK_SEGMENT_MISSING';
  readonly sqlState = '58P01'; // undefined_file
}
