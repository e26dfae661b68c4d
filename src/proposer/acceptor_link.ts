/**
 * One safekeeper as the proposer sees it: a loop of connection sessions with reconnect backoff (doubling,
 * with jitter, reset once a session reaches streaming). A session walks walproposer's states:
 *   connect → IDENTIFY_SYSTEM (refuse a timeline of another system) → START_WAL_PUSH → greeting →
 *   wait for the campaign → VoteRequest → vote → wait for the election (a new election round, with a
 *   higher term, sends another VoteRequest on the same connection) → ProposerElected with this acceptor's
 *   own start point → streaming.
 * Streaming (`link_stream.ts`) runs a sender and a reader side by side over the proposer's WAL window, and
 * updates this link's flushLsn, streamingAtLsn, state and counters, which the proposer and the metrics read.
 * Errors: anything that ends a session is logged (once per distinct message) and retried; errors the
 * proposer marks fatal (term conflict, wrong system id, bugs) are rethrown and stop the proposer. A link
 * whose greeting carries another link's node id (the same safekeeper listed twice, under two names) is
 * dropped for the rest of the run: it stops connecting and never counts toward a quorum. `flushLsn`
 * is the acceptor's start point when a session begins (walproposer keeps the old value across reconnects;
 * the start point is what the acceptor durably has after ProposerElected, so it is never an overcount).
 * Abort-safe: every wait takes the session's signal, and the connection is destroyed when a session ends.
 * Main thread.
 */
import type { AcceptorGreeting, AcceptorMessage, AppendResponse, HotStandbyFeedback, ProtocolVersion, VoteResponse } from '../acceptor/messages.js';
import { decodeAcceptorMessage, encodeProposerMessage } from '../acceptor/messages_codec.js';
import { emptyMembership, type TenantId, type TermHistory, type TimelineId } from '../acceptor/state.js';
import { formatHostPort, type HostPort } from '../config/value_parsers.js';
import { ProtocolViolationError } from '../errors.js';
import type { Logger } from '../log.js';
import { PgClient, PgConnectionError, PgServerError } from '../pg/client.js';
import { CancelToken, sleep, withDeadline } from '../sync/cancel.js';
import type { Lsn } from '../wal/lsn.js';
import { startStreamingLsn, voteProblem } from './election.js';
import type { CampaignRound } from './campaign.js';
import { DuplicateSafekeeperError, SystemIdMismatchError } from './errors.js';
import { ACCEPTOR_SILENCE_MS_MAX, CONNECT_TIMEOUT_MS, RECONNECT_BACKOFF_MS_MAX, RECONNECT_BACKOFF_MS_MIN, RECONNECT_JITTER_RATIO } from './limits.js';
import { LinkStream } from './link_stream.js';
import type { ServerIdentity } from './source.js';
import type { WalWindow } from './wal_window.js';

export type LinkState = 'offline' | 'connecting' | 'greeting' | 'voting' | 'waiting_elected' | 'recovering' | 'streaming';

export interface ElectedTerm {
  term: bigint;
  generation: number;
  history: TermHistory;
  termStartLsn: Lsn;
}

/** What a link needs from the proposer (implemented by `proposer.ts`). */
export interface LinkHost {
  readonly tenantId: TenantId;
  readonly timelineId: TimelineId;
  readonly protocolVersion: ProtocolVersion;
  readonly identity: ServerIdentity;
  readonly window: WalWindow;
  readonly log: Logger;
  commitLsn(): Lsn;
  truncateLsn(): Lsn;
  /** The proposer is stopping cleanly: a new commit_lsn goes out at once, not after COMMIT_BROADCAST_DELAY_MS. */
  readonly stopping: boolean;
  /**
   * Records a greeting; throws a fatal error when the acceptor is past our term after the campaign began, and
   * DuplicateSafekeeperError (this link is dropped) when another link already greeted from its node id.
   */
  onGreeting(link: AcceptorLink, greeting: AcceptorGreeting): void;
  /** Resolves with what to request votes for (term, generation, round) once greetings from a majority are in. */
  campaign(signal: AbortSignal): Promise<CampaignRound>;
  /** Records the reply to the VoteRequest of `round`; throws a fatal error for a refusal that means another proposer won. */
  onVote(link: AcceptorLink, vote: VoteResponse, round: number): void;
  /** Resolves once elected, or with null once an election round after `round` began (vote again). */
  elected(round: number, signal: AbortSignal): Promise<ElectedTerm | null>;
  onAppendResponse(link: AcceptorLink, response: AppendResponse): void;
  /** An AppendRequest carrying WAL was acknowledged as flushed `latencyMs` after we sent it. */
  onAppendAcked(link: AcceptorLink, latencyMs: number): void;
  /** The session ended before the election finished: forget this link's greeting and vote. */
  onSessionEnd(link: AcceptorLink): void;
  /** A safekeeper in our term that has WAL at `lsn`, other than `link`; null if none. */
  recoveryDonor(link: AcceptorLink, lsn: Lsn): HostPort | null;
  isFatal(error: unknown): boolean;
}

export class AcceptorLink {
  state: LinkState = 'offline';
  /** From this link's latest accepted greeting (set by the proposer); no two links hold the same one. */
  nodeId: bigint | null = null;
  /** flush_lsn from the latest AppendResponse in our term; each session starts it at the start point. */
  flushLsn: Lsn = 0n;
  streamingAtLsn: Lsn = 0n;
  /** commit_lsn the safekeeper reported in its latest AppendResponse this session (what it has applied). */
  ackedCommitLsn: Lsn = 0n;
  hsFeedback: HotStandbyFeedback | null = null;
  lastError: string | null = null;
  /** Sessions that reached streaming; tests and the summary read it. */
  sessionsStreamed = 0;
  /** Connection attempts after the first (metrics). */
  reconnectsTotal = 0;
  /** WAL bytes sent in AppendRequests, over all sessions (metrics). */
  sentWalBytesTotal = 0;
  /** The streaming part of the current session, once ProposerElected is sent. */
  #stream: LinkStream | null = null;
  #loggedError: string | null = null;

  constructor(readonly index: number, readonly address: HostPort, private readonly host: LinkHost) {}

  get name(): string {
    return formatHostPort(this.address);
  }

  /** Wakes the sender if it sleeps: new WAL or a new commit_lsn. Cheap; called on every change. */
  kick(): void {
    this.#stream?.kick();
  }

  /** Runs sessions until `signal` fires (resolves) or a fatal error (rejects). */
  async run(signal: AbortSignal): Promise<void> {
    let backoffMs = RECONNECT_BACKOFF_MS_MIN;
    for (let attempt = 0; !signal.aborted; attempt += 1) {
      if (attempt > 0) this.reconnectsTotal += 1;
      const streamedBefore = this.sessionsStreamed;
      try {
        await this.#session(signal);
      } catch (error) {
        if (signal.aborted) break;
        if (this.host.isFatal(error)) throw error;
        if (error instanceof DuplicateSafekeeperError) {
          // Another link already speaks to this node: connecting again cannot help, and it must never count twice.
          this.lastError = error.message;
          this.host.log.error({ safekeeper: this.name, node_id: error.nodeId, err: error.message }, 'safekeeper dropped: it is the same node as another one in --safekeepers');
          return;
        }
        this.#noteError(error);
      } finally {
        this.state = 'offline';
        this.host.onSessionEnd(this);
      }
      if (this.sessionsStreamed > streamedBefore) backoffMs = RECONNECT_BACKOFF_MS_MIN;
      const jitter = 1 + (Math.random() * 2 - 1) * RECONNECT_JITTER_RATIO;
      await sleep(Math.round(backoffMs * jitter), signal).catch(() => undefined);
      backoffMs = Math.min(RECONNECT_BACKOFF_MS_MAX, backoffMs * 2);
    }
  }

  #noteError(error: unknown): void {
    const message = error instanceof Error ? error.message : String(error);
    this.lastError = message;
    if (message === this.#loggedError) return;
    this.#loggedError = message;
    this.host.log.warn({ safekeeper: this.name, err: message }, 'safekeeper connection failed; reconnecting');
  }

  async #session(runSignal: AbortSignal): Promise<void> {
    const session = new CancelToken();
    const onRunAbort = (): void => session.cancel(runSignal.reason);
    runSignal.addEventListener('abort', onRunAbort, { once: true });
    let client: PgClient | null = null;
    try {
      this.state = 'connecting';
      client = await PgClient.connect({
        host: this.address.host, port: this.address.port, user: 'proposer', database: 'replication', applicationName: 'walproposer',
        options: `-c timeline_id=${this.host.timelineId} tenant_id=${this.host.tenantId}`, connectTimeoutMs: CONNECT_TIMEOUT_MS,
      }, session.signal);
      const connection = client;
      void connection.closed.then(() => session.cancel(new PgConnectionError(`${this.name}: connection closed`)));
      await this.#checkSystemId(connection, session.signal);
      await connection.startCopyBoth(`START_WAL_PUSH (proto_version '${this.host.protocolVersion}', allow_timeline_creation 'true')`, session.signal);
      await this.#elect(connection, session.signal);
    } finally {
      runSignal.removeEventListener('abort', onRunAbort);
      session.cancel();
      client?.destroy();
    }
  }

  /** IDENTIFY_SYSTEM on the timeline: an existing timeline must belong to our system (0 = not known yet). */
  async #checkSystemId(client: PgClient, signal: AbortSignal): Promise<void> {
    let systemIdText: string | null | undefined;
    try {
      systemIdText = (await client.query('IDENTIFY_SYSTEM', signal)).rows[0]?.[0];
    } catch (error) {
      if (error instanceof PgServerError) return; // no such timeline yet: the greeting creates it
      throw error;
    }
    if (systemIdText === null || systemIdText === undefined || !/^\d+$/.test(systemIdText)) return;
    const found = BigInt(systemIdText);
    const expected = this.host.identity.systemId;
    if (found !== 0n && expected !== 0n && found !== expected) throw new SystemIdMismatchError(expected, found, `safekeeper ${this.name}`);
  }

  async #elect(client: PgClient, signal: AbortSignal): Promise<void> {
    const host = this.host;
    this.state = 'greeting';
    this.#send(client, {
      tag: 'greeting', tenantId: host.tenantId, timelineId: host.timelineId, mconf: emptyMembership(),
      pgVersion: host.identity.pgVersion, systemId: host.identity.systemId, walSegSizeBytes: host.identity.walSegSizeBytes,
    });
    const greeting = await this.#receive(client, 'greeting', signal);
    host.onGreeting(this, greeting); // sets nodeId, or refuses a node another link already speaks to
    const { vote, elected } = await this.#vote(client, signal);
    // A given vote the election could not use (refused by `screenVoters`) is refused here too.
    const problem = vote.voteGiven ? voteProblem(vote) : null;
    if (problem !== null) throw new ProtocolViolationError('VoteResponse', problem);
    const startLsn = startStreamingLsn(elected.history, elected.term, vote.termHistory, vote.flushLsn);
    this.#send(client, { tag: 'elected', generation: elected.generation, term: elected.term, startStreamingAtLsn: startLsn, termHistory: elected.history });
    host.log.info({ safekeeper: this.name, node_id: this.nodeId, term: elected.term, start_lsn: startLsn, flush_lsn: vote.flushLsn }, 'safekeeper elected us; streaming');
    const stream = new LinkStream(this, host);
    this.#stream = stream;
    try {
      await stream.run(client, elected, startLsn, signal);
    } finally {
      this.#stream = null;
    }
  }

  /** VoteRequests, one per election round, until the proposer is elected; the last vote decides our start point. */
  async #vote(client: PgClient, signal: AbortSignal): Promise<{ vote: VoteResponse; elected: ElectedTerm }> {
    for (;;) {
      this.state = 'voting';
      const { term, generation, round } = await this.host.campaign(signal);
      this.#send(client, { tag: 'vote', generation, term });
      const vote = await this.#receive(client, 'vote', signal);
      this.host.onVote(this, vote, round);
      this.state = 'waiting_elected';
      const elected = await this.host.elected(round, signal);
      if (elected !== null) return { vote, elected };
    }
  }

  async #receive<T extends AcceptorMessage['tag']>(client: PgClient, tag: T, signal: AbortSignal): Promise<Extract<AcceptorMessage, { tag: T }>> {
    return withDeadline(async (deadline) => {
      for (;;) {
        const event = await client.nextCopy(deadline);
        if (event.kind === 'done') throw new PgConnectionError(`${this.name}: stream ended while waiting for ${tag}`);
        const message = decodeAcceptorMessage(event.payload, this.host.protocolVersion);
        if (message.tag === tag) return message as Extract<AcceptorMessage, { tag: T }>;
        // walproposer would fail here; an AppendResponse carries nothing we need before streaming, so a
        // safekeeper that sends one early (e.g. after the flush a VoteRequest makes) is tolerated.
        if (message.tag === 'append') continue;
        throw new ProtocolViolationError('acceptor', `expected ${tag}, got ${message.tag}`);
      }
    }, ACCEPTOR_SILENCE_MS_MAX, signal, () => new PgConnectionError(`${this.name}: no ${tag} reply within ${ACCEPTOR_SILENCE_MS_MAX} ms`));
  }

  #send(client: PgClient, message: Parameters<typeof encodeProposerMessage>[0]): boolean {
    return client.sendCopyData(encodeProposerMessage(message, this.host.protocolVersion));
  }
}
