/**
 * Timeline: one WAL stream on this node. It owns the pieces that must change together: the persisted
 * state (ControlStore), the WAL pipeline (TimelineWal), the acceptor rules over both, the state block the
 * coordinator watches, and the cancellation token + Gate under which all of its tasks run.
 *
 * Lifecycle: `active` or `broken` (with a reason; nothing is written, status is still served). Shutdown and
 * delete cancel the token, then wait for the gate, and only then touch files. Main thread.
 *
 * Readers (src/send) learn of new WAL without polling: `commit` is set where the acceptor's in-memory
 * commit_lsn advances (its `onCommitAdvanced`, which also publishes it in the state block), and term-mode
 * readers watch `wal.flush`. They plug their aggregated hot standby feedback in with
 * `setHotStandbyFeedbackSource`, and the acceptor puts it into every AppendResponse.
 *
 * Memory: a node holds thousands of idle timelines, so what each one allocates is kept small. The
 * acceptor's storage adapters are small classes (methods on the prototype) rather than object literals of
 * closures, and the acceptor's callbacks are bound methods: no closure context per timeline.
 */
import { Acceptor } from '../acceptor/acceptor.js';
import type { AcceptorControlStore, AcceptorWalStore } from '../acceptor/acceptor.js';
import { emptyHotStandbyFeedback, type HotStandbyFeedback } from '../acceptor/messages.js';
import { ttid, type TenantId, type TimelineId, type TimelinePersistentState } from '../acceptor/state.js';
import { TimelineBrokenError } from '../errors.js';
import type { StateBlock } from '../ingest/state_block.js';
import type { TimelineWal } from '../ingest/timeline_wal.js';
import type { CancelToken } from '../sync/cancel.js';
import { Gate } from '../sync/gate.js';
import { Mutex } from '../sync/mutex.js';
import { Watch } from '../sync/watch.js';
import type { Lsn } from '../wal/lsn.js';
import type { ControlStore } from './control_store.js';

/** DESIGN's lifecycle: `active ⇄ offloaded` (evicted: WAL in remote storage, brought back on demand), or `broken`. */
export type TimelineStatus = 'active' | 'offloaded' | 'broken';

export class Timeline {
  readonly ttid: string;
  readonly gate: Gate;
  /** Serialises acceptor operations that wait (vote, election, slow appends) across connections. */
  readonly acceptorLock = new Mutex();
  readonly acceptor: Acceptor | null;
  /** The acceptor's in-memory commit_lsn, set each time it advances: what commit-mode readers wait on. */
  readonly commit: Watch<Lsn>;
  /** Evicted (its WAL offloaded to remote storage), as its manager last reported: only the status shows it. */
  offloaded = false;
  #hotStandbyFeedback: () => HotStandbyFeedback = emptyHotStandbyFeedback;

  constructor(
    readonly tenantId: TenantId,
    readonly timelineId: TimelineId,
    readonly dir: string,
    readonly cancel: CancelToken,
    readonly state: StateBlock,
    readonly control: ControlStore | null,
    readonly wal: TimelineWal | null,
    nodeId: bigint,
    readonly brokenReason: string | null,
  ) {
    this.ttid = ttid(tenantId, timelineId);
    this.gate = new Gate(`timeline ${this.ttid}`);
    this.commit = new Watch(control?.state.commitLsn ?? 0n);
    const acceptorOptions = { hotStandbyFeedback: this.#currentHotStandbyFeedback.bind(this), onCommitAdvanced: this.#onCommitAdvanced.bind(this), lifetime: cancel.signal };
    this.acceptor = control !== null && wal !== null ? new Acceptor(nodeId, new PublishingControlStore(control, this), new WalStoreAdapter(wal, control), acceptorOptions) : null;
    this.publishState();
  }

  #currentHotStandbyFeedback(): HotStandbyFeedback {
    return this.#hotStandbyFeedback();
  }

  /** The acceptor's in-memory commit_lsn moved: wake commit-mode readers and tell the manager. */
  #onCommitAdvanced(commitLsn: Lsn): void {
    this.commit.set(commitLsn);
    this.state.set('commitLsn', commitLsn);
  }

  /**
   * Publishes the acceptor's overlay and persisted LSNs in the state block, for the coordinator's manager.
   * Called after every control-file persist (the store is wrapped) and whenever the overlay learns a value
   * from outside (the coordinator's confirmed backup_lsn). One bump of the change counter at most.
   */
  publishState(): void {
    const acceptor = this.acceptor;
    if (acceptor === null) return;
    const persisted = acceptor.state;
    this.state.setMany({
      backupLsn: acceptor.backupLsn,
      peerHorizonLsn: acceptor.peerHorizonLsn,
      remoteConsistentLsn: acceptor.remoteConsistentLsn,
      term: acceptor.term,
      lastLogTerm: acceptor.lastLogTerm,
      persistedCommitLsn: persisted.commitLsn,
      persistedBackupLsn: persisted.backupLsn,
      persistedPeerHorizonLsn: persisted.peerHorizonLsn,
      persistedRemoteConsistentLsn: persisted.remoteConsistentLsn,
      localStartLsn: persisted.localStartLsn,
      timelineStartLsn: persisted.timelineStartLsn,
    });
  }

  /** Where AppendResponses take their hot standby feedback from (the aggregate over this timeline's readers). */
  setHotStandbyFeedbackSource(source: () => HotStandbyFeedback): void {
    this.#hotStandbyFeedback = source;
  }

  get status(): TimelineStatus {
    if (this.brokenReason !== null) return 'broken';
    return this.offloaded ? 'offloaded' : 'active';
  }

  /** The acceptor, or a TimelineBrokenError naming why there is none. */
  activeAcceptor(): Acceptor {
    if (this.acceptor === null) throw new TimelineBrokenError(`timeline ${this.ttid} is broken: ${this.brokenReason ?? 'unknown'}`);
    return this.acceptor;
  }

  /** Runs `work` inside the gate with a child cancellation token. Throws ShutdownError once closing. */
  async runTask<T>(name: string, work: (signal: AbortSignal) => Promise<T>): Promise<T> {
    const leave = this.gate.enter(name);
    const cancel = this.cancel.child();
    try {
      return await work(cancel.signal);
    } finally {
      cancel.release();
      leave();
    }
  }

  /** Cancels every task of the timeline and waits until they have left. */
  async shutdown(reason: unknown): Promise<void> {
    this.cancel.cancel(reason);
    await this.gate.close();
  }
}

/** The control store as the acceptor sees it, publishing the state block after every persist. */
class PublishingControlStore implements AcceptorControlStore {
  constructor(
    private readonly control: ControlStore,
    private readonly timeline: Timeline,
  ) {}

  get state(): Readonly<TimelinePersistentState> {
    return this.control.state;
  }

  async persist(next: TimelinePersistentState, signal: AbortSignal): Promise<void> {
    await this.control.persist(next, signal);
    this.timeline.publishState();
  }
}

/** Adapts the WAL pipeline to the acceptor's storage interface. */
class WalStoreAdapter implements AcceptorWalStore {
  constructor(
    private readonly wal: TimelineWal,
    private readonly control: ControlStore,
  ) {}

  get writeLsn(): Lsn {
    return this.wal.writeLsn;
  }
  get flushLsn(): Lsn {
    return this.wal.flushLsn;
  }
  get truncationPending(): boolean {
    return this.wal.truncationPending;
  }
  tryAppend(beginLsn: Lsn, bytes: Uint8Array): boolean {
    return this.wal.tryAppend(beginLsn, bytes);
  }
  append(beginLsn: Lsn, bytes: Uint8Array, signal: AbortSignal): Promise<void> {
    return this.wal.append(beginLsn, bytes, signal);
  }
  flush(signal: AbortSignal): Promise<void> {
    return this.wal.flushAll(signal);
  }
  truncate(lsn: Lsn, signal: AbortSignal): Promise<void> {
    return this.wal.truncate(lsn, signal);
  }
  initializeFirstSegment(lsn: Lsn, signal: AbortSignal): Promise<void> {
    return this.wal.initializeFirstSegment(lsn, this.control.state.server.systemId, signal);
  }
  electionNotRecorded(first: boolean): void {
    this.wal.electionNotRecorded(first);
  }
}
