/**
 * In-memory implementations of the acceptor's storage interfaces, for unit and simulation tests
 * (like the fake storages in Neon's `safekeeper.rs` tests). The WAL store keeps appended chunks in
 * order; every append's end counts as a record end, so `flush()` makes the whole written prefix
 * durable (flushLsn := writeLsn). `restart()` simulates a crash: bytes past flushLsn vanish and a
 * truncation becomes pending, as after a real load. Hooks let tests delay or fail a persist or flush
 * and observe ordering. Single thread; no real I/O.
 */
import { InvalidArgumentError } from '../errors.js';
import { throwIfAborted } from '../sync/cancel.js';
import { assert } from '../sync/assert.js';
import type { Lsn } from '../wal/lsn.js';
import type { AcceptorControlStore, AcceptorWalStore } from './acceptor_storage.js';
import type { TimelinePersistentState } from './state.js';

function deepFreeze<T>(value: T): T {
  if (typeof value === 'object' && value !== null && !Object.isFrozen(value)) {
    Object.freeze(value);
    for (const child of Object.values(value)) deepFreeze(child);
  }
  return value;
}

export class MemoryControlStore implements AcceptorControlStore {
  #state: TimelinePersistentState;
  /** Every state persisted, in order (deep-frozen copies). */
  readonly persisted: TimelinePersistentState[] = [];
  /** Runs before a persist takes effect; throw to simulate a failed write. */
  beforePersist: ((next: TimelinePersistentState) => Promise<void>) | null = null;

  constructor(initial: TimelinePersistentState) {
    this.#state = deepFreeze(structuredClone(initial));
  }

  /** Frozen: the acceptor must never change persisted state in place. */
  get state(): Readonly<TimelinePersistentState> {
    return this.#state;
  }

  get persistCount(): number {
    return this.persisted.length;
  }

  async persist(next: TimelinePersistentState, signal: AbortSignal): Promise<void> {
    throwIfAborted(signal);
    if (this.beforePersist !== null) await this.beforePersist(next);
    throwIfAborted(signal);
    this.#state = deepFreeze(structuredClone(next));
    this.persisted.push(this.#state);
  }
}

interface WalChunk {
  beginLsn: Lsn;
  bytes: Uint8Array;
}

export class MemoryWalStore implements AcceptorWalStore {
  #chunks: WalChunk[] = [];
  #writeLsn: Lsn;
  #flushLsn: Lsn;
  #truncationPending: boolean;
  /** LSNs passed to initializeFirstSegment, in order. */
  readonly initializedAtLsns: Lsn[] = [];
  /** LSNs passed to truncate, in order. */
  readonly truncatedAtLsns: Lsn[] = [];
  /** Runs before a flush takes effect (delay it, or throw to simulate an fsync failure). */
  beforeFlush: (() => Promise<void>) | null = null;

  /** `startLsn` = storage position of a timeline created at that LSN (0 for compute-created ones). */
  constructor(options: { startLsn?: Lsn; truncationPending?: boolean } = {}) {
    this.#writeLsn = options.startLsn ?? 0n;
    this.#flushLsn = this.#writeLsn;
    this.#truncationPending = options.truncationPending ?? false;
  }

  get writeLsn(): Lsn {
    return this.#writeLsn;
  }

  get flushLsn(): Lsn {
    return this.#flushLsn;
  }

  get truncationPending(): boolean {
    return this.#truncationPending;
  }

  /** Room for this many bytes before `tryAppend` says no (tests of the slow path lower it). */
  bufferBytesFree = Number.POSITIVE_INFINITY;

  tryAppend(beginLsn: Lsn, wal: Uint8Array): boolean {
    if (wal.byteLength > this.bufferBytesFree) return false;
    this.#take(beginLsn, wal);
    return true;
  }

  async append(beginLsn: Lsn, wal: Uint8Array, signal: AbortSignal): Promise<void> {
    throwIfAborted(signal);
    this.#take(beginLsn, wal);
  }

  #take(beginLsn: Lsn, wal: Uint8Array): void {
    assert(!this.#truncationPending, 'append while truncation pending');
    assert(beginLsn === this.#writeLsn, 'append not contiguous'); // as the real store asserts
    assert(wal.byteLength > 0, 'empty append');
    this.#chunks.push({ beginLsn, bytes: wal.slice() });
    this.#writeLsn = beginLsn + BigInt(wal.byteLength);
  }

  async flush(signal: AbortSignal): Promise<void> {
    throwIfAborted(signal);
    const target = this.#writeLsn; // what was appended before the flush started
    if (this.beforeFlush !== null) await this.beforeFlush();
    this.#flushLsn = target > this.#flushLsn ? target : this.#flushLsn;
    assert(this.#flushLsn <= this.#writeLsn, 'flush_lsn ahead of write_lsn');
  }

  async truncate(lsn: Lsn, signal: AbortSignal): Promise<void> {
    throwIfAborted(signal);
    if (this.#writeLsn !== 0n && lsn > this.#writeLsn) {
      throw new InvalidArgumentError(`cannot truncate WAL forward: ${lsn} is past write_lsn ${this.#writeLsn}`);
    }
    this.#chunks = this.#cut(lsn);
    this.#writeLsn = lsn;
    this.#flushLsn = lsn;
    this.#truncationPending = false;
    this.truncatedAtLsns.push(lsn);
  }

  async initializeFirstSegment(lsn: Lsn, signal: AbortSignal): Promise<void> {
    throwIfAborted(signal);
    this.initializedAtLsns.push(lsn);
  }

  electionNotRecorded(first: boolean): void {
    this.#truncationPending = true;
    if (!first) return;
    this.#chunks = [];
    this.#writeLsn = this.#flushLsn = 0n;
  }

  /** Crash and reload: unflushed bytes are lost, and the next ProposerElected must truncate. */
  restart(): void {
    this.#chunks = this.#cut(this.#flushLsn);
    this.#writeLsn = this.#flushLsn;
    this.#truncationPending = true;
  }

  /** The bytes of [beginLsn, endLsn); throws if any of them were never written. */
  read(beginLsn: Lsn, endLsn: Lsn): Uint8Array {
    assert(beginLsn <= endLsn, 'read range reversed');
    const result = new Uint8Array(Number(endLsn - beginLsn));
    let covered = 0;
    for (const chunk of this.#chunks) {
      const chunkEndLsn = chunk.beginLsn + BigInt(chunk.bytes.byteLength);
      const from = chunk.beginLsn > beginLsn ? chunk.beginLsn : beginLsn;
      const to = chunkEndLsn < endLsn ? chunkEndLsn : endLsn;
      if (from >= to) continue;
      result.set(chunk.bytes.subarray(Number(from - chunk.beginLsn), Number(to - chunk.beginLsn)), Number(from - beginLsn));
      covered += Number(to - from);
    }
    if (covered !== result.byteLength) throw new InvalidArgumentError(`WAL [${beginLsn}, ${endLsn}) is not all present`);
    return result;
  }

  #cut(lsn: Lsn): WalChunk[] {
    const kept: WalChunk[] = [];
    for (const chunk of this.#chunks) {
      if (chunk.beginLsn >= lsn) continue;
      const keepBytes = lsn - chunk.beginLsn;
      kept.push(keepBytes >= BigInt(chunk.bytes.byteLength) ? chunk : { beginLsn: chunk.beginLsn, bytes: chunk.bytes.slice(0, Number(keepBytes)) });
    }
    return kept;
  }
}
