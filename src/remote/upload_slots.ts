/**
 * Upload slots: the coordinator-wide bound on concurrent segment uploads, and the segment buffers they read
 * into. A slot is a semaphore permit; while held it may lend one buffer of at least a segment's size.
 *
 * Why buffers are reused: a fresh 16 MiB Buffer per uploaded segment is 16 MiB of new external memory every
 * ~50 ms at full ingest speed, and V8 answers external-memory growth with a scavenge and a full mark-compact
 * each time. On 2 cores the concurrent marking alone cost about as much CPU as the upload's own I/O.
 *
 * Safety: a buffer goes back to the pool only when its holder says nothing can still read it, i.e. the
 * upload settled successfully. After a failure (maybe a timed-out request whose socket was still sending)
 * the buffer is dropped for the GC instead, so no in-flight request ever sees bytes of another segment.
 *
 * Memory: at most `permits` buffers are lent (one per slot) and at most `permits` kept free; with one
 * segment size that is `permits` buffers in all. Free ones are released once no upload ran for
 * `idleReleaseMs`. Single thread (the coordinator's).
 */
import { assert } from '../sync/assert.js';
import { Semaphore } from '../sync/semaphore.js';

/** Free buffers are given back to the allocator after this long without any upload. */
export const UPLOAD_BUFFERS_IDLE_RELEASE_MS = 30_000;

export interface UploadSlot {
  /** A buffer of at least `minBytes` (contents undefined), lent until `release`; later calls return the same one. */
  buffer(minBytes: number): Buffer;
  /** Frees the permit. `bufferReusable`: nothing can read the lent buffer any more (see the header). */
  release(bufferReusable: boolean): void;
}

export class UploadSlots {
  readonly #permits: Semaphore;
  readonly #free: Buffer[] = [];
  #idleTimer: NodeJS.Timeout | null = null;

  constructor(
    readonly permits: number,
    readonly idleReleaseMs = UPLOAD_BUFFERS_IDLE_RELEASE_MS,
  ) {
    this.#permits = new Semaphore(permits);
  }

  get inUse(): number {
    return this.#permits.inUse;
  }

  /** Free buffers kept for the next uploads. */
  get freeBuffers(): number {
    return this.#free.length;
  }

  /** Waits for a slot. Abort-safe: an aborted wait takes nothing. */
  async acquire(signal: AbortSignal): Promise<UploadSlot> {
    const releasePermit = await this.#permits.acquire(signal);
    this.#cancelIdleRelease();
    let lent: Buffer | null = null;
    let released = false;
    return {
      buffer: (minBytes) => {
        lent ??= this.#take(minBytes);
        assert(lent.length >= minBytes, 'a slot lends one buffer, sized by its first request');
        return lent;
      },
      release: (bufferReusable) => {
        if (released) return;
        released = true;
        if (lent !== null && bufferReusable) this.#keep(lent);
        lent = null;
        releasePermit();
        if (this.#permits.inUse === 0) this.#scheduleIdleRelease();
      },
    };
  }

  #take(minBytes: number): Buffer {
    const index = this.#free.findIndex((buffer) => buffer.length >= minBytes);
    if (index >= 0) return this.#free.splice(index, 1)[0] as Buffer;
    // Not from Node's shared pool: a segment buffer is large and must not pin a pool slab.
    return Buffer.allocUnsafeSlow(minBytes);
  }

  #keep(buffer: Buffer): void {
    if (this.#free.length < this.permits) this.#free.push(buffer);
  }

  #scheduleIdleRelease(): void {
    if (this.#free.length === 0 || this.#idleTimer !== null) return;
    this.#idleTimer = setTimeout(() => {
      this.#idleTimer = null;
      this.#free.length = 0;
    }, this.idleReleaseMs);
    this.#idleTimer.unref();
  }

  #cancelIdleRelease(): void {
    if (this.#idleTimer === null) return;
    clearTimeout(this.#idleTimer);
    this.#idleTimer = null;
  }
}
