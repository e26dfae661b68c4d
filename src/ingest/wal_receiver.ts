/**
 * WalReceiver: one START_WAL_PUSH connection. It speaks the proposer↔acceptor protocol inside CopyData
 * (greeting, vote, elected, append) and drives the timeline's acceptor.
 *
 * Hot path: an AppendRequest arriving while nothing else is queued is handled synchronously from the
 * socket's 'data' callback: header decoded in place, WAL copied once into the timeline's ring
 * (`Acceptor.appendSync`). Everything else (greeting, vote, elected, an append that must wait for ring
 * space or for a control-file persist) is copied and handled asynchronously under the timeline's acceptor
 * lock, with reading paused until it is done, so messages are always processed in order and the queue
 * never holds more than one message.
 *
 * Replies: one per greeting and vote; AppendResponses are group-commit acknowledgements, sent when a write
 * task makes flush_lsn advance, or right away for an append that leaves nothing to write (a heartbeat
 * when idle). A write failure (corrupt WAL, disk error) ends the connection with its ErrorResponse.
 * A proposer that stops reading cannot make replies pile up: after every reply, reading stops while the
 * socket is over its high-water mark (`conn.pauseReadingUntilDrained()`), independently of the pause for a
 * queued message. Without it, heartbeats sent one per packet would be answered one for one without limit.
 * Group-commit acknowledgements wait for the drain too, and then only the latest is sent: flush_lsn also
 * moves with other connections' WAL (a second proposer), which no pause of this socket stops. So the buffer
 * stays within the high-water mark plus a few small replies.
 * Attachment: from its answered greeting until it gives the timeline back, the connection has a slot in the
 * timeline's WalReceiverSet (`walreceivers` in the status document, and the proposer count the manager reads),
 * marked Streaming when it sends ProposerElected.
 * Main thread. Abort: the connection's close or the timeline's cancellation end every wait here.
 */
import type { Acceptor } from '../acceptor/acceptor.js';
import { decodeAppendRequestHeader, TAG_APPEND, type AcceptorMessage, type ProposerMessage, type ProtocolVersion } from '../acceptor/messages.js';
import { decodeProposerMessage, encodeAcceptorMessage } from '../acceptor/messages_codec.js';
import { parseTenantId, parseTimelineId, type TenantId, type TimelineId } from '../acceptor/state.js';
import { ProtocolViolationError, ShutdownError, WalCorruptionError, type SafekeeperError } from '../errors.js';
import { walIngestAppendsTotal } from '../metrics.js';
import type { CopyBothSink, PgConnection } from '../pg/connection.js';
import { assert } from '../sync/assert.js';
import { CancelToken } from '../sync/cancel.js';
import type { Timeline } from '../timeline/timeline.js';
import type { TimelineRegistry } from '../timeline/registry.js';
import type { Residency, ResidencyGuard } from '../timeline/residency.js';
import type { LogSink } from '../log.js';
import { walReceiversOf, type WalReceiverSlot } from './wal_receiver_set.js';

export interface WalReceiverDeps {
  registry: TimelineRegistry;
  /** Residency guards (the coordinator): a proposer holds one while connected, so its WAL is local. */
  residency?: Residency;
  log: LogSink;
}

export interface WalPushOptions {
  protoVersion: ProtocolVersion;
  allowTimelineCreation: boolean;
}

/** Runs a START_WAL_PUSH stream on `conn` until it ends. */
export async function serveWalPush(conn: PgConnection, options: WalPushOptions, ids: { tenantId: TenantId; timelineId: TimelineId }, deps: WalReceiverDeps): Promise<void> {
  const receiver = new WalReceiver(conn, options, ids, deps);
  conn.startCopyBoth(receiver);
  await receiver.finished;
}

class WalReceiver implements CopyBothSink {
  readonly finished: Promise<void>;
  readonly #cancel = new CancelToken();
  #finish!: () => void;
  #timeline: Timeline | null = null;
  #acceptor: Acceptor | null = null;
  /** A copied message waiting for async handling; reading is paused while it is set. */
  #queued: Uint8Array | null = null;
  /** #drain runs: a message is being handled (an election's truncation may be running in a writer). */
  #busy = false;
  /** #replyLoop runs (it may be inside the acceptor lock, persisting commit_lsn). */
  #replying = false;
  #closed = false;
  #released = false;
  #immediateReplyScheduled = false;
  /** An append arrived since the last AppendResponse: the next finished write task answers it. */
  #replyOwed = false;
  /**
   * This connection has sent an AppendRequest. Until it has, it gets no AppendResponse even when flush_lsn
   * moves (another connection's writes): walproposer expects the VoteResponse first and fails otherwise.
   */
  #streaming = false;
  /** This connection's entry in the timeline's WalReceiverSet (and so in its proposer count); null until the greeting is answered. */
  #slot: WalReceiverSlot | null = null;
  /** Held while connected: the timeline is unevicted first and never evicted under it. */
  #guard: ResidencyGuard | null = null;
  /** Leaves the timeline's gate: a receiver holds it while streaming, so delete and shutdown wait for it. */
  #leaveGate: (() => void) | null = null;
  #detachTimelineCancel: (() => void) | null = null;

  constructor(
    private readonly conn: PgConnection,
    private readonly options: WalPushOptions,
    private readonly ids: { tenantId: TenantId; timelineId: TimelineId },
    private readonly deps: WalReceiverDeps,
  ) {
    this.finished = new Promise((resolve) => (this.#finish = resolve));
  }

  onCopyData(payload: Uint8Array): void {
    if (payload.length > 0 && this.#tagOf(payload) === TAG_APPEND) {
      walIngestAppendsTotal.inc();
      this.#throwIfWalFailed();
    }
    const acceptor = this.#acceptor;
    if (acceptor !== null && !this.#busy && payload.length > 0 && this.#tagOf(payload) === TAG_APPEND && !this.#timeline!.acceptorLock.locked) {
      const message = decodeAppendRequestHeader(payload, this.options.protoVersion);
      const reply = acceptor.appendSync(message);
      if (reply === null) return this.#afterAppend();
      if (reply !== 'slow') return void this.#send(reply);
    }
    assert(this.#queued === null, 'at most one message waits: reading pauses while it does');
    this.#queued = payload.slice();
    this.conn.pauseReading();
    if (!this.#busy) void this.#drain();
  }

  onCopyDone(): void {
    this.conn.sendCopyDone();
    this.conn.close();
  }

  onCopyFail(message: string): void {
    this.deps.log.info({ conn_id: this.conn.id, message }, 'proposer sent CopyFail');
    this.conn.close();
  }

  /**
   * The connection closed: everything here is cancelled, but what the timeline lent us (its gate, the
   * residency guard, its WalReceiverSet slot, which is the proposer count) is given back only once the
   * message being handled and the reply loop have ended. An election's truncation runs on in a writer after
   * the close, and delete, shutdown and eviction must wait for it rather than remove the files under it.
   */
  onClose(): void {
    this.#closed = true;
    this.#cancel.cancel();
    this.#releaseWhenIdle();
  }

  #releaseWhenIdle(): void {
    if (!this.#closed || this.#busy || this.#replying || this.#released) return;
    this.#released = true;
    if (this.#slot !== null) {
      const timeline = this.#timeline!;
      const receivers = walReceiversOf(timeline);
      receivers.unregister(this.#slot);
      // The last proposer left: the timeline is idle, and its ring goes after ring_release_delay (unless a
      // proposer comes back) once everything in it is durable.
      if (receivers.count === 0) timeline.wal!.releaseRing();
    }
    this.#guard?.release();
    this.#detachTimelineCancel?.();
    this.#leaveGate?.();
    this.#finish();
  }

  /**
   * A write task found corrupt WAL (or failed on disk): the stream's positions were moved back to the last
   * verified record, so a later append would look like a gap. Report the real cause instead. Votes and
   * elections still go through: the next election's truncation clears the failure.
   */
  #throwIfWalFailed(): void {
    const failure = this.#timeline?.wal?.failure.value ?? null;
    if (failure !== null) throw failure;
  }

  #tagOf(payload: Uint8Array): number {
    // v2 tags are little-endian u64s: the tag is the low (first) byte either way.
    return payload[0]!;
  }

  async #drain(): Promise<void> {
    this.#busy = true;
    try {
      for (let payload = this.#queued; payload !== null; payload = this.#queued) {
        this.#queued = null;
        await this.#handle(decodeProposerMessage(payload, this.options.protoVersion));
        if (this.#queued === null) this.conn.resumeReading(); // still paused if #send found the socket full
      }
    } catch (error) {
      this.conn.endWithError(error);
    } finally {
      this.#busy = false;
      this.#releaseWhenIdle();
    }
  }

  async #handle(message: ProposerMessage): Promise<void> {
    const signal = this.#cancel.signal;
    if (this.#acceptor === null) return this.#greet(message);
    const timeline = this.#timeline!;
    const acceptor = this.#acceptor;
    if (message.tag === 'append') this.#throwIfWalFailed();
    // As Neon: the status says Streaming from the ProposerElected on; a refused one ends the connection.
    if (message.tag === 'elected') walReceiversOf(timeline).markStreaming(this.#slot!);
    const reply = await timeline.acceptorLock.run(signal, () => acceptor.handle(message, signal));
    if (reply !== null) this.#send(reply);
    else if (message.tag === 'append') this.#afterAppend();
  }

  /** The first message: find or create the timeline, then answer the greeting. */
  async #greet(message: ProposerMessage): Promise<void> {
    if (message.tag !== 'greeting') throw new ProtocolViolationError(message.tag, `unexpected ${message.tag} message instead of greeting`);
    if (parseTenantId(message.tenantId) !== this.ids.tenantId || parseTimelineId(message.timelineId) !== this.ids.timelineId) {
      throw new ProtocolViolationError('greeting', 'tenant_id/timeline_id differ from the connection options');
    }
    const { registry } = this.deps;
    let timeline = registry.get(this.ids.tenantId, this.ids.timelineId);
    if (timeline === undefined) {
      if (!this.options.allowTimelineCreation) {
        // As in Neon: the stream ends silently when the timeline is missing and creation is not allowed.
        this.conn.close();
        return;
      }
      timeline = await registry.create({
        ...this.ids,
        server: { pgVersion: message.pgVersion, systemId: message.systemId, walSegSizeBytes: message.walSegSizeBytes },
        startLsn: 0n,
        commitLsn: 0n,
      });
    }
    // What is registered is given back once #drain ends, but a connection closed meanwhile must not count
    // as a connected proposer nor start a reply loop: each await is followed by a check of the signal.
    const signal = this.#cancel.signal;
    signal.throwIfAborted();
    const acceptor = timeline.activeAcceptor();
    this.#enterTimeline(timeline);
    if (this.deps.residency !== undefined) this.#guard = await this.deps.residency.acquireGuard(timeline, signal);
    const reply = await timeline.acceptorLock.run(signal, () => acceptor.handle(message, signal));
    assert(reply !== null, 'a greeting is answered');
    signal.throwIfAborted(); // a persist (a new system_id) finishes even when the connection closed during it
    this.#timeline = timeline;
    this.#acceptor = acceptor;
    this.#slot = walReceiversOf(timeline).register(this.conn.id);
    this.#send(reply);
    void this.#replyLoop(timeline, acceptor);
  }

  /** Holds the timeline's gate while streaming; the timeline's cancellation (delete, shutdown) ends the stream. */
  #enterTimeline(timeline: Timeline): void {
    this.#leaveGate = timeline.gate.enter(`wal receiver conn ${this.conn.id}`); // ShutdownError once closing
    const timelineSignal = timeline.cancel.signal;
    const onCancel = (): void => this.conn.endWithError(timelineSignal.reason ?? new ShutdownError(`timeline ${timeline.ttid} is shutting down`));
    timelineSignal.addEventListener('abort', onCancel, { once: true });
    this.#detachTimelineCancel = () => timelineSignal.removeEventListener('abort', onCancel);
  }

  /** Sends an AppendResponse each time a write task finishes and flush_lsn moved; ends on a write failure. */
  async #replyLoop(timeline: Timeline, acceptor: Acceptor): Promise<void> {
    const wal = timeline.wal!;
    const signal = this.#cancel.signal;
    let sentFlushLsn = -1n;
    this.#replying = true;
    try {
      for (let seen = wal.progress.version; ; seen = wal.progress.version) {
        await wal.progress.changed(seen, signal);
        // A failure ends the stream that was writing; a connection still electing goes on, since its
        // election's truncation clears the failure.
        const failure = wal.failure.value;
        if (failure !== null && this.#streaming) return this.#endWithWriteFailure(failure);
        if (!this.#streaming || (wal.flushLsn === sentFlushLsn && !this.#replyOwed)) continue;
        // Another connection's vote or election holds the lock: wait for it rather than interleave.
        if (timeline.acceptorLock.locked || !acceptor.onFlushAdvancedSync()) {
          await timeline.acceptorLock.run(signal, () => acceptor.onFlushAdvanced(signal));
        }
        // A proposer that is not reading gets one reply, the latest, once its socket drains: replies are
        // cumulative, and flush advances made by other connections' WAL must not pile up here meanwhile.
        if (!this.conn.writable) await this.conn.drained(signal);
        sentFlushLsn = wal.flushLsn;
        this.#send(acceptor.appendResponse());
        this.#replyOwed = false;
      }
    } catch (error) {
      if (!signal.aborted) this.conn.endWithError(error);
    } finally {
      this.#replying = false;
      this.#releaseWhenIdle();
    }
  }

  /**
   * A write task failed: the proposer gets the error in its ErrorResponse, and the operator a log line (an error
   * for the disk, a warning for corrupt WAL from the proposer), since the stream ends here and nothing else logs it.
   */
  #endWithWriteFailure(failure: SafekeeperError): void {
    const fields = { tenant_id: this.ids.tenantId, timeline_id: this.ids.timelineId, conn_id: this.conn.id, err: failure };
    if (failure instanceof WalCorruptionError) this.deps.log.warn(fields, 'proposer stream ended: its WAL failed verification');
    else this.deps.log.error(fields, 'proposer stream ended: WAL write failed');
    this.conn.endWithError(failure);
  }

  /** An append left nothing to write (a heartbeat, or WAL already durable): reply once this read is done. */
  #afterAppend(): void {
    const wal = this.#timeline!.wal!;
    this.#replyOwed = true;
    this.#streaming = true;
    if (wal.syncedLsn !== wal.writeLsn || this.#immediateReplyScheduled) return;
    this.#immediateReplyScheduled = true;
    queueMicrotask(() => {
      this.#immediateReplyScheduled = false;
      if (wal.syncedLsn !== wal.writeLsn || this.#acceptor === null || !this.#replyOwed) return;
      this.#replyOwed = false;
      this.#send(this.#acceptor.appendResponse());
    });
  }

  #send(message: AcceptorMessage): void {
    if (!this.conn.sendCopyData(encodeAcceptorMessage(message, this.options.protoVersion))) this.conn.pauseReadingUntilDrained();
  }
}
