/**
 * Incremental decoder of FRONTEND messages of the PostgreSQL v3 protocol (what a client sends us).
 *
 * Design. Like pg-protocol's parser it keeps only the partial tail between socket chunks, but it differs in
 * three ways that the ingest hot path (hundreds of thousands of small CopyData frames per second on one
 * connection) and hostile clients need:
 *   - The declared length is checked against a configured cap (at most FRAME_BYTES_MAX) as soon as the
 *     header is complete, before any body byte is buffered; a length above the cap or below 4 is a
 *     ProtocolViolationError. pg-protocol grows its buffer to whatever a message declares.
 *   - Zero copy: a message that lies inside one chunk is handed out as a subarray view of that chunk. Only a
 *     message split across chunks is assembled, into one reusable buffer that never exceeds the cap.
 *   - Pausing: `pause()` called from inside the callback stops delivery after the current message. The rest
 *     of the chunk is held (not copied) and delivered by `resume()`, so a consumer whose ring is full can
 *     stop mid-chunk. Chunks pushed while paused are queued in order.
 * Two phases: `startup` (untyped packets: int32 length including itself, then an int32 code, capped at
 * STARTUP_PACKET_BYTES_MAX) and `typed` (tag byte, int32 length including itself). The owner switches phase
 * from inside the callback when it has accepted the StartupMessage; later bytes of the same chunk are then
 * decoded as typed messages.
 * Invariants: `#partialLength > 0` only while the last pushed chunk ended inside a message; a held chunk and
 * queued chunks exist only while paused or being drained; message bodies are valid only during the callback.
 * Main thread. Not abort-aware: the owner calls `discard()` when the connection ends.
 */
import { ProtocolViolationError } from '../errors.js';
import { STARTUP_PACKET_BYTES_MAX, FRAME_BYTES_MAX } from '../limits.js';
import { assert } from '../sync/assert.js';

/** Frontend message tags (the first byte of every typed message). */
export const enum FrontendTag {
  Bind = 0x42, // B
  Close = 0x43, // C
  CopyData = 0x64, // d
  CopyDone = 0x63, // c
  CopyFail = 0x66, // f
  Describe = 0x44, // D
  Execute = 0x45, // E
  Flush = 0x48, // H
  FunctionCall = 0x46, // F
  Parse = 0x50, // P
  Password = 0x70, // p (also SASL responses)
  Query = 0x51, // Q
  Sync = 0x53, // S
  Terminate = 0x58, // X
}

/** The pseudo-tag under which startup-phase packets are delivered; their body starts with the int32 code. */
export const STARTUP_PACKET_TAG = 0;

/** Codes of startup-phase packets (the int32 after the length). */
export const enum StartupCode {
  Protocol3 = 196608, // 3 << 16 | 0; minor versions share the major in the high 16 bits
  CancelRequest = 80877102,
  SslRequest = 80877103,
  GssEncRequest = 80877104,
}

/** Byte counts of the fixed headers: tag + length for typed messages, length for startup packets. */
const TYPED_HEADER_BYTES = 5;
const STARTUP_HEADER_BYTES = 4;
/** A startup packet holds at least its length and its code. */
const STARTUP_PACKET_BYTES_MIN = 8;
/** Chunks a paused decoder may queue. The owner pauses the socket with the decoder, so one or two arrive at most. */
const QUEUED_CHUNKS_MAX = 64;

export type FrameCallback = (tag: number, body: Buffer) => void;
export type DecoderPhase = 'startup' | 'typed';

export class FrameDecoder {
  readonly frameBytesMax: number;
  #phase: DecoderPhase = 'startup';
  #paused = false;
  #discarded = false;
  /** True while push() or resume() is delivering; a resume() from inside a callback only clears the pause. */
  #consuming = false;
  /** Assembly buffer for a message split across chunks; grows up to the cap, never shrinks. */
  #partial: Buffer = Buffer.alloc(0);
  #partialLength = 0;
  /** Bytes the message in `#partial` occupies in total (header included), or 0 while its header is incomplete. */
  #partialTotal = 0;
  #held: Buffer | null = null;
  #heldOffset = 0;
  readonly #queued: Buffer[] = [];

  /** `frameBytesMax`: the largest declared length (int32 field, counting itself) of a typed message. */
  constructor(frameBytesMax: number) {
    assert(Number.isInteger(frameBytesMax), 'frame limit must be an integer');
    assert(frameBytesMax > 4, 'frame limit must exceed the length field');
    assert(frameBytesMax <= FRAME_BYTES_MAX, 'frame limit within FRAME_BYTES_MAX');
    this.frameBytesMax = frameBytesMax;
  }

  get phase(): DecoderPhase {
    return this.#phase;
  }

  get paused(): boolean {
    return this.#paused;
  }

  /** Bytes received but not yet delivered (partial message, held and queued chunks). */
  get bufferedBytes(): number {
    let bytes = this.#partialLength;
    if (this.#held !== null) bytes += this.#held.length - this.#heldOffset;
    for (const chunk of this.#queued) bytes += chunk.length;
    return bytes;
  }

  /** Switches to typed messages; called from the callback once the StartupMessage is accepted. */
  startTypedPhase(): void {
    assert(this.#phase === 'startup', 'typed phase starts once');
    this.#phase = 'typed';
  }

  /** Stops delivery after the message being delivered now (if any). */
  pause(): void {
    this.#paused = true;
  }

  /** Delivers what was held back by `pause()`, then queued chunks, until done or paused again. */
  resume(onMessage: FrameCallback): void {
    if (this.#discarded) return;
    this.#paused = false;
    if (this.#consuming) return; // paused and resumed inside a callback: the running loop simply goes on
    this.#consuming = true;
    try {
      const held = this.#held;
      if (held !== null) {
        this.#held = null;
        this.#consume(held, this.#heldOffset, onMessage);
      }
      while (!this.#paused && this.#queued.length > 0) {
        const chunk = this.#queued.shift() as Buffer;
        this.#consume(chunk, 0, onMessage);
      }
    } finally {
      this.#consuming = false;
    }
  }

  /** Drops everything and delivers nothing more. For a connection that is closing. */
  discard(): void {
    this.#discarded = true;
    this.#paused = true;
    this.#held = null;
    this.#queued.length = 0;
    this.#partialLength = 0;
    this.#partialTotal = 0;
  }

  /**
   * Decodes `chunk`, calling `onMessage(tag, body)` per complete message (tag STARTUP_PACKET_TAG in the
   * startup phase). `body` is valid only during the call. Throws ProtocolViolationError on a bad length;
   * the decoder is then unusable and the owner must close the connection.
   */
  push(chunk: Buffer, onMessage: FrameCallback): void {
    if (this.#discarded) return;
    if (this.#paused || this.#held !== null || this.#queued.length > 0) {
      assert(this.#queued.length < QUEUED_CHUNKS_MAX, 'socket must be paused with the decoder');
      this.#queued.push(chunk);
      return;
    }
    assert(!this.#consuming, 'push() is not called from a callback');
    this.#consuming = true;
    try {
      this.#consume(chunk, 0, onMessage);
    } finally {
      this.#consuming = false;
    }
  }

  #consume(chunk: Buffer, start: number, onMessage: FrameCallback): void {
    let offset = start;
    const end = chunk.length;
    if (this.#partialLength > 0) {
      offset = this.#fillPartial(chunk, offset, onMessage);
      if (this.#partialLength > 0) return; // the chunk ended inside the message
    }
    while (offset < end && !this.#paused) {
      const typed = this.#phase === 'typed';
      const headerBytes = typed ? TYPED_HEADER_BYTES : STARTUP_HEADER_BYTES;
      if (end - offset < headerBytes) break;
      const totalBytes = this.#checkedTotal(chunk, offset);
      if (end - offset < totalBytes) break;
      if (typed) onMessage(chunk[offset] as number, chunk.subarray(offset + TYPED_HEADER_BYTES, offset + totalBytes));
      else onMessage(STARTUP_PACKET_TAG, chunk.subarray(offset + STARTUP_HEADER_BYTES, offset + totalBytes));
      offset += totalBytes;
    }
    if (offset === end || this.#discarded) return;
    if (this.#paused) {
      this.#held = chunk;
      this.#heldOffset = offset;
      return;
    }
    // A message starts here and continues in a later chunk: assemble it (its header may be incomplete too).
    this.#appendPartial(chunk, offset, end);
  }

  /** Fills the split message from `chunk`; delivers it once complete. Returns the offset after the bytes used. */
  #fillPartial(chunk: Buffer, start: number, onMessage: FrameCallback): number {
    const missingBytes = this.#partialTotal === 0 ? this.#headerBytes() - this.#partialLength : this.#partialTotal - this.#partialLength;
    const offset = start + Math.min(missingBytes, chunk.length - start);
    this.#appendPartial(chunk, start, offset);
    if (this.#partialTotal === 0 || this.#partialLength < this.#partialTotal) {
      if (this.#partialTotal === 0 || offset === chunk.length) return offset;
      return this.#fillPartial(chunk, offset, onMessage); // header just completed: take the body too
    }
    const message = this.#partial;
    const totalBytes = this.#partialTotal;
    this.#partialLength = 0;
    this.#partialTotal = 0;
    if (this.#phase === 'typed') onMessage(message[0] as number, message.subarray(TYPED_HEADER_BYTES, totalBytes));
    else onMessage(STARTUP_PACKET_TAG, message.subarray(STARTUP_HEADER_BYTES, totalBytes));
    return offset;
  }

  /**
   * Copies `chunk[from, to)` into the assembly buffer. The header is copied first and checked as soon as it
   * is complete, so a bad length is refused before any of its body is buffered.
   */
  #appendPartial(chunk: Buffer, from: number, to: number): void {
    let offset = from;
    if (this.#partialTotal === 0) {
      const headerBytes = this.#headerBytes();
      this.#reserve(headerBytes);
      const headerEnd = Math.min(to, offset + headerBytes - this.#partialLength);
      chunk.copy(this.#partial, this.#partialLength, offset, headerEnd);
      this.#partialLength += headerEnd - offset;
      offset = headerEnd;
      if (this.#partialLength < headerBytes) return;
      this.#partialTotal = this.#checkedTotal(this.#partial, 0);
      this.#reserve(this.#partialTotal);
    }
    assert(this.#partialLength + (to - offset) <= this.#partialTotal, 'partial within its message');
    chunk.copy(this.#partial, this.#partialLength, offset, to);
    this.#partialLength += to - offset;
  }

  #headerBytes(): number {
    return this.#phase === 'typed' ? TYPED_HEADER_BYTES : STARTUP_HEADER_BYTES;
  }

  #reserve(bytes: number): void {
    if (this.#partial.length >= bytes) return;
    const grown = Buffer.allocUnsafe(Math.max(bytes, Math.min(this.#partial.length * 2, this.frameBytesMax + 1)));
    this.#partial.copy(grown, 0, 0, this.#partialLength);
    this.#partial = grown;
  }

  /** Total bytes of the message whose header starts at `offset`, after checking its declared length. */
  #checkedTotal(source: Buffer, offset: number): number {
    if (this.#phase === 'typed') {
      const lengthBytes = source.readInt32BE(offset + 1);
      if (lengthBytes < 4 || lengthBytes > this.frameBytesMax) {
        const tag = String.fromCharCode(source[offset] as number);
        throw new ProtocolViolationError(tag, `declared length ${lengthBytes} outside [4, ${this.frameBytesMax}]`);
      }
      return lengthBytes + 1;
    }
    const lengthBytes = source.readInt32BE(offset);
    if (lengthBytes < STARTUP_PACKET_BYTES_MIN || lengthBytes > STARTUP_PACKET_BYTES_MAX) {
      throw new ProtocolViolationError('startup', `declared length ${lengthBytes} outside [${STARTUP_PACKET_BYTES_MIN}, ${STARTUP_PACKET_BYTES_MAX}]`);
    }
    return lengthBytes;
  }
}
