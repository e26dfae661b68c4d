/**
 * The acceptor: the safekeeper's half of the proposer-acceptor consensus (protocol doc §4.3–§4.8),
 * after Neon's `SafeKeeper<CTRL, WAL>`. Pure rules over two storage interfaces, so unit and
 * simulation tests run it on in-memory storage (`memory_storage.ts`) and the node runs it on the
 * control file and the WAL writer. It never sees the protocol version: v2 arrives as generation 0.
 *
 * Threading and ordering: main thread. Calls are serial per timeline — the caller must not start
 * `handle`, `onFlushAdvanced` or any other async method while another is still running (the
 * timeline's WalAcceptor queue guarantees it). Getters and `appendResponse()` may be called any time.
 *
 * Durability (§4.8): a greeting that changes system_id or raises the generation persists before the
 * AcceptorGreeting; a vote flushes WAL, and a granted vote persists the term, before the
 * VoteResponse; ProposerElected persists term, history and start LSNs before `handle` resolves (no
 * reply); appends never persist except when commit_lsn first reaches term_start_lsn.
 *
 * Group commit: `handle(append)` only hands the bytes to `AcceptorWalStore.append` and returns null
 * (or a term-only refusal); it never waits for fsync. The driver flushes in batches and, each time
 * the durable flush_lsn advances, calls `onFlushAdvanced()` and then sends `appendResponse()`.
 * commit_lsn is capped by flush_lsn, so an append whose commit candidate runs ahead of the durable
 * WAL keeps that candidate, and `onFlushAdvanced()` applies it once the WAL is durable. When that
 * makes commit_lsn cross term_start_lsn, the control file is persisted *before* the in-memory
 * commit_lsn moves, so no AppendResponse can report a commit_lsn ≥ term_start_lsn that a restart
 * would lose (what `--sync-safekeepers` relies on). `flushAndRespond()` is the simple one-call form.
 *
 * **Quirk fix** (AppendResponse.commit_lsn): Neon sends the *persisted* commit_lsn. We send the
 * in-memory value capped by flush_lsn. walproposer only reads it for sync-safekeepers completion
 * (every live safekeeper's commit_lsn ≥ term start), and because crossing term start is persisted
 * first, the two differ only in freshness.
 *
 * Abort: every wait takes `signal`. An abort between two persists leaves a valid state (e.g. the new
 * term without the new history), as a crash would; the caller drops the connection.
 */
import { isDeepStrictEqual } from 'node:util';
import { AcceptorRefusedError, ProtocolViolationError } from '../errors.js';
import { assert, unreachable } from '../sync/assert.js';
import { type Lsn, formatLsn, lsnMax, lsnMin } from '../wal/lsn.js';
import {
  type AcceptorGreeting,
  type AcceptorMessage,
  type AppendRequest,
  type AppendResponse,
  type HotStandbyFeedback,
  type ProposerElected,
  type ProposerGreeting,
  type ProposerMessage,
  type VoteRequest,
  type VoteResponse,
  emptyHotStandbyFeedback,
} from './messages.js';
import type { AcceptorControlStore, AcceptorWalStore } from './acceptor_storage.js';
import type { MembershipConfiguration, TermHistory, TimelinePersistentState } from './state.js';
import { findHighestCommonPoint, historyProblem, isValidHistory, lastLogTerm, termStartLsn, truncateHistory } from './term_history.js';

// The storage interfaces live in acceptor_storage.ts; re-exported because callers import them from here.
export type { AcceptorControlStore, AcceptorWalStore } from './acceptor_storage.js';

export interface AcceptorOptions {
  /** Aggregated hot standby feedback for AppendResponses (§3.5); zeros by default. */
  hotStandbyFeedback?: () => HotStandbyFeedback;
  /**
   * Called synchronously each time the in-memory commit_lsn moves forward, with the new value: the one
   * place readers learn of newly committed WAL (no polling). Must not call back into the acceptor.
   */
  onCommitAdvanced?: (commitLsn: Lsn) => void;
}

/** Control-file fields that advance in memory and reach disk lazily (Neon's TimelineMemState). */
interface InMemoryLsns {
  commitLsn: Lsn;
  backupLsn: Lsn;
  peerHorizonLsn: Lsn;
  remoteConsistentLsn: Lsn;
}

const majorVersion = (pgVersion: number): number => Math.floor(pgVersion / 10000);

const isMember = (nodeId: bigint, mconf: MembershipConfiguration): boolean =>
  mconf.members.some((member) => member.id === nodeId) || (mconf.newMembers ?? []).some((member) => member.id === nodeId);

export class Acceptor {
  readonly #control: AcceptorControlStore;
  readonly #wal: AcceptorWalStore;
  readonly #hotStandbyFeedback: () => HotStandbyFeedback;
  readonly #onCommitAdvanced: (commitLsn: Lsn) => void;
  readonly #inMemory: InMemoryLsns;
  /** Where the current proposer's term starts; 0 until a ProposerElected in this process. */
  #termStartLsn: Lsn = 0n;
  /** The highest commit_lsn heard since the last ProposerElected, not yet capped by flush_lsn. */
  #commitCandidateLsn: Lsn = 0n;

  constructor(readonly nodeId: bigint, control: AcceptorControlStore, wal: AcceptorWalStore, options: AcceptorOptions = {}) {
    const state = control.state;
    assert(isValidHistory(state.acceptorState.termHistory), 'stored term history is not ascending');
    assert(wal.flushLsn <= wal.writeLsn, 'flush_lsn ahead of write_lsn');
    this.#control = control;
    this.#wal = wal;
    this.#hotStandbyFeedback = options.hotStandbyFeedback ?? emptyHotStandbyFeedback;
    this.#onCommitAdvanced = options.onCommitAdvanced ?? (() => {});
    this.#inMemory = {
      commitLsn: state.commitLsn,
      backupLsn: state.backupLsn,
      peerHorizonLsn: state.peerHorizonLsn,
      remoteConsistentLsn: state.remoteConsistentLsn,
    };
  }

  /** The persisted state (what the control file holds now). */
  get state(): Readonly<TimelinePersistentState> {
    return this.#control.state;
  }

  get term(): bigint {
    return this.#control.state.acceptorState.term;
  }

  get termHistory(): readonly Readonly<TermHistory[number]>[] {
    return this.#control.state.acceptorState.termHistory;
  }

  get mconf(): Readonly<MembershipConfiguration> {
    return this.#control.state.mconf;
  }

  /** Protocol flush_lsn: durable record end, never below timeline_start_lsn (no WAL yet ≠ behind). */
  get flushLsn(): Lsn {
    return lsnMax(this.#wal.flushLsn, this.#control.state.timelineStartLsn);
  }

  get writeLsn(): Lsn {
    return this.#wal.writeLsn;
  }

  get lastLogTerm(): bigint {
    return lastLogTerm(this.#control.state.acceptorState.termHistory, this.flushLsn);
  }

  get commitLsn(): Lsn {
    return this.#inMemory.commitLsn;
  }

  get backupLsn(): Lsn {
    return this.#inMemory.backupLsn;
  }

  get peerHorizonLsn(): Lsn {
    return this.#inMemory.peerHorizonLsn;
  }

  get remoteConsistentLsn(): Lsn {
    return this.#inMemory.remoteConsistentLsn;
  }

  get termStartLsn(): Lsn {
    return this.#termStartLsn;
  }

  /** The persisted state with the in-memory LSNs applied: what a persist would write now. */
  snapshot(): TimelinePersistentState {
    const next = structuredClone(this.#control.state) as TimelinePersistentState;
    next.commitLsn = this.#inMemory.commitLsn;
    next.backupLsn = this.#inMemory.backupLsn;
    next.peerHorizonLsn = this.#inMemory.peerHorizonLsn;
    next.remoteConsistentLsn = this.#inMemory.remoteConsistentLsn;
    return next;
  }

  /** Processes one proposer message; returns the reply, if any. Serial per timeline. */
  async handle(message: ProposerMessage, signal: AbortSignal): Promise<AcceptorMessage | null> {
    switch (message.tag) {
      case 'greeting':
        return this.#handleGreeting(message, signal);
      case 'vote':
        return this.#handleVote(message, signal);
      case 'elected':
        await this.#handleElected(message, signal);
        return null;
      case 'append':
        return this.#handleAppend(message, signal);
      default:
        return unreachable(message);
    }
  }

  /** The current AppendResponse (sent after each group commit). */
  appendResponse(): AppendResponse {
    return {
      tag: 'append',
      generation: this.#control.state.mconf.generation,
      term: this.term,
      flushLsn: this.flushLsn,
      // Quirk fix (see header): in-memory commit, capped for timelines created with commit > start.
      commitLsn: lsnMin(this.#inMemory.commitLsn, this.flushLsn),
      hsFeedback: this.#hotStandbyFeedback(),
      pageserverFeedback: null,
    };
  }

  /** Call after the WAL store's flushLsn advanced: applies the held commit candidate. Returns whether it persisted. */
  async onFlushAdvanced(signal: AbortSignal): Promise<boolean> {
    return this.#advanceCommit(0n, signal);
  }

  /**
   * `onFlushAdvanced` without waiting: applies the held commit candidate in memory and returns true, or
   * returns false (nothing changed) when that needs a control-file persist; then call `onFlushAdvanced`.
   */
  onFlushAdvancedSync(): boolean {
    if (this.#commitNeedsPersist(this.#commitCandidateLsn)) return false;
    this.#raiseCommitLsn(this.#commitTarget(this.#commitCandidateLsn));
    return true;
  }

  /** Flush, apply commit, and form the reply: Neon's FlushWAL. */
  async flushAndRespond(signal: AbortSignal): Promise<AppendResponse> {
    await this.#wal.flush(signal);
    await this.onFlushAdvanced(signal);
    return this.appendResponse();
  }

  /** commit_lsn learned from a peer (broker): applied only if its WAL is ours (same last_log_term). */
  async recordPeerCommit(commitLsn: Lsn, peerLastLogTerm: bigint, signal: AbortSignal): Promise<void> {
    if (commitLsn !== 0n && peerLastLogTerm === this.lastLogTerm) await this.#advanceCommit(commitLsn, signal);
  }

  /** Merges (max) LSNs learned from peers or the pageserver into the in-memory overlay. */
  updateInMemory(update: { backupLsn?: Lsn; peerHorizonLsn?: Lsn; remoteConsistentLsn?: Lsn }): void {
    const current = this.#inMemory;
    if (update.backupLsn !== undefined) current.backupLsn = lsnMax(current.backupLsn, update.backupLsn);
    if (update.peerHorizonLsn !== undefined) current.peerHorizonLsn = lsnMax(current.peerHorizonLsn, update.peerHorizonLsn);
    if (update.remoteConsistentLsn !== undefined) current.remoteConsistentLsn = lsnMax(current.remoteConsistentLsn, update.remoteConsistentLsn);
  }

  /** Writes the in-memory LSNs out (the manager's periodic save). Returns whether anything changed. */
  async persistInMemory(signal: AbortSignal): Promise<boolean> {
    return this.#persist(() => {}, signal);
  }

  /**
   * Persists the in-memory LSNs plus the timeline manager's own fields: `partialBackup` and `evictionState`
   * (nothing else may change). Same serialisation rule as `persistInMemory`. Returns whether anything changed.
   */
  async persistManagerState(update: { partialBackup?: TimelinePersistentState['partialBackup']; evictionState?: TimelinePersistentState['evictionState'] }, signal: AbortSignal): Promise<boolean> {
    return this.#persist((next) => {
      if (update.partialBackup !== undefined) next.partialBackup = structuredClone(update.partialBackup);
      if (update.evictionState !== undefined) next.evictionState = structuredClone(update.evictionState);
    }, signal);
  }

  /** HTTP term_bump: term := max(term, to), or term + 1 when `to` is null. */
  async termBump(to: bigint | null, signal: AbortSignal): Promise<{ previousTerm: bigint; currentTerm: bigint }> {
    const previousTerm = this.term;
    const target = to === null ? previousTerm + 1n : lsnMax(previousTerm, to);
    if (target > previousTerm) await this.#persist((next) => void (next.acceptorState.term = target), signal);
    return { previousTerm, currentTerm: this.term };
  }

  /** HTTP membership switch: adopts `to` only if its generation is higher. */
  async membershipSwitch(to: MembershipConfiguration, signal: AbortSignal): Promise<{ previous: MembershipConfiguration; current: MembershipConfiguration }> {
    const previous = structuredClone(this.mconf) as MembershipConfiguration;
    if (to.generation > previous.generation) await this.#persist((next) => void (next.mconf = structuredClone(to)), signal);
    return { previous, current: structuredClone(this.mconf) as MembershipConfiguration };
  }

  async #handleGreeting(message: ProposerGreeting, signal: AbortSignal): Promise<AcceptorGreeting> {
    const stored = this.#control.state;
    if (message.pgVersion === 0 || majorVersion(message.pgVersion) !== majorVersion(stored.server.pgVersion)) {
      throw new AcceptorRefusedError(`incompatible server version ${message.pgVersion}, expected ${stored.server.pgVersion}`);
    }
    if (message.tenantId !== stored.tenantId) throw new AcceptorRefusedError(`invalid tenant ID, got ${message.tenantId}, expected ${stored.tenantId}`);
    if (message.timelineId !== stored.timelineId) throw new AcceptorRefusedError(`invalid timeline ID, got ${message.timelineId}, expected ${stored.timelineId}`);
    if (message.walSegSizeBytes !== stored.server.walSegSizeBytes) {
      throw new AcceptorRefusedError(`invalid wal_seg_size, got ${message.walSegSizeBytes}, expected ${stored.server.walSegSizeBytes}`);
    }
    // sync-safekeepers does not know the system id and sends 0: ignore that.
    if (message.systemId !== 0n && message.systemId !== stored.server.systemId) {
      await this.#persist((next) => {
        next.server.systemId = message.systemId;
        next.server.pgVersion = message.pgVersion; // non-zero: checked above
      }, signal);
    }
    if (message.mconf.generation > this.mconf.generation) {
      if (!isMember(this.nodeId, message.mconf)) {
        throw new AcceptorRefusedError(`refused to switch into generation ${message.mconf.generation}: node ${this.nodeId} is not a member`);
      }
      await this.#persist((next) => void (next.mconf = structuredClone(message.mconf)), signal);
    }
    return { tag: 'greeting', nodeId: this.nodeId, mconf: structuredClone(this.mconf) as MembershipConfiguration, term: this.term };
  }

  #checkGeneration(what: string, generation: number): void {
    const stored = this.#control.state.mconf.generation;
    if (generation !== stored) throw new AcceptorRefusedError(`refusing ${what} due to generation mismatch: request ${generation}, sk ${stored}`);
  }

  async #handleVote(message: VoteRequest, signal: AbortSignal): Promise<VoteResponse> {
    this.#checkGeneration('VoteRequest', message.generation);
    // Flush everything received so the new proposer starts streaming at the end of our WAL.
    await this.#wal.flush(signal);
    await this.onFlushAdvanced(signal);
    const flushLsn = this.flushLsn;
    const response: VoteResponse = {
      tag: 'vote',
      generation: this.mconf.generation,
      term: this.term,
      voteGiven: false,
      flushLsn,
      truncateLsn: this.#inMemory.peerHorizonLsn,
      termHistory: truncateHistory(this.termHistory, flushLsn),
    };
    if (message.term > this.term) {
      await this.#persist((next) => void (next.acceptorState.term = message.term), signal); // the vote is durable before it is sent
      response.term = this.term;
      response.voteGiven = true;
    }
    return response;
  }

  async #handleElected(message: ProposerElected, signal: AbortSignal): Promise<void> {
    this.#checkGeneration('ProposerElected', message.generation);
    if (message.term > this.term) await this.#persist((next) => void (next.acceptorState.term = message.term), signal);
    // Our term is higher: ignore; the next AppendResponse tells the proposer.
    if (message.term < this.term) return;

    const history = message.termHistory;
    if (history.length === 0) throw new ProtocolViolationError('ProposerElected', 'empty proposer term history');
    const problem = historyProblem(history);
    if (problem !== null) throw new ProtocolViolationError('ProposerElected', `proposer term history: ${problem}`);

    const flushLsn = this.flushLsn;
    const localHistory = truncateHistory(this.termHistory, flushLsn);
    const commonPoint = findHighestCommonPoint(history, localHistory, flushLsn) ?? history[0];
    assert(commonPoint !== undefined);
    const startLsn = message.startStreamingAtLsn;
    // A late ProposerElected racing another connection of the same proposer: transient, it reconnects.
    if (commonPoint.lsn !== startLsn) {
      throw new AcceptorRefusedError(
        `refusing ProposerElected with unexpected truncation point: lcp=(${commonPoint.term}, ${formatLsn(commonPoint.lsn)}) ` +
          `start_streaming_at=${formatLsn(startLsn)} term=${this.term} flush_lsn=${formatLsn(flushLsn)}`,
      );
    }
    // **Quirk fix**: Neon panics here (the whole node goes down); we refuse the message instead.
    if (startLsn < this.#inMemory.commitLsn) {
      throw new AcceptorRefusedError(`refusing ProposerElected: start_streaming_at=${formatLsn(startLsn)} would truncate committed WAL (commit_lsn=${formatLsn(this.#inMemory.commitLsn)})`);
    }

    // The compute's stream carries no segment or page headers for the first segment: write them.
    if (this.#wal.writeLsn === 0n) await this.#wal.initializeFirstSegment(startLsn, signal);
    await this.#wal.truncate(startLsn, signal);
    assert(this.#wal.writeLsn === startLsn && this.#wal.flushLsn === startLsn, 'truncate must set both positions');
    assert(!this.#wal.truncationPending, 'truncate must clear the pending flag');

    await this.#persist((next) => {
      if (next.timelineStartLsn === 0n) next.timelineStartLsn = history[0]?.lsn ?? 0n;
      if (next.peerHorizonLsn === 0n) next.peerHorizonLsn = next.timelineStartLsn;
      if (next.localStartLsn === 0n) next.localStartLsn = startLsn;
      next.commitLsn = lsnMax(next.commitLsn, next.timelineStartLsn);
      next.backupLsn = lsnMax(next.backupLsn, next.timelineStartLsn);
      next.remoteConsistentLsn = lsnMax(next.remoteConsistentLsn, next.timelineStartLsn);
      next.acceptorState.termHistory = history.map((entry) => ({ term: entry.term, lsn: entry.lsn }));
    }, signal);
    this.#termStartLsn = termStartLsn(history);
    this.#commitCandidateLsn = 0n; // candidates from an earlier session are not re-applied
  }

  async #handleAppend(message: AppendRequest, signal: AbortSignal): Promise<AppendResponse | null> {
    const refusal = this.#checkAppend(message);
    if (refusal !== null) return refusal;
    if (message.wal.byteLength > 0) {
      await this.#wal.append(message.beginLsn, message.wal, signal);
      assert(this.#wal.writeLsn === message.endLsn, 'append must move write_lsn to the end of the bytes');
    }
    if (message.commitLsn !== 0n) await this.#advanceCommit(message.commitLsn, signal);
    this.#inMemory.peerHorizonLsn = lsnMax(this.#inMemory.peerHorizonLsn, message.truncateLsn);
    return null; // the group-commit driver replies after the flush
  }

  /**
   * The ingest hot path: exactly the rules of `handle(append)`, synchronously. Returns 'slow', having
   * changed nothing, when the message must wait (no buffer space, or its commit_lsn needs a control-file
   * persist first); the caller then passes the same message to `handle()`. Same serialisation rule as
   * `handle`: never while an async acceptor call is running on this timeline.
   */
  appendSync(message: AppendRequest): AppendResponse | null | 'slow' {
    const refusal = this.#checkAppend(message);
    if (refusal !== null) return refusal;
    if (message.commitLsn !== 0n && this.#commitNeedsPersist(lsnMax(this.#commitCandidateLsn, message.commitLsn))) return 'slow';
    if (message.wal.byteLength > 0) {
      if (!this.#wal.tryAppend(message.beginLsn, message.wal)) return 'slow';
      assert(this.#wal.writeLsn === message.endLsn, 'append must move write_lsn to the end of the bytes');
    }
    if (message.commitLsn !== 0n) {
      this.#commitCandidateLsn = lsnMax(this.#commitCandidateLsn, message.commitLsn);
      this.#raiseCommitLsn(this.#commitTarget(this.#commitCandidateLsn));
    }
    this.#inMemory.peerHorizonLsn = lsnMax(this.#inMemory.peerHorizonLsn, message.truncateLsn);
    return null;
  }

  /** The checks of an AppendRequest: a term-only refusal to send, null to go on, or a throw. */
  #checkAppend(message: AppendRequest): AppendResponse | null {
    this.#checkGeneration('AppendRequest', message.generation);
    if (message.term > this.term) throw new AcceptorRefusedError('got AppendRequest before ProposerElected');
    if (message.term < this.term) {
      // Term-only refusal: the proposer treats a higher term as fatal and re-elects.
      return { tag: 'append', generation: this.mconf.generation, term: this.term, flushLsn: 0n, commitLsn: 0n, hsFeedback: emptyHotStandbyFeedback(), pageserverFeedback: null };
    }
    if (this.#wal.truncationPending) throw new AcceptorRefusedError('refusing AppendRequest: WAL truncation pending (no ProposerElected since load)');
    if (BigInt(message.wal.byteLength) !== message.endLsn - message.beginLsn) {
      throw new ProtocolViolationError('AppendRequest', `WAL has ${message.wal.byteLength} bytes, range says ${message.endLsn - message.beginLsn}`);
    }
    const writeLsn = this.#wal.writeLsn;
    if (writeLsn > message.beginLsn) {
      throw new AcceptorRefusedError(`append request rewrites WAL written before, write_lsn=${formatLsn(writeLsn)}, msg lsn=${formatLsn(message.beginLsn)}`);
    }
    if (writeLsn < message.beginLsn && writeLsn !== 0n) {
      throw new AcceptorRefusedError(`append request creates gap in written WAL, write_lsn=${formatLsn(writeLsn)}, msg lsn=${formatLsn(message.beginLsn)}`);
    }
    return null;
  }

  /** The commit_lsn a candidate yields now: min(max(candidate, commit), flush_lsn). */
  #commitTarget(candidateLsn: Lsn): Lsn {
    return lsnMin(lsnMax(candidateLsn, this.#inMemory.commitLsn), this.flushLsn);
  }

  /** Whether moving commit to what `candidateLsn` yields must persist first (it crosses term_start_lsn). */
  #commitNeedsPersist(candidateLsn: Lsn): boolean {
    const commitLsn = this.#commitTarget(candidateLsn);
    return commitLsn > this.#inMemory.commitLsn && commitLsn >= this.#termStartLsn && this.#control.state.commitLsn < this.#termStartLsn;
  }

  /** commit := min(max(candidate, commit), flush_lsn); persists first when it crosses term_start_lsn. */
  async #advanceCommit(candidateLsn: Lsn, signal: AbortSignal): Promise<boolean> {
    this.#commitCandidateLsn = lsnMax(this.#commitCandidateLsn, candidateLsn);
    const commitLsn = this.#commitTarget(this.#commitCandidateLsn);
    if (commitLsn <= this.#inMemory.commitLsn) return false; // flush_lsn below commit only for a timeline created with commit > start
    if (this.#commitNeedsPersist(this.#commitCandidateLsn)) {
      return this.#persist((next) => void (next.commitLsn = commitLsn), signal); // durable before any reply shows it
    }
    this.#raiseCommitLsn(commitLsn);
    return false;
  }

  /** The only writer of the in-memory commit_lsn after construction: max-merge, then tell `onCommitAdvanced`. */
  #raiseCommitLsn(commitLsn: Lsn): void {
    if (commitLsn <= this.#inMemory.commitLsn) return;
    this.#inMemory.commitLsn = commitLsn;
    this.#onCommitAdvanced(commitLsn);
  }

  /** Persists the in-memory overlay plus `change`, then adopts the result (Neon's start/finish_change). */
  async #persist(change: (next: TimelinePersistentState) => void, signal: AbortSignal): Promise<boolean> {
    const current = this.#control.state;
    const next = this.snapshot();
    change(next);
    assert(next.acceptorState.term >= current.acceptorState.term, 'term went backwards');
    assert(isValidHistory(next.acceptorState.termHistory), 'term history not ascending');
    assert(next.commitLsn >= this.#inMemory.commitLsn, 'commit_lsn went backwards');
    const changed = !isDeepStrictEqual(next, current);
    if (changed) await this.#control.persist(next, signal);
    // Max-merge: updateInMemory() may have run while the persist was in flight; all four only grow.
    const inMemory = this.#inMemory;
    this.#raiseCommitLsn(next.commitLsn);
    inMemory.backupLsn = lsnMax(inMemory.backupLsn, next.backupLsn);
    inMemory.peerHorizonLsn = lsnMax(inMemory.peerHorizonLsn, next.peerHorizonLsn);
    inMemory.remoteConsistentLsn = lsnMax(inMemory.remoteConsistentLsn, next.remoteConsistentLsn);
    return changed;
  }
}
