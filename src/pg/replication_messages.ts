/**
 * The messages of a physical replication stream inside CopyData (reference §5.2, §5.4; PostgreSQL's
 * "Streaming Replication Protocol"), both directions in one place: what a walsender sends (XLogData `w`,
 * keepalive `k`; our senders in src/send/ encode them, the proposer decodes them from PostgreSQL and from
 * donor safekeepers) and what a reader sends back (standby status `r`, hot standby feedback `h`, Neon
 * pageserver feedback `z`; our senders decode them, the proposer encodes them). All big-endian.
 *
 * Decoding is strict where Neon is strict: a `r` or `h` of the wrong length is a protocol violation that
 * ends the stream. A `z` is parsed with the pageserver-feedback codec (unknown keys skipped, trailing bytes
 * ignored as Neon does). Any other first byte is returned as `unknown` (Neon logs and ignores it).
 * Pure; any thread.
 */
import { readPageserverFeedback, type PageserverFeedback } from '../acceptor/pageserver_feedback.js';
import type { HotStandbyFeedback } from '../acceptor/messages.js';
import { ByteReader } from '../acceptor/wire.js';
import { ProtocolViolationError } from '../errors.js';
import { assert } from '../sync/assert.js';
import type { Lsn } from '../wal/lsn.js';

/** Milliseconds from the Unix epoch to PostgreSQL's (2000-01-01 00:00:00 UTC). */
const POSTGRES_EPOCH_UNIX_MS = 946_684_800_000;

export const XLOG_DATA_TAG = 0x77; // 'w'
export const KEEPALIVE_TAG = 0x6b; // 'k'
export const STANDBY_STATUS_TAG = 0x72; // 'r'
export const HOT_STANDBY_FEEDBACK_TAG = 0x68; // 'h'
export const PAGESERVER_FEEDBACK_TAG = 0x7a; // 'z'

/** `w`, u64 wal_start, u64 wal_end, i64 send_time; the WAL bytes follow. */
export const XLOG_DATA_HEADER_BYTES = 1 + 8 + 8 + 8;
/** `k`, u64 wal_end, i64 send_time, u8 reply_requested. */
export const KEEPALIVE_BYTES = 1 + 8 + 8 + 1;
/** After the tag: u64 write, u64 flush, u64 apply, i64 time, u8 reply_requested. */
const STANDBY_STATUS_BODY_BYTES = 8 + 8 + 8 + 8 + 1;
/** After the tag: i64 time, u32 xmin, u32 xmin_epoch, u32 catalog_xmin, u32 catalog_xmin_epoch. */
const HOT_STANDBY_FEEDBACK_BODY_BYTES = 8 + 4 + 4 + 4 + 4;
/** After the tag: a u64 length that Neon skips, then the feedback record. */
const PAGESERVER_FEEDBACK_LENGTH_BYTES = 8;

/** Now as PostgreSQL's TimestampTz: microseconds since 2000-01-01, signed. */
export function postgresNowUs(nowMs: number = Date.now()): bigint {
  return BigInt(Math.round((nowMs - POSTGRES_EPOCH_UNIX_MS) * 1000));
}

/** The 25-byte XLogData header; the caller sends the WAL bytes after it in the same CopyData. */
export function encodeXLogDataHeader(walStartLsn: Lsn, walEndLsn: Lsn, sendTimeUs: bigint): Buffer {
  const header = Buffer.allocUnsafe(XLOG_DATA_HEADER_BYTES);
  header[0] = XLOG_DATA_TAG;
  header.writeBigUInt64BE(walStartLsn, 1);
  header.writeBigUInt64BE(walEndLsn, 9);
  header.writeBigInt64BE(sendTimeUs, 17);
  return header;
}

export function encodeKeepalive(walEndLsn: Lsn, sendTimeUs: bigint, replyRequested: boolean): Buffer {
  const message = Buffer.allocUnsafe(KEEPALIVE_BYTES);
  message[0] = KEEPALIVE_TAG;
  message.writeBigUInt64BE(walEndLsn, 1);
  message.writeBigInt64BE(sendTimeUs, 9);
  message[17] = replyRequested ? 1 : 0;
  return message;
}

/** A standby's `r`: positions are ends of WAL (last byte + 1); 0 means unknown. */
export interface StandbyReply {
  writeLsn: Lsn;
  flushLsn: Lsn;
  applyLsn: Lsn;
  replyTimeUs: bigint;
  replyRequested: boolean;
}

/** What a walsender sends: WAL (`data` is a view of the payload) or a keepalive. */
export type WalSenderMessage =
  | { kind: 'xlog'; startLsn: Lsn; walEndLsn: Lsn; sendTimeUs: bigint; data: Uint8Array }
  | { kind: 'keepalive'; walEndLsn: Lsn; sendTimeUs: bigint; replyRequested: boolean };

/** Decodes one CopyData payload from a walsender (PostgreSQL's or a safekeeper's). */
export function decodeWalSenderMessage(payload: Uint8Array): WalSenderMessage {
  const tag = payload[0];
  const data = view(payload);
  if (tag === XLOG_DATA_TAG && payload.length >= XLOG_DATA_HEADER_BYTES) {
    return { kind: 'xlog', startLsn: data.getBigUint64(1), walEndLsn: data.getBigUint64(9), sendTimeUs: data.getBigInt64(17), data: payload.subarray(XLOG_DATA_HEADER_BYTES) };
  }
  if (tag === KEEPALIVE_TAG && payload.length >= KEEPALIVE_BYTES) {
    return { kind: 'keepalive', walEndLsn: data.getBigUint64(1), sendTimeUs: data.getBigInt64(9), replyRequested: payload[17] === 1 };
  }
  const name = tag === undefined ? '(empty)' : `'${String.fromCharCode(tag)}'`;
  throw new ProtocolViolationError('replication', `unexpected message ${name} of ${payload.length} bytes`);
}

export type ReaderMessage =
  | { tag: 'standby_reply'; reply: StandbyReply }
  | { tag: 'hot_standby_feedback'; feedback: HotStandbyFeedback }
  | { tag: 'pageserver_feedback'; feedback: PageserverFeedback }
  | { tag: 'unknown'; firstByte: number | null };

/** Decodes one CopyData payload a reader sent. ProtocolViolationError for a malformed `r`, `h` or `z`. */
export function decodeReaderMessage(payload: Uint8Array): ReaderMessage {
  const tag = payload[0];
  if (tag === undefined) return { tag: 'unknown', firstByte: null };
  const body = payload.subarray(1);
  switch (tag) {
    case STANDBY_STATUS_TAG:
      return { tag: 'standby_reply', reply: decodeStandbyReply(body) };
    case HOT_STANDBY_FEEDBACK_TAG:
      return { tag: 'hot_standby_feedback', feedback: decodeHotStandbyFeedback(body) };
    case PAGESERVER_FEEDBACK_TAG: {
      const reader = new ByteReader(body, false, 'PageserverFeedback');
      reader.skip(PAGESERVER_FEEDBACK_LENGTH_BYTES, 'length');
      return { tag: 'pageserver_feedback', feedback: readPageserverFeedback(reader) };
    }
    default:
      return { tag: 'unknown', firstByte: tag };
  }
}

function view(body: Uint8Array): DataView {
  return new DataView(body.buffer, body.byteOffset, body.byteLength);
}

function decodeStandbyReply(body: Uint8Array): StandbyReply {
  if (body.length !== STANDBY_STATUS_BODY_BYTES) {
    throw new ProtocolViolationError('StandbyStatusUpdate', `expected ${STANDBY_STATUS_BODY_BYTES} bytes after 'r', got ${body.length}`);
  }
  const data = view(body);
  const replyRequested = data.getUint8(32);
  if (replyRequested > 1) throw new ProtocolViolationError('StandbyStatusUpdate', `reply_requested must be 0 or 1, got ${replyRequested}`);
  return {
    writeLsn: data.getBigUint64(0),
    flushLsn: data.getBigUint64(8),
    applyLsn: data.getBigUint64(16),
    replyTimeUs: data.getBigInt64(24),
    replyRequested: replyRequested === 1,
  };
}

/** xid and epoch become a FullTransactionId (epoch << 32 | xid), as Neon stores them. */
function decodeHotStandbyFeedback(body: Uint8Array): HotStandbyFeedback {
  if (body.length !== HOT_STANDBY_FEEDBACK_BODY_BYTES) {
    throw new ProtocolViolationError('HotStandbyFeedback', `expected ${HOT_STANDBY_FEEDBACK_BODY_BYTES} bytes after 'h', got ${body.length}`);
  }
  const data = view(body);
  const full = (xidOffset: number): bigint => (BigInt(data.getUint32(xidOffset + 4)) << 32n) | BigInt(data.getUint32(xidOffset));
  return { timestampUs: data.getBigInt64(0), xmin: full(8), catalogXmin: full(16) };
}

/** A standby status update as a standby sends it (the proposer to its primary and donors; tests). */
export function encodeStandbyReply(reply: StandbyReply): Buffer {
  const message = Buffer.allocUnsafe(1 + STANDBY_STATUS_BODY_BYTES);
  message[0] = STANDBY_STATUS_TAG;
  message.writeBigUInt64BE(reply.writeLsn, 1);
  message.writeBigUInt64BE(reply.flushLsn, 9);
  message.writeBigUInt64BE(reply.applyLsn, 17);
  message.writeBigInt64BE(reply.replyTimeUs, 25);
  message[33] = reply.replyRequested ? 1 : 0;
  return message;
}

/**
 * Hot standby feedback as a standby sends it (FullTransactionIds split into xid and epoch). 0 is sent as
 * InvalidTransactionId, which clears the slot's horizon on the primary.
 */
export function encodeHotStandbyFeedback(feedback: HotStandbyFeedback): Buffer {
  const message = Buffer.allocUnsafe(1 + HOT_STANDBY_FEEDBACK_BODY_BYTES);
  message[0] = HOT_STANDBY_FEEDBACK_TAG;
  message.writeBigInt64BE(feedback.timestampUs, 1);
  const split = (full: bigint, offset: number): void => {
    assert(full >= 0n && full <= 0xffff_ffff_ffff_ffffn, 'a FullTransactionId is a u64');
    message.writeUInt32BE(Number(full & 0xffff_ffffn), offset);
    message.writeUInt32BE(Number(full >> 32n), offset + 4);
  };
  split(feedback.xmin, 9);
  split(feedback.catalogXmin, 17);
  return message;
}
