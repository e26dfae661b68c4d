/**
 * How a timeline manager sleeps between passes: until `kick()` (a job ended, a request arrived), a change
 * of its state block's counter (`Atomics.waitAsync`, armed once and kept until it fires, with no timeout),
 * or the next deadline of its plan (one unref'd timer, only while a deadline exists). An idle manager thus
 * holds one pending waitAsync and one callback, and nothing else: no timer, no suspended async frame, no
 * CPU. `release()` wakes that waitAsync when the manager stops, so nothing stays pending on the shared
 * block. Coordinator thread.
 */
import type { StateBlock } from '../ingest/state_block.js';

export class ManagerWakeup {
  #kicked = false;
  #wake: (() => void) | null = null;
  #timer: NodeJS.Timeout | null = null;
  #blockWaitArmed = false;

  constructor(
    private readonly block: StateBlock,
    private readonly nowMs: () => number,
  ) {}

  /** Runs the armed callback now (or the next one, at once, if none is armed). */
  kick(): void {
    const wake = this.#wake;
    if (wake === null) {
      this.#kicked = true;
      return;
    }
    this.#wake = null;
    if (this.#timer !== null) {
      clearTimeout(this.#timer);
      this.#timer = null;
    }
    wake();
  }

  /** Forgets earlier kicks: call right before a pass takes its snapshot. */
  reset(): void {
    this.#kicked = false;
  }

  /**
   * Calls `wake` once, when kicked, when the block's counter differs from `seen` (null: the block is not
   * watched), or at `wakeAtMs` (Infinity: no deadline), whichever comes first. At once (in a microtask) if
   * kicked since `reset()`.
   */
  arm(seen: number | null, wakeAtMs: number, wake: () => void): void {
    this.#wake = wake;
    if (this.#kicked) {
      this.#kicked = false;
      queueMicrotask(() => this.kick());
      return;
    }
    if (Number.isFinite(wakeAtMs)) {
      this.#timer = setTimeout(() => {
        this.#timer = null;
        this.kick();
      }, Math.max(0, wakeAtMs - this.nowMs()));
      this.#timer.unref();
    }
    if (seen !== null && !this.#blockWaitArmed) {
      this.#blockWaitArmed = true;
      // Resolves at once if the counter already moved past `seen`; a wait still pending from earlier was
      // armed with a value the counter still has, so it watches the right thing.
      void this.block.changed(seen, Infinity).then(() => {
        this.#blockWaitArmed = false;
        this.kick();
      });
    }
  }

  /** Drops the armed callback and timer, and releases the pending block wait (the manager is stopping). */
  release(): void {
    this.#wake = null;
    if (this.#timer !== null) clearTimeout(this.#timer);
    this.#timer = null;
    this.block.wakeWatchers();
  }
}
