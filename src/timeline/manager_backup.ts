/**
 * A timeline manager's WAL segment backup queue (`remote/wal_backup.ts`, which
 * uploads, confirms in order and retries with backoff on its own). Each pass of the manager moves the queue's start
 * past what main's backup_lsn says is uploaded or local WAL no longer has, then advances it to segno(commit_lsn); the
 * decisions read how far it got. The queue is created on the first upload: until then (and on an idle timeline,
 * forever) only the segment it would start from is kept. Upload failures are counted and logged here and never
 * thrown. Coordinator thread. Abort: the manager's signal aborts running uploads; `stop()` waits for them.
 */
import type { StateBlock } from '../ingest/state_block.js';
import { SegmentBackup } from '../remote/wal_backup.js';
import { lsnMax, segmentNumber, type Lsn } from '../wal/lsn.js';
import { describeError, type JobsOwner } from './manager_job_runner.js';
import type { ManagerShared } from './manager_shared.js';

export class ManagerBackup {
  #queue: SegmentBackup | null = null;
  /** Where the queue starts once created: below it, WAL is uploaded (main's backup_lsn) or no longer local. */
  #startSegno: bigint;

  constructor(private readonly owner: JobsOwner, private readonly block: StateBlock, private readonly shared: ManagerShared) {
    this.#startSegno = this.#knownSegno(block.get('backupLsn'));
  }

  /** Uploads running now. */
  get running(): number {
    return this.#queue?.running ?? 0;
  }

  /** Every segment below this one is uploaded and confirmed. */
  get uploadedEndSegno(): bigint {
    return this.#queue?.uploadedEndSegno ?? this.#startSegno;
  }

  /** When the queue retries after a failed upload (ms, the manager's clock); null when nothing failed. */
  get retryAtMs(): number | null {
    return this.#queue?.retryAtMs ?? null;
  }

  /** The highest backup_lsn known: main's, or the queue's confirmed upload end when that is ahead. */
  get backupLsn(): Lsn {
    return lsnMax(this.#queue?.uploadedEndLsn ?? 0n, this.block.get('backupLsn'));
  }

  /** Skips what main's `backupLsn` says is uploaded, and what local WAL no longer has. */
  skipTo(backupLsn: Lsn): void {
    const knownSegno = this.#knownSegno(backupLsn);
    if (this.#queue === null) this.#startSegno = knownSegno > this.#startSegno ? knownSegno : this.#startSegno;
    else this.#queue.skipTo(knownSegno);
  }

  /** Uploads every segment below `targetSegno` (exclusive) that is not uploaded yet. */
  advance(targetSegno: bigint): void {
    this.#open().advance(targetSegno);
  }

  /** Waits for running uploads (the manager's signal aborts them). */
  async stop(): Promise<void> {
    await this.#queue?.stop();
  }

  #open(): SegmentBackup {
    if (this.#queue !== null) return this.#queue;
    const { owner, shared } = this;
    this.#queue = new SegmentBackup(
      {
        tenantId: owner.tenantId,
        timelineId: owner.timelineId,
        dir: owner.dir,
        segmentSizeBytes: owner.segmentSizeBytes,
        remote: shared.remote,
        uploadSlots: shared.uploadSlots,
        parallelJobs: shared.config.walBackupParallelJobs,
        failpoints: shared.failpoints,
        signal: owner.signal(),
        onSettled: () => owner.kick(),
        onUploaded: (bytes) => {
          shared.counters.segmentsUploaded += 1;
          shared.counters.bytesUploaded += bytes;
        },
        onFailed: (segno, error) => {
          shared.counters.uploadFailures += 1;
          owner.log('warn', 'WAL segment upload failed; will retry', { segno: String(segno), err: describeError(error) });
        },
        nowMs: shared.nowMs,
      },
      this.#startSegno,
    );
    return this.#queue;
  }

  /** The first segment that may still need uploading: `backupLsn`'s, or local WAL's first when that is later. */
  #knownSegno(backupLsn: Lsn): bigint {
    return segmentNumber(lsnMax(backupLsn, this.block.get('localStartLsn')), this.owner.segmentSizeBytes);
  }
}
