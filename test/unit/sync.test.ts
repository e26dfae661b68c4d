/** src/sync: CancelToken trees, Gate, Watch, BoundedChannel, Semaphore. */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { CancelledError, ShutdownError } from '../../src/errors.js';
import { CancelToken, raceAbort, sleep, throwIfAborted, withDeadline } from '../../src/sync/cancel.js';
import { BoundedChannel } from '../../src/sync/channel.js';
import { Gate } from '../../src/sync/gate.js';
import { Semaphore } from '../../src/sync/semaphore.js';
import { Watch } from '../../src/sync/watch.js';

/** Lets every queued microtask and promise callback run. */
const settle = (): Promise<void> => new Promise((resolve) => setImmediate(resolve));

/** Tracks whether a promise has settled, without awaiting it. */
function track<T>(promise: Promise<T>): { readonly settled: boolean; readonly value: T | undefined; readonly error: unknown } {
  const state = { settled: false, value: undefined as T | undefined, error: undefined as unknown };
  promise.then(
    (value) => Object.assign(state, { settled: true, value }),
    (error: unknown) => Object.assign(state, { settled: true, error }),
  );
  return state;
}

/** The number of 'abort' listeners on a signal, from Node's EventTarget internals (test-only introspection). */
function abortListenerCount(signal: AbortSignal): number {
  const symbol = Object.getOwnPropertySymbols(signal).find((candidate) => candidate.description === 'kEvents');
  assert.ok(symbol !== undefined, 'node EventTarget internals changed');
  const events = (signal as unknown as Record<symbol, Map<string, { size: number }>>)[symbol];
  return events?.get('abort')?.size ?? 0;
}

describe('CancelToken', () => {
  test('cancelling a parent cancels the whole tree with the same reason', () => {
    const root = new CancelToken();
    const child = root.child();
    const grandchild = child.child();
    const reason = new ShutdownError();
    root.cancel(reason);
    assert.ok(child.cancelled);
    assert.ok(grandchild.cancelled);
    assert.equal(grandchild.signal.reason, reason);
  });

  test('cancelling a child never touches its parent or siblings', () => {
    const root = new CancelToken();
    const child = root.child();
    const sibling = root.child();
    child.cancel();
    assert.ok(child.cancelled);
    assert.ok(child.signal.reason instanceof CancelledError);
    assert.equal(root.cancelled, false);
    assert.equal(sibling.cancelled, false);
  });

  test('a child of a cancelled token starts cancelled', () => {
    const root = new CancelToken();
    root.cancel();
    assert.ok(root.child().cancelled);
  });

  test('release detaches the child from a long-lived parent', () => {
    const root = new CancelToken();
    const children = Array.from({ length: 100 }, () => root.child());
    assert.equal(root.attachedCount, 100);
    assert.equal(abortListenerCount(root.signal), 0, 'children are not abort listeners on the parent signal');
    for (const child of children) child.release();
    assert.equal(root.attachedCount, 0);
    children[0]?.release(); // idempotent
    root.cancel();
    assert.ok(children.every((child) => !child.cancelled), 'released children are no longer cancelled by the parent');
  });

  test('cancelling a child detaches it too', () => {
    const root = new CancelToken();
    root.child().cancel();
    assert.equal(root.attachedCount, 0);
  });

  test('a signal first read after the cancel is already aborted with the reason', () => {
    const root = new CancelToken();
    const child = root.child();
    const reason = new ShutdownError();
    root.cancel(reason);
    assert.equal(child.signal.aborted, true);
    assert.equal(child.signal.reason, reason);
    assert.equal(root.signal.reason, reason);
  });

  test('a signal read before the cancel fires its abort listeners, before the children are cancelled', () => {
    const root = new CancelToken();
    const child = root.child();
    const order: string[] = [];
    root.signal.addEventListener('abort', () => order.push(`root signal, child cancelled: ${child.cancelled}`));
    child.signal.addEventListener('abort', () => order.push('child signal'));
    root.cancel();
    assert.deepEqual(order, ['root signal, child cancelled: false', 'child signal']);
  });

  test('onCancel listeners run once with the reason, at once on a cancelled token, and can be detached', () => {
    const root = new CancelToken();
    const seen: unknown[] = [];
    root.onCancel((reason) => seen.push(reason));
    const detach = root.onCancel(() => seen.push('detached'));
    detach();
    detach(); // idempotent
    assert.equal(root.attachedCount, 1);
    const reason = new ShutdownError();
    root.cancel(reason);
    root.cancel(new CancelledError());
    assert.deepEqual([...seen], [reason]);
    root.onCancel((late) => seen.push(late));
    assert.deepEqual([...seen], [reason, reason]);
  });

  test('throwIfAborted, raceAbort and sleep reject with the reason', async () => {
    const token = new CancelToken();
    assert.doesNotThrow(() => throwIfAborted(token.signal));
    const never = new Promise<never>(() => {});
    const raced = track(raceAbort(never, token.signal));
    const slept = track(sleep(60_000, token.signal));
    const reason = new ShutdownError();
    token.cancel(reason);
    await settle();
    assert.equal(raced.error, reason);
    assert.equal(slept.error, reason);
    assert.throws(() => throwIfAborted(token.signal), ShutdownError);
    assert.equal(abortListenerCount(token.signal), 0);
  });
});

describe('Gate', () => {
  test('close waits for every holder to leave', async () => {
    const gate = new Gate('test');
    const leaveFirst = gate.enter('first');
    const leaveSecond = gate.enter('second');
    assert.deepEqual(gate.holderNames, ['first', 'second']);
    const closed = track(gate.close());
    await settle();
    assert.equal(closed.settled, false);
    leaveFirst();
    leaveFirst(); // idempotent: must not count twice
    await settle();
    assert.equal(closed.settled, false);
    leaveSecond();
    await settle();
    assert.equal(closed.settled, true);
    assert.equal(closed.error, undefined);
  });

  test('close of an empty gate resolves at once, and twice is fine', async () => {
    const gate = new Gate('test');
    await gate.close();
    await gate.close();
    assert.ok(gate.closing);
  });

  test('enter after close has begun throws ShutdownError', async () => {
    const gate = new Gate('timeline');
    const leave = gate.enter('task');
    const closed = gate.close();
    assert.throws(() => gate.enter('late task'), (error: unknown) => error instanceof ShutdownError && /late task/.test(error.message));
    leave();
    await closed;
    assert.throws(() => gate.enter('later task'), ShutdownError);
  });

  test('a slow close reports the holders it waits for', async () => {
    const reports: string[][] = [];
    const gate = new Gate('test', 10, (holderNames) => reports.push(holderNames));
    const leave = gate.enter('stuck task');
    const closed = gate.close();
    const deadline = Date.now() + 5000;
    while (reports.length === 0 && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 5));
    assert.deepEqual(reports[0], ['stuck task']);
    leave();
    await closed;
  });
});

describe('Watch', () => {
  test('changed wakes on the next set with the value it set; later sets are read from value', async () => {
    const watch = new Watch(0);
    const signal = new CancelToken().signal;
    const seen = watch.version;
    const woken = track(watch.changed(seen, signal));
    await settle();
    assert.equal(woken.settled, false);
    watch.set(1);
    watch.set(2);
    await settle();
    assert.equal(woken.value, 1);
    assert.equal(watch.value, 2);
    assert.equal(await watch.changed(seen, signal), 2, 'an old version resolves at once with the latest value');
  });

  test('setIfChanged only bumps the version on a new value', () => {
    const watch = new Watch('a');
    assert.equal(watch.setIfChanged('a'), false);
    assert.equal(watch.version, 0);
    assert.equal(watch.setIfChanged('b'), true);
    assert.equal(watch.version, 1);
  });

  test('waitFor resolves with the first value that satisfies the predicate', async () => {
    const watch = new Watch(0n);
    const signal = new CancelToken().signal;
    const reached = track(watch.waitFor((lsn) => lsn >= 100n, signal));
    watch.set(50n);
    await settle();
    assert.equal(reached.settled, false);
    watch.set(150n);
    await settle();
    assert.equal(reached.value, 150n);
    assert.equal(await watch.waitFor((lsn) => lsn > 0n, signal), 150n, 'already true resolves at once');
  });

  test('abort rejects the waiter and removes it', async () => {
    const watch = new Watch(0);
    const token = new CancelToken();
    const waiting = track(watch.waitFor(() => false, token.signal));
    await settle();
    assert.equal(watch.waiterCount, 1);
    const reason = new ShutdownError();
    token.cancel(reason);
    await settle();
    assert.equal(waiting.error, reason);
    assert.equal(watch.waiterCount, 0);
    await assert.rejects(watch.changed(watch.version, token.signal), ShutdownError);
  });
});

describe('BoundedChannel', () => {
  test('send waits while full: backpressure', async () => {
    const channel = new BoundedChannel<number>(2);
    const signal = new CancelToken().signal;
    await channel.send(1, signal);
    await channel.send(2, signal);
    const third = track(channel.send(3, signal));
    await settle();
    assert.equal(third.settled, false);
    assert.equal(channel.length, 2);
    assert.equal(await channel.receive(signal), 1);
    await settle();
    assert.equal(third.settled, true);
    assert.equal(await channel.receive(signal), 2);
    assert.equal(await channel.receive(signal), 3);
  });

  test('trySend refuses when full and enqueues nothing', async () => {
    const channel = new BoundedChannel<string>(1);
    assert.equal(channel.trySend('a'), true);
    assert.equal(channel.trySend('b'), false);
    assert.equal(channel.length, 1);
    assert.equal(await channel.receive(new CancelToken().signal), 'a');
    assert.equal(channel.trySend('c'), true);
  });

  test('receive waits while empty and an aborted send enqueues nothing', async () => {
    const channel = new BoundedChannel<number>(1);
    const signal = new CancelToken().signal;
    const received = track(channel.receive(signal));
    await settle();
    assert.equal(received.settled, false);
    channel.trySend(7);
    await settle();
    assert.equal(received.value, 7);

    channel.trySend(8);
    const token = new CancelToken();
    const blocked = track(channel.send(9, token.signal));
    token.cancel(new ShutdownError());
    await settle();
    assert.ok(blocked.error instanceof ShutdownError);
    assert.equal(await channel.receive(signal), 8);
    assert.equal(channel.length, 0, 'the aborted item was never enqueued');
  });

  test('close lets receivers drain what is left, then returns undefined', async () => {
    const channel = new BoundedChannel<number>(4);
    const signal = new CancelToken().signal;
    channel.trySend(1);
    channel.trySend(2);
    channel.close();
    assert.ok(channel.closed);
    assert.equal(await channel.receive(signal), 1);
    assert.equal(await channel.receive(signal), 2);
    assert.equal(await channel.receive(signal), undefined);
  });

  test('close wakes a receiver waiting on an empty channel', async () => {
    const channel = new BoundedChannel<number>(1);
    const waiting = track(channel.receive(new CancelToken().signal));
    await settle();
    channel.close();
    await settle();
    assert.equal(waiting.settled, true);
    assert.equal(waiting.value, undefined);
  });
});

describe('Semaphore', () => {
  test('tryAcquire takes a free permit at once and never one a waiter is queued for', async () => {
    const permits = new Semaphore(2);
    const first = permits.tryAcquire();
    const second = permits.tryAcquire();
    assert.ok(first !== null && second !== null);
    assert.equal(permits.tryAcquire(), null, 'none free');
    const waiting = permits.acquire(new AbortController().signal);
    assert.equal(permits.waiting, 1);
    first();
    assert.equal(permits.tryAcquire(), null, 'the released permit went to the waiter');
    (await waiting)();
    second();
    assert.equal(permits.inUse, 0);
    const again = permits.tryAcquire();
    assert.ok(again !== null);
    again();
    again(); // idempotent
    assert.equal(permits.inUse, 0);
  });
});

describe('withDeadline', () => {
  /** Abort-safe work that never ends by itself: rejects 'wait cut' when its signal fires or has fired. */
  const never = (signal: AbortSignal): Promise<never> => new Promise((_resolve, reject) => {
    if (signal.aborted) reject(new Error('wait cut'));
    signal.addEventListener('abort', () => reject(new Error('wait cut')), { once: true });
  });

  test('returns what the work returns before the deadline', async () => {
    assert.equal(await withDeadline(async () => 7, 1000, new AbortController().signal, () => new Error('late')), 7);
  });

  test('at the deadline the work is cut and the deadline error, made then, is thrown instead of what the cut wait threw', async () => {
    let made = 0;
    await assert.rejects(withDeadline(never, 5, new AbortController().signal, () => new Error(`late ${++made}`)), { message: 'late 1' });
  });

  test('the caller\'s signal cuts the work and its error passes through; an already fired one cuts at once', async () => {
    const controller = new AbortController();
    const running = withDeadline(never, 60_000, controller.signal, () => new Error('late'));
    controller.abort(new ShutdownError('stopping'));
    await assert.rejects(running, { message: 'wait cut' });
    await assert.rejects(withDeadline(never, 60_000, controller.signal, () => new Error('late')), { message: 'wait cut' });
  });

  test('an error of the work itself passes through', async () => {
    await assert.rejects(withDeadline(async () => { throw new RangeError('bad'); }, 1000, new AbortController().signal, () => new Error('late')), RangeError);
  });
});
