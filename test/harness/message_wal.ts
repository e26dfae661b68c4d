/**
 * Small valid WAL for writer tests: `count` logical messages of `payloadBytes` each from `startLsn`, with each
 * record's end LSN, and a copy of it with one record's body damaged (a CRC mismatch at a known record).
 */
import assert from 'node:assert/strict';
import type { Lsn } from '../../src/wal/lsn.js';
import { WalBuilder } from '../../src/wal/wal_builder.js';

export interface MessageWal {
  bytes: Uint8Array;
  /** End LSN of each record, in order. */
  ends: Lsn[];
}

export function messageWal(args: { startLsn: Lsn; segmentSizeBytes: number; pgVersion: number; count: number; payloadBytes: number }): MessageWal {
  const builder = new WalBuilder({ startLsn: args.startLsn, segmentSizeBytes: args.segmentSizeBytes, pgVersion: args.pgVersion, systemId: 7n });
  const ends: Lsn[] = [];
  for (let i = 0; i < args.count; i++) ends.push(builder.appendLogicalMessage(new Uint8Array(args.payloadBytes).fill(i & 0xff)).endLsn);
  return { bytes: builder.take(), ends };
}

/**
 * A copy of `wal` (starting at `startLsn`) with a byte flipped inside the body of the first record that starts
 * at or after `nearLsn`; `goodEndLsn` is that record's start, the end of the last good record.
 */
export function damageRecordNear(wal: MessageWal, startLsn: Lsn, nearLsn: Lsn): { bad: Uint8Array; goodEndLsn: Lsn } {
  const victim = wal.ends.findIndex((end) => end >= nearLsn) + 1;
  assert.ok(victim > 0 && victim < wal.ends.length, 'the damaged record is inside the WAL');
  const goodEndLsn = wal.ends[victim - 1]!;
  const bad = wal.bytes.slice();
  const at = Number(goodEndLsn - startLsn) + 100;
  bad[at] = bad[at]! ^ 0xff;
  return { bad, goodEndLsn };
}
