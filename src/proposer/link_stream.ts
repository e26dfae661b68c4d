/**
 * One streaming session of an acceptor link (`acceptor_link.ts`), from ProposerElected until the connection
 * fails: a sender and a reader side by side. The sender walks the link's `streamingAtLsn` through the
 * proposer's WAL window in AppendRequests of at most 128 KiB, waiting for 'drain' when the socket is full;
 * below the window it recovers the gap from a donor safekeeper (`donor_reader.ts`). When caught up it sleeps
 * until the proposer kicks it (new WAL, new commit_lsn) or a heartbeat is due. The reader hands every
 * AppendResponse to the proposer, which computes commit_lsn, and times each AppendRequest with WAL from
 * send to the flush that covers it (the append→ack latency metric). A safekeeper silent for
 * ACCEPTOR_SILENCE_MS_MAX is dropped. The link's fields (flushLsn, streamingAtLsn, state, counters) are
 * updated here, as the proposer reads them from the link.
 * Abort-safe: every wait takes the session's signal; the caller destroys the connection. Main thread.
 */
import { encodeAppendRequestHeader } from '../acceptor/messages.js';
import { decodeAcceptorMessage } from '../acceptor/messages_codec.js';
import { formatHostPort } from '../config/value_parsers.js';
import { ProtocolViolationError } from '../errors.js';
import { type PgClient, PgConnectionError } from '../pg/client.js';
import { assert } from '../sync/assert.js';
import { CancelToken } from '../sync/cancel.js';
import { formatLsn, type Lsn } from '../wal/lsn.js';
import type { AcceptorLink, ElectedTerm, LinkHost } from './acceptor_link.js';
import { readDonorWal } from './donor_reader.js';
import { ACCEPTOR_SILENCE_MS_MAX, APPEND_BYTES_MAX, APPENDS_TIMED_MAX, COMMIT_BROADCAST_DELAY_MS, HEARTBEAT_INTERVAL_MS } from './limits.js';
import { PendingTimings } from './pending_timings.js';

export class LinkStream {
  readonly #link: AcceptorLink;
  readonly #host: LinkHost;
  /** AppendRequests with WAL awaiting the flush that covers them, for `onAppendAcked`. */
  readonly #appendTimings = new PendingTimings(APPENDS_TIMED_MAX);
  #wake: (() => void) | null = null;
  #lastHeardMs = 0;

  constructor(link: AcceptorLink, host: LinkHost) {
    this.#link = link;
    this.#host = host;
  }

  /** Wakes the sender if it sleeps: new WAL or a new commit_lsn. Cheap; called on every change. */
  kick(): void {
    const wake = this.#wake;
    this.#wake = null;
    wake?.();
  }

  /** Streams from `startLsn` until the connection fails or `signal` fires; always rejects (why it ended). */
  async run(client: PgClient, elected: ElectedTerm, startLsn: Lsn, signal: AbortSignal): Promise<never> {
    // ProposerElected truncates the acceptor's WAL at startLsn: that is its flush position now.
    this.#link.flushLsn = startLsn;
    this.#link.streamingAtLsn = startLsn;
    this.#link.ackedCommitLsn = 0n;
    this.#link.state = 'streaming';
    this.#link.sessionsStreamed += 1;
    this.#lastHeardMs = performance.now();
    const both = new CancelToken();
    const onAbort = (): void => both.cancel(signal.reason);
    signal.addEventListener('abort', onAbort, { once: true });
    let failure: unknown = null;
    const fail = (error: unknown): void => {
      failure ??= error;
      both.cancel(error);
    };
    // A safekeeper that stops answering (even while our sends wait for 'drain') is dropped.
    const watchdog = setInterval(() => {
      if (performance.now() - this.#lastHeardMs > ACCEPTOR_SILENCE_MS_MAX) fail(new PgConnectionError(`${this.#link.name}: no reply for ${ACCEPTOR_SILENCE_MS_MAX} ms`));
    }, HEARTBEAT_INTERVAL_MS);
    try {
      await Promise.all([this.#sendLoop(client, elected, both.signal).catch(fail), this.#readLoop(client, both.signal).catch(fail)]);
    } finally {
      clearInterval(watchdog);
      signal.removeEventListener('abort', onAbort);
      this.kick();
    }
    throw failure ?? new PgConnectionError(`${this.#link.name}: streaming ended`);
  }

  async #readLoop(client: PgClient, signal: AbortSignal): Promise<void> {
    for (;;) {
      let event = client.tryNextCopy() ?? (await client.nextCopy(signal));
      for (;;) {
        if (event.kind === 'done') throw new PgConnectionError(`${this.#link.name}: safekeeper ended the stream`);
        const message = decodeAcceptorMessage(event.payload, this.#host.protocolVersion);
        if (message.tag !== 'append') throw new ProtocolViolationError('acceptor', `expected AppendResponse, got ${message.tag}`);
        this.#lastHeardMs = performance.now();
        if (message.flushLsn > this.#link.flushLsn) {
          this.#link.flushLsn = message.flushLsn;
          this.#appendTimings.settle(message.flushLsn, this.#lastHeardMs, (waitMs) => this.#host.onAppendAcked(this.#link, waitMs));
        }
        if (message.commitLsn > this.#link.ackedCommitLsn) this.#link.ackedCommitLsn = message.commitLsn;
        this.#link.hsFeedback = message.hsFeedback;
        this.#host.onAppendResponse(this.#link, message);
        const next = client.tryNextCopy();
        if (next === undefined) break;
        event = next;
      }
    }
  }

  async #sendLoop(client: PgClient, elected: ElectedTerm, signal: AbortSignal): Promise<void> {
    const window = this.#host.window;
    let sentCommitLsn = -1n;
    let lastSendMs = performance.now();
    let commitSeenMs = 0;
    for (;;) {
      signal.throwIfAborted();
      if (this.#link.streamingAtLsn < window.endLsn) {
        if (this.#link.streamingAtLsn < window.startLsn) {
          await this.#recover(client, elected, signal);
          continue;
        }
        sentCommitLsn = this.#host.commitLsn();
        commitSeenMs = 0; // these appends carry it: no commit-only append is owed
        const ok = client.sendTogether(() => this.#appendAvailable(client, elected, sentCommitLsn));
        lastSendMs = performance.now();
        if (!ok) await client.drained(signal);
        continue;
      }
      const nowMs = performance.now();
      const commitLsn = this.#host.commitLsn();
      if (commitLsn !== sentCommitLsn && commitSeenMs === 0) commitSeenMs = nowMs;
      // While the proposer stops, the last commit_lsn must reach every safekeeper before the connection closes.
      const commitDelayMs = this.#host.stopping ? 0 : COMMIT_BROADCAST_DELAY_MS;
      const commitDue = commitLsn !== sentCommitLsn && nowMs - commitSeenMs >= commitDelayMs;
      if (commitDue || nowMs - lastSendMs >= HEARTBEAT_INTERVAL_MS) {
        sentCommitLsn = commitLsn;
        commitSeenMs = 0;
        this.#append(client, elected, new Uint8Array(0), commitLsn);
        lastSendMs = nowMs;
        continue;
      }
      const waitMs = commitLsn !== sentCommitLsn ? commitDelayMs - (nowMs - commitSeenMs) : HEARTBEAT_INTERVAL_MS - (nowMs - lastSendMs);
      await this.#sleepUntilKicked(Math.max(1, Math.ceil(waitMs)), signal);
    }
  }

  /**
   * AppendRequests for the window's WAL from streamingAtLsn, until all of it is sent or the socket is full.
   * Called corked: a window read stops at a chunk boundary, and WAL of one commit that straddles one would
   * otherwise leave as two writes, and could reach the safekeeper as two write tasks (two fsyncs in a row).
   */
  #appendAvailable(client: PgClient, elected: ElectedTerm, commitLsn: Lsn): boolean {
    const window = this.#host.window;
    let ok = true;
    while (ok && this.#link.streamingAtLsn < window.endLsn) ok = this.#append(client, elected, window.read(this.#link.streamingAtLsn, APPEND_BYTES_MAX), commitLsn);
    return ok;
  }

  #append(client: PgClient, elected: ElectedTerm, wal: Uint8Array, commitLsn: Lsn): boolean {
    const beginLsn = this.#link.streamingAtLsn;
    const endLsn = beginLsn + BigInt(wal.length);
    const header = encodeAppendRequestHeader(
      { tag: 'append', generation: elected.generation, term: elected.term, beginLsn, endLsn, commitLsn, truncateLsn: this.#host.truncateLsn(), wal },
      this.#host.protocolVersion,
    );
    this.#link.streamingAtLsn = endLsn;
    if (wal.length > 0) {
      this.#link.sentWalBytesTotal += wal.length;
      this.#appendTimings.note(endLsn, performance.now());
    }
    return wal.length === 0 ? client.sendCopyData(header) : client.sendCopyData(header, wal);
  }

  #sleepUntilKicked(delayMs: number, signal: AbortSignal): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      const done = (): void => {
        clearTimeout(timer);
        signal.removeEventListener('abort', onAbort);
        this.#wake = null;
      };
      const onAbort = (): void => (done(), reject(signal.reason));
      const timer = setTimeout(() => (done(), resolve()), delayMs);
      assert(this.#wake === null, 'one sleeper per link');
      this.#wake = () => (done(), resolve());
      signal.addEventListener('abort', onAbort, { once: true });
    });
  }

  /** Streams [streamingAt, window start) from a donor safekeeper; ends when the window covers the rest. */
  async #recover(client: PgClient, elected: ElectedTerm, signal: AbortSignal): Promise<void> {
    const fromLsn = this.#link.streamingAtLsn;
    const donor = this.#host.recoveryDonor(this.#link, fromLsn);
    if (donor === null) {
      throw new PgConnectionError(`${this.#link.name}: needs WAL from ${formatLsn(fromLsn)}, below the proposer's window (${formatLsn(this.#host.window.startLsn)}), and no donor safekeeper is streaming`);
    }
    this.#link.state = 'recovering';
    this.#host.log.info({ safekeeper: this.#link.name, donor: formatHostPort(donor), from_lsn: fromLsn, window_start_lsn: this.#host.window.startLsn }, 'recovering safekeeper from a donor');
    await readDonorWal({
      donor, tenantId: this.#host.tenantId, timelineId: this.#host.timelineId, startLsn: fromLsn, term: elected.term, signal,
      onWal: async (lsn, bytes) => {
        assert(lsn === this.#link.streamingAtLsn, 'donor WAL continues where we are');
        for (let offset = 0; offset < bytes.length; ) {
          const pieceBytes = Math.min(APPEND_BYTES_MAX, bytes.length - offset);
          const ok = this.#append(client, elected, bytes.subarray(offset, offset + pieceBytes), this.#host.commitLsn());
          offset += pieceBytes;
          if (!ok) await client.drained(signal);
        }
        return this.#link.streamingAtLsn < this.#host.window.startLsn;
      },
    });
    signal.throwIfAborted();
    if (this.#link.streamingAtLsn === fromLsn) throw new PgConnectionError(`${this.#link.name}: donor ${formatHostPort(donor)} has no WAL at ${formatLsn(fromLsn)}`);
    this.#link.state = 'streaming';
  }
}
