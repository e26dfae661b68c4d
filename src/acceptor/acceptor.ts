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
 * Layout: this class is the public face and the append (streaming) rules; the election messages
 * (greeting, vote, ProposerElected) are in `acceptor_election.ts`, and the state they all share, with
 * the commit_lsn rule and the one persist path, in `acceptor_core.ts`.
 *
 * Durability (§4.8): the election messages persist before their replies (see acceptor_election.ts);
 * appends never persist except when commit_lsn first reaches term_start_lsn.
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
import { AcceptorRefusedError, ProtocolViolationError } from '../errors.js';
import { assert, unreachable } from '../sync/assert.js';
import { type Lsn, formatLsn, lsnMax, lsnMin, walEndLsnMax } from '../wal/lsn.js';
import { decoderStartProblem } from '../wal/record_decoder.js';
import { type AcceptorMessage, type AppendRequest, type AppendResponse, type HotStandbyFeedback, type ProposerMessage, emptyHotStandbyFeedback } from './messages.js';
import type { AcceptorControlStore, AcceptorWalStore } from './acceptor_storage.js';
import { AcceptorCore } from './acceptor_core.js';
import { handleElected, handleGreeting, handleVote } from './acceptor_election.js';
import type { MembershipConfiguration, TermHistory, TimelinePersistentState } from './state.js';
import { lastLogTerm } from './term_history.js';

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
  /**
   * Aborted when the timeline shuts down (the node stops, the timeline is deleted). A ProposerElected that
   * passed its checks is applied under it rather than under the caller's signal, so a proposer that closes its
   * connection right after sending one does not leave it half applied. Never aborted by default.
   */
  lifetime?: AbortSignal;
}

/** The default `lifetime`: one signal for every acceptor, never aborted. */
const NEVER_ABORTED = new AbortController().signal;

export class Acceptor {
  readonly #core: AcceptorCore;
  readonly #walEndLsnMax: Lsn;
  readonly #hotStandbyFeedback: () => HotStandbyFeedback;

  constructor(readonly nodeId: bigint, control: AcceptorControlStore, wal: AcceptorWalStore, options: AcceptorOptions = {}) {
    this.#core = new AcceptorCore(control, wal, options.onCommitAdvanced ?? (() => {}), options.lifetime ?? NEVER_ABORTED);
    this.#hotStandbyFeedback = options.hotStandbyFeedback ?? emptyHotStandbyFeedback;
    // The segment size never changes (a greeting with another one is refused): computed once, not per append.
    this.#walEndLsnMax = walEndLsnMax(control.state.server.walSegSizeBytes);
  }

  /** The persisted state (what the control file holds now). */
  get state(): Readonly<TimelinePersistentState> {
    return this.#core.control.state;
  }

  get term(): bigint {
    return this.#core.term;
  }

  get termHistory(): readonly Readonly<TermHistory[number]>[] {
    return this.#core.control.state.acceptorState.termHistory;
  }

  get mconf(): Readonly<MembershipConfiguration> {
    return this.#core.mconf;
  }

  /** Protocol flush_lsn: durable record end, never below timeline_start_lsn (no WAL yet ≠ behind). */
  get flushLsn(): Lsn {
    return this.#core.flushLsn;
  }

  get writeLsn(): Lsn {
    return this.#core.wal.writeLsn;
  }

  get lastLogTerm(): bigint {
    return lastLogTerm(this.#core.control.state.acceptorState.termHistory, this.flushLsn);
  }

  get commitLsn(): Lsn {
    return this.#core.inMemory.commitLsn;
  }

  get backupLsn(): Lsn {
    return this.#core.inMemory.backupLsn;
  }

  get peerHorizonLsn(): Lsn {
    return this.#core.inMemory.peerHorizonLsn;
  }

  get remoteConsistentLsn(): Lsn {
    return this.#core.inMemory.remoteConsistentLsn;
  }

  get termStartLsn(): Lsn {
    return this.#core.termStartLsn;
  }

  /** The persisted state with the in-memory LSNs applied: what a persist would write now. */
  snapshot(): TimelinePersistentState {
    return this.#core.snapshot();
  }

  /** Processes one proposer message; returns the reply, if any. Serial per timeline. */
  async handle(message: ProposerMessage, signal: AbortSignal): Promise<AcceptorMessage | null> {
    switch (message.tag) {
      case 'greeting':
        return handleGreeting(this.#core, this.nodeId, message, signal);
      case 'vote':
        return handleVote(this.#core, message, signal);
      case 'elected':
        await handleElected(this.#core, message, signal);
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
      generation: this.#core.control.state.mconf.generation,
      term: this.term,
      flushLsn: this.flushLsn,
      // Quirk fix (see header): in-memory commit, capped for timelines created with commit > start.
      commitLsn: lsnMin(this.#core.inMemory.commitLsn, this.flushLsn),
      hsFeedback: this.#hotStandbyFeedback(),
      pageserverFeedback: null,
    };
  }

  /** Call after the WAL store's flushLsn advanced: applies the held commit candidate. Returns whether it persisted. */
  async onFlushAdvanced(signal: AbortSignal): Promise<boolean> {
    return this.#core.advanceCommit(0n, signal);
  }

  /**
   * `onFlushAdvanced` without waiting: applies the held commit candidate in memory and returns true, or
   * returns false (nothing changed) when that needs a control-file persist; then call `onFlushAdvanced`.
   */
  onFlushAdvancedSync(): boolean {
    const core = this.#core;
    if (core.commitNeedsPersist(core.commitCandidateLsn)) return false;
    core.raiseCommitLsn(core.commitTarget(core.commitCandidateLsn));
    return true;
  }

  /** Flush, apply commit, and form the reply: Neon's FlushWAL. */
  async flushAndRespond(signal: AbortSignal): Promise<AppendResponse> {
    await this.#core.wal.flush(signal);
    await this.onFlushAdvanced(signal);
    return this.appendResponse();
  }

  /** commit_lsn learned from a peer (broker): applied only if its WAL is ours (same last_log_term). */
  async recordPeerCommit(commitLsn: Lsn, peerLastLogTerm: bigint, signal: AbortSignal): Promise<void> {
    if (commitLsn !== 0n && peerLastLogTerm === this.lastLogTerm) await this.#core.advanceCommit(commitLsn, signal);
  }

  /** Merges (max) LSNs learned from peers or the pageserver into the in-memory overlay. */
  updateInMemory(update: { backupLsn?: Lsn; peerHorizonLsn?: Lsn; remoteConsistentLsn?: Lsn }): void {
    const current = this.#core.inMemory;
    if (update.backupLsn !== undefined) current.backupLsn = lsnMax(current.backupLsn, update.backupLsn);
    if (update.peerHorizonLsn !== undefined) current.peerHorizonLsn = lsnMax(current.peerHorizonLsn, update.peerHorizonLsn);
    if (update.remoteConsistentLsn !== undefined) current.remoteConsistentLsn = lsnMax(current.remoteConsistentLsn, update.remoteConsistentLsn);
  }

  /** Writes the in-memory LSNs out (the manager's periodic save). Returns whether anything changed. */
  async persistInMemory(signal: AbortSignal): Promise<boolean> {
    return this.#core.persist(() => {}, signal);
  }

  /**
   * Persists the in-memory LSNs plus the timeline manager's own fields: `partialBackup` and `evictionState`
   * (nothing else may change). Same serialisation rule as `persistInMemory`. Returns whether anything changed.
   */
  async persistManagerState(update: { partialBackup?: TimelinePersistentState['partialBackup']; evictionState?: TimelinePersistentState['evictionState'] }, signal: AbortSignal): Promise<boolean> {
    return this.#core.persist((next) => {
      if (update.partialBackup !== undefined) next.partialBackup = structuredClone(update.partialBackup);
      if (update.evictionState !== undefined) next.evictionState = structuredClone(update.evictionState);
    }, signal);
  }

  /** HTTP term_bump: term := max(term, to), or term + 1 when `to` is null. */
  async termBump(to: bigint | null, signal: AbortSignal): Promise<{ previousTerm: bigint; currentTerm: bigint }> {
    const previousTerm = this.term;
    const target = to === null ? previousTerm + 1n : lsnMax(previousTerm, to);
    if (target > previousTerm) await this.#core.persist((next) => void (next.acceptorState.term = target), signal);
    return { previousTerm, currentTerm: this.term };
  }

  /** HTTP membership switch: adopts `to` only if its generation is higher. */
  async membershipSwitch(to: MembershipConfiguration, signal: AbortSignal): Promise<{ previous: MembershipConfiguration; current: MembershipConfiguration }> {
    const previous = structuredClone(this.mconf) as MembershipConfiguration;
    if (to.generation > previous.generation) await this.#core.persist((next) => void (next.mconf = structuredClone(to)), signal);
    return { previous, current: structuredClone(this.mconf) as MembershipConfiguration };
  }

  async #handleAppend(message: AppendRequest, signal: AbortSignal): Promise<AppendResponse | null> {
    const core = this.#core;
    const refusal = this.#checkAppend(message);
    if (refusal !== null) return refusal;
    if (message.wal.byteLength > 0) {
      await core.wal.append(message.beginLsn, message.wal, signal);
      assert(core.wal.writeLsn === message.endLsn, 'append must move write_lsn to the end of the bytes');
    }
    if (message.commitLsn !== 0n) await core.advanceCommit(message.commitLsn, signal);
    core.inMemory.peerHorizonLsn = lsnMax(core.inMemory.peerHorizonLsn, message.truncateLsn);
    return null; // the group-commit driver replies after the flush
  }

  /**
   * The ingest hot path: exactly the rules of `handle(append)`, synchronously. Returns 'slow', having
   * changed nothing, when the message must wait (no buffer space, or its commit_lsn needs a control-file
   * persist first); the caller then passes the same message to `handle()`. Same serialisation rule as
   * `handle`: never while an async acceptor call is running on this timeline.
   */
  appendSync(message: AppendRequest): AppendResponse | null | 'slow' {
    const core = this.#core;
    const refusal = this.#checkAppend(message);
    if (refusal !== null) return refusal;
    if (message.commitLsn !== 0n && core.commitNeedsPersist(lsnMax(core.commitCandidateLsn, message.commitLsn))) return 'slow';
    if (message.wal.byteLength > 0) {
      if (!core.wal.tryAppend(message.beginLsn, message.wal)) return 'slow';
      assert(core.wal.writeLsn === message.endLsn, 'append must move write_lsn to the end of the bytes');
    }
    if (message.commitLsn !== 0n) {
      core.commitCandidateLsn = lsnMax(core.commitCandidateLsn, message.commitLsn);
      core.raiseCommitLsn(core.commitTarget(core.commitCandidateLsn));
    }
    core.inMemory.peerHorizonLsn = lsnMax(core.inMemory.peerHorizonLsn, message.truncateLsn);
    return null;
  }

  /** The checks of an AppendRequest: a term-only refusal to send, null to go on, or a throw. */
  #checkAppend(message: AppendRequest): AppendResponse | null {
    const core = this.#core;
    core.checkGeneration('AppendRequest', message.generation);
    if (message.term > this.term) throw new AcceptorRefusedError('got AppendRequest before ProposerElected');
    if (message.term < this.term) {
      // Term-only refusal: the proposer treats a higher term as fatal and re-elects.
      return { tag: 'append', generation: this.mconf.generation, term: this.term, flushLsn: 0n, commitLsn: 0n, hsFeedback: emptyHotStandbyFeedback(), pageserverFeedback: null };
    }
    if (core.wal.truncationPending) throw new AcceptorRefusedError('refusing AppendRequest: WAL truncation pending (no ProposerElected since load, or its truncation failed)');
    if (BigInt(message.wal.byteLength) !== message.endLsn - message.beginLsn) {
      throw new ProtocolViolationError('AppendRequest', `WAL has ${message.wal.byteLength} bytes, range says ${message.endLsn - message.beginLsn}`);
    }
    const writeLsn = core.wal.writeLsn;
    if (writeLsn > message.beginLsn) {
      throw new AcceptorRefusedError(`append request rewrites WAL written before, write_lsn=${formatLsn(writeLsn)}, msg lsn=${formatLsn(message.beginLsn)}`);
    }
    // Neon lets any append through while write_lsn is 0. Here it cannot be 0: an append needs a ProposerElected
    // since load (truncation pending, above), and its truncation set write_lsn to start_streaming_at, never 0/0.
    if (writeLsn < message.beginLsn) {
      throw new AcceptorRefusedError(`append request creates gap in written WAL, write_lsn=${formatLsn(writeLsn)}, msg lsn=${formatLsn(message.beginLsn)}`);
    }
    if (message.endLsn > this.#walEndLsnMax) {
      throw new ProtocolViolationError('AppendRequest', `WAL up to ${formatLsn(message.endLsn)} reaches the last segment of the LSN space`);
    }
    // commit_lsn is persisted and recovery decodes WAL from it, so it must be where a record can start; every
    // flush_lsn a safekeeper reports is, and a proposer's commit_lsn is the quorum's flush_lsn.
    if (message.commitLsn > core.inMemory.commitLsn) {
      const problem = decoderStartProblem(message.commitLsn, core.control.state.server.walSegSizeBytes);
      if (problem !== null) throw new ProtocolViolationError('AppendRequest', `commit_lsn ${formatLsn(message.commitLsn)} ${problem}`);
    }
    return null;
  }
}
