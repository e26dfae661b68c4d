/**
 * Encoders for the BACKEND messages of the PostgreSQL v3 protocol (what we send to clients). Each function
 * returns one complete message (tag, int32 length counting itself, body) in a fresh Buffer, except the
 * constant messages, which are shared buffers that must never be mutated, and the CopyData header writer,
 * which writes into the caller's buffer so the hot path allocates nothing.
 * Strings are written as UTF-8 C strings; a NUL inside one is replaced by U+FFFD so it cannot corrupt the framing.
 * Pure; any thread.
 */
import { assert } from '../sync/assert.js';

/** Backend message tags. */
export const enum BackendTag {
  Authentication = 0x52, // R
  BackendKeyData = 0x4b, // K
  BindComplete = 0x32, // 2
  CloseComplete = 0x33, // 3
  CommandComplete = 0x43, // C
  CopyBothResponse = 0x57, // W
  CopyData = 0x64, // d
  CopyDone = 0x63, // c
  CopyOutResponse = 0x48, // H
  DataRow = 0x44, // D
  EmptyQueryResponse = 0x49, // I
  ErrorResponse = 0x45, // E
  NegotiateProtocolVersion = 0x76, // v
  NoData = 0x6e, // n
  NoticeResponse = 0x4e, // N
  ParameterDescription = 0x74, // t
  ParameterStatus = 0x53, // S
  ParseComplete = 0x31, // 1
  ReadyForQuery = 0x5a, // Z
  RowDescription = 0x54, // T
}

/** Tag byte plus int32 length. */
export const MESSAGE_HEADER_BYTES = 5;
/** Type OIDs used in RowDescription. */
export const TEXT_OID = 25;
export const INT4_OID = 23;
export const INT8_OID = 20;

export type TransactionStatus = 'I' | 'T' | 'E';

export interface ColumnDescription {
  name: string;
  typeOid: number;
  /** pg_type.typlen: -1 for variable length (text), 4 for int4. */
  typeLengthBytes: number;
}

export interface ErrorResponseFields {
  code: string;
  message: string;
  detail?: string;
}

/** A message with room for `bodyBytes` after the header; the caller fills the body. */
function allocateMessage(tag: number, bodyBytes: number): Buffer {
  const message = Buffer.allocUnsafe(MESSAGE_HEADER_BYTES + bodyBytes);
  message[0] = tag;
  message.writeInt32BE(4 + bodyBytes, 1);
  return message;
}

/** A NUL would end the C string early and corrupt the framing; client text (echoed in errors) may hold one. */
function withoutNul(text: string): string {
  return text.includes('\0') ? text.replaceAll('\0', '\uFFFD') : text;
}

function cStringBytes(text: string): number {
  return Buffer.byteLength(withoutNul(text), 'utf8') + 1;
}

function writeCString(target: Buffer, offset: number, text: string): number {
  const written = target.write(withoutNul(text), offset, 'utf8');
  target[offset + written] = 0;
  return offset + written + 1;
}

function constantMessage(tag: number, body: readonly number[] = []): Buffer {
  const message = allocateMessage(tag, body.length);
  for (let index = 0; index < body.length; index += 1) message[MESSAGE_HEADER_BYTES + index] = body[index] as number;
  return message;
}

/** Shared constant messages: write them as they are, never mutate them. */
export const AUTHENTICATION_OK: Buffer = constantMessage(BackendTag.Authentication, [0, 0, 0, 0]);
export const AUTHENTICATION_CLEARTEXT_PASSWORD: Buffer = constantMessage(BackendTag.Authentication, [0, 0, 0, 3]);
export const EMPTY_QUERY_RESPONSE: Buffer = constantMessage(BackendTag.EmptyQueryResponse);
/** CopyBothResponse / CopyOutResponse: int8 overall format 0 (text), int16 0 columns. */
export const COPY_BOTH_RESPONSE: Buffer = constantMessage(BackendTag.CopyBothResponse, [0, 0, 0]);
export const COPY_OUT_RESPONSE: Buffer = constantMessage(BackendTag.CopyOutResponse, [0, 0, 0]);
export const COPY_DONE: Buffer = constantMessage(BackendTag.CopyDone);
export const PARSE_COMPLETE: Buffer = constantMessage(BackendTag.ParseComplete);
export const BIND_COMPLETE: Buffer = constantMessage(BackendTag.BindComplete);
export const CLOSE_COMPLETE: Buffer = constantMessage(BackendTag.CloseComplete);
export const NO_DATA: Buffer = constantMessage(BackendTag.NoData);
/** The single byte refusing an SSLRequest or GSSENCRequest (not a message: no length). */
export const NEGOTIATION_REFUSED: Buffer = Buffer.from('N', 'latin1');
const READY_FOR_QUERY: Record<TransactionStatus, Buffer> = {
  I: constantMessage(BackendTag.ReadyForQuery, [0x49]),
  T: constantMessage(BackendTag.ReadyForQuery, [0x54]),
  E: constantMessage(BackendTag.ReadyForQuery, [0x45]),
};

export function readyForQuery(status: TransactionStatus = 'I'): Buffer {
  return READY_FOR_QUERY[status];
}

export function parameterStatus(name: string, value: string): Buffer {
  const message = allocateMessage(BackendTag.ParameterStatus, cStringBytes(name) + cStringBytes(value));
  writeCString(message, writeCString(message, MESSAGE_HEADER_BYTES, name), value);
  return message;
}

/** The newest minor version we speak (0) and the `_pq_.` options we did not recognise. */
export function negotiateProtocolVersion(minorVersion: number, unrecognisedOptions: readonly string[]): Buffer {
  let bodyBytes = 8;
  for (const option of unrecognisedOptions) bodyBytes += cStringBytes(option);
  const message = allocateMessage(BackendTag.NegotiateProtocolVersion, bodyBytes);
  message.writeInt32BE(minorVersion, 5);
  message.writeInt32BE(unrecognisedOptions.length, 9);
  let offset = 13;
  for (const option of unrecognisedOptions) offset = writeCString(message, offset, option);
  return message;
}

/** Columns with table OID 0, attnum 0, typmod -1 and text format, as Neon sends them. */
export function rowDescription(columns: readonly ColumnDescription[]): Buffer {
  let bodyBytes = 2;
  for (const column of columns) bodyBytes += cStringBytes(column.name) + 18;
  const message = allocateMessage(BackendTag.RowDescription, bodyBytes);
  let offset = message.writeInt16BE(columns.length, 5);
  for (const column of columns) {
    offset = writeCString(message, offset, column.name);
    offset = message.writeInt32BE(0, offset); // table OID
    offset = message.writeInt16BE(0, offset); // attribute number
    offset = message.writeInt32BE(column.typeOid, offset);
    offset = message.writeInt16BE(column.typeLengthBytes, offset);
    offset = message.writeInt32BE(-1, offset); // type modifier
    offset = message.writeInt16BE(0, offset); // format: text
  }
  assert(offset === message.length, 'RowDescription filled exactly');
  return message;
}

/** One row of text values; null is SQL NULL. */
export function dataRow(values: readonly (string | null)[]): Buffer {
  let bodyBytes = 2;
  for (const value of values) bodyBytes += 4 + (value === null ? 0 : Buffer.byteLength(value, 'utf8'));
  const message = allocateMessage(BackendTag.DataRow, bodyBytes);
  let offset = message.writeInt16BE(values.length, 5);
  for (const value of values) {
    if (value === null) {
      offset = message.writeInt32BE(-1, offset);
    } else {
      const valueBytes = message.write(value, offset + 4, 'utf8');
      message.writeInt32BE(valueBytes, offset);
      offset += 4 + valueBytes;
    }
  }
  assert(offset === message.length, 'DataRow filled exactly');
  return message;
}

export function commandComplete(commandTag: string): Buffer {
  const message = allocateMessage(BackendTag.CommandComplete, cStringBytes(commandTag));
  writeCString(message, MESSAGE_HEADER_BYTES, commandTag);
  return message;
}

function noticeOrError(tag: number, severity: string, fields: ErrorResponseFields): Buffer {
  const parts: [number, string][] = [
    [0x53, severity], // S: localised severity
    [0x56, severity], // V: severity, never localised
    [0x43, fields.code], // C: SQLSTATE
    [0x4d, fields.message], // M
  ];
  if (fields.detail !== undefined) parts.push([0x44, fields.detail]); // D
  let bodyBytes = 1;
  for (const [, value] of parts) bodyBytes += 1 + cStringBytes(value);
  const message = allocateMessage(tag, bodyBytes);
  let offset = MESSAGE_HEADER_BYTES;
  for (const [field, value] of parts) {
    message[offset] = field;
    offset = writeCString(message, offset + 1, value);
  }
  message[offset] = 0;
  assert(offset + 1 === message.length, 'ErrorResponse filled exactly');
  return message;
}

/** Build the fields with `pg/sqlstate.ts` (`errorFields`), the only mapper from errors. */
export function errorResponse(fields: ErrorResponseFields): Buffer {
  assert(/^[0-9A-Z]{5}$/.test(fields.code), 'SQLSTATE is five characters');
  return noticeOrError(BackendTag.ErrorResponse, 'ERROR', fields);
}

export function parameterDescription(typeOids: readonly number[]): Buffer {
  const message = allocateMessage(BackendTag.ParameterDescription, 2 + 4 * typeOids.length);
  let offset = message.writeInt16BE(typeOids.length, 5);
  for (const oid of typeOids) offset = message.writeInt32BE(oid, offset);
  return message;
}

/** A complete CopyData message (one copy of the payload). For the hot path use `writeCopyDataHeader`. */
export function copyData(payload: Uint8Array): Buffer {
  const message = allocateMessage(BackendTag.CopyData, payload.length);
  message.set(payload, MESSAGE_HEADER_BYTES);
  return message;
}

/**
 * Writes the 5-byte CopyData header for a payload of `payloadBytes` at `offset` in `target` and returns
 * the offset after it. The payload goes right after (same buffer, or a second write).
 */
export function writeCopyDataHeader(target: Uint8Array, offset: number, payloadBytes: number): number {
  assert(offset >= 0 && offset + MESSAGE_HEADER_BYTES <= target.length, 'header fits in the target');
  assert(Number.isInteger(payloadBytes) && payloadBytes >= 0 && payloadBytes <= 0x7fff_fffb, 'payload length fits in int32');
  const lengthBytes = payloadBytes + 4;
  target[offset] = BackendTag.CopyData;
  target[offset + 1] = lengthBytes >>> 24;
  target[offset + 2] = (lengthBytes >>> 16) & 0xff;
  target[offset + 3] = (lengthBytes >>> 8) & 0xff;
  target[offset + 4] = lengthBytes & 0xff;
  return offset + MESSAGE_HEADER_BYTES;
}
