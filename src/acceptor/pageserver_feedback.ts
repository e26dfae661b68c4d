/**
 * PageserverFeedback: the extensible key/value record (protocol doc §3.6) that the pageserver sends us
 * inside `z` replication messages (§5.4) and that we append to AppendResponses for walproposer
 * backpressure. Always big-endian, in v2 as well as v3. Layout: `u8 n_keys`, then per key a cstring,
 * `i32 value_len`, value bytes. Neon writes the five LSN/size/time keys in a fixed order, then
 * `shard_number` (only if > 0) and `corruption_detected` (only if true). Readers skip unknown keys by
 * their length and accept walproposer's older aliases. Pure; any thread.
 */
import type { Lsn } from '../wal/lsn.js';
import { ByteReader, ByteWriter } from './wire.js';

export interface PageserverFeedback {
  /** Logical size of the timeline (shard 0), bytes. */
  currentTimelineSizeBytes: bigint;
  /** Pageserver last_received_lsn (`ps_writelsn`). */
  lastReceivedLsn: Lsn;
  /** Pageserver disk_consistent_lsn (`ps_flushlsn`). */
  diskConsistentLsn: Lsn;
  /** Pageserver remote_consistent_lsn (`ps_applylsn`): uploaded to remote storage. */
  remoteConsistentLsn: Lsn;
  /** Reply time, µs since 2000-01-01 (PostgreSQL epoch); signed. */
  replyTimeUs: bigint;
  /** 0 for unsharded tenants. */
  shardNumber: number;
  corruptionDetected: boolean;
}

export const emptyPageserverFeedback = (): PageserverFeedback => ({
  currentTimelineSizeBytes: 0n,
  lastReceivedLsn: 0n,
  diskConsistentLsn: 0n,
  remoteConsistentLsn: 0n,
  replyTimeUs: 0n,
  shardNumber: 0,
  corruptionDetected: false,
});

export function writePageserverFeedback(writer: ByteWriter, feedback: PageserverFeedback): void {
  const optionalKeys = (feedback.shardNumber > 0 ? 1 : 0) + (feedback.corruptionDetected ? 1 : 0);
  writer.u8(5 + optionalKeys);
  const u64Key = (key: string, value: bigint): void => {
    writer.cstring(key);
    writer.i32(8);
    writer.u64(value);
  };
  u64Key('current_timeline_size', feedback.currentTimelineSizeBytes);
  u64Key('ps_writelsn', feedback.lastReceivedLsn);
  u64Key('ps_flushlsn', feedback.diskConsistentLsn);
  u64Key('ps_applylsn', feedback.remoteConsistentLsn);
  writer.cstring('ps_replytime');
  writer.i32(8);
  writer.i64(feedback.replyTimeUs);
  if (feedback.shardNumber > 0) {
    writer.cstring('shard_number');
    writer.i32(4);
    writer.u32(feedback.shardNumber);
  }
  if (feedback.corruptionDetected) {
    writer.cstring('corruption_detected');
    writer.i32(1);
    writer.u8(1);
  }
}

/** Big-endian encoding of one feedback record (no trailing bytes). */
export function encodePageserverFeedback(feedback: PageserverFeedback): Uint8Array {
  const writer = new ByteWriter(false, 160);
  writePageserverFeedback(writer, feedback);
  return writer.finish();
}

/**
 * Reads one feedback record from `reader` (which must be big-endian). Known keys with the wrong
 * value length are a protocol violation (Neon asserts); unknown keys are skipped.
 */
export function readPageserverFeedback(reader: ByteReader): PageserverFeedback {
  const feedback = emptyPageserverFeedback();
  const keyCount = reader.u8('feedback key count');
  for (let index = 0; index < keyCount; index += 1) {
    const key = reader.cstring('feedback key');
    const valueLengthBytes = reader.i32(`feedback ${key} length`);
    if (valueLengthBytes < 0) reader.fail(`feedback key ${key} has negative length ${valueLengthBytes}`);
    const expectLength = (expected: number): void => {
      if (valueLengthBytes !== expected) reader.fail(`feedback key ${key} has length ${valueLengthBytes}, expected ${expected}`);
    };
    switch (key) {
      case 'current_timeline_size':
        expectLength(8);
        feedback.currentTimelineSizeBytes = reader.u64(key);
        break;
      case 'ps_writelsn':
      case 'last_received_lsn':
        expectLength(8);
        feedback.lastReceivedLsn = reader.u64(key);
        break;
      case 'ps_flushlsn':
      case 'disk_consistent_lsn':
        expectLength(8);
        feedback.diskConsistentLsn = reader.u64(key);
        break;
      case 'ps_applylsn':
      case 'remote_consistent_lsn':
        expectLength(8);
        feedback.remoteConsistentLsn = reader.u64(key);
        break;
      case 'ps_replytime':
      case 'replytime':
        expectLength(8);
        feedback.replyTimeUs = reader.i64(key);
        break;
      case 'shard_number':
        expectLength(4);
        feedback.shardNumber = reader.u32(key);
        break;
      case 'corruption_detected':
        expectLength(1);
        feedback.corruptionDetected = reader.u8(key) !== 0;
        break;
      default:
        reader.skip(valueLengthBytes, `feedback key ${key} value`);
    }
  }
  return feedback;
}

/** Decodes exactly one feedback record; trailing bytes are an error. */
export function decodePageserverFeedback(bytes: Uint8Array): PageserverFeedback {
  const reader = new ByteReader(bytes, false, 'PageserverFeedback');
  const feedback = readPageserverFeedback(reader);
  reader.expectEnd();
  return feedback;
}
