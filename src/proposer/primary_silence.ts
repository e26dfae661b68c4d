/**
 * Noticing a primary that went silent without closing the connection (a frozen host, a dropped route), as
 * PostgreSQL's walreceiver does with wal_receiver_timeout: TCP alone would wait for hours before it calls
 * such a connection dead, and meanwhile the proposer would neither stream nor reconnect.
 *
 * Policy (`silenceStep`, pure): after half of `--primary-timeout` with nothing received we send a standby
 * status update with replyRequested = 1, which a live walsender answers with a keepalive at once (an idle
 * primary sends nothing of its own while our status updates keep its wal_sender_timeout satisfied, so
 * silence alone proves nothing); at the full timeout with still nothing received the connection is given up:
 * `onTimeout` destroys it, so the stream fails with a transient PgConnectionError and the reconnect path
 * (`primary_reconnect.ts`) takes over. At most one ping per silence, as in walreceiver.
 * The clock is held while the proposer is not reading (`pause`, the quorum's backpressure on the source):
 * what the primary sent meanwhile waits in our own buffers, so that time says nothing about the primary.
 * Cheap per message: `heard()` stores a timestamp; the one timer re-arms itself from the latest one.
 * Main thread.
 */
import { assert } from '../sync/assert.js';

export type SilenceAction = 'none' | 'ping' | 'timeout';

export interface SilenceStep {
  action: SilenceAction;
  /** When to look again, from now (0 after a timeout: nothing is left to watch). */
  nextCheckInMs: number;
}

/**
 * What to do after `silentMs` without a message from the primary, with `timeoutMs` the limit (> 0) and
 * `pinged` whether this silence already got its reply request. Pure.
 */
export function silenceStep(silentMs: number, timeoutMs: number, pinged: boolean): SilenceStep {
  assert(timeoutMs > 0, 'a silence limit is positive (0 disables the watchdog)');
  assert(silentMs >= 0, 'silence is not negative');
  if (silentMs >= timeoutMs) return { action: 'timeout', nextCheckInMs: 0 };
  const pingAtMs = timeoutMs / 2;
  if (!pinged && silentMs >= pingAtMs) return { action: 'ping', nextCheckInMs: timeoutMs - silentMs };
  return { action: 'none', nextCheckInMs: (pinged ? timeoutMs : pingAtMs) - silentMs };
}

export interface SilenceWatchdogOptions {
  /** `--primary-timeout`, > 0. */
  timeoutMs: number;
  /** Half the timeout passed in silence: ask the walsender for a reply. */
  onPing(): void;
  /** The full timeout passed in silence: give the connection up. Called once; the watchdog stops. */
  onTimeout(silentMs: number): void;
  /** A monotonic clock in ms; performance.now unless a test pins it. */
  nowMs?: () => number;
}

/** One replication connection's silence watch; `stop()` it when the connection's stream ends. */
export class SilenceWatchdog {
  readonly #options: SilenceWatchdogOptions;
  readonly #nowMs: () => number;
  #lastHeardMs: number;
  #pinged = false;
  #paused = false;
  #timer: NodeJS.Timeout | null = null;
  #stopped = false;

  constructor(options: SilenceWatchdogOptions) {
    assert(Number.isFinite(options.timeoutMs) && options.timeoutMs > 0, 'a positive silence limit');
    this.#options = options;
    this.#nowMs = options.nowMs ?? (() => performance.now());
    this.#lastHeardMs = this.#nowMs();
    this.#arm(silenceStep(0, options.timeoutMs, false).nextCheckInMs);
  }

  /** A message arrived from the primary: the silence, and its ping, start over. */
  heard(): void {
    this.#lastHeardMs = this.#nowMs();
    this.#pinged = false;
  }

  /** We stop reading for a while (backpressure): the clock is held until `resume()`. */
  pause(): void {
    this.#paused = true;
  }

  resume(): void {
    this.#paused = false;
    this.heard();
  }

  stop(): void {
    this.#stopped = true;
    if (this.#timer !== null) clearTimeout(this.#timer);
    this.#timer = null;
  }

  /** Runs one check now (the timer's callback; tests with a pinned clock call it directly). */
  check(): void {
    if (this.#timer !== null) clearTimeout(this.#timer);
    this.#timer = null;
    if (this.#stopped) return;
    if (this.#paused) this.heard();
    const silentMs = Math.max(0, this.#nowMs() - this.#lastHeardMs);
    const step = silenceStep(silentMs, this.#options.timeoutMs, this.#pinged);
    if (step.action === 'timeout') {
      this.stop();
      this.#options.onTimeout(silentMs);
      return;
    }
    if (step.action === 'ping') {
      this.#pinged = true;
      this.#options.onPing();
    }
    this.#arm(step.nextCheckInMs);
  }

  #arm(delayMs: number): void {
    // Early wakeups are harmless (the check re-arms from the latest message), so heard() never touches the timer.
    this.#timer = setTimeout(() => this.check(), Math.max(1, Math.ceil(delayMs)));
  }
}
