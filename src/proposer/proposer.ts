/**
 * The proposer: Neon's walproposer as a Node program. It owns the election state, the WAL window and the
 * commit arithmetic, and runs one `AcceptorLink` per safekeeper plus the WAL source.
 *
 * Election (reference §4.7): greetings from a majority fix the term (1 + the highest greeting term); votes
 * from a majority elect us; the donor is the voter with the highest (last_log_term, flush_lsn); the term
 * starts at the donor's flush_lsn (or, on an empty timeline, where the source says a timeline begins); our
 * history is the donor's plus (term, term start). The bookkeeping of greetings and votes is `campaign.ts`;
 * the step from a majority of votes to the term start (which waits on the source and the donor) is `term_start.ts`.
 * Streaming: the source appends to the window, every link streams from it at its own pace, and each
 * AppendResponse recomputes commit_lsn (the quorum-th highest flush at or above the term start) and
 * truncate_lsn (min flush over all, capped at commit). The window keeps what the slowest acceptor still
 * needs, up to its capacity, and never drops WAL above max(commit_lsn, term start): the source waits
 * instead (`window_budget.ts`).
 * Where the source can rewind (a primary with a slot), streaming starts at the lowest voter's start point
 * rather than the term start, so voters that lag are fed from the window while it holds their WAL; WAL
 * below the term start is on the donor, so it neither holds the source back nor stays in a full window.
 * For anything below the window a link recovers from a donor safekeeper with START_REPLICATION (term mode).
 * Safekeepers: each configured address once (the caller checks); a second link that greets with a node id
 * another link holds is dropped (`DuplicateSafekeeperError`), so no node counts twice toward a quorum. A
 * voter whose history we cannot use is refused, and the election goes on with the others.
 * Failure: fatal errors (term conflict, wrong system id, no quorum in time, source failure, bugs) stop every
 * task and are thrown from `run()`; an abort of `run`'s signal (SIGTERM) stops cleanly and resolves.
 * Clean stop: the source stops first, while the links go on until every streaming safekeeper has
 * acknowledged the window and the final commit_lsn, sent at once rather than after the broadcast delay
 * (`stop_drain.ts`, bounded); without it the safekeepers' commit_lsn could stay one broadcast behind the last
 * commit (readers are served only up to it).
 * Main thread.
 */
import type { AcceptorGreeting, AppendResponse, ProtocolVersion, VoteResponse } from '../acceptor/messages.js';
import type { TenantId, TimelineId } from '../acceptor/state.js';
import type { HostPort } from '../config/value_parsers.js';
import { ProtocolViolationError } from '../errors.js';
import type { Logger } from '../log.js';
import { SLOW_WAIT_MS } from '../limits.js';
import { assert, AssertionError } from '../sync/assert.js';
import { CancelToken } from '../sync/cancel.js';
import { Watch } from '../sync/watch.js';
import type { Lsn } from '../wal/lsn.js';
import { AcceptorLink, type ElectedTerm, type LinkHost } from './acceptor_link.js';
import { Campaign, type CampaignPhase, type CampaignRound } from './campaign.js';
import { DuplicateSafekeeperError, SystemIdMismatchError, TermConflictError } from './errors.js';
import { duplicateSafekeeper, quorumCommitLsn, quorumSize, truncateLsnCandidate } from './quorum.js';
import type { ServerIdentity, WalSource } from './source.js';
import { collectVoters, planTermStart, prevRecordLsnBefore, sourceStartLsnFor, type ElectingContext } from './term_start.js';
import { WalWindow } from './wal_window.js';
import { drainFinalCommit } from './stop_drain.js';
import { sourceMayAppend, windowTrimLsn } from './window_budget.js';

export interface ProposerOptions {
  safekeepers: readonly HostPort[];
  tenantId: TenantId;
  timelineId: TimelineId;
  protocolVersion: ProtocolVersion;
  source: WalSource;
  log: Logger;
  /** How long greetings and votes from a majority may take. */
  quorumTimeoutMs: number;
  windowBytes: number;
  /** Called once, when elected (before streaming starts). */
  onElected?: (elected: ElectedTerm) => void;
  /** A safekeeper acknowledged the flush of an AppendRequest with WAL `latencyMs` after it was sent (metrics). */
  onAppendAcked?: (safekeeper: string, latencyMs: number) => void;
}

export type ProposerPhase = CampaignPhase;

export interface ProposerStatus {
  phase: ProposerPhase;
  term: bigint;
  termStartLsn: Lsn;
  commitLsn: Lsn;
  truncateLsn: Lsn;
  windowStartLsn: Lsn;
  windowEndLsn: Lsn;
  safekeepers: { name: string; state: string; flushLsn: Lsn; lastError: string | null }[];
}

export class Proposer implements LinkHost {
  readonly tenantId: TenantId;
  readonly timelineId: TimelineId;
  readonly protocolVersion: ProtocolVersion;
  readonly identity: ServerIdentity;
  readonly window: WalWindow;
  readonly log: Logger;
  readonly links: AcceptorLink[];
  readonly quorum: number;
  /** The quorum's commit_lsn; moves forward only. */
  readonly commit = new Watch<Lsn>(0n);
  readonly #options: ProposerOptions;
  readonly #source: WalSource;
  readonly #campaign: Campaign<AcceptorLink>;
  readonly #electing: ElectingContext;
  /** Bumped on every AppendResponse (commit and window trims happen there); the paused source waits on it. */
  readonly #acks = new Watch(0);
  #elected: ElectedTerm | null = null;
  #donorIndex = -1;
  #truncateLsn = 0n;
  #fatal: unknown = null;
  #token: CancelToken | null = null;
  #sentFeedback = { xmin: 0n, catalogXmin: 0n };
  #stopping = false;

  constructor(options: ProposerOptions) {
    assert(options.safekeepers.length > 0, 'at least one safekeeper');
    assert(duplicateSafekeeper(options.safekeepers) === null, 'each safekeeper address once (the CLI refuses duplicates)');
    this.#options = options;
    this.#source = options.source;
    this.tenantId = options.tenantId;
    this.timelineId = options.timelineId;
    this.protocolVersion = options.protocolVersion;
    this.identity = options.source.identity;
    this.log = options.log;
    this.window = new WalWindow(options.windowBytes);
    this.quorum = quorumSize(options.safekeepers.length);
    this.#campaign = new Campaign(this.quorum, options.log);
    this.links = options.safekeepers.map((address, index) => new AcceptorLink(index, address, this));
    this.#electing = {
      tenantId: this.tenantId, timelineId: this.timelineId, identity: this.identity, log: this.log, links: this.links, quorum: this.quorum,
      campaign: this.#campaign, source: this.#source, quorumTimeoutMs: options.quorumTimeoutMs, isFatal: (error) => this.isFatal(error),
    };
  }

  get electedTerm(): ElectedTerm | null {
    return this.#elected;
  }

  get phase(): ProposerPhase {
    return this.#campaign.phase;
  }

  /** Runs until `signal` fires (resolves) or a fatal error (rejects with it). Call once. */
  async run(signal: AbortSignal): Promise<void> {
    assert(this.#token === null, 'a proposer runs once');
    // The links run on `token`, the election and the source on its child `work`: a clean stop ends the
    // source first and the links only after the drain; a fatal error cancels both.
    const token = new CancelToken();
    this.#token = token;
    const work = token.child();
    const onAbort = (): void => work.cancel(signal.reason);
    if (signal.aborted) onAbort();
    else signal.addEventListener('abort', onAbort, { once: true });
    const linkRuns = this.links.map((link) => link.run(token.signal).catch((error: unknown) => this.#failFatal(error)));
    try {
      await this.#electAndStream(work.signal);
    } catch (error) {
      if (!signal.aborted) this.#failFatal(error);
    } finally {
      signal.removeEventListener('abort', onAbort);
      work.release();
      if (this.#fatal === null && this.#elected !== null) {
        this.#stopping = true;
        for (const link of this.links) link.kick(); // a commit_lsn waiting out the broadcast delay goes now
        await drainFinalCommit({ links: this.links, window: this.window, commit: this.commit, acks: this.#acks, log: this.log, signal: token.signal });
      }
      token.cancel();
      await Promise.all(linkRuns);
    }
    if (this.#fatal !== null) throw this.#fatal;
  }

  status(): ProposerStatus {
    return {
      phase: this.phase, term: this.#campaign.term, termStartLsn: this.#elected?.termStartLsn ?? 0n, commitLsn: this.commit.value, truncateLsn: this.#truncateLsn,
      windowStartLsn: this.window.startLsn, windowEndLsn: this.window.endLsn,
      safekeepers: this.links.map((link) => ({ name: link.name, state: link.state, flushLsn: link.flushLsn, lastError: link.lastError })),
    };
  }

  // ---- LinkHost ----

  commitLsn(): Lsn {
    return this.commit.value;
  }

  get stopping(): boolean {
    return this.#stopping;
  }

  truncateLsn(): Lsn {
    return this.#truncateLsn;
  }

  isFatal(error: unknown): boolean {
    return error instanceof TermConflictError || error instanceof SystemIdMismatchError || error instanceof AssertionError;
  }

  onGreeting(link: AcceptorLink, greeting: AcceptorGreeting): void {
    // One node under two names must not count twice: the first link to greet from a node id keeps it.
    const holder = this.links.find((each) => each !== link && each.nodeId === greeting.nodeId);
    if (holder !== undefined) throw new DuplicateSafekeeperError(greeting.nodeId, link.name, holder.name);
    link.nodeId = greeting.nodeId;
    this.#campaign.onGreeting(link, link.name, greeting);
  }

  campaign(signal: AbortSignal): Promise<CampaignRound> {
    return this.#campaign.campaign(signal);
  }

  onVote(link: AcceptorLink, vote: VoteResponse, round: number): void {
    this.#campaign.onVote(link, link.name, vote, round);
  }

  async elected(round: number, signal: AbortSignal): Promise<ElectedTerm | null> {
    const campaign = this.#campaign;
    await campaign.changes.waitFor(() => this.#elected !== null || campaign.round !== round, signal);
    return this.#elected;
  }

  onAppendAcked(link: AcceptorLink, latencyMs: number): void {
    this.#options.onAppendAcked?.(link.name, latencyMs);
  }

  onSessionEnd(): void {
    // Greetings and votes are kept (see the header); nothing else depends on a live session.
  }

  onAppendResponse(link: AcceptorLink, response: AppendResponse): void {
    const elected = this.#elected;
    assert(elected !== null, 'appends only after the election');
    if (response.term > elected.term) throw new TermConflictError(elected.term, response.term, `safekeeper ${link.name} answered an append with a higher term`);
    if (response.generation !== elected.generation) throw new ProtocolViolationError('AppendResponse', `generation ${response.generation}, ours is ${elected.generation}`);
    const flushLsns = this.links.map((each) => each.flushLsn);
    const commitLsn = quorumCommitLsn(flushLsns, elected.termStartLsn);
    if (commitLsn > this.commit.value) {
      this.commit.set(commitLsn);
      this.#source.onCommit(commitLsn);
      for (const each of this.links) each.kick();
    }
    const truncateLsn = truncateLsnCandidate(flushLsns, this.commit.value);
    if (truncateLsn > this.#truncateLsn) this.#truncateLsn = truncateLsn;
    this.window.trim(windowTrimLsn(this.window, flushLsns, this.commit.value, elected.termStartLsn));
    this.#relayFeedback();
    if (this.#acks.waiterCount > 0) this.#acks.set(this.#acks.value + 1);
  }

  recoveryDonor(link: AcceptorLink, lsn: Lsn): HostPort | null {
    let best: AcceptorLink | null = null;
    let bestLsn = lsn;
    for (const each of this.links) {
      if (each === link || (each.state !== 'streaming' && each.state !== 'recovering')) continue;
      const known = each.index === this.#donorIndex && this.#elected !== null && this.#elected.termStartLsn > each.flushLsn ? this.#elected.termStartLsn : each.flushLsn;
      if (known > bestLsn) {
        best = each;
        bestLsn = known;
      }
    }
    return best?.address ?? null;
  }

  // ---- internals ----

  #failFatal(error: unknown): void {
    if (this.#fatal === null) {
      this.#fatal = error;
      this.log.error({ err: error instanceof Error ? error.message : String(error) }, 'proposer failed');
    }
    this.#token?.cancel(error);
  }

  async #electAndStream(signal: AbortSignal): Promise<void> {
    const campaign = this.#campaign;
    const voters = await collectVoters(this.#electing, signal);
    const start = await planTermStart(this.#electing, voters, campaign.term, signal);
    const { term, donor, history, termStartLsn } = start;
    this.#truncateLsn = start.truncateLsn;
    const sourceStartLsn = sourceStartLsnFor(this.#electing, voters, start);
    const donorLink = this.links[donor.index];
    assert(donorLink !== undefined, 'the donor is one of our safekeepers');
    const prevRecordLsn = await prevRecordLsnBefore(this.#electing, donorLink, start, signal);
    this.window.reset(sourceStartLsn);
    this.#donorIndex = donor.index;
    this.#elected = { term, generation: campaign.generation, history, termStartLsn };
    campaign.markElected();
    this.#options.onElected?.(this.#elected);
    this.log.info({ term, term_start_lsn: termStartLsn, source_start_lsn: sourceStartLsn, donor: donorLink?.name, votes: voters.length, truncate_lsn: this.#truncateLsn }, 'elected');
    await this.#source.stream({
      startLsn: sourceStartLsn, prevRecordLsn, signal,
      write: async (lsn, bytes, writeSignal) => {
        if (!sourceMayAppend(this.window, this.commit.value, termStartLsn)) await this.#waitForRoom(termStartLsn, writeSignal);
        this.window.append(lsn, bytes);
        for (const link of this.links) link.kick();
      },
    });
    // A finite source (synthetic --duration) is done: wait until the quorum has all of it.
    const endLsn = this.window.endLsn;
    await this.commit.waitFor((lsn) => lsn >= endLsn, signal);
  }

  /** Backpressure on the source (`window_budget.ts`); a wait longer than SLOW_WAIT_MS (a quorum that does not ack) is logged. */
  async #waitForRoom(termStartLsn: Lsn, signal: AbortSignal): Promise<void> {
    const startedMs = performance.now();
    const slow = setTimeout(() => this.log.warn({ commit_lsn: this.commit.value, window_end_lsn: this.window.endLsn, safekeepers: this.status().safekeepers }, 'WAL source paused: the quorum is not acknowledging'), SLOW_WAIT_MS);
    try {
      while (!sourceMayAppend(this.window, this.commit.value, termStartLsn)) {
        await this.#acks.changed(this.#acks.version, signal);
      }
    } finally {
      clearTimeout(slow);
      if (performance.now() - startedMs > SLOW_WAIT_MS) this.log.info({ waited_ms: Math.round(performance.now() - startedMs) }, 'WAL source resumed');
    }
  }

  #relayFeedback(): void {
    let xmin = 0n;
    let catalogXmin = 0n;
    for (const link of this.links) {
      const feedback = link.hsFeedback;
      if (feedback === null || link.state !== 'streaming') continue;
      if (feedback.xmin !== 0n && (xmin === 0n || feedback.xmin < xmin)) xmin = feedback.xmin;
      if (feedback.catalogXmin !== 0n && (catalogXmin === 0n || feedback.catalogXmin < catalogXmin)) catalogXmin = feedback.catalogXmin;
    }
    if (xmin === this.#sentFeedback.xmin && catalogXmin === this.#sentFeedback.catalogXmin) return;
    this.#sentFeedback = { xmin, catalogXmin };
    this.#source.onHotStandbyFeedback(xmin, catalogXmin);
  }
}

