/**
 * Proposer ⇄ acceptor messages (protocol doc §3): the message types, the wire constants, the checks
 * both protocol versions share, and the AppendRequest hot path. The full codecs are in
 * `messages_v3.ts` (big-endian, with generations and mconf) and `messages_v2.ts` (little-endian C
 * structs; generation 0, empty mconf); `messages_codec.ts` dispatches on the version.
 *
 * Every message is the whole payload of one CopyData. u64 wire fields (terms, LSNs, node ids,
 * system_id) are bigints. Bad input throws ProtocolViolationError (SK_PROTOCOL_VIOLATION).
 *
 * Trailing bytes: Neon ignores bytes after a parsed *proposer* message, and so do we (a newer
 * walproposer may append fields). *Acceptor* messages are consumed exactly by walproposer
 * (`pq_getmsgend`), so our acceptor-message decoder rejects trailing bytes and the encoders never
 * write any.
 *
 * Hot path: `decodeAppendRequestHeader` runs once per AppendRequest (~300k/s). It reads the fixed
 * header with one DataView and returns the WAL as a subarray view of the payload (no copy); the
 * caller must copy the bytes before the payload buffer is reused. Pure; any thread.
 */
import { ProtocolViolationError } from '../errors.js';
import { APPEND_WAL_BYTES_MAX } from '../limits.js';
import type { Lsn } from '../wal/lsn.js';
import type { PageserverFeedback } from './pageserver_feedback.js';
import type { MembershipConfiguration, TenantId, TermHistory, TimelineId } from './state.js';

export type ProtocolVersion = 2 | 3;

/** Message tag bytes; in v2 the tag is a LE u64 whose low byte is this value. */
export const TAG_GREETING = 0x67; // 'g'
export const TAG_VOTE = 0x76; // 'v'
export const TAG_ELECTED = 0x65; // 'e'
export const TAG_APPEND = 0x61; // 'a'

/** v3 AppendRequest header: tag, generation, term, begin, end, commit, truncate. */
export const APPEND_REQUEST_HEADER_BYTES_V3 = 45;
/** v2 AppendRequest header: tag, term, term_start_lsn, begin, end, commit, truncate, proposer uuid. */
export const APPEND_REQUEST_HEADER_BYTES_V2 = 72;
/** v3 AppendResponse without PageserverFeedback. */
export const APPEND_RESPONSE_BYTES_V3 = 53;
/** v2 AppendResponse without PageserverFeedback. */
export const APPEND_RESPONSE_BYTES_V2 = 56;

/** Full PG_VERSION_NUM range the parser accepts (besides 0, which the greeting check then refuses). */
export const PG_VERSION_NUM_MIN = 140000;
export const PG_VERSION_NUM_MAX = 179999;

export interface ProposerGreeting {
  tag: 'greeting';
  tenantId: TenantId;
  timelineId: TimelineId;
  /** v2: generation 0, empty sets. */
  mconf: MembershipConfiguration;
  /** Full PG_VERSION_NUM (e.g. 170004), or 0. */
  pgVersion: number;
  /** 0 = unknown (sync-safekeepers does not know it). */
  systemId: bigint;
  walSegSizeBytes: number;
}

export interface VoteRequest {
  tag: 'vote';
  /** v2: 0. */
  generation: number;
  term: bigint;
}

export interface ProposerElected {
  tag: 'elected';
  generation: number;
  term: bigint;
  startStreamingAtLsn: Lsn;
  /** The proposer's full history; the last entry is (its term, its term start LSN). */
  termHistory: TermHistory;
}

export interface AppendRequest {
  tag: 'append';
  generation: number;
  term: bigint;
  beginLsn: Lsn;
  endLsn: Lsn;
  /** 0 = not communicated. */
  commitLsn: Lsn;
  /** The proposer's horizon ("truncate_lsn"), merged into peer_horizon_lsn. */
  truncateLsn: Lsn;
  /** Exactly endLsn − beginLsn bytes; a view into the decoded payload. Empty = heartbeat. */
  wal: Uint8Array;
}

export type ProposerMessage = ProposerGreeting | VoteRequest | ProposerElected | AppendRequest;

export interface AcceptorGreeting {
  tag: 'greeting';
  nodeId: bigint;
  /** The acceptor's configuration after any switch; v2 does not carry it. */
  mconf: MembershipConfiguration;
  term: bigint;
}

export interface VoteResponse {
  tag: 'vote';
  /** v2 does not carry it (decodes as 0). */
  generation: number;
  term: bigint;
  voteGiven: boolean;
  flushLsn: Lsn;
  /** The acceptor's in-memory peer_horizon_lsn. */
  truncateLsn: Lsn;
  /** Stored history with entries past flushLsn removed. */
  termHistory: TermHistory;
}

/** Hot standby feedback aggregated over this timeline's standbys (§3.5); all zero if none. */
export interface HotStandbyFeedback {
  /** µs since 2000-01-01; signed. */
  timestampUs: bigint;
  /** FullTransactionId (epoch << 32 | xid). */
  xmin: bigint;
  catalogXmin: bigint;
}

export interface AppendResponse {
  tag: 'append';
  /** v2 does not carry it (decodes as 0). */
  generation: number;
  term: bigint;
  flushLsn: Lsn;
  commitLsn: Lsn;
  hsFeedback: HotStandbyFeedback;
  /** Appended as a suffix when present. */
  pageserverFeedback: PageserverFeedback | null;
}

export type AcceptorMessage = AcceptorGreeting | VoteResponse | AppendResponse;

export const emptyHotStandbyFeedback = (): HotStandbyFeedback => ({ timestampUs: 0n, xmin: 0n, catalogXmin: 0n });

/** START_WAL_PUSH `proto_version` → a version; anything but 2 or 3 is refused as Neon does. */
export function parseProtocolVersion(value: number): ProtocolVersion {
  if (value === 2 || value === 3) return value;
  throw new ProtocolViolationError('START_WAL_PUSH', `unsupported protocol version ${value}`);
}

/** Neon panics on other values; we refuse them. 0 passes here and fails the greeting's version check. */
export function checkPgVersion(pgVersion: number): void {
  if (pgVersion !== 0 && (pgVersion < PG_VERSION_NUM_MIN || pgVersion > PG_VERSION_NUM_MAX)) {
    throw new ProtocolViolationError('ProposerGreeting', `unsupported pg_version ${pgVersion}`);
  }
}

/** Returns the WAL length in bytes for [beginLsn, endLsn), refusing reversed or oversized ranges. */
export function walLengthBytes(beginLsn: Lsn, endLsn: Lsn): number {
  if (endLsn < beginLsn) throw new ProtocolViolationError('AppendRequest', 'begin_lsn > end_lsn');
  const lengthBytes = endLsn - beginLsn;
  if (lengthBytes > BigInt(APPEND_WAL_BYTES_MAX)) {
    throw new ProtocolViolationError('AppendRequest', `WAL of ${lengthBytes} bytes is longer than MAX_SEND_SIZE (${APPEND_WAL_BYTES_MAX})`);
  }
  return Number(lengthBytes);
}

/**
 * Decodes an AppendRequest from a whole CopyData payload (tag included). Reads only the fixed header;
 * the returned `wal` is a view of `payload`. Bytes after the WAL are ignored, as Neon does.
 */
export function decodeAppendRequestHeader(payload: Uint8Array, protocolVersion: ProtocolVersion): AppendRequest {
  const v3 = protocolVersion === 3;
  const headerBytes = v3 ? APPEND_REQUEST_HEADER_BYTES_V3 : APPEND_REQUEST_HEADER_BYTES_V2;
  if (payload.byteLength < headerBytes) {
    throw new ProtocolViolationError('AppendRequest', `header needs ${headerBytes} bytes, got ${payload.byteLength}`);
  }
  const view = new DataView(payload.buffer, payload.byteOffset, headerBytes);
  // v2: the tag is a LE u64 and only its low byte (offset 0) counts, as in Neon.
  if (view.getUint8(0) !== TAG_APPEND) {
    throw new ProtocolViolationError('AppendRequest', `unexpected tag 0x${view.getUint8(0).toString(16)}`);
  }
  let message: AppendRequest;
  if (v3) {
    message = {
      tag: 'append',
      generation: view.getUint32(1, false),
      term: view.getBigUint64(5, false),
      beginLsn: view.getBigUint64(13, false),
      endLsn: view.getBigUint64(21, false),
      commitLsn: view.getBigUint64(29, false),
      truncateLsn: view.getBigUint64(37, false),
      wal: payload, // replaced below
    };
  } else {
    // Offset 16 is term_start_lsn and 56..72 the proposer uuid: both ignored, as in Neon.
    message = {
      tag: 'append',
      generation: 0,
      term: view.getBigUint64(8, true),
      beginLsn: view.getBigUint64(24, true),
      endLsn: view.getBigUint64(32, true),
      commitLsn: view.getBigUint64(40, true),
      truncateLsn: view.getBigUint64(48, true),
      wal: payload,
    };
  }
  const lengthBytes = walLengthBytes(message.beginLsn, message.endLsn);
  const availableBytes = payload.byteLength - headerBytes;
  if (availableBytes < lengthBytes) {
    throw new ProtocolViolationError('AppendRequest', `reading WAL: only ${availableBytes} bytes left, wanted ${lengthBytes}`);
  }
  message.wal = payload.subarray(headerBytes, headerBytes + lengthBytes);
  return message;
}

/**
 * Encodes just the AppendRequest header, so a sender can write header and WAL without copying the
 * WAL into one buffer. `message.wal` must hold exactly endLsn − beginLsn bytes.
 */
export function encodeAppendRequestHeader(message: AppendRequest, protocolVersion: ProtocolVersion): Uint8Array {
  const lengthBytes = walLengthBytes(message.beginLsn, message.endLsn);
  if (lengthBytes !== message.wal.byteLength) {
    throw new ProtocolViolationError('AppendRequest', `WAL has ${message.wal.byteLength} bytes, range says ${lengthBytes}`);
  }
  if (protocolVersion === 3) {
    const header = new Uint8Array(APPEND_REQUEST_HEADER_BYTES_V3);
    const view = new DataView(header.buffer);
    view.setUint8(0, TAG_APPEND);
    view.setUint32(1, message.generation, false);
    view.setBigUint64(5, message.term, false);
    view.setBigUint64(13, message.beginLsn, false);
    view.setBigUint64(21, message.endLsn, false);
    view.setBigUint64(29, message.commitLsn, false);
    view.setBigUint64(37, message.truncateLsn, false);
    return header;
  }
  const header = new Uint8Array(APPEND_REQUEST_HEADER_BYTES_V2); // term_start_lsn and uuid stay 0
  const view = new DataView(header.buffer);
  view.setBigUint64(0, BigInt(TAG_APPEND), true);
  view.setBigUint64(8, message.term, true);
  view.setBigUint64(24, message.beginLsn, true);
  view.setBigUint64(32, message.endLsn, true);
  view.setBigUint64(40, message.commitLsn, true);
  view.setBigUint64(48, message.truncateLsn, true);
  return header;
}

