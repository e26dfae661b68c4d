/**
 * Gate: tasks enter it while they run; `close()` refuses new entries and waits for every holder to leave,
 * like Neon's `utils::sync::gate`. Shutdown and delete are: cancel the token, then `await gate.close()`,
 * and only then touch files. Holders are named so a stuck close can say who it waits for: after
 * `slowWaitMs` it logs a warning through `onSlow` with the holder names. Single thread.
 */
import { ShutdownError } from '../errors.js';
import { assert } from './assert.js';

/** Shared by every gate without a slow-close reporter (one per timeline: no closure each). */
const ignoreSlowClose = (): void => {};

export class Gate {
  #holders = new Map<number, string>();
  #nextId = 1;
  #closing = false;
  #onEmpty: (() => void) | null = null;

  constructor(
    readonly name: string,
    private readonly slowWaitMs = 10_000,
    private readonly onSlow: (holderNames: string[]) => void = ignoreSlowClose,
  ) {}

  get closing(): boolean {
    return this.#closing;
  }

  get holderNames(): string[] {
    return [...this.#holders.values()];
  }

  /** Enters the gate and returns the function that leaves it (idempotent). Throws ShutdownError once closing. */
  enter(holderName: string): () => void {
    if (this.#closing) throw new ShutdownError(`${this.name} is closing; cannot start ${holderName}`);
    const id = this.#nextId++;
    this.#holders.set(id, holderName);
    return () => {
      if (!this.#holders.delete(id)) return;
      if (this.#holders.size === 0 && this.#onEmpty !== null) this.#onEmpty();
    };
  }

  /** Refuses new entries and resolves once every holder has left. Safe to call more than once. */
  async close(): Promise<void> {
    this.#closing = true;
    if (this.#holders.size === 0) return;
    await new Promise<void>((resolve) => {
      const previous = this.#onEmpty;
      const timer = setInterval(() => this.onSlow(this.holderNames), this.slowWaitMs);
      timer.unref();
      this.#onEmpty = () => {
        clearInterval(timer);
        previous?.();
        resolve();
      };
    });
    assert(this.#holders.size === 0, 'gate closed with holders inside');
  }
}
