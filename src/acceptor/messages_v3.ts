/**
 * Protocol v3 codec (protocol doc §3.2, §3.3): one tag byte, then big-endian fields, with membership
 * generations and configurations. Both directions: the acceptor decodes proposer messages and encodes
 * its replies; our proposer and test clients do the reverse. Pure; any thread.
 */
import { ProtocolViolationError } from '../errors.js';
import { unreachable } from '../sync/assert.js';
import {
  type AcceptorMessage,
  type AppendResponse,
  type ProposerMessage,
  TAG_APPEND,
  TAG_ELECTED,
  TAG_GREETING,
  TAG_VOTE,
  checkPgVersion,
  decodeAppendRequestHeader,
  encodeAppendRequestHeader,
} from './messages.js';
import { readPageserverFeedback, writePageserverFeedback } from './pageserver_feedback.js';
import { MEMBERS_PER_SET_MAX, memberHostProblem, type MembershipConfiguration, type SafekeeperMember, type TenantId, type TermHistory, type TimelineId } from './state.js';
import { ByteReader, ByteWriter } from './wire.js';

const BIG_ENDIAN = false;

function readMemberSet(reader: ByteReader, count: number, setName: string): SafekeeperMember[] {
  if (count > MEMBERS_PER_SET_MAX) reader.fail(`${count} members in ${setName} set, more than ${MEMBERS_PER_SET_MAX}`);
  const members: SafekeeperMember[] = [];
  const seen = new Set<bigint>();
  for (let index = 0; index < count; index += 1) {
    const id = reader.u64(`${setName} ${index} node_id`);
    const host = reader.cstring(`${setName} ${index} host`);
    const hostProblem = memberHostProblem(host);
    if (hostProblem !== null) reader.fail(`${setName} ${index} host ${hostProblem}`);
    const pgPort = reader.u16(`${setName} ${index} port`);
    if (seen.has(id)) reader.fail(`duplicate node id ${id} in ${setName}`);
    seen.add(id);
    members.push({ id, host, pgPort });
  }
  return members;
}

/** mconf (§3.2). Rejects an empty member set in a valid generation and duplicate ids within one set. */
export function readMembershipConfiguration(reader: ByteReader): MembershipConfiguration {
  const generation = reader.u32('generation');
  const memberCount = reader.u32('members_len');
  if (generation !== 0 && memberCount === 0) reader.fail(`empty member set in generation ${generation}`);
  const members = readMemberSet(reader, memberCount, 'member');
  const newMemberCount = reader.u32('new_members_len');
  const newMembers = newMemberCount === 0 ? null : readMemberSet(reader, newMemberCount, 'new member');
  return { generation, members, newMembers };
}

function writeMemberSet(writer: ByteWriter, members: readonly SafekeeperMember[]): void {
  writer.u32(members.length);
  for (const member of members) {
    writer.u64(member.id);
    writer.cstring(member.host);
    writer.u16(member.pgPort);
  }
}

export function writeMembershipConfiguration(writer: ByteWriter, mconf: MembershipConfiguration): void {
  writer.u32(mconf.generation);
  writeMemberSet(writer, mconf.members);
  // An empty new-member set is written as 0, which reads back as "not joint" (null), as in Neon.
  writeMemberSet(writer, mconf.newMembers ?? []);
}

/** `u32 n`, then n × (term, lsn), in the reader's byte order. Order is validated by the acceptor. */
export function readTermHistory(reader: ByteReader): TermHistory {
  const count = reader.u32('term history length');
  if (count * 16 > reader.remainingBytes) reader.fail(`term history of ${count} entries is incomplete`);
  const history: TermHistory = [];
  for (let index = 0; index < count; index += 1) {
    history.push({ term: reader.u64(`history ${index} term`), lsn: reader.u64(`history ${index} lsn`) });
  }
  return history;
}

export function writeTermHistory(writer: ByteWriter, history: TermHistory): void {
  writer.u32(history.length);
  for (const entry of history) {
    writer.u64(entry.term);
    writer.u64(entry.lsn);
  }
}

function readId<T extends string>(reader: ByteReader, field: string): T {
  const text = reader.cstring(field).toLowerCase(); // Neon's hex parser accepts either case
  if (!/^[0-9a-f]{32}$/.test(text)) reader.fail(`${field} is not 32 hex chars: ${JSON.stringify(text)}`);
  return text as T;
}

/** Decodes one proposer message. Bytes after the message are ignored (see `messages.ts`). */
export function decodeProposerMessageV3(payload: Uint8Array): ProposerMessage {
  if (payload.byteLength === 0) throw new ProtocolViolationError('ProposerAcceptorMessage', 'missing tag');
  const tag = payload[0];
  switch (tag) {
    case TAG_GREETING: {
      const reader = new ByteReader(payload, BIG_ENDIAN, 'ProposerGreeting');
      reader.skip(1, 'tag');
      const tenantId = readId<TenantId>(reader, 'tenant_id');
      const timelineId = readId<TimelineId>(reader, 'timeline_id');
      const mconf = readMembershipConfiguration(reader);
      const pgVersion = reader.u32('pg_version');
      checkPgVersion(pgVersion);
      const systemId = reader.u64('system_id');
      const walSegSizeBytes = reader.u32('wal_seg_size');
      return { tag: 'greeting', tenantId, timelineId, mconf, pgVersion, systemId, walSegSizeBytes };
    }
    case TAG_VOTE: {
      const reader = new ByteReader(payload, BIG_ENDIAN, 'VoteRequest');
      reader.skip(1, 'tag');
      return { tag: 'vote', generation: reader.u32('generation'), term: reader.u64('term') };
    }
    case TAG_ELECTED: {
      const reader = new ByteReader(payload, BIG_ENDIAN, 'ProposerElected');
      reader.skip(1, 'tag');
      const generation = reader.u32('generation');
      const term = reader.u64('term');
      const startStreamingAtLsn = reader.u64('start_streaming_at');
      const termHistory = readTermHistory(reader);
      return { tag: 'elected', generation, term, startStreamingAtLsn, termHistory };
    }
    case TAG_APPEND:
      return decodeAppendRequestHeader(payload, 3);
    default:
      throw new ProtocolViolationError('ProposerAcceptorMessage', `unknown proposer-acceptor message tag: 0x${(tag ?? 0).toString(16)}`);
  }
}

export function encodeProposerMessageV3(message: ProposerMessage): Uint8Array {
  if (message.tag === 'append') {
    const header = encodeAppendRequestHeader(message, 3);
    const payload = new Uint8Array(header.byteLength + message.wal.byteLength);
    payload.set(header);
    payload.set(message.wal, header.byteLength);
    return payload;
  }
  const writer = new ByteWriter(BIG_ENDIAN);
  switch (message.tag) {
    case 'greeting':
      writer.u8(TAG_GREETING);
      writer.cstring(message.tenantId);
      writer.cstring(message.timelineId);
      writeMembershipConfiguration(writer, message.mconf);
      writer.u32(message.pgVersion);
      writer.u64(message.systemId);
      writer.u32(message.walSegSizeBytes);
      break;
    case 'vote':
      writer.u8(TAG_VOTE);
      writer.u32(message.generation);
      writer.u64(message.term);
      break;
    case 'elected':
      writer.u8(TAG_ELECTED);
      writer.u32(message.generation);
      writer.u64(message.term);
      writer.u64(message.startStreamingAtLsn);
      writeTermHistory(writer, message.termHistory);
      break;
    default:
      unreachable(message);
  }
  return writer.finish();
}

function writeAppendResponse(writer: ByteWriter, message: AppendResponse): void {
  writer.u8(TAG_APPEND);
  writer.u32(message.generation);
  writer.u64(message.term);
  writer.u64(message.flushLsn);
  writer.u64(message.commitLsn);
  writer.i64(message.hsFeedback.timestampUs);
  writer.u64(message.hsFeedback.xmin);
  writer.u64(message.hsFeedback.catalogXmin);
  if (message.pageserverFeedback !== null) writePageserverFeedback(writer, message.pageserverFeedback);
}

export function encodeAcceptorMessageV3(message: AcceptorMessage): Uint8Array {
  const writer = new ByteWriter(BIG_ENDIAN);
  switch (message.tag) {
    case 'greeting':
      writer.u8(TAG_GREETING);
      writer.u64(message.nodeId);
      writeMembershipConfiguration(writer, message.mconf);
      writer.u64(message.term);
      break;
    case 'vote':
      writer.u8(TAG_VOTE);
      writer.u32(message.generation);
      writer.u64(message.term);
      writer.u8(message.voteGiven ? 1 : 0);
      writer.u64(message.flushLsn);
      writer.u64(message.truncateLsn);
      writeTermHistory(writer, message.termHistory);
      break;
    case 'append':
      writeAppendResponse(writer, message);
      break;
    default:
      unreachable(message);
  }
  return writer.finish();
}

/** Decodes one acceptor message; it must be consumed exactly (walproposer's `pq_getmsgend`). */
export function decodeAcceptorMessageV3(payload: Uint8Array): AcceptorMessage {
  if (payload.byteLength === 0) throw new ProtocolViolationError('AcceptorProposerMessage', 'missing tag');
  const tag = payload[0];
  let message: AcceptorMessage;
  let reader: ByteReader;
  switch (tag) {
    case TAG_GREETING: {
      reader = new ByteReader(payload, BIG_ENDIAN, 'AcceptorGreeting');
      reader.skip(1, 'tag');
      const nodeId = reader.u64('node_id');
      const mconf = readMembershipConfiguration(reader);
      message = { tag: 'greeting', nodeId, mconf, term: reader.u64('term') };
      break;
    }
    case TAG_VOTE: {
      reader = new ByteReader(payload, BIG_ENDIAN, 'VoteResponse');
      reader.skip(1, 'tag');
      const generation = reader.u32('generation');
      const term = reader.u64('term');
      const voteGivenByte = reader.u8('vote_given');
      if (voteGivenByte > 1) reader.fail(`vote_given is ${voteGivenByte}`);
      const flushLsn = reader.u64('flush_lsn');
      const truncateLsn = reader.u64('truncate_lsn');
      const termHistory = readTermHistory(reader);
      message = { tag: 'vote', generation, term, voteGiven: voteGivenByte === 1, flushLsn, truncateLsn, termHistory };
      break;
    }
    case TAG_APPEND: {
      reader = new ByteReader(payload, BIG_ENDIAN, 'AppendResponse');
      reader.skip(1, 'tag');
      const generation = reader.u32('generation');
      const term = reader.u64('term');
      const flushLsn = reader.u64('flush_lsn');
      const commitLsn = reader.u64('commit_lsn');
      const hsFeedback = { timestampUs: reader.i64('hs_feedback.ts'), xmin: reader.u64('hs_feedback.xmin'), catalogXmin: reader.u64('hs_feedback.catalog_xmin') };
      const pageserverFeedback = reader.remainingBytes > 0 ? readPageserverFeedback(reader) : null;
      message = { tag: 'append', generation, term, flushLsn, commitLsn, hsFeedback, pageserverFeedback };
      break;
    }
    default:
      throw new ProtocolViolationError('AcceptorProposerMessage', `unknown acceptor-proposer message tag: 0x${(tag ?? 0).toString(16)}`);
  }
  reader.expectEnd();
  return message;
}
