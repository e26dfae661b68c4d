/**
 * WAL from a stock PostgreSQL primary (15+) as a physical replication client, acting as a synchronous
 * standby whose flush position is the safekeepers' quorum commit_lsn.
 *
 * Setup (`open`, `primary_connection.ts`): IDENTIFY_SYSTEM (system id, PostgreSQL timeline),
 * `SHOW server_version_num`, `SHOW wal_segment_size`, `SHOW in_hot_standby` (a standby is followed, with a
 * warning: no commit waits on its flush reports), and a physical replication slot (READ_REPLICATION_SLOT;
 * CREATE_REPLICATION_SLOT ... PHYSICAL RESERVE_WAL if it is missing), so the primary keeps WAL until the
 * quorum has it: the slot's restart_lsn follows the flush position we report. A new timeline starts at the
 * first record boundary of the segment holding the slot's restart_lsn (found by decoding that segment's start
 * with skipLeadingContrecord on a second, short-lived connection; the safekeepers synthesise the segment
 * image below it), or at `--start-lsn`.
 * Streaming: `START_REPLICATION SLOT s PHYSICAL X/Y` on the main connection; XLogData must be contiguous.
 * Standby status updates carry write = flush = apply = commit_lsn, sent at once when commit_lsn moves
 * (further moves in the same event-loop turn coalesce into one more update) and every STATUS_INTERVAL_MS, so with
 * synchronous_standby_names naming our application_name a commit returns once a majority fsynced it.
 * Hot standby feedback from the safekeepers is relayed as 'h' messages (and sent again after a reconnect).
 * Silence: with `--primary-timeout` (> 0) a connection on which nothing arrives for that long is treated as
 * lost, after a reply request at half of it (`primary_silence.ts`, PostgreSQL's wal_receiver_timeout), so a
 * frozen primary or a dropped route ends in a reconnect instead of a proposer that waits forever. Before
 * streaming, the same limit bounds each setup step of the first connection (`setupStep`), which fails fatally.
 * Reconnect: once streaming has begun, a lost connection (primary restart, terminated walsender, network,
 * silence) is retried (`primary_reconnect.ts`) while the proposer's links and term stay; the new connection must be
 * the same system on the same PostgreSQL timeline, and START_REPLICATION resumes at `receivedLsn`, the end of
 * the WAL we already handed to the proposer (what the quorum has or is being sent), never the primary's end.
 * A dropped slot is created again, as on the first run: the slot only makes the primary keep WAL, so if the
 * WAL we resume at is still there nothing was lost and an operator would want streaming to go on; if it is
 * gone, the primary says so (58P01) and we stop with a SourceMismatchError, as no retry can bring it back.
 * Failure: the first connection and the first START_REPLICATION failing, a foreign system, lost WAL, or no
 * reconnect within `--primary-reconnect-timeout` are fatal for the proposer (exit 1). Main thread.
 */
import type { Logger } from '../log.js';
import { type PgClient, PgConnectionError, PgServerError } from '../pg/client.js';
import { decodeWalSenderMessage, encodeHotStandbyFeedback, encodeStandbyReply, postgresNowUs } from '../pg/replication_messages.js';
import { formatLsn, type Lsn, segmentNumber, segmentStartLsn } from '../wal/lsn.js';
import { withDeadline } from '../sync/cancel.js';
import { initialDecoderState, WalRecordDecoder } from '../wal/record_decoder.js';
import { SourceError, SourceMismatchError } from './errors.js';
import { LatencyStats } from './latency_stats.js';
import { PendingTimings } from './pending_timings.js';
import { STATUS_INTERVAL_MS } from './limits.js';
import { type ConnectionTarget, connectPrimary, ensureSlot, identifyPrimary, parsePostgresUrl, type PrimaryIdentity, toSourceError, warnIfStandby } from './primary_connection.js';
import { isTransientPrimaryError, reconnectPrimary } from './primary_reconnect.js';
import { SilenceWatchdog } from './primary_silence.js';
import type { ServerIdentity, StreamArgs, WalSource } from './source.js';

/** XLogData pieces tracked for the ack latency; beyond it the newest piece absorbs new ones. */
const RECEIVED_PIECES_MAX = 100_000;

export interface PostgresSourceOptions {
  /** postgres://user:password@host:port/database */
  url: string;
  applicationName: string;
  slotName: string;
  /** `--start-lsn`: where a new timeline starts, instead of the slot's segment. */
  startLsn: Lsn | null;
  /** `--primary-reconnect-timeout`: how long after losing the primary mid-stream we keep reconnecting. */
  reconnectTimeoutMs: number;
  /** `--primary-timeout`: a connection silent for this long is lost (a reply is requested at half); 0 never gives up. */
  silenceTimeoutMs: number;
  log: Logger;
}

export class PostgresSource implements WalSource {
  readonly description: string;
  readonly canRewind = true;
  readonly needsPrevRecordLsn = false;
  readonly identity: ServerIdentity;
  readonly #options: PostgresSourceOptions;
  readonly #target: ConnectionTarget;
  /** The PostgreSQL timeline at `open`; a reconnect to another one (a promotion) is refused. */
  readonly #pgTimeline: number;
  /** The current replication connection; replaced by each reconnect. */
  #client: PgClient;
  #restartLsn: Lsn;
  #commitLsn: Lsn = 0n;
  /** End of the WAL received from the primary and handed to the proposer: where a reconnect resumes. */
  #receivedLsn: Lsn = 0n;
  #streaming = false;
  #statusScheduled = false;
  #statusTimer: NodeJS.Timeout | null = null;
  #feedback: { xmin: bigint; catalogXmin: bigint } | null = null;
  /** Successful reconnects after a loss mid-stream (the metric `..._primary_reconnects_total`). */
  reconnectsTotal = 0;
  /** WAL pieces received and not yet committed, for `latency`. */
  readonly #received = new PendingTimings(RECEIVED_PIECES_MAX);
  /** How long WAL from the primary waited for the quorum: receipt of an XLogData until commit_lsn covers it. */
  readonly latency = new LatencyStats();

  private constructor(options: PostgresSourceOptions, target: ConnectionTarget, client: PgClient, primary: PrimaryIdentity, restartLsn: Lsn) {
    this.#options = options;
    this.#target = target;
    this.#client = client;
    this.#restartLsn = restartLsn;
    this.#pgTimeline = primary.pgTimeline;
    this.identity = { systemId: primary.systemId, pgVersion: primary.pgVersion, walSegSizeBytes: primary.walSegSizeBytes };
    this.description = `postgres ${target.host}:${target.port}`;
  }

  /**
   * Connects, identifies the primary and makes sure the slot exists, within `--primary-timeout` (see
   * `setupStep`). Errors are SourceErrors.
   */
  static async open(options: PostgresSourceOptions, signal: AbortSignal): Promise<PostgresSource> {
    const target = parsePostgresUrl(options.url);
    return setupStep(options.silenceTimeoutMs, 'connecting and setting up replication', signal, (stepSignal) => PostgresSource.#open(options, target, stepSignal));
  }

  static async #open(options: PostgresSourceOptions, target: ConnectionTarget, signal: AbortSignal): Promise<PostgresSource> {
    const client = await connectPrimary(target, options.applicationName, signal);
    try {
      const primary = await identifyPrimary(client, signal);
      const restartLsn = await ensureSlot(client, options.slotName, options.log, false, signal);
      options.log.info({
        primary: `${target.host}:${target.port}`, system_id: primary.systemId, pg_timeline: primary.pgTimeline, pg_version: primary.pgVersion,
        wal_segment_size: primary.walSegSizeBytes, in_recovery: primary.inRecovery, slot: options.slotName, restart_lsn: restartLsn,
      }, 'connected to the primary');
      warnIfStandby(primary, target, options.log);
      return new PostgresSource(options, target, client, primary, restartLsn);
    } catch (error) {
      client.destroy();
      throw toSourceError(error, 'setting up replication');
    }
  }

  /** End of the WAL received from the primary (0 before streaming). */
  get receivedLsn(): Lsn {
    return this.#receivedLsn;
  }

  /** Whether the replication stream is up (false while reconnecting). */
  get connected(): boolean {
    return this.#streaming;
  }

  earliestLsn(): Lsn {
    const segmentSizeBytes = this.identity.walSegSizeBytes;
    return segmentStartLsn(segmentNumber(this.#restartLsn, segmentSizeBytes), segmentSizeBytes);
  }

  async initialLsn(signal: AbortSignal): Promise<Lsn> {
    if (this.#options.startLsn !== null) return this.#options.startLsn;
    return setupStep(this.#options.silenceTimeoutMs, 'looking for the first record of the slot segment', signal, (stepSignal) => this.#firstRecordLsn(stepSignal));
  }

  async #firstRecordLsn(signal: AbortSignal): Promise<Lsn> {
    const fromLsn = this.earliestLsn();
    const probe = await connectPrimary(this.#target, `${this.#options.applicationName}_probe`, signal);
    try {
      await probe.startCopyBoth(`START_REPLICATION PHYSICAL ${formatLsn(fromLsn)}`, signal);
      const decoder = new WalRecordDecoder(initialDecoderState({ startLsn: fromLsn, segmentSizeBytes: this.identity.walSegSizeBytes, pgVersion: this.identity.pgVersion, skipLeadingContrecord: true }));
      for (;;) {
        const event = await probe.nextCopy(signal);
        if (event.kind === 'done') throw new SourceError('the primary ended replication while we looked for the first record');
        const message = decodeWalSenderMessage(event.payload);
        if (message.kind !== 'xlog') continue;
        let firstLsn: Lsn | null = null;
        decoder.feed(message.data, (startLsn) => (firstLsn ??= startLsn));
        if (firstLsn !== null) {
          this.#options.log.info({ segment_start_lsn: fromLsn, first_record_lsn: firstLsn }, 'a new timeline starts at the first record of the slot segment');
          return firstLsn;
        }
      }
    } catch (error) {
      throw toSourceError(error, 'finding the first record');
    } finally {
      probe.destroy();
    }
  }

  /**
   * Streams from `args.startLsn` until the signal fires; reconnects (see the header) when the connection is
   * lost. The first START_REPLICATION failing is fatal, as a wrong start point would not heal.
   */
  async stream(args: StreamArgs): Promise<void> {
    const { signal } = args;
    try {
      const command = this.#startReplicationCommand(args.startLsn);
      await setupStep(this.#options.silenceTimeoutMs, 'starting replication', signal, (stepSignal) => this.#client.startCopyBoth(command, stepSignal));
    } catch (error) {
      throw toSourceError(error, `START_REPLICATION at ${formatLsn(args.startLsn)}`);
    }
    this.#receivedLsn = args.startLsn;
    this.#statusTimer = setInterval(() => this.#sendStatus(false), STATUS_INTERVAL_MS);
    for (;;) {
      try {
        await this.#pump(args);
      } catch (error) {
        // A clean stop (the signal) leaves the connection up and `#streaming` set: the proposer then drains the
        // safekeepers' acknowledgements, and every commit_lsn they bring, the final one in `close()` included,
        // is still reported to the primary, so commits waiting on it there are released now, not by the next
        // proposer. Only the reading stops (the primary's further WAL waits in bounded buffers until close).
        if (signal.aborted) throw error;
        this.#streaming = false;
        // 58P01 (undefined_file) when the segment file is gone; some paths report it as XX000 with this text.
        if (error instanceof PgServerError && (error.sqlState === '58P01' || /has already been removed/.test(error.message))) {
          throw new SourceMismatchError(`the primary no longer has the WAL at ${formatLsn(this.#receivedLsn)} that the safekeepers need next (${error.message}); was the replication slot ${this.#options.slotName} dropped?`, { cause: error });
        }
        if (!isTransientPrimaryError(error)) throw toSourceError(error, 'streaming');
        this.#client.destroy();
        const resumeLsn = this.#receivedLsn;
        this.#client = await reconnectPrimary({
          what: `primary at ${this.#target.host}:${this.#target.port}`, timeoutMs: this.#options.reconnectTimeoutMs, lostError: error,
          fields: { resume_lsn: resumeLsn }, log: this.#options.log, signal, attempt: (attemptSignal) => this.#resume(resumeLsn, attemptSignal),
        });
        this.reconnectsTotal += 1;
      }
    }
  }

  /** One pass of the stream on the current connection; always ends by throwing (a CopyDone is a lost connection). */
  async #pump(args: StreamArgs): Promise<void> {
    const { signal } = args;
    const client = this.#client;
    this.#streaming = true;
    this.#sendStatus(false);
    if (this.#feedback !== null) this.#sendFeedback();
    const watchdog = this.#watchSilence(client);
    try {
      for (;;) {
        const event = client.tryNextCopy() ?? (await client.nextCopy(signal));
        watchdog?.heard();
        if (event.kind === 'done') throw new PgConnectionError('the primary ended replication (shutting down?)');
        const message = decodeWalSenderMessage(event.payload);
        if (message.kind === 'keepalive') {
          if (message.replyRequested) this.#sendStatus(false);
          continue;
        }
        if (message.data.length === 0) continue;
        if (message.startLsn !== this.#receivedLsn) throw new SourceError(`the primary sent WAL at ${formatLsn(message.startLsn)}, expected ${formatLsn(this.#receivedLsn)}`);
        const endLsn = this.#receivedLsn + BigInt(message.data.length);
        this.#receivedLsn = endLsn;
        this.#received.note(endLsn, performance.now());
        watchdog?.pause(); // a write waiting for the quorum is not the primary's silence
        await args.write(message.startLsn, message.data, signal);
        watchdog?.resume();
      }
    } finally {
      watchdog?.stop();
    }
  }

  /** The `--primary-timeout` watch over `client` (null when disabled): ping at half, destroy at the full timeout. */
  #watchSilence(client: PgClient): SilenceWatchdog | null {
    const timeoutMs = this.#options.silenceTimeoutMs;
    if (timeoutMs === 0) return null;
    return new SilenceWatchdog({
      timeoutMs,
      onPing: () => {
        this.#options.log.debug({ silent_ms: Math.round(timeoutMs / 2), primary_timeout_ms: timeoutMs }, 'nothing from the primary for half of --primary-timeout; requesting a reply');
        this.#sendStatus(true); // the walsender answers a reply request with a keepalive at once
      },
      onTimeout: (silentMs) => {
        this.#options.log.warn({ silent_ms: Math.round(silentMs), primary_timeout_ms: timeoutMs, received_lsn: this.#receivedLsn }, 'nothing from the primary within --primary-timeout; dropping the connection');
        // The pending read rejects with this (transient) error, and stream() reconnects.
        client.destroy(new PgConnectionError(`nothing received from the primary for ${Math.round(silentMs)} ms (--primary-timeout ${timeoutMs} ms)`));
      },
    });
  }

  /** A reconnect attempt: same system and timeline, the slot (created again if dropped), START_REPLICATION at `resumeLsn`. */
  async #resume(resumeLsn: Lsn, signal: AbortSignal): Promise<PgClient> {
    const client = await connectPrimary(this.#target, this.#options.applicationName, signal);
    try {
      const primary = await identifyPrimary(client, signal);
      if (primary.systemId !== this.identity.systemId) {
        throw new SourceMismatchError(`the primary at ${this.#target.host}:${this.#target.port} came back as another cluster (system id ${primary.systemId}, this timeline's is ${this.identity.systemId}); refusing to stream its WAL`);
      }
      if (primary.pgTimeline !== this.#pgTimeline) {
        throw new SourceMismatchError(`the primary at ${this.#target.host}:${this.#target.port} came back on PostgreSQL timeline ${primary.pgTimeline}, not ${this.#pgTimeline} (promoted from a standby?); refusing to stream its WAL`);
      }
      warnIfStandby(primary, this.#target, this.#options.log); // the old primary may have come back demoted
      await ensureSlot(client, this.#options.slotName, this.#options.log, true, signal);
      await client.startCopyBoth(this.#startReplicationCommand(resumeLsn), signal);
      return client;
    } catch (error) {
      client.destroy();
      throw toSourceError(error, `resuming replication at ${formatLsn(resumeLsn)}`);
    }
  }

  #startReplicationCommand(startLsn: Lsn): string {
    return `START_REPLICATION SLOT ${this.#options.slotName} PHYSICAL ${formatLsn(startLsn)}`;
  }

  onCommit(commitLsn: Lsn): void {
    this.#commitLsn = commitLsn;
    this.#received.settle(commitLsn, performance.now(), (waitMs, weight) => this.latency.add(waitMs, weight));
    if (commitLsn > this.#restartLsn) this.#restartLsn = commitLsn;
    if (this.#statusScheduled) return;
    // The first advance in an event-loop turn is reported at once (commit latency); later advances in the
    // same turn (acks of the other safekeepers) are folded into one more update at its end.
    this.#sendStatus(false);
    const sentLsn = commitLsn;
    this.#statusScheduled = true;
    setImmediate(() => {
      this.#statusScheduled = false;
      if (this.#commitLsn !== sentLsn) this.#sendStatus(false);
    });
  }

  onHotStandbyFeedback(xmin: bigint, catalogXmin: bigint): void {
    this.#feedback = { xmin, catalogXmin };
    this.#sendFeedback();
  }

  async close(): Promise<void> {
    const latency = this.latency.summary();
    if (latency.count > 0) this.#options.log.info({ pieces: latency.count, ack_latency_ms_p50: latency.p50Ms, ack_latency_ms_p99: latency.p99Ms, ack_latency_ms_max: latency.maxMs }, 'quorum ack latency of WAL from the primary');
    if (this.#statusTimer !== null) clearInterval(this.#statusTimer);
    this.#statusTimer = null;
    if (this.#streaming) this.#sendStatus(false);
    this.#client.terminate();
    this.#client.destroy();
    await this.#client.closed;
  }

  #sendFeedback(): void {
    const feedback = this.#feedback;
    if (!this.#streaming || this.#client.destroyed || feedback === null) return;
    this.#client.sendCopyData(encodeHotStandbyFeedback({ timestampUs: postgresNowUs(), xmin: feedback.xmin, catalogXmin: feedback.catalogXmin }));
  }

  #sendStatus(replyRequested: boolean): void {
    if (!this.#streaming || this.#client.destroyed) return;
    const lsn = this.#commitLsn;
    this.#client.sendCopyData(encodeStandbyReply({ writeLsn: lsn, flushLsn: lsn, applyLsn: lsn, replyTimeUs: postgresNowUs(), replyRequested }));
  }
}

/**
 * One step of the first connection's setup, bounded by `--primary-timeout` (when not 0): a primary that goes
 * silent before streaming starts (where the silence watch of `#pump` does not run yet) is a fatal
 * SourceError naming the step, as any failure of the first connection is. A reconnect's setup is bounded by
 * `--primary-reconnect-timeout` instead (primary_reconnect.ts).
 */
function setupStep<T>(timeoutMs: number, step: string, signal: AbortSignal, work: (signal: AbortSignal) => Promise<T>): Promise<T> {
  if (timeoutMs === 0) return work(signal);
  return withDeadline(work, timeoutMs, signal, () => new SourceError(`the primary did not answer within --primary-timeout (${timeoutMs} ms) while ${step}`));
}
