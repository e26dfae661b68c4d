/**
 * Messages between the main thread and the Piscina writer workers (`workers/wal_writer.ts`). Every task is
 * a plain structured-cloneable object; WAL bytes never travel in messages, only the ring's SharedArrayBuffer
 * and the LSN range to take from it. Operating errors come back as data (`ok: false`); a worker that throws
 * has a bug. Every task finishes all its I/O before it returns.
 */
import type { DecoderState } from '../wal/record_decoder.js';
import type { Lsn } from '../wal/lsn.js';
import type { WalCorruptionError } from '../errors.js';
import type { PreparedSegment, SegmentFill } from '../storage/segment_file.js';

interface TimelineFiles {
  /** The timeline directory holding its segment files. */
  dir: string;
  segmentSizeBytes: number;
  /** Skip fsync/fdatasync (tests and benchmarks only). */
  noSync: boolean;
}

/**
 * Decode, verify, pwrite and fdatasync WAL [beginLsn, endLsn) taken from the ring (a large batch is written
 * first and verified while it syncs; see `workers/wal_writer.ts`).
 */
export interface WriteTask extends TimelineFiles {
  kind: 'write';
  ring: SharedArrayBuffer;
  beginLsn: Lsn;
  endLsn: Lsn;
  /** Decoder state at beginLsn (a record may be cut at the end of the previous batch). */
  decoder: DecoderState;
}

/** Create a segment ahead of the writer, from a recycled one when there is one, zero-filled as `fill` says. */
export interface PrepareTask extends TimelineFiles {
  kind: 'prepare';
  segno: bigint;
  fill: SegmentFill;
}

/** Cut WAL at `lsn`: later segments deleted, the tail of lsn's segment zeroed, renamed back to `.partial`. */
export interface TruncateTask extends TimelineFiles {
  kind: 'truncate';
  lsn: Lsn;
}

/** Write the initial segment image for a timeline whose WAL starts mid-segment at `lsn`. */
export interface InitSegmentTask extends TimelineFiles {
  kind: 'init_segment';
  lsn: Lsn;
  systemId: bigint;
  pgVersion: number;
}

/** Crash recovery: decode segments from `startLsn` (a record boundary) and report the last verified record end. */
export interface ScanTask extends TimelineFiles {
  kind: 'scan';
  startLsn: Lsn;
  pgVersion: number;
}

export type WriterTask = WriteTask | PrepareTask | TruncateTask | InitSegmentTask | ScanTask;

export interface TaskTimings {
  decodeMs: number;
  writeMs: number;
  /** From the end of the writes to durable; for a large batch, verified meanwhile, it includes whatever part
   * of the verification the sync did not hide. */
  fsyncMs: number;
}

export type WriteResult =
  | { ok: true; decoder: DecoderState; recordEndLsn: Lsn; completedSegments: number; timings: TaskTimings }
  | {
      ok: false;
      /** SafekeeperError code: SK_WAL_CORRUPTION, SK_DISK_FULL or SK_STORAGE_IO. */
      code: string;
      detail: string;
      /** Where the bad record or page starts, and what was wrong (corruption only). */
      errorLsn: Lsn | null;
      corruption: WalCorruptionError['kind'] | null;
      /** Everything before this is verified and durable; nothing after it is kept. */
      recordEndLsn: Lsn;
    };

export type SimpleResult = { ok: true } | { ok: false; code: string; detail: string };

export type PrepareResult = { ok: true; prepared: PreparedSegment } | { ok: false; code: string; detail: string };

export type ScanResult = { ok: true; endLsn: Lsn; detail: string } | { ok: false; code: string; detail: string };
