/**
 * How a timeline manager sleeps between passes: until `kick()` (a job ended, a request arrived), a change
 * of its state block (the coordinator's StateWatcher calls `onStateChanged`, see state_watcher.ts), or the
 * next deadline of its plan (one unref'd timer, only while a deadline exists). An idle manager thus holds
 * its armed callback and a slot in the watcher's listener array, and nothing else: no timer, no pending
 * wait of its own, no suspended async frame, no CPU. `release()` leaves the watcher when the manager stops.
 * Coordinator thread.
 */
import type { StateBlock } from '../ingest/state_block.js';
import type { StateChangeListener, StateWatcher } from './state_watcher.js';

export class ManagerWakeup implements StateChangeListener {
  #kicked = false;
  #wake: (() => void) | null = null;
  #timer: NodeJS.Timeout | null = null;
  /** The armed callback also runs on a change of the block (armed with a `seen` counter). */
  #blockWatched = false;

  constructor(
    private readonly block: StateBlock,
    private readonly watcher: StateWatcher,
    private readonly nowMs: () => number,
  ) {
    watcher.watch(block, this);
  }

  /** Runs the armed callback now (or the next one, at once, if none is armed). */
  kick(): void {
    const wake = this.#wake;
    if (wake === null) {
      this.#kicked = true;
      return;
    }
    this.#wake = null;
    this.#blockWatched = false;
    if (this.#timer !== null) {
      clearTimeout(this.#timer);
      this.#timer = null;
    }
    wake();
  }

  /** The block changed: wakes the armed callback if it watches the block; otherwise the next pass reads it. */
  onStateChanged(): void {
    if (this.#blockWatched) this.kick();
  }

  /** Forgets earlier kicks: call right before a pass takes its snapshot. */
  reset(): void {
    this.#kicked = false;
  }

  /**
   * Calls `wake` once, when kicked, when the block's counter differs from `seen` (null: the block is not
   * watched), or at `wakeAtMs` (Infinity: no deadline), whichever comes first. At once (in a microtask) if
   * kicked since `reset()` or if the counter already moved past `seen`.
   */
  arm(seen: number | null, wakeAtMs: number, wake: () => void): void {
    this.#wake = wake;
    if (this.#kicked || (seen !== null && this.block.changeCount !== seen)) {
      this.#kicked = false;
      queueMicrotask(() => this.kick());
      return;
    }
    this.#blockWatched = seen !== null;
    if (Number.isFinite(wakeAtMs)) {
      this.#timer = setTimeout(() => {
        this.#timer = null;
        this.kick();
      }, Math.max(0, wakeAtMs - this.nowMs()));
      this.#timer.unref();
    }
  }

  /** Drops the armed callback and timer, and stops listening to the block (the manager is stopping). */
  release(): void {
    this.#wake = null;
    this.#blockWatched = false;
    if (this.#timer !== null) clearTimeout(this.#timer);
    this.#timer = null;
    this.watcher.unwatch(this.block, this);
  }
}
