/**
 * The per-timeline state block: the cross-thread watch channel. Every LSN and counter that the coordinator's
 * timeline manager watches lives in one small SharedArrayBuffer, one writer per slot. A writer stores its
 * slot, then bumps the change counter and notifies; the manager sleeps in `Atomics.waitAsync` on the counter
 * and re-reads a whole snapshot when it wakes, so no state change needs a hand-written notification.
 *
 * Layout (bytes):
 *   0   Int32  change counter (Atomics.add + Atomics.notify by every writer)
 *   4   Int32  reserved (keeps the BigInt64 slots 8-byte aligned)
 *   8.. BigInt64 slots, in the order of `Slot` below
 * Slot writers: FLUSH/WRITE/COMMIT/PEER_HORIZON/TERM/PROPOSERS/READERS/ACTIVITY: main thread;
 * BACKUP, REMOTE_CONSISTENT, PERSISTED_(all), LOCAL_START, TIMELINE_START: main thread too (`Timeline.publishState`:
 * the acceptor's in-memory overlay and the control file live there; the coordinator reports a confirmed
 * backup_lsn to main, which merges it and publishes it); REMOVED/EVICTED: coordinator. Readers: anyone.
 */
import { assert } from '../sync/assert.js';

export const Slot = {
  flushLsn: 0,
  writeLsn: 1,
  commitLsn: 2,
  backupLsn: 3,
  remoteConsistentLsn: 4,
  peerHorizonLsn: 5,
  term: 6,
  lastLogTerm: 7,
  proposerCount: 8,
  readerCount: 9,
  lastActivityMs: 10,
  localStartLsn: 11,
  removedUpToLsn: 12,
  persistedCommitLsn: 13,
  readerHorizonLsn: 14,
  persistedBackupLsn: 15,
  persistedPeerHorizonLsn: 16,
  persistedRemoteConsistentLsn: 17,
  timelineStartLsn: 18,
  /** 1 while the timeline is offloaded (coordinator). */
  evicted: 19,
} as const;
export type SlotName = keyof typeof Slot;

const SLOT_COUNT = 24;
const HEADER_BYTES = 8;
export const STATE_BLOCK_BYTES = HEADER_BYTES + SLOT_COUNT * 8;
assert(Object.keys(Slot).length <= SLOT_COUNT, 'every slot fits in the block');

export class StateBlock {
  readonly #counter: Int32Array;
  readonly #slots: BigInt64Array;

  constructor(readonly buffer: SharedArrayBuffer = new SharedArrayBuffer(STATE_BLOCK_BYTES)) {
    assert(buffer.byteLength === STATE_BLOCK_BYTES, 'state block has the expected size');
    this.#counter = new Int32Array(buffer, 0, 2);
    this.#slots = new BigInt64Array(buffer, HEADER_BYTES, SLOT_COUNT);
  }

  get(slot: SlotName): bigint {
    return Atomics.load(this.#slots, Slot[slot]);
  }

  /** Stores the slot and, if it changed, bumps the change counter and wakes watchers. */
  set(slot: SlotName, value: bigint): void {
    const previous = Atomics.exchange(this.#slots, Slot[slot], value);
    if (previous !== value) this.#bump();
  }

  /** Stores several slots and bumps the counter once. */
  setMany(values: Partial<Record<SlotName, bigint>>): void {
    let changed = false;
    for (const [slot, value] of Object.entries(values) as [SlotName, bigint][]) {
      changed = Atomics.exchange(this.#slots, Slot[slot], value) !== value || changed;
    }
    if (changed) this.#bump();
  }

  add(slot: SlotName, delta: bigint): void {
    Atomics.add(this.#slots, Slot[slot], delta);
    this.#bump();
  }

  get changeCount(): number {
    return Atomics.load(this.#counter, 0);
  }

  /** Resolves once the counter differs from `seen` (or at `timeoutMs`). Never blocks the thread. */
  async changed(seen: number, timeoutMs: number): Promise<void> {
    const result = Atomics.waitAsync(this.#counter, 0, seen, timeoutMs);
    if (result.async) await result.value;
  }

  snapshot(): Record<SlotName, bigint> {
    const out = {} as Record<SlotName, bigint>;
    for (const [name, index] of Object.entries(Slot) as [SlotName, number][]) out[name] = Atomics.load(this.#slots, index);
    return out;
  }

  /** Wakes every `changed()` waiter without changing anything (a manager stopping releases its own wait). */
  wakeWatchers(): void {
    Atomics.notify(this.#counter, 0);
  }

  #bump(): void {
    Atomics.add(this.#counter, 0, 1);
    Atomics.notify(this.#counter, 0);
  }
}
