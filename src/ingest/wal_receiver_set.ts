/**
 * WalReceiverSet: the proposer connections (START_WAL_PUSH) attached to one timeline, after Neon's
 * `WalReceivers`. A WalReceiver registers a slot once its greeting is answered and unregisters it when it
 * gives the timeline back (ingest/wal_receiver.ts, `#releaseWhenIdle`), which every end of a connection goes
 * through: a close, an error, the timeline's cancellation (delete, shutdown). A proposer whose term was
 * overtaken stays attached, as in Neon, until it disconnects on the higher term it is told of.
 *
 * Each slot has Neon's `WalReceiverStatus`: `Voting` from the greeting, `Streaming` from the ProposerElected
 * it sends (marked before the election is applied, as Neon does; a refused election ends the connection).
 *
 * The set is the only writer of the state block's `proposerCount`, which it sets to its size on every change:
 * the manager's notion of connected computes (backup needed, eviction and ring release wait for none) and
 * the `walreceivers` list of the status document are then the same fact, as Neon's `num_computes` is the
 * number of its registered walreceivers. Bounded: a connection registers at most one slot, and the pg
 * server accepts at most CONNECTIONS_MAX connections.
 * Main thread.
 */
import { CONNECTIONS_MAX } from '../limits.js';
import { assert } from '../sync/assert.js';
import type { Timeline } from '../timeline/timeline.js';
import type { StateBlock } from './state_block.js';

/** Neon's WalReceiverStatus, spelled as its JSON shows it. */
export type WalReceiverStatus = 'Voting' | 'Streaming';

/** One attached proposer connection. */
export class WalReceiverSlot {
  status: WalReceiverStatus = 'Voting';
  /** `connId`: the pg connection's id (a u32, like Neon's ConnectionId). */
  constructor(readonly connId: number) {}
}

export class WalReceiverSet {
  /** In registration order, which the status document keeps. */
  readonly #slots = new Set<WalReceiverSlot>();

  constructor(private readonly state: StateBlock) {}

  get count(): number {
    return this.#slots.size;
  }

  slots(): WalReceiverSlot[] {
    return [...this.#slots];
  }

  register(connId: number): WalReceiverSlot {
    assert(this.#slots.size < CONNECTIONS_MAX, 'one slot per connection, and connections are bounded');
    const slot = new WalReceiverSlot(connId);
    this.#slots.add(slot);
    this.#publish();
    return slot;
  }

  /** The connection sent ProposerElected: it has passed voting. */
  markStreaming(slot: WalReceiverSlot): void {
    assert(this.#slots.has(slot), 'only a registered receiver streams');
    slot.status = 'Streaming';
  }

  /** Idempotent. */
  unregister(slot: WalReceiverSlot): void {
    if (!this.#slots.delete(slot)) return;
    this.#publish();
  }

  #publish(): void {
    this.state.set('proposerCount', BigInt(this.#slots.size));
  }
}

const receiverSets = new WeakMap<Timeline, WalReceiverSet>();

/** The timeline's receiver set, created on first use (an idle timeline that never had a proposer holds none). */
export function walReceiversOf(timeline: Timeline): WalReceiverSet {
  let set = receiverSets.get(timeline);
  if (set === undefined) {
    set = new WalReceiverSet(timeline.state);
    receiverSets.set(timeline, set);
  }
  return set;
}

/** Neon's `walreceivers` list of the timeline status document (HTTP): `{conn_id, status}` per attached proposer. */
export function walReceiversJson(timeline: Timeline): object[] {
  const set = receiverSets.get(timeline);
  if (set === undefined) return [];
  return set.slots().map((slot) => ({ conn_id: slot.connId, status: slot.status }));
}
