/**
 * Synthetic WAL for load tests: non-transactional logical-message records (`--record-bytes` of payload each)
 * laid out by WalBuilder, so page headers, xl_prev chains and CRC-32C are valid and pg_waldump reads the
 * result. At full speed it generates a batch of up to one AppendRequest (128 KiB) per turn, and the WAL
 * window's backpressure paces it to what the quorum absorbs; with `--rate` it generates records on a
 * schedule (records per second), in batches of whatever is due.
 *
 * It stops after `--duration` or `--total-bytes` (then the proposer waits for the quorum to commit the
 * rest), or when the proposer is aborted. Each batch's end LSN and creation time wait in a PendingTimings
 * (bounded: past BATCHES_IN_FLIGHT_MAX new records join the last batch); `onCommit` turns them into commit
 * latencies, weighted by the batch's record count.
 * The identity: a system id derived from the tenant and timeline ids (stable across runs, so an existing
 * timeline is recognised), PostgreSQL 15 page magic, 16 MiB segments. A new timeline starts at the start of
 * segment 1 (or `--start-lsn`). Main thread.
 */
import { createHash } from 'node:crypto';
import { assert } from '../sync/assert.js';
import { sleep, throwIfAborted } from '../sync/cancel.js';
import { type Lsn, LSN_MAX, SEGMENT_SIZE_BYTES_DEFAULT, segmentStartLsn } from '../wal/lsn.js';
import { WalBuilder } from '../wal/wal_builder.js';
import { LatencyStats } from './latency_stats.js';
import { APPEND_BYTES_MAX } from './limits.js';
import { PendingTimings } from './pending_timings.js';
import type { ServerIdentity, StreamArgs, WalSource } from './source.js';

/** PostgreSQL 15.8's server_version_num: the page magic of 15. */
export const SYNTHETIC_PG_VERSION = 150008;
const BATCHES_IN_FLIGHT_MAX = 100_000;

export interface SyntheticOptions {
  tenantId: string;
  timelineId: string;
  recordBytes: number;
  /** Records per second; null = as fast as the quorum takes them. */
  recordsPerSecond: number | null;
  durationMs: number | null;
  totalBytes: number | null;
  startLsn: Lsn | null;
}

export interface SyntheticProgress {
  records: number;
  bytes: number;
  elapsedMs: number;
  committedLsn: Lsn;
  generatedLsn: Lsn;
}

export class SyntheticSource implements WalSource {
  readonly description = 'synthetic';
  readonly canRewind = false;
  readonly needsPrevRecordLsn = true;
  readonly identity: ServerIdentity;
  readonly latency = new LatencyStats();
  readonly #options: SyntheticOptions;
  readonly #payload: Uint8Array;
  readonly #batches = new PendingTimings(BATCHES_IN_FLIGHT_MAX);
  #records = 0;
  #bytes = 0;
  #startedMs = 0;
  #finishedMs = 0;
  #committedLsn: Lsn = 0n;
  #generatedLsn: Lsn = 0n;

  constructor(options: SyntheticOptions) {
    assert(Number.isInteger(options.recordBytes) && options.recordBytes >= 0, 'record size');
    this.#options = options;
    const digest = createHash('sha256').update(`${options.tenantId}/${options.timelineId}`).digest();
    this.identity = { systemId: digest.readBigUInt64BE(0) & 0x7fff_ffff_ffff_ffffn, pgVersion: SYNTHETIC_PG_VERSION, walSegSizeBytes: SEGMENT_SIZE_BYTES_DEFAULT };
    this.#payload = new Uint8Array(options.recordBytes);
    for (let index = 0; index < this.#payload.length; index += 1) this.#payload[index] = (index * 31 + 7) & 0xff;
  }

  earliestLsn(): Lsn {
    return LSN_MAX; // cannot rewind
  }

  initialLsn(): Promise<Lsn> {
    return Promise.resolve(this.#options.startLsn ?? segmentStartLsn(1n, this.identity.walSegSizeBytes));
  }

  progress(): SyntheticProgress {
    const endMs = this.#finishedMs === 0 ? performance.now() : this.#finishedMs;
    return { records: this.#records, bytes: this.#bytes, elapsedMs: this.#startedMs === 0 ? 0 : endMs - this.#startedMs, committedLsn: this.#committedLsn, generatedLsn: this.#generatedLsn };
  }

  async stream(args: StreamArgs): Promise<void> {
    const { signal } = args;
    const builder = new WalBuilder({ startLsn: args.startLsn, segmentSizeBytes: this.identity.walSegSizeBytes, pgVersion: this.identity.pgVersion, systemId: this.identity.systemId, prevLsn: args.prevRecordLsn ?? 0n });
    const { recordsPerSecond, durationMs, totalBytes } = this.#options;
    this.#startedMs = performance.now();
    this.#generatedLsn = args.startLsn;
    try {
      for (;;) {
        // Unpaced, nothing below waits on the signal while the window has room (write() then resolves at once),
        // so a stop (SIGTERM) must be looked for here or the generator runs on until its duration or total.
        throwIfAborted(signal);
        const elapsedMs = performance.now() - this.#startedMs;
        if (durationMs !== null && elapsedMs >= durationMs) return;
        if (totalBytes !== null && this.#bytes >= totalBytes) return;
        let due = Number.POSITIVE_INFINITY;
        if (recordsPerSecond !== null) {
          due = Math.floor((elapsedMs * recordsPerSecond) / 1000) + 1 - this.#records;
          if (due <= 0) {
            await sleep(Math.max(1, Math.ceil(((this.#records + 1) * 1000) / recordsPerSecond - elapsedMs)), signal);
            continue;
          }
        }
        const beginLsn = builder.lsn;
        let records = 0;
        while (records < due && builder.pendingBytes < APPEND_BYTES_MAX && (totalBytes === null || this.#bytes + builder.pendingBytes < totalBytes)) {
          builder.appendLogicalMessage(this.#payload);
          records += 1;
        }
        const bytes = builder.take();
        this.#records += records;
        this.#bytes += bytes.length;
        this.#generatedLsn = builder.lsn;
        if (records > 0) this.#batches.note(builder.lsn, performance.now(), records);
        await args.write(beginLsn, bytes, signal);
        // write() may resolve in microtasks only; yield so socket I/O (acks, sends) runs between batches.
        await new Promise<void>((resolve) => setImmediate(resolve));
      }
    } finally {
      this.#finishedMs = performance.now();
    }
  }

  onCommit(commitLsn: Lsn): void {
    this.#committedLsn = commitLsn;
    this.#batches.settle(commitLsn, performance.now(), (waitMs, records) => this.latency.add(waitMs, records));
  }

  onHotStandbyFeedback(): void {
    // Nobody to tell: there is no primary.
  }

  close(): Promise<void> {
    return Promise.resolve();
  }
}
