/**
 * Incremental framer of BACKEND messages of the PostgreSQL v3 protocol (what a server sends a client): the
 * client side's counterpart of `frame_decoder.ts`. It splits a byte stream into (tag, body) pairs.
 *
 * Design: a message that lies inside one socket chunk is handed out as a subarray view of that chunk (Node
 * allocates a fresh buffer per socket read and never reuses it while referenced, so the view stays valid
 * after the callback). Only a message split across chunks is assembled, into a fresh buffer of exactly its
 * size. The declared length is checked against `frameBytesMax` as soon as the header is complete, before
 * any body byte is buffered, so a hostile or broken server cannot make us allocate without bound.
 * Invariants: `#pending` holds fewer bytes than one complete message; bodies handed out are never mutated.
 * Pure (no I/O); main thread.
 */
import { ProtocolViolationError } from '../errors.js';
import { assert } from '../sync/assert.js';

/** Tag byte plus int32 length (the length counts itself, not the tag). */
export const BACKEND_HEADER_BYTES = 5;

export type BackendMessageHandler = (tag: number, body: Buffer) => void;

export class BackendMessageParser {
  readonly #frameBytesMax: number;
  /** Bytes of an incomplete message carried over from the previous chunk. */
  #pending: Buffer | null = null;

  constructor(frameBytesMax: number) {
    assert(Number.isInteger(frameBytesMax) && frameBytesMax > BACKEND_HEADER_BYTES, 'frame cap must hold a header');
    this.#frameBytesMax = frameBytesMax;
  }

  /** Bytes held waiting for the rest of a message. */
  get pendingBytes(): number {
    return this.#pending?.length ?? 0;
  }

  /** Feeds the next chunk; calls `onMessage` for every complete message, in order. Throws on a bad length. */
  push(chunk: Buffer, onMessage: BackendMessageHandler): void {
    let data = chunk;
    if (this.#pending !== null) {
      data = Buffer.concat([this.#pending, chunk]);
      this.#pending = null;
    }
    let offset = 0;
    while (data.length - offset >= BACKEND_HEADER_BYTES) {
      const tag = data[offset] as number;
      const length = data.readInt32BE(offset + 1);
      if (length < 4 || length + 1 > this.#frameBytesMax) {
        throw new ProtocolViolationError('backend', `message '${String.fromCharCode(tag)}' declares ${length} bytes (cap ${this.#frameBytesMax})`);
      }
      const end = offset + 1 + length;
      if (end > data.length) break;
      onMessage(tag, data.subarray(offset + BACKEND_HEADER_BYTES, end));
      offset = end;
    }
    // Keep the tail; a copy so the big chunk it came from can be released.
    if (offset < data.length) this.#pending = Buffer.from(data.subarray(offset));
  }
}

/** Reads the NUL-terminated string at `offset`; returns it and the offset after the NUL. */
export function readCString(body: Buffer, offset: number): { value: string; next: number } {
  const end = body.indexOf(0, offset);
  if (end < 0) throw new ProtocolViolationError('backend', 'string without a terminating NUL');
  return { value: body.toString('utf8', offset, end), next: end + 1 };
}

/** The fields of an ErrorResponse or NoticeResponse body, keyed by field letter (S, V, C, M, D, H...). */
export function decodeErrorFields(body: Buffer): Record<string, string> {
  const fields: Record<string, string> = {};
  let offset = 0;
  while (offset < body.length && body[offset] !== 0) {
    const code = String.fromCharCode(body[offset] as number);
    const { value, next } = readCString(body, offset + 1);
    fields[code] = value;
    offset = next;
  }
  return fields;
}

/** Column names of a RowDescription body. */
export function decodeRowDescription(body: Buffer): string[] {
  const count = body.readInt16BE(0);
  const names: string[] = [];
  let offset = 2;
  for (let index = 0; index < count; index += 1) {
    const { value, next } = readCString(body, offset);
    names.push(value);
    offset = next + 18; // table oid 4, attnum 2, type oid 4, typlen 2, typmod 4, format 2
  }
  return names;
}

/** Text values of a DataRow body (null for SQL NULL). */
export function decodeDataRow(body: Buffer): (string | null)[] {
  const count = body.readInt16BE(0);
  const values: (string | null)[] = [];
  let offset = 2;
  for (let index = 0; index < count; index += 1) {
    const length = body.readInt32BE(offset);
    offset += 4;
    if (length < 0) {
      values.push(null);
      continue;
    }
    values.push(body.toString('utf8', offset, offset + length));
    offset += length;
  }
  return values;
}
