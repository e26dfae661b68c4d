/**
 * Body parsers for the frontend messages of the command loop (Query and the extended-protocol basics,
 * PasswordMessage, CopyFail). Each takes the body the frame decoder delivered and returns plain values
 * (strings are copied out, since the body is only valid during the decoder callback). Any malformed body is
 * a ProtocolViolationError (08P01) naming the message. CopyData bodies never come here: they go to the copy
 * sink as views. Pure; any thread.
 */
import { ProtocolViolationError } from '../errors.js';

export interface ParseMessage {
  statement: string;
  query: string;
}

export interface BindMessage {
  portal: string;
  statement: string;
}

export interface TargetMessage {
  /** 'S' statement or 'P' portal. */
  target: 'S' | 'P';
  name: string;
}

/** Reads C strings and integers from a body, refusing anything past its end. */
class BodyReader {
  offset = 0;
  constructor(readonly body: Buffer, readonly messageName: string) {}

  cString(): string {
    const end = this.body.indexOf(0, this.offset);
    if (end < 0) throw new ProtocolViolationError(this.messageName, 'string is not NUL-terminated');
    const text = this.body.toString('utf8', this.offset, end);
    this.offset = end + 1;
    return text;
  }

  int16(): number {
    this.#need(2);
    const value = this.body.readInt16BE(this.offset);
    this.offset += 2;
    return value;
  }

  byte(): number {
    this.#need(1);
    const value = this.body[this.offset] as number;
    this.offset += 1;
    return value;
  }

  skip(bytes: number): void {
    this.#need(bytes);
    this.offset += bytes;
  }

  int32(): number {
    this.#need(4);
    const value = this.body.readInt32BE(this.offset);
    this.offset += 4;
    return value;
  }

  end(): void {
    if (this.offset !== this.body.length) throw new ProtocolViolationError(this.messageName, `${this.body.length - this.offset} bytes after its fields`);
  }

  #need(bytes: number): void {
    if (bytes < 0 || this.offset + bytes > this.body.length) throw new ProtocolViolationError(this.messageName, 'shorter than its fields');
  }
}

/** Query: one C string, the whole body. */
export function parseQuery(body: Buffer): string {
  const reader = new BodyReader(body, 'Query');
  const text = reader.cString();
  reader.end();
  return text;
}

/** CopyFail: the client's reason. */
export function parseCopyFail(body: Buffer): string {
  const reader = new BodyReader(body, 'CopyFail');
  const text = reader.cString();
  reader.end();
  return text;
}

/** PasswordMessage: the password (for Neon, a JWT) followed by a NUL, which is stripped. */
export function parsePassword(body: Buffer): string {
  const reader = new BodyReader(body, 'PasswordMessage');
  const text = reader.cString();
  reader.end();
  return text;
}

export function parseParse(body: Buffer): ParseMessage {
  const reader = new BodyReader(body, 'Parse');
  const statement = reader.cString();
  const query = reader.cString();
  const parameterTypes = reader.int16();
  reader.skip(4 * parameterTypes);
  reader.end();
  return { statement, query };
}

/** Bind: portal and statement; parameter values are skipped (no command takes parameters), but checked. */
export function parseBind(body: Buffer): BindMessage {
  const reader = new BodyReader(body, 'Bind');
  const portal = reader.cString();
  const statement = reader.cString();
  reader.skip(2 * reader.int16()); // parameter format codes
  const parameters = reader.int16();
  for (let index = 0; index < parameters; index += 1) {
    const valueBytes = reader.int32();
    if (valueBytes > 0) reader.skip(valueBytes);
  }
  reader.skip(2 * reader.int16()); // result format codes
  reader.end();
  return { portal, statement };
}

/** Describe and Close: a target byte ('S' or 'P') and a name. */
export function parseTarget(body: Buffer, messageName: 'Describe' | 'Close'): TargetMessage {
  const reader = new BodyReader(body, messageName);
  const target = reader.byte();
  if (target !== 0x53 && target !== 0x50) throw new ProtocolViolationError(messageName, `target ${target} is neither 'S' nor 'P'`);
  const name = reader.cString();
  reader.end();
  return { target: target === 0x53 ? 'S' : 'P', name };
}

/** Execute: portal name and a row limit (ignored: results are small). */
export function parseExecute(body: Buffer): string {
  const reader = new BodyReader(body, 'Execute');
  const portal = reader.cString();
  reader.int32();
  reader.end();
  return portal;
}
