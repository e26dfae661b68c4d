/**
 * A small but real proposer for integration tests: one START_WAL_PUSH connection speaking the
 * proposer⇄acceptor protocol (reference/safekeeper-protocol.md §3–§4) in v2 or v3, on top of PgTestClient.
 *
 * It does what a walproposer does with one safekeeper, step by step, so tests can also do it wrong on
 * purpose: `greet()`, `vote(term)`, `elect(...)`, `append(...)` (no wait, as walproposer pipelines appends),
 * `streamWal(...)` (split into AppendRequests of at most 128 KiB, with socket backpressure), `sendRaw()`.
 * A background reader (`acceptor_replies.ts`) decodes every acceptor message into a queue (`nextReply()`),
 * and also records every AppendResponse, so tests can assert that acknowledged flush_lsns are monotonic
 * record ends and `waitForFlush(lsn)` can wait on them. An ErrorResponse ends the stream; it is kept in
 * `serverError` and every later wait throws it as a StreamClosedError.
 *
 * Nearby: `proposer_session.ts` (electAndStream, timelineStatus), `wal_source.ts` (WAL sources, seeded
 * synthetic WAL) and `timeline_wal.ts` (checks on acknowledgements and a timeline's segment files).
 *
 * commit_lsn and truncate_lsn follow §4.7 for a single safekeeper: commit = the highest acknowledged
 * flush_lsn once it reaches the term start (the quorum of one), truncate = commit. `commit: 'none'` keeps
 * commit_lsn 0, leaving the streamed WAL uncommitted (so a later term may truncate it).
 */
import assert from 'node:assert/strict';
import { once } from 'node:events';
import type { AcceptorGreeting, AcceptorMessage, AppendResponse, ProposerMessage, ProtocolVersion, VoteResponse } from '../../src/acceptor/messages.js';
import { encodeAppendRequestHeader } from '../../src/acceptor/messages.js';
import { encodeProposerMessage } from '../../src/acceptor/messages_codec.js';
import { emptyMembership, type MembershipConfiguration, type TenantId, type TermHistory, type TimelineId } from '../../src/acceptor/state.js';
import { formatLsn, type Lsn } from '../../src/wal/lsn.js';
import { AcceptorReplyReader, StreamClosedError } from './acceptor_replies.js';
import { type DatabaseError, PgTestClient } from './pg_client.js';
import { waitFor } from './wait.js';

/** walproposer's MAX_SEND_SIZE: WAL bytes per AppendRequest. */
export const APPEND_WAL_BYTES_MAX = 128 * 1024;
const REPLY_WAIT_MS_DEFAULT = 20_000;

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

export class TestProposer {
  readonly protoVersion: ProtocolVersion;
  /** The elected term (0 until elect()). */
  term = 0n;
  /** Where this proposer's term starts (its last history entry); 0 until elect(). */
  termStartLsn: Lsn = 0n;
  /** The truncate_lsn learned from the vote (max over votes in walproposer). */
  voteTruncateLsn: Lsn = 0n;
  generation: number;
  readonly #client: PgTestClient;
  readonly #options: TestProposerOptions;
  readonly #reader: AcceptorReplyReader;
  /** This connection has sent an AppendRequest (after which AppendResponses may come at any time). */
  #appended = false;

  private constructor(client: PgTestClient, options: TestProposerOptions) {
    this.#client = client;
    this.#options = options;
    this.protoVersion = options.protoVersion;
    this.generation = options.mconf?.generation ?? 0;
    this.#reader = new AcceptorReplyReader(client, options.protoVersion);
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

  /** Every AppendResponse received, in order. */
  get appendResponses(): AppendResponse[] {
    return this.#reader.appendResponses;
  }

  /** The ErrorResponse that ended the stream, if any. */
  get serverError(): DatabaseError | null {
    return this.#reader.serverError;
  }

  /** Whether the connection has closed. */
  get closed(): boolean {
    return this.#reader.closed;
  }

  /** A socket error seen (e.g. ECONNRESET when the server closed with our bytes unread), for diagnostics. */
  get socketError(): Error | null {
    return this.#reader.socketError;
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
  nextReply(waitMs = this.#options.waitMs ?? REPLY_WAIT_MS_DEFAULT): Promise<AcceptorMessage> {
    return this.#reader.next(waitMs);
  }

  /** Forgets replies not yet taken with nextReply() (the AppendResponse record stays). */
  clearReplies(): void {
    this.#reader.clear();
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
    await this.#reader.done;
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
}
