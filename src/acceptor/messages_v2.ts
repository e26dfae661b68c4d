/**
 * Protocol v2 codec (protocol doc §3.4): C structs copied onto the wire, little-endian, tag as a u64
 * (only its low byte counts). v2 has no generations and no mconf: proposer messages decode with
 * generation 0 and an empty configuration, and acceptor messages drop those fields, so a v2 proposer
 * can only get past the acceptor's generation checks on a generation-0 timeline. PageserverFeedback
 * stays big-endian inside a v2 AppendResponse. Pure; any thread.
 */
import { ProtocolViolationError } from '../errors.js';
import { assert, unreachable } from '../sync/assert.js';
import {
  type AcceptorMessage,
  type ProposerMessage,
  TAG_APPEND,
  TAG_ELECTED,
  TAG_GREETING,
  TAG_VOTE,
  checkPgVersion,
  decodeAppendRequestHeader,
  encodeAppendRequestHeader,
} from './messages.js';
import { readTermHistory, writeTermHistory } from './messages_v3.js';
import { readPageserverFeedback, writePageserverFeedback } from './pageserver_feedback.js';
import { type TenantId, type TimelineId, emptyMembership } from './state.js';
import { ByteReader, ByteWriter, idBytesToHex, idHexToBytes } from './wire.js';

const LITTLE_ENDIAN = true;
/** The proposer-acceptor protocol version field inside the v2 greeting. */
const GREETING_PROTOCOL_VERSION = 2;
/** The PostgreSQL timeline in the v2 greeting (ignored on read; Neon always uses 1). */
const GREETING_PG_TIMELINE = 1;
const UUID_BYTES = 16;

export function decodeProposerMessageV2(payload: Uint8Array): ProposerMessage {
  if (payload.byteLength < 8) throw new ProtocolViolationError('ProposerAcceptorMessage', 'missing u64 tag');
  const tag = payload[0]; // low byte of the LE u64; the other seven bytes are ignored, as in Neon
  switch (tag) {
    case TAG_GREETING: {
      const reader = new ByteReader(payload, LITTLE_ENDIAN, 'ProposerGreeting');
      reader.skip(8, 'tag');
      reader.u32('protocol_version'); // ignored: START_WAL_PUSH already chose the version
      const pgVersion = reader.u32('pg_version');
      checkPgVersion(pgVersion);
      reader.skip(UUID_BYTES, 'proposer uuid');
      const systemId = reader.u64('system_id');
      const timelineId = idBytesToHex(reader.bytes(16, 'timeline_id')) as TimelineId;
      const tenantId = idBytesToHex(reader.bytes(16, 'tenant_id')) as TenantId;
      reader.u32('tli');
      const walSegSizeBytes = reader.u32('wal_seg_size');
      return { tag: 'greeting', tenantId, timelineId, mconf: emptyMembership(), pgVersion, systemId, walSegSizeBytes };
    }
    case TAG_VOTE: {
      const reader = new ByteReader(payload, LITTLE_ENDIAN, 'VoteRequest');
      reader.skip(8, 'tag');
      // walproposer sends a 16-byte proposer uuid after the term; Neon reads only the term.
      return { tag: 'vote', generation: 0, term: reader.u64('term') };
    }
    case TAG_ELECTED: {
      const reader = new ByteReader(payload, LITTLE_ENDIAN, 'ProposerElected');
      reader.skip(8, 'tag');
      const term = reader.u64('term');
      const startStreamingAtLsn = reader.u64('start_streaming_at');
      const termHistory = readTermHistory(reader);
      reader.u64('timeline_start_lsn'); // required on the wire, ignored by the safekeeper
      return { tag: 'elected', generation: 0, term, startStreamingAtLsn, termHistory };
    }
    case TAG_APPEND:
      return decodeAppendRequestHeader(payload, 2);
    default:
      throw new ProtocolViolationError('ProposerAcceptorMessage', `unknown proposer-acceptor message tag: 0x${(tag ?? 0).toString(16)}`);
  }
}

export function encodeProposerMessageV2(message: ProposerMessage): Uint8Array {
  if (message.tag === 'append') {
    assert(message.generation === 0, 'v2 cannot carry a generation');
    const header = encodeAppendRequestHeader(message, 2);
    const payload = new Uint8Array(header.byteLength + message.wal.byteLength);
    payload.set(header);
    payload.set(message.wal, header.byteLength);
    return payload;
  }
  const writer = new ByteWriter(LITTLE_ENDIAN);
  switch (message.tag) {
    case 'greeting':
      assert(message.mconf.generation === 0, 'v2 cannot carry a generation');
      writer.u64(BigInt(TAG_GREETING));
      writer.u32(GREETING_PROTOCOL_VERSION);
      writer.u32(message.pgVersion);
      writer.bytes(new Uint8Array(UUID_BYTES));
      writer.u64(message.systemId);
      writer.bytes(idHexToBytes(message.timelineId));
      writer.bytes(idHexToBytes(message.tenantId));
      writer.u32(GREETING_PG_TIMELINE);
      writer.u32(message.walSegSizeBytes);
      break;
    case 'vote':
      assert(message.generation === 0, 'v2 cannot carry a generation');
      writer.u64(BigInt(TAG_VOTE));
      writer.u64(message.term);
      writer.bytes(new Uint8Array(UUID_BYTES));
      break;
    case 'elected':
      assert(message.generation === 0, 'v2 cannot carry a generation');
      writer.u64(BigInt(TAG_ELECTED));
      writer.u64(message.term);
      writer.u64(message.startStreamingAtLsn);
      writeTermHistory(writer, message.termHistory);
      writer.u64(message.termHistory[0]?.lsn ?? 0n); // walproposer sends the first history LSN
      break;
    default:
      unreachable(message);
  }
  return writer.finish();
}

export function encodeAcceptorMessageV2(message: AcceptorMessage): Uint8Array {
  const writer = new ByteWriter(LITTLE_ENDIAN);
  switch (message.tag) {
    case 'greeting': // no mconf in v2, and term comes before node_id
      writer.u64(BigInt(TAG_GREETING));
      writer.u64(message.term);
      writer.u64(message.nodeId);
      break;
    case 'vote':
      writer.u64(BigInt(TAG_VOTE));
      writer.u64(message.term);
      writer.u64(message.voteGiven ? 1n : 0n);
      writer.u64(message.flushLsn);
      writer.u64(message.truncateLsn);
      writeTermHistory(writer, message.termHistory);
      writer.u64(0n); // timeline_start_lsn: Neon sends 0 and walproposer discards it
      break;
    case 'append': {
      writer.u64(BigInt(TAG_APPEND));
      writer.u64(message.term);
      writer.u64(message.flushLsn);
      writer.u64(message.commitLsn);
      writer.i64(message.hsFeedback.timestampUs);
      writer.u64(message.hsFeedback.xmin);
      writer.u64(message.hsFeedback.catalogXmin);
      if (message.pageserverFeedback !== null) {
        const feedback = new ByteWriter(false, 160); // big-endian even in v2
        writePageserverFeedback(feedback, message.pageserverFeedback);
        writer.bytes(feedback.finish());
      }
      break;
    }
    default:
      unreachable(message);
  }
  return writer.finish();
}

export function decodeAcceptorMessageV2(payload: Uint8Array): AcceptorMessage {
  if (payload.byteLength < 8) throw new ProtocolViolationError('AcceptorProposerMessage', 'missing u64 tag');
  const tag = payload[0];
  switch (tag) {
    case TAG_GREETING: {
      const reader = new ByteReader(payload, LITTLE_ENDIAN, 'AcceptorGreeting');
      reader.skip(8, 'tag');
      const term = reader.u64('term');
      const nodeId = reader.u64('node_id');
      reader.expectEnd();
      return { tag: 'greeting', nodeId, mconf: emptyMembership(), term };
    }
    case TAG_VOTE: {
      const reader = new ByteReader(payload, LITTLE_ENDIAN, 'VoteResponse');
      reader.skip(8, 'tag');
      const term = reader.u64('term');
      const voteGiven = reader.u64('vote_given');
      if (voteGiven > 1n) reader.fail(`vote_given is ${voteGiven}`);
      const flushLsn = reader.u64('flush_lsn');
      const truncateLsn = reader.u64('truncate_lsn');
      const termHistory = readTermHistory(reader);
      reader.u64('timeline_start_lsn');
      reader.expectEnd();
      return { tag: 'vote', generation: 0, term, voteGiven: voteGiven === 1n, flushLsn, truncateLsn, termHistory };
    }
    case TAG_APPEND: {
      const reader = new ByteReader(payload, LITTLE_ENDIAN, 'AppendResponse');
      reader.skip(8, 'tag');
      const term = reader.u64('term');
      const flushLsn = reader.u64('flush_lsn');
      const commitLsn = reader.u64('commit_lsn');
      const hsFeedback = { timestampUs: reader.i64('hs_feedback.ts'), xmin: reader.u64('hs_feedback.xmin'), catalogXmin: reader.u64('hs_feedback.catalog_xmin') };
      let pageserverFeedback = null;
      if (reader.remainingBytes > 0) {
        const feedbackReader = new ByteReader(reader.bytes(reader.remainingBytes, 'feedback'), false, 'AppendResponse');
        pageserverFeedback = readPageserverFeedback(feedbackReader);
        feedbackReader.expectEnd();
      }
      reader.expectEnd();
      return { tag: 'append', generation: 0, term, flushLsn, commitLsn, hsFeedback, pageserverFeedback };
    }
    default:
      throw new ProtocolViolationError('AcceptorProposerMessage', `unknown acceptor-proposer message tag: 0x${(tag ?? 0).toString(16)}`);
  }
}
