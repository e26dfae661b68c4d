/**
 * WAL sources for tests that stream through the test proposer: a `WalSource` is bytes at an LSN, and
 * `syntheticWal()` builds valid, seeded WAL (logical messages from WalBuilder) of a chosen size, optionally
 * with an XLOG_SWITCH, continuing another branch, so tests get divergent histories without a PostgreSQL.
 *
 * Design: everything is derived from a seed (xorshift32), so a failing run reproduces from the seed it prints.
 * Pure: nothing here does I/O.
 */
import assert from 'node:assert/strict';
import type { Lsn } from '../../src/wal/lsn.js';
import { WalBuilder, type BuiltRecord } from '../../src/wal/wal_builder.js';
import { recordEndLsn } from './real_wal.js';

/** A WAL source: `bytes[0]` is at `baseLsn`; valid WAL runs to `endLsn`. */
export interface WalSource {
  bytes: Uint8Array;
  baseLsn: Lsn;
  endLsn: Lsn;
}

/** The bytes of `source` over [fromLsn, toLsn). */
export function walRange(source: WalSource, fromLsn: Lsn, toLsn: Lsn = source.endLsn): Uint8Array {
  assert.ok(fromLsn >= source.baseLsn && toLsn <= source.baseLsn + BigInt(source.bytes.length) && fromLsn <= toLsn, 'range inside the source');
  return source.bytes.subarray(Number(fromLsn - source.baseLsn), Number(toLsn - source.baseLsn));
}

/** A seeded xorshift32 generator, so a failing run reproduces from its seed. */
export function seededRandom(seed: number): () => number {
  let x = seed >>> 0 || 1;
  return () => {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    return (x >>> 0) / 0x1_0000_0000;
  };
}

/** An XLOG_SWITCH record is a bare 24-byte header (8-aligned already). */
const SWITCH_RECORD_BYTES = 24;

export interface SyntheticWal extends WalSource {
  /** Where the first record starts (after the page header at `baseLsn`, if any). */
  firstRecordLsn: Lsn;
  /** Every record, in order: start and MAXALIGNed end (the next segment start after an XLOG_SWITCH). */
  records: BuiltRecord[];
  /** xl_prev for a record appended after the last one. */
  lastRecordLsn: Lsn;
}

export interface SyntheticWalOptions {
  /** Where the builder starts: a segment start gets the long page header first. */
  startLsn: Lsn;
  segmentSizeBytes: number;
  pgVersion: number;
  systemId: bigint;
  /** Build records until the WAL reaches this many bytes past startLsn. */
  totalBytes: number;
  seed: number;
  /** xl_prev of the first record (a branch continuing another WAL). */
  prevLsn?: Lsn;
  /** Put an XLOG_SWITCH after this fraction of totalBytes (none by default). */
  switchAtFraction?: number;
}

/**
 * Valid synthetic WAL (logical messages from WalBuilder): mostly small records, some crossing pages, a few
 * spanning many pages; payload bytes come from `seed`, so two seeds give divergent branches.
 */
export function syntheticWal(options: SyntheticWalOptions): SyntheticWal {
  const builder = new WalBuilder({
    startLsn: options.startLsn,
    segmentSizeBytes: options.segmentSizeBytes,
    pgVersion: options.pgVersion,
    systemId: options.systemId,
    ...(options.prevLsn !== undefined ? { prevLsn: options.prevLsn } : {}),
  });
  const random = seededRandom(options.seed);
  const records: BuiltRecord[] = [];
  const endTarget = options.startLsn + BigInt(options.totalBytes);
  const switchLsn = options.switchAtFraction === undefined ? null : options.startLsn + BigInt(Math.floor(options.totalBytes * options.switchAtFraction));
  let switchRecord: BuiltRecord | null = null;
  while (builder.lsn < endTarget) {
    if (switchLsn !== null && switchRecord === null && builder.lsn >= switchLsn) {
      switchRecord = builder.appendSwitch();
      records.push(switchRecord);
      continue;
    }
    const roll = random();
    const payloadBytes = roll < 0.7 ? 1 + Math.floor(random() * 300) : roll < 0.95 ? 300 + Math.floor(random() * 9000) : 20_000 + Math.floor(random() * 80_000);
    const payload = new Uint8Array(payloadBytes);
    for (let i = 0; i < payloadBytes; i += 1) payload[i] = Math.floor(random() * 256);
    records.push(builder.appendLogicalMessage(payload));
  }
  const bytes = builder.take();
  if (switchRecord !== null) {
    // PostgreSQL (since 11, xlog.c CopyXLogRecordToWAL) zeroes the rest of the segment after XLOG_SWITCH,
    // page headers included, as the real WAL fixture shows; WalBuilder writes page headers there. Match
    // PostgreSQL: a safekeeper acknowledges the next segment start before the tail arrives and keeps zeros.
    const tailStart = Number(recordEndLsn(switchRecord.startLsn, SWITCH_RECORD_BYTES, options.segmentSizeBytes) - options.startLsn);
    bytes.fill(0, tailStart, Number(switchRecord.endLsn - options.startLsn));
  }
  const first = records[0];
  assert.ok(first !== undefined, 'at least one record');
  return { bytes, baseLsn: options.startLsn, endLsn: builder.lsn, firstRecordLsn: first.startLsn, records, lastRecordLsn: builder.prevRecordLsn };
}

/** `a` followed by `b` (b starting where a's bytes end) as one source. */
export function concatSources(a: WalSource, b: WalSource): WalSource {
  assert.equal(b.baseLsn, a.baseLsn + BigInt(a.bytes.length), 'the second source continues the first');
  const bytes = new Uint8Array(a.bytes.length + b.bytes.length);
  bytes.set(a.bytes);
  bytes.set(b.bytes, a.bytes.length);
  return { bytes, baseLsn: a.baseLsn, endLsn: b.endLsn };
}
