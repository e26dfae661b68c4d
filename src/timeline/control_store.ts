/**
 * ControlStore: a timeline's persisted state plus the write path of its control file. `state` is always
 * what is durably on disk; `persist()` writes a new image atomically (temp, fsync, rename, fsync dir) and
 * only then makes it the current state, so a reply that depends on the new state can be sent after the
 * await. Saves are serialised (one at a time, in call order) and an identical image is not rewritten.
 * The store takes ownership of the state it starts from (the registry hands over what it just decoded),
 * rather than keeping a copy: a node holds 10,000 of these, and a copy would double each one's garbage.
 * Main thread; the disk work is async fs on libuv's pool.
 */
import { isDeepStrictEqual } from 'node:util';
import type { TimelinePersistentState } from '../acceptor/state.js';
import { saveControlFile } from '../storage/control_file.js';
import { Mutex } from '../sync/mutex.js';

export class ControlStore {
  #state: Readonly<TimelinePersistentState>;
  readonly #lock = new Mutex();
  #saves = 0;

  /** `initial` is the durable state, and now the store's own: the caller must not keep changing it. */
  constructor(private readonly dir: string, initial: TimelinePersistentState, private readonly noSync: boolean) {
    this.#state = initial;
  }

  get state(): Readonly<TimelinePersistentState> {
    return this.#state;
  }

  /** Number of control-file writes done by this process (for metrics and tests). */
  get saveCount(): number {
    return this.#saves;
  }

  async persist(next: TimelinePersistentState, signal: AbortSignal): Promise<void> {
    await this.#lock.run(signal, async () => {
      if (isDeepStrictEqual(next, this.#state)) return;
      const image = structuredClone(next);
      await saveControlFile(this.dir, image, { noSync: this.noSync });
      this.#state = image;
      this.#saves += 1;
    });
  }
}
