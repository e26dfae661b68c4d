/**
 * A small but real proposer for integration tests: one START_WAL_PUSH connection speaking the
 * proposer⇄acceptor protocol (reference/safekeeper-protocol.md §3–§4) in v2 or v3, on top of PgTestClient.
 *
 * It does what a walproposer does with one safekeeper, step by step, so tests can also do it wrong on
 * purpose: `greet()`, `vote(term)`, `elect(...)`, `append(...)` (no wait, as walproposer pipelines appends),
 * `streamWal(...)` (split into AppendRequests of at most 128 KiB, with socket backpressure), `sendRaw()`.
 * A background reader decodes every acceptor message into a queue (`nextReply()`), and also records every
 * AppendResponse, so tests can assert that acknowledged flush_lsns are monotonic record ends and
 * `waitForFlush(lsn)` can wait on them. An ErrorResponse ends the stream; it is kept in `serverError` and
 * every later wait throws it as a StreamClosedError.
 *
 * The second half of the file has the WAL sources (seeded synthetic WAL) and the checks on a timeline's
 * segment files that the ingest and crash tests share.
 *
 * commit_lsn and truncate_lsn follow §4.7 for a single safekeeper: commit = the highest acknowledged
 * flush_lsn once it reaches the term start (the quorum of one), truncate = commit. `commit: 'none'` keeps
 * commit_lsn 0, leaving the streamed WAL uncommitted (so a later term may truncate it).
 *
 * `electAndStream()` is the usual one-shot session: greeting → vote(term = greeting term + 1) → elected
 * (history = the vote response's history + (own term, donor flush_lsn)) → stream the rest of a source.
 */
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { readdir, readFile, writeFile } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import type { AcceptorGreeting, AcceptorMessage, AppendResponse, ProposerMessage, ProtocolVersion, VoteResponse } from '../../src/acceptor/messages.js';
import { encodeAppendRequestHeader } from '../../src/acceptor/messages.js';
import { decodeAcceptorMessage, encodeProposerMessage } from '../../src/acceptor/messages_codec.js';
import { emptyMembership, type MembershipConfiguration, type TenantId, type TermHistory, type TimelineId } from '../../src/acceptor/state.js';
import { formatLsn, parseSegmentFileName, segmentFileName, segmentNumber, segmentStartLsn, type Lsn } from '../../src/wal/lsn.js';
import { WalBuilder, type BuiltRecord } from '../../src/wal/wal_builder.js';
import type { WaldumpRecord } from './pg.js';
import { DatabaseError, PgTestClient } from './pg_client.js';
import { recordEndLsn } from './real_wal.js';
import { waitFor } from './wait.js';

/** walproposer's MAX_SEND_SIZE: WAL bytes per AppendRequest. */
export const APPEND_WAL_BYTES_MAX = 128 * 1024;
const REPLY_WAIT_MS_DEFAULT = 20_000;
/** The background reader re-arms its wait this often; only an idle stream ever waits this long. */
const READER_POLL_MS = 60_000;

export interface TestProposerOptions {
  port: number;
  host?: string;
  tenantId: string;
  timelineId: string;
  protoVersion: ProtocolVersion;
  /** START_WAL_PUSH allow_timeline_creation; true by default. */
  allowTimelineCreation?: boolean;
  pgVersion: number;
  systemId: bigint;
  walSegSizeBytes: number;
  /** The greeting's membership configuration (v3); generation 0 and empty sets by default. */
  mconf?: MembershipConfiguration;
  /** Default deadline of waits for replies, ms. */
  waitMs?: number;
  applicationName?: string;
}

export interface ElectArgs {
  term: bigint;
  startStreamingAtLsn: Lsn;
  termHistory: TermHistory;
}

export interface AppendArgs {
  beginLsn: Lsn;
  wal: Uint8Array;
  /** Defaults to the proposer's commit rule (see the header). */
  commitLsn?: Lsn;
  truncateLsn?: Lsn;
  /** Defaults to the elected term. */
  term?: bigint;
}

export type CommitMode = 'acked' | 'none';

export interface StreamOptions {
  /** WAL bytes per AppendRequest; at most 128 KiB. */
  chunkBytes?: number;
  commit?: CommitMode;
  /** Called after each AppendRequest is handed to the socket, with its end LSN (fault injection). */
  onSent?: (endLsn: Lsn) => void | Promise<void>;
}

/** The server ended the stream (with an ErrorResponse, or by closing). */
export class StreamClosedError extends Error {
  constructor(readonly serverError: DatabaseError | null) {
    super(serverError === null ? 'the safekeeper closed the stream' : `the safekeeper ended the stream: ${serverError.code} ${serverError.message}`);
  }
}

export class TestProposer {
  readonly protoVersion: ProtocolVersion;
  /** Every AppendResponse received, in order. */
  readonly appendResponses: AppendResponse[] = [];
  /** The ErrorResponse that ended the stream, if any. */
  serverError: DatabaseError | null = null;
  /** Whether the connection has closed. */
  closed = false;
  /** A socket error seen (e.g. ECONNRESET when the server closed with our bytes unread), for diagnostics. */
  socketError: Error | null = null;
  /** The elected term (0 until elect()). */
  term = 0n;
  /** Where this proposer's term starts (its last history entry); 0 until elect(). */
  termStartLsn: Lsn = 0n;
  /** The truncate_lsn learned from the vote (max over votes in walproposer). */
  voteTruncateLsn: Lsn = 0n;
  generation: number;
  readonly #client: PgTestClient;
  readonly #options: TestProposerOptions;
  readonly #replies: (AcceptorGreeting | VoteResponse | AppendResponse)[] = [];
  #wake: (() => void) | null = null;
  /** This connection has sent an AppendRequest (after which AppendResponses may come at any time). */
  #appended = false;
  readonly #readerDone: Promise<void>;

  private constructor(client: PgTestClient, options: TestProposerOptions) {
    this.#client = client;
    this.#options = options;
    this.protoVersion = options.protoVersion;
    this.generation = options.mconf?.generation ?? 0;
    client.socket.on('error', (error) => (this.socketError ??= error));
    this.#readerDone = this.#readLoop();
  }

  /** Connects with the timeline's options and starts START_WAL_PUSH (nothing is sent inside it yet). */
  static async connect(options: TestProposerOptions): Promise<TestProposer> {
    const client = await PgTestClient.connect({
      port: options.port,
      ...(options.host !== undefined ? { host: options.host } : {}),
      options: `-c timeline_id=${options.timelineId} tenant_id=${options.tenantId}`,
      applicationName: options.applicationName ?? 'test_proposer',
      waitMs: options.waitMs ?? REPLY_WAIT_MS_DEFAULT,
    });
    const allow = options.allowTimelineCreation ?? true;
    await client.startCopyBoth(`START_WAL_PUSH (proto_version '${options.protoVersion}', allow_timeline_creation '${allow}')`);
    return new TestProposer(client, options);
  }

  get client(): PgTestClient {
    return this.#client;
  }

  /** flush_lsns of every AppendResponse (term-only refusals, with flush 0, excluded). */
  get acknowledgedFlushLsns(): Lsn[] {
    return this.appendResponses.filter((reply) => reply.term === this.term || this.term === 0n).map((reply) => reply.flushLsn);
  }

  /** The highest acknowledged flush_lsn; 0 if none. */
  get flushLsn(): Lsn {
    let max = 0n;
    for (const lsn of this.acknowledgedFlushLsns) if (lsn > max) max = lsn;
    return max;
  }

  /** commit_lsn as walproposer computes it for a quorum of one: the acknowledged flush, once it reaches the term start. */
  commitLsnFor(mode: CommitMode): Lsn {
    if (mode === 'none') return 0n;
    const flushLsn = this.flushLsn;
    return flushLsn >= this.termStartLsn && this.termStartLsn !== 0n ? flushLsn : 0n;
  }

  /** Sends one proposer message (encoded for this connection's version). */
  send(message: ProposerMessage): Promise<void> {
    if (message.tag === 'append') this.#appended = true;
    return this.sendRaw(encodeProposerMessage(message, this.protoVersion));
  }

  /** Sends any bytes as one CopyData payload; waits for 'drain' when the socket buffer is full. */
  async sendRaw(payload: Uint8Array): Promise<void> {
    if (this.closed || this.#client.socket.destroyed) throw new StreamClosedError(this.serverError);
    if (!this.#client.sendCopyData(payload)) await this.#drained();
  }

  async greet(overrides: Partial<Pick<TestProposerOptions, 'pgVersion' | 'systemId' | 'walSegSizeBytes' | 'tenantId' | 'timelineId' | 'mconf'>> = {}): Promise<AcceptorGreeting> {
    const options = { ...this.#options, ...overrides };
    await this.send({
      tag: 'greeting',
      tenantId: options.tenantId as TenantId,
      timelineId: options.timelineId as TimelineId,
      mconf: options.mconf ?? emptyMembership(),
      pgVersion: options.pgVersion,
      systemId: options.systemId,
      walSegSizeBytes: options.walSegSizeBytes,
    });
    const reply = await this.#nextReplyOf('greeting');
    return reply;
  }

  async vote(term: bigint): Promise<VoteResponse> {
    await this.send({ tag: 'vote', generation: this.generation, term });
    const reply = await this.#nextReplyOf('vote');
    if (reply.voteGiven) this.voteTruncateLsn = reply.truncateLsn;
    return reply;
  }

  /** Sends ProposerElected (no reply exists) and adopts the term for later appends. */
  async elect(args: ElectArgs): Promise<void> {
    const last = args.termHistory[args.termHistory.length - 1];
    assert.ok(last !== undefined && last.term === args.term, 'the history ends with the elected term');
    this.term = args.term;
    this.termStartLsn = last.lsn;
    await this.send({ tag: 'elected', generation: this.generation, term: args.term, startStreamingAtLsn: args.startStreamingAtLsn, termHistory: args.termHistory });
  }

  /** Sends one AppendRequest without waiting for its reply. */
  async append(args: AppendArgs): Promise<void> {
    const commitLsn = args.commitLsn ?? this.commitLsnFor('acked');
    const message = {
      tag: 'append' as const,
      generation: this.generation,
      term: args.term ?? this.term,
      beginLsn: args.beginLsn,
      endLsn: args.beginLsn + BigInt(args.wal.length),
      commitLsn,
      truncateLsn: args.truncateLsn ?? (commitLsn > this.voteTruncateLsn ? commitLsn : this.voteTruncateLsn),
      wal: args.wal,
    };
    const header = encodeAppendRequestHeader(message, this.protoVersion);
    this.#appended = true;
    const payload = new Uint8Array(header.length + args.wal.length);
    payload.set(header);
    payload.set(args.wal, header.length);
    await this.sendRaw(payload);
  }

  /** An empty AppendRequest at `lsn`: the acceptor answers with its current flush_lsn. */
  heartbeat(lsn: Lsn, commitLsn?: Lsn): Promise<void> {
    return this.append({ beginLsn: lsn, wal: new Uint8Array(0), ...(commitLsn !== undefined ? { commitLsn } : {}) });
  }

  /** Sends `bytes` (bytes[0] is at `startLsn`) as AppendRequests of at most `chunkBytes`. Returns the end LSN. */
  async streamWal(bytes: Uint8Array, startLsn: Lsn, options: StreamOptions = {}): Promise<Lsn> {
    const chunkBytes = options.chunkBytes ?? APPEND_WAL_BYTES_MAX;
    assert.ok(chunkBytes > 0 && chunkBytes <= APPEND_WAL_BYTES_MAX, 'chunkBytes within MAX_SEND_SIZE');
    const commit = options.commit ?? 'acked';
    let lsn = startLsn;
    for (let offset = 0; offset < bytes.length; offset += chunkBytes) {
      const wal = bytes.subarray(offset, Math.min(offset + chunkBytes, bytes.length));
      await this.append({ beginLsn: lsn, wal, commitLsn: this.commitLsnFor(commit) });
      lsn += BigInt(wal.length);
      await options.onSent?.(lsn);
    }
    return lsn;
  }

  /** The next greeting, vote or append reply, in arrival order. Throws if the stream ends first. */
  async nextReply(waitMs = this.#options.waitMs ?? REPLY_WAIT_MS_DEFAULT): Promise<AcceptorMessage> {
    const deadline = Date.now() + waitMs;
    for (;;) {
      const reply = this.#replies.shift();
      if (reply !== undefined) return reply;
      if (this.closed) throw new StreamClosedError(this.serverError);
      const remainingMs = deadline - Date.now();
      if (remainingMs <= 0) throw new Error(`no reply from the safekeeper within ${waitMs} ms`);
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, remainingMs);
        this.#wake = () => (clearTimeout(timer), resolve());
      });
      this.#wake = null;
    }
  }

  /** Forgets replies not yet taken with nextReply() (the AppendResponse record stays). */
  clearReplies(): void {
    this.#replies.length = 0;
  }

  /** The next AppendResponse (skipping nothing else: a greeting or vote reply here is an error). */
  async nextAppendResponse(waitMs?: number): Promise<AppendResponse> {
    const reply = await this.nextReply(waitMs);
    assert.equal(reply.tag, 'append', `expected an AppendResponse, got ${reply.tag}`);
    return reply as AppendResponse;
  }

  /** Waits until an AppendResponse acknowledges flush_lsn ≥ `lsn`; throws if the stream ends first. */
  async waitForFlush(lsn: Lsn, timeoutMs = 30_000): Promise<Lsn> {
    // waitFor() retries a throwing condition, so a closed stream is returned as a value and thrown here.
    const outcome = await waitFor(
      () => (this.flushLsn >= lsn ? { flushLsn: this.flushLsn } : this.closed ? { flushLsn: null } : null),
      { timeoutMs, intervalMs: 5, what: `flush_lsn ≥ ${formatLsn(lsn)}` },
    ).catch((error: unknown) => {
      throw new Error(`${(error as Error).message}; acknowledged ${formatLsn(this.flushLsn)}`, { cause: error });
    });
    if (outcome.flushLsn === null) throw new StreamClosedError(this.serverError);
    return outcome.flushLsn;
  }

  /** Waits for the server to end the stream; returns its ErrorResponse (null if it closed without one). */
  async waitClosed(timeoutMs = 20_000): Promise<DatabaseError | null> {
    await waitFor(() => this.closed, { timeoutMs, intervalMs: 5, what: 'the safekeeper to close the stream' });
    return this.serverError;
  }

  /** Drops the connection (as a crashed compute would) and waits for the reader to finish. */
  async close(): Promise<void> {
    if (!this.#client.socket.destroyed) this.#client.destroy();
    await this.#readerDone;
  }

  async #nextReplyOf<T extends 'greeting' | 'vote'>(tag: T): Promise<Extract<AcceptorMessage, { tag: T }>> {
    for (;;) {
      const reply = await this.nextReply();
      // Group-commit acknowledgements may interleave once this connection has appended; before that an
      // AppendResponse breaks walproposer, which expects the greeting and the vote answered first.
      if (reply.tag === 'append') {
        assert.ok(this.#appended, `an AppendResponse arrived before the ${tag} reply on a connection that has not appended`);
        continue;
      }
      assert.equal(reply.tag, tag, `expected a ${tag} reply, got ${reply.tag}`);
      return reply as Extract<AcceptorMessage, { tag: T }>;
    }
  }

  async #drained(): Promise<void> {
    const socket = this.#client.socket;
    // A write after the server closed fails with EPIPE/ECONNRESET, which rejects once(): that is a close too.
    await Promise.race([once(socket, 'drain'), this.#client.closed]).catch(() => undefined);
    if (this.closed || socket.destroyed) throw new StreamClosedError(this.serverError);
  }

  async #readLoop(): Promise<void> {
    try {
      for (;;) {
        let message;
        try {
          message = await this.#client.next(READER_POLL_MS);
        } catch (error) {
          if (this.#client.socket.destroyed || this.#client.socket.readableEnded) return;
          if (error instanceof Error && error.message.startsWith('no backend message')) continue;
          return;
        }
        if (message.name === 'copyData') {
          const payload = (message as unknown as { chunk: Buffer }).chunk;
          const decoded = decodeAcceptorMessage(payload, this.protoVersion) as AcceptorGreeting | VoteResponse | AppendResponse;
          if (decoded.tag === 'append') this.appendResponses.push(decoded);
          this.#replies.push(decoded);
          this.#wake?.();
        } else if (message.name === 'error') {
          this.serverError = message as DatabaseError;
        }
        // CopyDone and anything else: the close that follows ends the loop.
      }
    } finally {
      this.closed = true;
      this.#wake?.();
    }
  }
}

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

export interface ElectAndStreamOptions extends TestProposerOptions, StreamOptions {
  source: WalSource;
  /** Where this proposer's WAL starts on a timeline that has none (the compute's start LSN). */
  timelineStartLsn: Lsn;
  /** Defaults to greeting term + 1. */
  term?: bigint;
  /** Stream up to here (default source.endLsn). */
  toLsn?: Lsn;
  /** Wait until flush_lsn acknowledges the end (default true). */
  waitForEnd?: boolean;
}

export interface Session {
  proposer: TestProposer;
  greeting: AcceptorGreeting;
  vote: VoteResponse;
  term: bigint;
  /** Where streaming started (the acceptor's flush_lsn, or the timeline start on an empty timeline). */
  startLsn: Lsn;
  endLsn: Lsn;
}

/**
 * greeting → vote(term = greeting.term + 1) → elected with history = vote history + (term, donor flush_lsn)
 * (§4.7; a timeline without WAL starts at `timelineStartLsn`) → stream the source from there. The caller
 * closes `proposer`.
 */
export async function electAndStream(options: ElectAndStreamOptions): Promise<Session> {
  const proposer = await TestProposer.connect(options);
  try {
    const greeting = await proposer.greet();
    const term = options.term ?? greeting.term + 1n;
    const vote = await proposer.vote(term);
    assert.equal(vote.voteGiven, true, `vote for term ${term} refused (acceptor term ${vote.term})`);
    const donorFlushLsn = vote.flushLsn === 0n ? options.timelineStartLsn : vote.flushLsn;
    const termHistory = [...vote.termHistory, { term, lsn: donorFlushLsn }];
    await proposer.elect({ term, startStreamingAtLsn: donorFlushLsn, termHistory });
    const toLsn = options.toLsn ?? options.source.endLsn;
    const endLsn = await proposer.streamWal(walRange(options.source, donorFlushLsn, toLsn), donorFlushLsn, options);
    if (donorFlushLsn === toLsn) await proposer.heartbeat(toLsn);
    if (options.waitForEnd ?? true) await proposer.waitForFlush(toLsn);
    return { proposer, greeting, vote, term, startLsn: donorFlushLsn, endLsn };
  } catch (error) {
    await proposer.close();
    throw error;
  }
}

/** TIMELINE_STATUS over a fresh connection: { flushLsn, commitLsn }, or null when the timeline is unknown. */
export async function timelineStatus(port: number, tenantId: string, timelineId: string): Promise<{ flushLsn: string; commitLsn: string } | null> {
  const client = await PgTestClient.connect({ port, options: `-c timeline_id=${timelineId} tenant_id=${tenantId}` });
  try {
    const result = await client.simpleQuery('TIMELINE_STATUS');
    const row = result.rows[0];
    if (row === undefined) return null;
    return { flushLsn: row[0] ?? '', commitLsn: row[1] ?? '' };
  } finally {
    await client.terminate();
  }
}

// ---------------------------------------------------------------------------------------------------
// WAL sources and checks on a timeline's files.

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

/**
 * The LSNs a safekeeper may acknowledge as flush_lsn for these pg_waldump records: each record's end,
 * MAXALIGNed, and the next segment start after an XLOG_SWITCH.
 */
export function recordEndsOf(records: readonly WaldumpRecord[], segmentSizeBytes: number): Set<Lsn> {
  const ends = new Set<Lsn>();
  for (const record of records) {
    ends.add(recordEndLsn(record.lsn, record.totalLengthBytes, segmentSizeBytes));
    if (record.rmgr === 'XLOG' && record.desc.startsWith('SWITCH')) ends.add(segmentStartLsn(segmentNumber(record.lsn, segmentSizeBytes) + 1n, segmentSizeBytes));
  }
  return ends;
}

/** Asserts that acknowledged flush_lsns never go backwards and each is one of `validEnds`. */
export function assertAcksAreRecordEnds(acks: readonly Lsn[], validEnds: ReadonlySet<Lsn>): void {
  let previous = 0n;
  for (const [index, lsn] of acks.entries()) {
    assert.ok(lsn >= previous, `acknowledged flush_lsn went backwards at reply ${index}: ${formatLsn(previous)} then ${formatLsn(lsn)}`);
    assert.ok(validEnds.has(lsn), `acknowledged flush_lsn ${formatLsn(lsn)} (reply ${index}) is not a record end`);
    previous = lsn;
  }
}

export const timelineDirOf = (dataDir: string, tenantId: string, timelineId: string): string => join(dataDir, tenantId, timelineId);

export interface SegmentFile {
  segno: bigint;
  partial: boolean;
  path: string;
}

/** The segment files of a timeline directory, by segment number. */
export async function listSegmentFiles(dir: string, segmentSizeBytes: number): Promise<SegmentFile[]> {
  const files: SegmentFile[] = [];
  for (const name of await readdir(dir)) {
    const parsed = parseSegmentFileName(name, segmentSizeBytes);
    if (parsed !== null) files.push({ segno: parsed.segno, partial: parsed.partial, path: join(dir, name) });
  }
  return files.sort((a, b) => (a.segno < b.segno ? -1 : a.segno > b.segno ? 1 : 0));
}

/**
 * The node's default remote storage (`file://{data_dir}/remote`) for a timeline dir `<data_dir>/<t>/<l>`.
 * Once a segment is uploaded, WAL removal deletes it locally; its bytes are then only there.
 */
export function defaultRemoteDirOf(dir: string): string {
  const tenantDir = dirname(dir);
  return join(dirname(tenantDir), 'remote', basename(tenantDir), basename(dir));
}

/** A timeline's segment files, plus those only in its default remote storage (removed locally after upload). */
async function segmentFilesWithRemote(dir: string, segmentSizeBytes: number): Promise<SegmentFile[]> {
  const local = await listSegmentFiles(dir, segmentSizeBytes);
  const remoteDir = defaultRemoteDirOf(dir);
  if (!existsSync(remoteDir)) return local;
  const present = new Set(local.map((file) => file.segno));
  const remote = (await listSegmentFiles(remoteDir, segmentSizeBytes)).filter((file) => !file.partial && !present.has(file.segno));
  return [...local, ...remote].sort((a, b) => (a.segno < b.segno ? -1 : a.segno > b.segno ? 1 : 0));
}

/**
 * A listed segment's bytes. A running node may remove a complete local segment (after its upload) between
 * the listing and the read: then it is read from the default remote storage.
 */
async function readSegmentFile(file: SegmentFile, dir: string, segmentSizeBytes: number): Promise<Buffer> {
  try {
    return await readFile(file.path);
  } catch (error) {
    if ((error as { code?: string }).code !== 'ENOENT' || file.partial) throw error;
    return readFile(join(defaultRemoteDirOf(dir), segmentFileName(file.segno, segmentSizeBytes)));
  }
}

/** The bytes of [fromLsn, toLsn) from a timeline's segment files (`.partial` or complete, local or uploaded). */
export async function readTimelineWal(dir: string, fromLsn: Lsn, toLsn: Lsn, segmentSizeBytes: number): Promise<Uint8Array> {
  const files = await segmentFilesWithRemote(dir, segmentSizeBytes);
  const out = new Uint8Array(Number(toLsn - fromLsn));
  const segmentSize = BigInt(segmentSizeBytes);
  for (let lsn = fromLsn; lsn < toLsn; ) {
    const segno = segmentNumber(lsn, segmentSizeBytes);
    const matching = files.filter((file) => file.segno === segno);
    assert.equal(matching.length, 1, `exactly one file for segment ${segno} (found ${matching.map((file) => file.path).join(', ') || 'none'})`);
    const content = await readSegmentFile(matching[0]!, dir, segmentSizeBytes);
    assert.equal(content.length, segmentSizeBytes, `segment ${segno} has its full size`);
    const offset = Number(lsn % segmentSize);
    const take = Math.min(segmentSizeBytes - offset, Number(toLsn - lsn));
    out.set(content.subarray(offset, offset + take), Number(lsn - fromLsn));
    lsn += BigInt(take);
  }
  return out;
}

/** Asserts byte equality, naming the first differing LSN. */
export function assertSameWal(actual: Uint8Array, expected: Uint8Array, fromLsn: Lsn, what: string): void {
  assert.equal(actual.length, expected.length, `${what}: length`);
  if (Buffer.compare(Buffer.from(actual.buffer, actual.byteOffset, actual.length), Buffer.from(expected.buffer, expected.byteOffset, expected.length)) === 0) return;
  let index = 0;
  while (index < actual.length && actual[index] === expected[index]) index += 1;
  assert.fail(`${what}: first difference at ${formatLsn(fromLsn + BigInt(index))} (safekeeper 0x${(actual[index] ?? 0).toString(16)}, source 0x${(expected[index] ?? 0).toString(16)})`);
}

/** The offset of the first non-zero byte, or -1. */
export function firstNonZero(bytes: Uint8Array): number {
  for (let index = 0; index < bytes.length; index += 1) if (bytes[index] !== 0) return index;
  return -1;
}

/** Asserts that nothing is kept after `lsn`: the rest of its segment is zero and no later segment holds a non-zero byte. */
export async function assertNothingAfter(dir: string, lsn: Lsn, segmentSizeBytes: number): Promise<void> {
  const segno = segmentNumber(lsn, segmentSizeBytes);
  const segmentEnd = segmentStartLsn(segno + 1n, segmentSizeBytes);
  if (lsn < segmentEnd) {
    const tail = await readTimelineWal(dir, lsn, segmentEnd, segmentSizeBytes);
    const bad = firstNonZero(tail);
    assert.equal(bad, -1, `non-zero byte kept at ${formatLsn(lsn + BigInt(bad))}, after ${formatLsn(lsn)}`);
  }
  for (const file of await listSegmentFiles(dir, segmentSizeBytes)) {
    if (file.segno <= segno) continue;
    const bad = firstNonZero(await readFile(file.path));
    assert.equal(bad, -1, `segment file ${file.path} after ${formatLsn(lsn)} holds data at offset ${bad}`);
  }
}

/**
 * Copies a timeline's segments into `targetDir` under their complete names (pg_waldump skips `.partial`
 * files) and returns `targetDir`. All-zero segments (prepared ahead of the writer) are left out: pg_waldump
 * learns the segment size from the long page header of whichever file it opens first.
 */
export async function copySegmentsForWaldump(dir: string, segmentSizeBytes: number, targetDir: string): Promise<string> {
  for (const file of await segmentFilesWithRemote(dir, segmentSizeBytes)) {
    const content = await readSegmentFile(file, dir, segmentSizeBytes);
    if (firstNonZero(content) < 0) continue;
    await writeFile(join(targetDir, segmentFileName(file.segno, segmentSizeBytes)), content);
  }
  return targetDir;
}
