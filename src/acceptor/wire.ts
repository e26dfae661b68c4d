/**
 * Byte cursors for the proposer-acceptor codec (`messages*.ts`, `pageserver_feedback.ts`). One reader and
 * one writer serve both protocol versions: v3 is big-endian, v2 little-endian (C structs copied onto
 * the wire), so the byte order is a constructor argument rather than a second implementation.
 *
 * A short read is bad input from the peer, never our bug: it throws ProtocolViolationError naming the
 * message and the field. Pure; any thread; no I/O.
 */
import { ProtocolViolationError } from '../errors.js';
import { assert } from '../sync/assert.js';

const UTF8_STRICT = new TextDecoder('utf-8', { fatal: true });
const UTF8_ENCODER = new TextEncoder();

export class ByteReader {
  readonly #bytes: Uint8Array;
  readonly #view: DataView;
  readonly #littleEndian: boolean;
  #offsetBytes = 0;

  /** `messageTag` names the message in errors (e.g. 'ProposerGreeting'). */
  constructor(bytes: Uint8Array, littleEndian: boolean, readonly messageTag: string) {
    this.#bytes = bytes;
    this.#view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    this.#littleEndian = littleEndian;
  }

  get offsetBytes(): number {
    return this.#offsetBytes;
  }

  get remainingBytes(): number {
    return this.#bytes.byteLength - this.#offsetBytes;
  }

  fail(detail: string): never {
    throw new ProtocolViolationError(this.messageTag, detail);
  }

  #need(sizeBytes: number, field: string): number {
    const offset = this.#offsetBytes;
    if (this.#bytes.byteLength - offset < sizeBytes) {
      this.fail(`reading ${field}: only ${this.#bytes.byteLength - offset} bytes left, expected ${sizeBytes}`);
    }
    this.#offsetBytes = offset + sizeBytes;
    return offset;
  }

  u8(field: string): number {
    return this.#view.getUint8(this.#need(1, field));
  }

  u16(field: string): number {
    return this.#view.getUint16(this.#need(2, field), this.#littleEndian);
  }

  u32(field: string): number {
    return this.#view.getUint32(this.#need(4, field), this.#littleEndian);
  }

  i32(field: string): number {
    return this.#view.getInt32(this.#need(4, field), this.#littleEndian);
  }

  u64(field: string): bigint {
    return this.#view.getBigUint64(this.#need(8, field), this.#littleEndian);
  }

  i64(field: string): bigint {
    return this.#view.getBigInt64(this.#need(8, field), this.#littleEndian);
  }

  /** A view (no copy) of the next `sizeBytes` bytes. */
  bytes(sizeBytes: number, field: string): Uint8Array {
    const offset = this.#need(sizeBytes, field);
    return this.#bytes.subarray(offset, offset + sizeBytes);
  }

  skip(sizeBytes: number, field: string): void {
    this.#need(sizeBytes, field);
  }

  /** A NUL-terminated UTF-8 string; the terminator is consumed. */
  cstring(field: string): string {
    const end = this.#bytes.indexOf(0, this.#offsetBytes);
    if (end < 0) this.fail(`reading ${field}: missing cstring terminator`);
    const raw = this.#bytes.subarray(this.#offsetBytes, end);
    this.#offsetBytes = end + 1;
    try {
      return UTF8_STRICT.decode(raw);
    } catch (error) {
      throw new ProtocolViolationError(this.messageTag, `reading ${field}: invalid UTF-8 in cstring`, { cause: error });
    }
  }

  /** For acceptor messages, which walproposer consumes exactly (`pq_getmsgend`). */
  expectEnd(): void {
    if (this.remainingBytes !== 0) this.fail(`${this.remainingBytes} unexpected trailing bytes`);
  }
}

/** A growable output buffer. Sizes are small (one message), so doubling is enough. */
export class ByteWriter {
  #bytes: Uint8Array;
  #view: DataView;
  readonly #littleEndian: boolean;
  #lengthBytes = 0;

  constructor(littleEndian: boolean, initialCapacityBytes = 256) {
    assert(Number.isInteger(initialCapacityBytes) && initialCapacityBytes > 0, 'writer capacity must be positive');
    this.#bytes = new Uint8Array(initialCapacityBytes);
    this.#view = new DataView(this.#bytes.buffer);
    this.#littleEndian = littleEndian;
  }

  get lengthBytes(): number {
    return this.#lengthBytes;
  }

  #reserve(sizeBytes: number): number {
    const offset = this.#lengthBytes;
    if (offset + sizeBytes > this.#bytes.byteLength) {
      let capacityBytes = this.#bytes.byteLength * 2;
      while (capacityBytes < offset + sizeBytes) capacityBytes *= 2;
      const grown = new Uint8Array(capacityBytes);
      grown.set(this.#bytes.subarray(0, offset));
      this.#bytes = grown;
      this.#view = new DataView(grown.buffer);
    }
    this.#lengthBytes = offset + sizeBytes;
    return offset;
  }

  u8(value: number): void {
    assert(Number.isInteger(value) && value >= 0 && value <= 0xff, 'u8 out of range');
    const offset = this.#reserve(1); // first: reserving may replace #view
    this.#view.setUint8(offset, value);
  }

  u16(value: number): void {
    assert(Number.isInteger(value) && value >= 0 && value <= 0xffff, 'u16 out of range');
    const offset = this.#reserve(2); // first: reserving may replace #view
    this.#view.setUint16(offset, value, this.#littleEndian);
  }

  u32(value: number): void {
    assert(Number.isInteger(value) && value >= 0 && value <= 0xffff_ffff, 'u32 out of range');
    const offset = this.#reserve(4); // first: reserving may replace #view
    this.#view.setUint32(offset, value, this.#littleEndian);
  }

  i32(value: number): void {
    assert(Number.isInteger(value) && value >= -0x8000_0000 && value <= 0x7fff_ffff, 'i32 out of range');
    const offset = this.#reserve(4); // first: reserving may replace #view
    this.#view.setInt32(offset, value, this.#littleEndian);
  }

  u64(value: bigint): void {
    assert(value >= 0n && value <= 0xffff_ffff_ffff_ffffn, 'u64 out of range');
    const offset = this.#reserve(8); // first: reserving may replace #view
    this.#view.setBigUint64(offset, value, this.#littleEndian);
  }

  i64(value: bigint): void {
    assert(value >= -(1n << 63n) && value < 1n << 63n, 'i64 out of range');
    const offset = this.#reserve(8); // first: reserving may replace #view
    this.#view.setBigInt64(offset, value, this.#littleEndian);
  }

  bytes(value: Uint8Array): void {
    const offset = this.#reserve(value.byteLength); // first: reserving may replace #bytes
    this.#bytes.set(value, offset);
  }

  cstring(value: string): void {
    const encoded = UTF8_ENCODER.encode(value);
    assert(!encoded.includes(0), 'cstring must not contain NUL');
    this.bytes(encoded);
    this.u8(0);
  }

  /** The written bytes (a view of the internal buffer; the writer must not be used afterwards). */
  finish(): Uint8Array {
    return this.#bytes.subarray(0, this.#lengthBytes);
  }
}

/** 16 raw id bytes (v2 wire) ↔ 32 lower-case hex chars. */
export function idBytesToHex(bytes: Uint8Array): string {
  assert(bytes.byteLength === 16, 'ids are 16 bytes');
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString('hex');
}

export function idHexToBytes(hex: string): Uint8Array {
  assert(/^[0-9a-f]{32}$/.test(hex), 'ids are 32 lower-case hex chars');
  return new Uint8Array(Buffer.from(hex, 'hex'));
}
