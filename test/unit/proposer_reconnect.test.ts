/**
 * Reconnecting to a lost primary, without a primary: the backoff arithmetic, which errors are retried,
 * and the retry loop over fake attempts (deadline, give-up error, logs, SIGTERM during the backoff). Also
 * the bounded wait bookkeeping behind the ack latencies (PendingTimings), and the silence watch that turns
 * a primary connection on which nothing arrives into a lost one (`--primary-timeout`), and the check that
 * `--from` names a primary rather than a standby.
 */
import assert from 'node:assert/strict';
import { Writable } from 'node:stream';
import { describe, it } from 'node:test';
import { createLogger } from '../../src/log.js';
import { PgConnectionError, PgServerError } from '../../src/pg/client.js';
import { PrimaryLostError, SourceError, SourceMismatchError } from '../../src/proposer/errors.js';
import { PRIMARY_RECONNECT_BACKOFF_MS_MAX, PRIMARY_RECONNECT_BACKOFF_MS_MIN } from '../../src/proposer/limits.js';
import { PendingTimings } from '../../src/proposer/pending_timings.js';
import { isTransientPrimaryError, reconnectDelayMs, reconnectPrimary } from '../../src/proposer/primary_reconnect.js';
import { parseInHotStandby, type PrimaryIdentity, warnIfStandby } from '../../src/proposer/primary_connection.js';
import { SilenceWatchdog, silenceStep } from '../../src/proposer/primary_silence.js';

const serverError = (sqlState: string): PgServerError => new PgServerError({ S: 'FATAL', C: sqlState, M: `error ${sqlState}` }, 'test');

function capturingLogger(): { log: ReturnType<typeof createLogger>; lines: () => Record<string, unknown>[] } {
  const chunks: string[] = [];
  const stream = new Writable({ write: (chunk: Buffer, _encoding, done) => (chunks.push(chunk.toString('utf8')), done()) });
  const log = createLogger({ logLevel: 'info', logFormat: 'json' }, stream);
  return { log, lines: () => chunks.join('').split('\n').filter((line) => line !== '').map((line) => JSON.parse(line) as Record<string, unknown>) };
}

describe('primary reconnect backoff', () => {
  it('doubles from the minimum, stops at the cap, and jitters by at most the ratio', () => {
    const middle = [1, 2, 3, 4, 5, 6, 7, 8, 40].map((attempt) => reconnectDelayMs(attempt, 0.5));
    assert.deepEqual(middle, [100, 200, 400, 800, 1600, 3200, 5000, 5000, 5000]);
    assert.equal(reconnectDelayMs(1, 0), PRIMARY_RECONNECT_BACKOFF_MS_MIN * 0.8);
    assert.ok(reconnectDelayMs(100, 0.999_999) <= PRIMARY_RECONNECT_BACKOFF_MS_MAX * 1.2);
    assert.ok(reconnectDelayMs(100, 0.999_999) > PRIMARY_RECONNECT_BACKOFF_MS_MAX);
  });

  it('retries socket trouble and a restarting server, not a foreign cluster or lost WAL', () => {
    assert.equal(isTransientPrimaryError(new PgConnectionError('connect ECONNREFUSED')), true);
    for (const sqlState of ['57P01', '57P03', '55006', '53300', '08006']) assert.equal(isTransientPrimaryError(serverError(sqlState)), true, sqlState);
    assert.equal(isTransientPrimaryError(new SourceError('connecting', { cause: serverError('57P03') })), true);
    for (const sqlState of ['58P01', 'XX000', '28P01', '42501']) assert.equal(isTransientPrimaryError(serverError(sqlState)), false, sqlState);
    assert.equal(isTransientPrimaryError(new SourceMismatchError('another cluster')), false);
    assert.equal(isTransientPrimaryError(new SourceError('IDENTIFY_SYSTEM returned no system id')), false);
    assert.equal(isTransientPrimaryError(new Error('bug')), false);
  });
});

describe('reconnectPrimary', () => {
  const base = { what: 'primary at 127.0.0.1:1', fields: { resume_lsn: 0x1234n }, lostError: new PgConnectionError('connection closed by the server'), random: () => 0 };

  it('logs each failed attempt with its number and next delay, then the reconnect', async () => {
    const { log, lines } = capturingLogger();
    let calls = 0;
    const value = await reconnectPrimary({
      ...base, log, timeoutMs: 60_000, signal: new AbortController().signal,
      attempt: async () => {
        calls += 1;
        if (calls < 3) throw serverError('57P03');
        return 'client';
      },
    });
    assert.equal(value, 'client');
    const messages = lines().map((line) => [line['msg'], line['attempt'] ?? line['attempts'], line['next_delay_ms'], line['level']]);
    assert.deepEqual(messages, [
      ['lost the replication connection to the primary; reconnecting', undefined, undefined, 'warn'],
      ['reconnecting to the primary failed', 1, 80, 'warn'],
      ['reconnecting to the primary failed', 2, 160, 'warn'],
      ['reconnected to the primary', 3, undefined, 'info'],
    ]);
    assert.equal(lines()[0]?.['resume_lsn'], '0/1234');
  });

  it('gives up after the timeout with the last error, cutting an attempt that runs into the deadline', async () => {
    const { log } = capturingLogger();
    const startedMs = performance.now();
    const attempt = (signal: AbortSignal): Promise<never> => new Promise((_resolve, reject) => signal.addEventListener('abort', () => reject(signal.reason), { once: true }));
    await assert.rejects(reconnectPrimary({ ...base, log, timeoutMs: 300, signal: new AbortController().signal, attempt }), (error: unknown) => {
      assert.ok(error instanceof PrimaryLostError);
      assert.equal(error.code, 'SK_PRIMARY_LOST');
      assert.match(error.message, /lost the primary at 127\.0\.0\.1:1 and could not reconnect within 300 ms \(--primary-reconnect-timeout; 1 attempts\): no connection within/);
      return true;
    });
    assert.ok(performance.now() - startedMs >= 290);
  });

  it('stops at once on an error no retry can fix', async () => {
    const { log } = capturingLogger();
    const mismatch = new SourceMismatchError('came back as another cluster');
    let calls = 0;
    await assert.rejects(reconnectPrimary({ ...base, log, timeoutMs: 60_000, signal: new AbortController().signal, attempt: async () => { calls += 1; throw mismatch; } }), mismatch);
    assert.equal(calls, 1);
  });

  it('rejects with the abort reason as soon as the signal fires during the backoff', async () => {
    const { log, lines } = capturingLogger();
    const stop = new AbortController();
    const reason = new Error('SIGTERM');
    const pending = reconnectPrimary({ ...base, log, timeoutMs: 60_000, signal: stop.signal, random: () => 0.5, attempt: async () => { throw new PgConnectionError('ECONNREFUSED'); } });
    const assertion = assert.rejects(pending, reason);
    while (!lines().some((line) => line['next_delay_ms'] === 1600)) await new Promise((resolve) => setTimeout(resolve, 5));
    const abortedMs = performance.now();
    stop.abort(reason);
    await assertion;
    assert.ok(performance.now() - abortedMs < 1000, 'no waiting out the 1.6 s backoff');
  });
});

describe('PendingTimings', () => {
  it('settles pieces in LSN order and merges past its bound', () => {
    const timings = new PendingTimings(2);
    timings.note(100n, 0);
    timings.note(200n, 10);
    timings.note(300n, 20); // joins the piece noted at 10
    const waits: number[] = [];
    timings.settle(150n, 50, (waitMs) => waits.push(waitMs));
    assert.deepEqual(waits, [50]);
    timings.settle(250n, 60, (waitMs) => waits.push(waitMs));
    assert.deepEqual(waits, [50], 'the merged piece now ends at 300');
    timings.settle(300n, 70, (waitMs) => waits.push(waitMs));
    assert.deepEqual(waits, [50, 60]);
    assert.equal(timings.waiting, 0);
    timings.note(400n, 80);
    timings.clear();
    assert.equal(timings.waiting, 0);
  });

  it('reports each piece with its weight, and a merged piece with the sum', () => {
    const timings = new PendingTimings(1);
    timings.note(100n, 0, 3);
    timings.note(200n, 5, 4); // past the bound: joins the piece noted at 0
    const settled: [number, number][] = [];
    timings.settle(200n, 10, (waitMs, weight) => settled.push([waitMs, weight]));
    assert.deepEqual(settled, [[10, 7]]);
  });
});

describe('primary silence (--primary-timeout)', () => {
  it('pings once at half the timeout and gives up at the full timeout', () => {
    assert.deepEqual(silenceStep(0, 2000, false), { action: 'none', nextCheckInMs: 1000 });
    assert.deepEqual(silenceStep(999, 2000, false), { action: 'none', nextCheckInMs: 1 });
    assert.deepEqual(silenceStep(1000, 2000, false), { action: 'ping', nextCheckInMs: 1000 });
    assert.deepEqual(silenceStep(1500, 2000, true), { action: 'none', nextCheckInMs: 500 });
    assert.deepEqual(silenceStep(1999, 2000, false), { action: 'ping', nextCheckInMs: 1 }, 'a late check still pings first');
    assert.equal(silenceStep(2000, 2000, false).action, 'timeout');
    assert.equal(silenceStep(90_000, 2000, true).action, 'timeout');
    assert.throws(() => silenceStep(0, 0, false), /positive/);
  });

  it('starts the silence over on every message, holds it while paused, and fires the timeout once', () => {
    let nowMs = 0;
    const events: string[] = [];
    const watchdog = new SilenceWatchdog({ timeoutMs: 10_000, nowMs: () => nowMs, onPing: () => events.push(`ping@${nowMs}`), onTimeout: (silentMs) => events.push(`timeout@${nowMs}:${silentMs}`) });
    try {
      nowMs = 4_000;
      watchdog.check();
      nowMs = 6_000;
      watchdog.heard(); // a message: no ping at 5 s of this connection
      nowMs = 10_999;
      watchdog.check();
      assert.deepEqual(events, []);
      nowMs = 11_000;
      watchdog.check();
      watchdog.check();
      assert.deepEqual(events, ['ping@11000'], 'one ping per silence');
      nowMs = 12_000;
      watchdog.heard(); // the keepalive that answers the ping
      nowMs = 17_000;
      watchdog.check();
      assert.deepEqual(events, ['ping@11000', 'ping@17000'], 'a new silence gets its own ping');
      watchdog.pause(); // the proposer waits for the quorum: the primary's silence does not count
      nowMs = 60_000;
      watchdog.check();
      assert.deepEqual(events, ['ping@11000', 'ping@17000']);
      nowMs = 61_000;
      watchdog.resume();
      nowMs = 70_999;
      watchdog.check();
      assert.equal(events.length, 3, 'pinged at half the timeout after resuming');
      nowMs = 71_000;
      watchdog.check();
      assert.deepEqual(events.slice(3), ['timeout@71000:10000']);
      nowMs = 90_000;
      watchdog.check();
      assert.equal(events.length, 4, 'stopped after the timeout');
    } finally {
      watchdog.stop();
    }
  });
});

describe('a standby as --from', () => {
  it('reads SHOW in_hot_standby, and refuses anything but on and off', () => {
    assert.equal(parseInHotStandby('on'), true);
    assert.equal(parseInHotStandby('off'), false);
    for (const text of [undefined, null, '', 'true', 'ON']) assert.throws(() => parseInHotStandby(text), (error: unknown) => error instanceof SourceError && /unexpected in_hot_standby/.test(error.message), String(text));
  });

  it('warns that synchronous commit needs the primary when the server is in recovery, and only then', () => {
    const { log, lines } = capturingLogger();
    const identity = (inRecovery: boolean): PrimaryIdentity => ({ systemId: 7n, pgTimeline: 1, pgVersion: 150008, walSegSizeBytes: 16 << 20, inRecovery });
    const target = { host: '127.0.0.1', port: 5433, user: 'postgres', database: 'postgres' };
    warnIfStandby(identity(false), target, log);
    assert.deepEqual(lines(), []);
    warnIfStandby(identity(true), target, log);
    assert.equal(lines().length, 1);
    assert.equal(lines()[0]?.['level'], 'warn');
    assert.equal(lines()[0]?.['primary'], '127.0.0.1:5433');
    assert.match(lines()[0]?.['msg'] as string, /is a standby \(in recovery\).*synchronous commit through the proposer only works against the primary/);
  });
});
