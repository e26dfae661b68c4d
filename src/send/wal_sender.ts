/**
 * WalSender: one START_REPLICATION stream (reference §2.2, §5), after Neon's `send_wal.rs`, for stock
 * PostgreSQL standbys, pg_receivewal and Neon-style readers (pageservers, walproposer recovery, peers).
 *
 * Bounds of the stream (§5.1): without `term`, committed WAL only (min(commit_lsn, flush_lsn)); with
 * `(term='T')`, everything up to flush_lsn while the acceptor's term is T ("failed to acquire term" before
 * a read otherwise, "term changed" when last_log_term differs while waiting). A start beyond the end waits.
 * New WAL is pushed, never polled: the loop waits on the timeline's commit Watch (or the WAL flush Watch in
 * term mode), with a 1 s timeout after which it sends a keepalive asking for a reply and applies the
 * pageserver termination rule (§5.3).
 *
 * XLogData (§5.2): at most XLOG_DATA_WAL_BYTES_MAX bytes, ending on the 128 KiB grid (a page boundary)
 * when it stops before the available end, never across a segment boundary; wal_end is the available end
 * the chunk was cut against (as walsender's SendRqstPtr), or less if WAL was truncated meanwhile.
 * These bounds and the errors that end the stream are in `stream_rules.ts`.
 * Bytes come from `WalReader`: the ring (copies shared by readers in lockstep), the segment files, remote
 * storage for WAL removed locally, or the synthesised initial segment image.
 *
 * Backpressure and isolation: a reader has at most one message beyond its socket's high-water mark in
 * flight; when `sendCopyDataParts` returns false the loop waits for 'drain' (warning once it waited
 * SLOW_WAIT_MS). Readers never hold anything ingest waits for (ring space is freed by fsync alone), so a
 * stalled reader delays only itself.
 *
 * Replies (§5.4) are parsed synchronously in the connection's sink: `r` and `h` make the slot a standby
 * (malformed ones end the stream), `h` feeds the hot standby aggregate relayed in AppendResponses, `z`
 * raises remote_consistent_lsn. Client CopyDone gets CopyDone + CommandComplete + ReadyForQuery, as
 * PostgreSQL's walsender answers it (pg_receivewal --endpos exits 0 on that); CopyFail ends with 00000.
 *
 * A reader holds a residency guard (the coordinator unevicts an offloaded timeline first) and is registered
 * in the timeline's ReaderSet (reader count and WAL-removal horizon in the state block) while it streams.
 *
 * Errors before CopyBothResponse (unknown or broken timeline, another PostgreSQL timeline, no residency
 * guard in time) become ErrorResponse + ReadyForQuery; after it (a start below the timeline's WAL, WAL
 * neither local nor remote, term mismatch, read failures) an ErrorResponse and the end of the connection.
 * Main thread. The stream runs as a timeline task (its Gate), and ends on the connection's close or the
 * timeline's cancellation (57P01).
 */
import type { Acceptor } from '../acceptor/acceptor.js';
import { InvalidArgumentError } from '../errors.js';
import type { TimelineWal } from '../ingest/timeline_wal.js';
import { SLOW_WAIT_MS } from '../limits.js';
import { walReaders, walSentBytesTotal } from '../metrics.js';
import { commandComplete, readyForQuery } from '../pg/backend_encoder.js';
import type { CopyBothSink, PgConnection } from '../pg/connection.js';
import { ConnectionLostError, StreamEndedError } from '../pg/sqlstate.js';
import { assert, unreachable } from '../sync/assert.js';
import { abortReason, CancelToken } from '../sync/cancel.js';
import type { Watch } from '../sync/watch.js';
import type { Residency } from '../timeline/residency.js';
import type { Timeline } from '../timeline/timeline.js';
import type { TimelineRegistry } from '../timeline/registry.js';
import type { TenantId, TimelineId } from '../acceptor/state.js';
import { type Lsn, PG_TIMELINE_ID, formatLsn, lsnMin } from '../wal/lsn.js';
import { readersOf, type ReaderSet, type ReaderSlot } from './reader_set.js';
import { decodeReaderMessage, encodeKeepalive, encodeXLogDataHeader, postgresNowUs } from '../pg/replication_messages.js';
import { TermMismatchError, WalTruncatedError, availableEndLsn, checkPageserverCaughtUp, requireTerm, xlogDataEndLsn } from './stream_rules.js';
import { checkReadStart, WalReader, type WalReaderSource } from './wal_reader.js';
import { linkCancellation, waitForAnyChange } from './waits.js';
import type { LogSink } from '../log.js';

/** With no new WAL for this long: a keepalive with reply_requested, and the §5.3 check (Neon's POLL_STATE_TIMEOUT). */
export const KEEPALIVE_INTERVAL_MS = 1_000;

export interface StartReplicationArgs {
  startLsn: Lsn;
  /** The PostgreSQL timeline asked for (`TIMELINE n`); only 1 exists here. */
  pgTimeline: number | null;
  /** `(term='T')`: stream up to flush_lsn in that term; null for committed WAL only. */
  term: bigint | null;
}

export interface WalSenderDeps {
  registry: TimelineRegistry;
  /** Residency guards (the coordinator): a reader holds one while streaming, so the timeline's WAL is local. */
  residency?: Residency;
  /** Reads of WAL that is only in remote storage (the coordinator); without it such reads are refused. */
  remoteWal?: { readRemoteWal(ttid: string, startLsn: Lsn, lengthBytes: number): Promise<Uint8Array> };
  log: LogSink;
}

/** Serves START_REPLICATION on `conn` until the stream ends (see the header). */
export async function serveStartReplication(conn: PgConnection, args: StartReplicationArgs, ids: { tenantId: TenantId; timelineId: TimelineId }, deps: WalSenderDeps): Promise<void> {
  const timeline = deps.registry.require(ids.tenantId, ids.timelineId);
  const acceptor = timeline.activeAcceptor();
  const wal = timeline.wal;
  assert(wal !== null, 'a timeline with an acceptor has its WAL');
  if (args.pgTimeline !== null && args.pgTimeline !== PG_TIMELINE_ID) {
    throw new InvalidArgumentError(`requested timeline ${args.pgTimeline} is not in this server's history: only timeline ${PG_TIMELINE_ID} exists`);
  }
  // An offloaded timeline is unevicted before the guard is granted, and never evicted while it is held.
  const guard = deps.residency === undefined ? null : await deps.residency.acquireGuard(timeline, conn.signal);
  try {
    await timeline.runTask(`wal sender (conn ${conn.id})`, (signal) => new WalSender(conn, timeline, acceptor, wal, args, deps).run(signal));
  } finally {
    guard?.release();
  }
}

class WalSender implements CopyBothSink {
  readonly #cancel = new CancelToken();
  readonly #readers: ReaderSet;
  #slot: ReaderSlot | null = null;
  #unknownMessageLogged = false;

  constructor(
    private readonly conn: PgConnection,
    private readonly timeline: Timeline,
    private readonly acceptor: Acceptor,
    private readonly wal: TimelineWal,
    private readonly args: StartReplicationArgs,
    private readonly deps: WalSenderDeps,
  ) {
    this.#readers = readersOf(timeline);
  }

  async run(timelineSignal: AbortSignal): Promise<void> {
    const conn = this.conn;
    if (conn.isClosed) return;
    const unlink = linkCancellation(this.#cancel, [conn.signal, timelineSignal]);
    const slot = this.#readers.register({
      connId: conn.id,
      remoteAddress: conn.remoteAddress,
      applicationName: conn.startup.applicationName,
      startLsn: this.args.startLsn,
      term: this.args.term,
    });
    this.#slot = slot;
    walReaders.inc();
    let reader: WalReader | null = null;
    const fields = { conn_id: conn.id, tenant_id: this.timeline.tenantId, timeline_id: this.timeline.timelineId, application_name: conn.startup.applicationName };
    try {
      conn.startCopyBoth(this);
      this.deps.log.info({ ...fields, start_lsn: formatLsn(this.args.startLsn), term: this.args.term?.toString() ?? null, available_end_lsn: formatLsn(this.#availableEnd()) }, 'replication stream started');
      const state = this.acceptor.state;
      const remoteWal = this.deps.remoteWal;
      const source: WalReaderSource = {
        dir: this.timeline.dir,
        segmentSizeBytes: state.server.walSegSizeBytes,
        pgVersion: state.server.pgVersion,
        systemId: state.server.systemId,
        timelineStartLsn: state.timelineStartLsn,
        localStartLsn: state.localStartLsn,
        removedUpToLsn: () => this.timeline.state.get('removedUpToLsn'),
        readRemote: remoteWal === undefined ? null : (lsn, lengthBytes) => remoteWal.readRemoteWal(this.timeline.ttid, lsn, lengthBytes),
        recentChunks: this.#readers.recentChunks,
        wal: this.wal,
      };
      checkReadStart(source, this.args.startLsn); // after CopyBothResponse, as in Neon (§5.1)
      reader = new WalReader(source);
      await this.#stream(reader, source.segmentSizeBytes, this.#cancel.signal);
    } finally {
      // Replies still arriving (a standby answers every XLogData) are dropped from here on: the slot is gone.
      this.#slot = null;
      this.#readers.unregister(slot);
      walReaders.dec();
      unlink();
      await reader?.close();
      this.deps.log.info({ ...fields, sent_lsn: formatLsn(slot.sentLsn) }, 'replication stream ended');
    }
  }

  // ---- CopyBothSink: replies from the reader, synchronously from the socket's 'data' handler ----

  onCopyData(payload: Uint8Array): void {
    // Null once the stream ended: the socket still delivers what the reader sent before it learned that.
    const slot = this.#slot;
    if (slot === null) return;
    const message = decodeReaderMessage(payload);
    switch (message.tag) {
      case 'standby_reply':
        this.#readers.recordStandbyReply(slot, message.reply);
        if (message.reply.replyRequested) this.#sendKeepalive(false);
        return;
      case 'hot_standby_feedback':
        this.#readers.recordHotStandbyFeedback(slot, message.feedback);
        return;
      case 'pageserver_feedback': {
        this.#readers.recordPageserverFeedback(slot, message.feedback);
        this.acceptor.updateInMemory({ remoteConsistentLsn: message.feedback.remoteConsistentLsn });
        this.timeline.publishState(); // the state block's remote_consistent_lsn feeds the WAL removal horizon
        return;
      }
      case 'unknown':
        if (!this.#unknownMessageLogged) this.deps.log.warn({ conn_id: this.conn.id, first_byte: message.firstByte }, 'unexpected message from a replication reader; ignored');
        this.#unknownMessageLogged = true;
        return;
      default:
        return unreachable(message);
    }
  }

  onCopyDone(): void {
    this.conn.sendCopyDone();
    this.conn.write(commandComplete('START_STREAMING'));
    this.conn.write(readyForQuery('I'));
    this.conn.close();
  }

  onCopyFail(): void {
    this.conn.endWithError(new StreamEndedError('received CopyFail'));
  }

  onClose(error?: unknown): void {
    this.#cancel.cancel(error ?? new ConnectionLostError('connection closed'));
  }

  // ---- the sending loop ----

  async #stream(reader: WalReader, segmentSizeBytes: number, signal: AbortSignal): Promise<void> {
    const slot = this.#slot;
    assert(slot !== null, 'the stream runs registered');
    const sentBytes = {
      ring: walSentBytesTotal.labels({ source: 'ring' }),
      segment: walSentBytesTotal.labels({ source: 'segment' }),
      remote: walSentBytesTotal.labels({ source: 'remote' }),
      initial_image: walSentBytesTotal.labels({ source: 'initial_image' }),
    };
    const timelineStartLsn = this.acceptor.state.timelineStartLsn;
    let lsn = this.args.startLsn;
    for (;;) {
      if (signal.aborted) throw abortReason(signal);
      this.#acquireTerm();
      const endLsn = this.#availableEnd();
      if (lsn > this.args.startLsn && endLsn < lsn) {
        throw new WalTruncatedError(`WAL was truncated to ${formatLsn(endLsn)}, below ${formatLsn(lsn)} already sent`);
      }
      // Below the timeline start the bytes are synthesised; above it they must have been received.
      const readableEndLsn = lsn < timelineStartLsn ? lsnMin(endLsn, timelineStartLsn) : lsnMin(endLsn, this.wal.writeLsn);
      if (lsn >= readableEndLsn) {
        await this.#waitForWal(lsn, endLsn, signal);
        continue;
      }
      const chunkEndLsn = xlogDataEndLsn(lsn, readableEndLsn, segmentSizeBytes);
      const before = { ...reader.bytesBySource };
      const bytes = await reader.read(lsn, Number(chunkEndLsn - lsn), signal);
      if (bytes.length === 0) continue; // a cut of the files: re-check the bounds
      this.#acquireTerm(); // the read happened under the requested term (Neon holds a term guard across it)
      const nowEndLsn = this.#availableEnd();
      if (nowEndLsn < lsn + BigInt(bytes.length)) continue; // truncated during the read: re-check the bounds
      // wal_end is the end the chunk was cut against (walsender's SendRqstPtr), not one that moved during the
      // read: then a chunk that stops before wal_end always stops on the grid, as the receiver may check.
      const walEndLsn = lsnMin(endLsn, nowEndLsn);
      const sent = this.conn.sendCopyDataParts(encodeXLogDataHeader(lsn, walEndLsn, postgresNowUs()), bytes);
      for (const source of ['ring', 'segment', 'remote', 'initial_image'] as const) {
        const delta = reader.bytesBySource[source] - before[source];
        if (delta > 0) sentBytes[source].inc(delta);
      }
      lsn += BigInt(bytes.length);
      slot.sentLsn = lsn;
      if (!sent) await this.#drained(signal);
    }
  }

  /** commit_lsn (capped by flush_lsn) without a term; flush_lsn with one (§5.1). */
  #availableEnd(): Lsn {
    return availableEndLsn(this.acceptor, this.args.term);
  }

  /** Term mode: the acceptor's term must still be the requested one. */
  #acquireTerm(): void {
    requireTerm(this.acceptor, this.args.term);
  }

  /**
   * Waits until the available end may have moved past `lsn` (or WAL below it arrived), for at most
   * KEEPALIVE_INTERVAL_MS; on the timeout applies §5.3 and sends a keepalive.
   */
  async #waitForWal(lsn: Lsn, endLsn: Lsn, signal: AbortSignal): Promise<void> {
    const term = this.args.term;
    if (term !== null && this.acceptor.lastLogTerm !== term) throw new TermMismatchError(`term changed: requested ${term}, now ${this.acceptor.lastLogTerm}`);
    const watches: Watch<unknown>[] = [term === null ? this.timeline.commit : this.wal.flush];
    // Available but not received yet (the zero padding after an XLOG_SWITCH is acknowledged before it arrives).
    if (endLsn > lsn) watches.push(this.wal.progress);
    // A timeline created with commit_lsn above its WAL: the end then moves with flush_lsn.
    if (term === null && this.acceptor.commitLsn > this.acceptor.flushLsn) watches.push(this.wal.flush);
    if (await waitForAnyChange(watches, KEEPALIVE_INTERVAL_MS, signal)) return;
    if (term === null) this.#checkPageserverCaughtUp(lsn);
    this.#sendKeepalive(true);
  }

  /** §5.3: a pageserver (by its feedback) that has everything, with no compute connected, is sent away. */
  #checkPageserverCaughtUp(lsn: Lsn): void {
    const slot = this.#slot;
    assert(slot !== null, 'registered');
    const proposerCount = this.timeline.state.get('proposerCount');
    checkPageserverCaughtUp({ feedback: slot.feedback, proposerCount, commitLsn: this.acceptor.commitLsn, applicationName: this.conn.startup.applicationName }, lsn);
  }

  /** Skipped while the socket is over its high-water mark: the reader is behind anyway. */
  #sendKeepalive(replyRequested: boolean): void {
    if (!this.conn.writable) return;
    this.conn.sendCopyData(encodeKeepalive(this.#availableEnd(), postgresNowUs(), replyRequested));
  }

  async #drained(signal: AbortSignal): Promise<void> {
    const startedMs = Date.now();
    const timer = setTimeout(() => {
      this.deps.log.warn({ conn_id: this.conn.id, tenant_id: this.timeline.tenantId, timeline_id: this.timeline.timelineId, waited_ms: Date.now() - startedMs }, 'slow replication reader: WAL waits for its socket');
    }, SLOW_WAIT_MS);
    timer.unref();
    try {
      await this.conn.drained(signal);
    } finally {
      clearTimeout(timer);
    }
  }
}
