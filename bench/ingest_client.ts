/**
 * A lean START_WAL_PUSH client for the ingest benchmark: one net.Socket, protocol v3, AppendRequests built
 * straight into large batch buffers (header fields written as two u32s, no bigint per append), replies
 * parsed incrementally in the 'data' handler. It does what walproposer does with one safekeeper: greeting,
 * vote (term 1), elected (history [(1, start)]), then a stream of AppendRequests whose commit_lsn and
 * truncate_lsn are the latest acknowledged flush_lsn (the quorum of one).
 *
 * Small appends are copied into one buffer of many CopyData frames; appends of COPY_APPEND_BYTES_MAX and
 * more are written as header + a view of the WAL (corked, one writev per batch), so the client can push
 * several hundred thousand appends per second without sharing the safekeeper's event loop.
 * `ackAtMs` is taken inside the 'data' handler, when the AppendResponse is parsed.
 */
import net from 'node:net';
import { once } from 'node:events';
import { setImmediate as yieldToLoop } from 'node:timers/promises';
import type { AcceptorMessage } from '../src/acceptor/messages.js';
import { decodeAcceptorMessage, encodeProposerMessage } from '../src/acceptor/messages_codec.js';
import { emptyMembership, type TenantId, type TimelineId } from '../src/acceptor/state.js';
import { assert } from '../src/sync/assert.js';
import { BENCH_PG_VERSION, BENCH_SEGMENT_BYTES, BENCH_SYSTEM_ID, recordEndAtOrAfter, type BenchWal } from './ingest_wal.js';

/** CopyData header (tag + int32 length) plus the v3 AppendRequest header. */
export const APPEND_FRAME_HEADER_BYTES = 5 + 45;
/** walproposer's MAX_SEND_SIZE. */
const APPEND_WAL_BYTES_MAX = 128 * 1024;
/** Appends below this size are copied into the batch buffer; larger ones are written as views. */
const COPY_APPEND_BYTES_MAX = 32 * 1024;
/** One socket write carries about this many bytes of frames. */
const BATCH_BYTES = 256 * 1024;
const TERM = 1;
const REPLY_TIMEOUT_MS = 30_000;
const TWO_32 = 0x1_0000_0000;

export interface StreamResult {
  bytes: number;
  appends: number;
  /** When the first frame was written and when flush_lsn first covered the last one (performance.now()). */
  firstSendMs: number;
  durableMs: number;
}

function writeU64(buffer: Buffer, position: number, value: number): void {
  buffer.writeUInt32BE(Math.floor(value / TWO_32), position);
  buffer.writeUInt32BE(value >>> 0, position + 4);
}

function readU64(buffer: Uint8Array, position: number): number {
  const view = Buffer.from(buffer.buffer, buffer.byteOffset + position, 8);
  return view.readUInt32BE(0) * TWO_32 + view.readUInt32BE(4);
}

export class WalPushClient {
  /** Highest flush_lsn acknowledged so far (an LSN, as a number). */
  flushLsn = 0;
  /** performance.now() when flushLsn last moved. */
  ackAtMs = 0;
  appendResponses = 0;
  #socket: net.Socket;
  #pending: Buffer | null = null;
  #messages: { tag: number; body: Buffer }[] = [];
  #copyBoth = false;
  #error: Error | null = null;
  #waiter: (() => void) | null = null;
  #flushTarget = Infinity;
  #flushReached: (() => void) | null = null;
  /** appendAndWait's frame buffer. */
  #loneFrame = Buffer.allocUnsafe(APPEND_FRAME_HEADER_BYTES + APPEND_WAL_BYTES_MAX);
  /** Rejects when the connection fails; raced against every wait. */
  readonly #failed: Promise<never>;
  #rejectFailed!: (error: Error) => void;

  private constructor(socket: net.Socket, readonly wal: BenchWal) {
    this.#socket = socket;
    this.#failed = new Promise<never>((_, reject) => (this.#rejectFailed = reject));
    this.#failed.catch(() => undefined); // observed by whichever wait races it
    socket.setNoDelay(true);
    socket.on('data', (chunk: Buffer) => this.#onData(chunk));
    socket.on('error', (error) => this.#fail(error));
    socket.on('close', () => this.#fail(new Error('the safekeeper closed the connection')));
  }

  /** Connects, sends the StartupMessage with the timeline options and enters START_WAL_PUSH (proto_version 3). */
  static async connect(port: number, tenantId: string, timelineId: string, wal: BenchWal): Promise<WalPushClient> {
    const socket = net.connect({ host: '127.0.0.1', port });
    await once(socket, 'connect');
    const client = new WalPushClient(socket, wal);
    const parameters = ['user', 'bench', 'database', 'postgres', 'application_name', 'ingest_bench', 'options', `-c tenant_id=${tenantId} timeline_id=${timelineId}`];
    const body = Buffer.from(`${parameters.join('\0')}\0\0`);
    const startup = Buffer.alloc(8 + body.length);
    startup.writeInt32BE(startup.length, 0);
    startup.writeInt32BE(196608, 4);
    body.copy(startup, 8);
    socket.write(startup);
    await client.#expect(0x5a); // 'Z' ReadyForQuery
    const query = Buffer.from("START_WAL_PUSH (proto_version '3')\0");
    const message = Buffer.alloc(5 + query.length);
    message[0] = 0x51; // 'Q'
    message.writeInt32BE(4 + query.length, 1);
    query.copy(message, 5);
    socket.write(message);
    await client.#expect(0x57); // 'W' CopyBothResponse
    client.#copyBoth = true;
    return client;
  }

  /** Greeting, vote for term 1, elected at the WAL's start. Leaves the timeline ready for appends at offset 0. */
  async elect(tenantId: string, timelineId: string): Promise<void> {
    const start = BigInt(this.wal.startLsn);
    this.#sendMessage({ tag: 'greeting', tenantId: tenantId as TenantId, timelineId: timelineId as TimelineId, mconf: emptyMembership(), pgVersion: BENCH_PG_VERSION, systemId: BENCH_SYSTEM_ID, walSegSizeBytes: this.wal.segmentSizeBytes ?? BENCH_SEGMENT_BYTES });
    const greeting = await this.#nextReply();
    assert(greeting.tag === 'greeting' && greeting.term === 0n, 'a fresh timeline greets with term 0');
    this.#sendMessage({ tag: 'vote', generation: 0, term: BigInt(TERM) });
    const vote = await this.#nextReply();
    assert(vote.tag === 'vote' && vote.voteGiven, 'the vote is granted');
    this.#sendMessage({ tag: 'elected', generation: 0, term: BigInt(TERM), startStreamingAtLsn: start, termHistory: [{ term: BigInt(TERM), lsn: start }] });
  }

  /** An empty AppendRequest at `offset`; resolves with the next AppendResponse's flush_lsn. */
  async heartbeat(offset: number): Promise<number> {
    const seen = this.appendResponses;
    const frame = Buffer.allocUnsafe(APPEND_FRAME_HEADER_BYTES);
    this.#writeAppendHeader(frame, 0, offset, 0);
    this.#socket.write(frame);
    while (this.appendResponses === seen) await this.#wait();
    return this.flushLsn;
  }

  /**
   * Sends WAL [fromOffset, ...) in appends of `appendBytes` until `deadlineMs` (performance.now()) passes or
   * `capOffset` is reached, then up to the next record end, and resolves once flush_lsn covers it all.
   */
  async stream(fromOffset: number, appendBytes: number, deadlineMs: number, capOffset: number): Promise<StreamResult & { endOffset: number }> {
    assert(appendBytes > 0 && appendBytes <= APPEND_WAL_BYTES_MAX, 'append size within MAX_SEND_SIZE');
    const wal = this.wal;
    const limit = Math.min(capOffset, wal.bytes.length);
    let offset = fromOffset;
    let stopOffset = -1;
    let appends = 0;
    const firstSendMs = performance.now();
    while (offset !== stopOffset) {
      if (stopOffset < 0 && (offset >= limit || performance.now() >= deadlineMs)) stopOffset = recordEndAtOrAfter(wal, Math.min(offset, wal.bytes.length));
      if (offset === stopOffset) break;
      const end = stopOffset < 0 ? limit : stopOffset;
      const sent = appendBytes < COPY_APPEND_BYTES_MAX ? this.#sendCopied(offset, end, appendBytes) : this.#sendViews(offset, end, appendBytes);
      offset = sent.offset;
      appends += sent.appends;
      if (this.#error !== null) throw this.#error;
      if (this.#socket.writableNeedDrain) await Promise.race([once(this.#socket, 'drain'), this.#failed]);
      else await yieldToLoop();
    }
    if (offset === fromOffset) return { bytes: 0, appends: 0, firstSendMs, durableMs: firstSendMs, endOffset: offset }; // nothing left to send
    await this.waitForFlush(wal.startLsn + offset);
    return { bytes: offset - fromOffset, appends, firstSendMs, durableMs: this.ackAtMs, endOffset: offset };
  }

  /**
   * One append [fromOffset, toOffset) written at once; resolves with the ms from write to the covering
   * AppendResponse. The frame is built in one reused buffer: a fresh one per append is external memory that
   * makes V8 run full collections in this process, whose pauses would count as the safekeeper's latency.
   */
  async appendAndWait(fromOffset: number, toOffset: number): Promise<number> {
    assert(toOffset - fromOffset <= APPEND_WAL_BYTES_MAX, 'one append');
    // Reusable once the socket holds nothing of the previous frame (the covering ack implies it, in practice).
    if (this.#socket.writableLength > 0) this.#loneFrame = Buffer.allocUnsafe(APPEND_FRAME_HEADER_BYTES + APPEND_WAL_BYTES_MAX);
    const frame = this.#loneFrame.subarray(0, APPEND_FRAME_HEADER_BYTES + toOffset - fromOffset);
    this.#writeAppendHeader(frame, 0, fromOffset, toOffset - fromOffset);
    this.wal.bytes.copy(frame, APPEND_FRAME_HEADER_BYTES, fromOffset, toOffset);
    const sentMs = performance.now();
    this.#socket.write(frame);
    await this.waitForFlush(this.wal.startLsn + toOffset);
    return this.ackAtMs - sentMs;
  }

  /** Resolves once an AppendResponse acknowledged flush_lsn ≥ `lsn`. */
  async waitForFlush(lsn: number): Promise<void> {
    if (this.flushLsn >= lsn) return;
    this.#flushTarget = lsn;
    const reached = new Promise<void>((resolve) => (this.#flushReached = resolve));
    const timer = setTimeout(() => this.#fail(new Error(`flush_lsn ${this.flushLsn} did not reach ${lsn} within ${REPLY_TIMEOUT_MS} ms`)), REPLY_TIMEOUT_MS);
    try {
      await Promise.race([reached, this.#failed]);
    } finally {
      clearTimeout(timer);
      this.#flushTarget = Infinity;
      this.#flushReached = null;
    }
  }

  close(): void {
    this.#fail(new Error('closed by the benchmark'));
    this.#socket.destroy();
  }

  // ---- sending ----

  #writeAppendHeader(buffer: Buffer, at: number, offset: number, walBytes: number): void {
    const begin = this.wal.startLsn + offset;
    buffer[at] = 0x64; // 'd'
    buffer.writeInt32BE(4 + 45 + walBytes, at + 1);
    buffer[at + 5] = 0x61; // 'a'
    buffer.writeUInt32BE(0, at + 6); // generation
    writeU64(buffer, at + 10, TERM);
    writeU64(buffer, at + 18, begin);
    writeU64(buffer, at + 26, begin + walBytes);
    writeU64(buffer, at + 34, this.flushLsn); // commit_lsn: the quorum (of one) flush
    writeU64(buffer, at + 42, this.flushLsn); // truncate_lsn
  }

  /** Appends copied into one buffer of frames, about BATCH_BYTES per call. */
  #sendCopied(offset: number, end: number, appendBytes: number): { offset: number; appends: number } {
    const frameBytes = APPEND_FRAME_HEADER_BYTES + appendBytes;
    const count = Math.max(1, Math.floor(BATCH_BYTES / frameBytes));
    const batch = Buffer.allocUnsafe(count * frameBytes);
    const source = this.wal.bytes;
    let used = 0;
    let appends = 0;
    while (appends < count && offset < end) {
      const walBytes = Math.min(appendBytes, end - offset);
      this.#writeAppendHeader(batch, used, offset, walBytes);
      source.copy(batch, used + APPEND_FRAME_HEADER_BYTES, offset, offset + walBytes);
      used += APPEND_FRAME_HEADER_BYTES + walBytes;
      offset += walBytes;
      appends += 1;
    }
    this.#socket.write(batch.subarray(0, used));
    return { offset, appends };
  }

  /** Large appends: header + view of the WAL, corked into one writev of about BATCH_BYTES (at least one append). */
  #sendViews(offset: number, end: number, appendBytes: number): { offset: number; appends: number } {
    const count = Math.max(1, Math.floor(BATCH_BYTES / appendBytes));
    const headers = Buffer.allocUnsafe(count * APPEND_FRAME_HEADER_BYTES);
    let appends = 0;
    this.#socket.cork();
    while (appends < count && offset < end) {
      const walBytes = Math.min(appendBytes, end - offset);
      const at = appends * APPEND_FRAME_HEADER_BYTES;
      this.#writeAppendHeader(headers, at, offset, walBytes);
      this.#socket.write(headers.subarray(at, at + APPEND_FRAME_HEADER_BYTES));
      this.#socket.write(this.wal.bytes.subarray(offset, offset + walBytes));
      offset += walBytes;
      appends += 1;
    }
    this.#socket.uncork();
    return { offset, appends };
  }

  #sendMessage(message: Parameters<typeof encodeProposerMessage>[0]): void {
    const payload = encodeProposerMessage(message, 3);
    const frame = Buffer.allocUnsafe(5 + payload.length);
    frame[0] = 0x64;
    frame.writeInt32BE(4 + payload.length, 1);
    frame.set(payload, 5);
    this.#socket.write(frame);
  }

  // ---- receiving ----

  #onData(chunk: Buffer): void {
    let buffer = chunk;
    if (this.#pending !== null) {
      buffer = Buffer.concat([this.#pending, chunk]);
      this.#pending = null;
    }
    let offset = 0;
    while (buffer.length - offset >= 5) {
      const totalBytes = 1 + buffer.readInt32BE(offset + 1);
      if (buffer.length - offset < totalBytes) break;
      const tag = buffer[offset]!;
      const body = buffer.subarray(offset + 5, offset + totalBytes);
      offset += totalBytes;
      if (this.#copyBoth && tag === 0x64 && body[0] === 0x61) this.#onAppendResponse(body);
      else this.#onMessage(tag, body);
    }
    if (offset < buffer.length) this.#pending = Buffer.from(buffer.subarray(offset));
  }

  #onAppendResponse(body: Buffer): void {
    const term = readU64(body, 5);
    if (term !== TERM) return this.#fail(new Error(`AppendResponse with term ${term}: the append was refused`));
    const flushLsn = readU64(body, 13);
    this.appendResponses += 1;
    if (flushLsn > this.flushLsn) {
      this.flushLsn = flushLsn;
      this.ackAtMs = performance.now();
    }
    if (this.flushLsn >= this.#flushTarget) this.#flushReached?.();
    this.#waiter?.();
  }

  #onMessage(tag: number, body: Buffer): void {
    if (tag === 0x45) {
      // 'E' ErrorResponse: fields are a type byte and a C string each.
      const fields = body.toString('utf8').split('\0').filter((field) => field.length > 1).map((field) => `${field[0]}:${field.slice(1)}`);
      return this.#fail(new Error(`ErrorResponse from the safekeeper: ${fields.join(' ')}`));
    }
    this.#messages.push({ tag, body: Buffer.from(body) });
    this.#waiter?.();
  }

  async #expect(tag: number): Promise<Buffer> {
    for (;;) {
      const message = this.#messages.shift();
      if (message === undefined) {
        await this.#wait();
        continue;
      }
      if (message.tag === tag) return message.body;
      if (message.tag === 0x52 && message.body.readInt32BE(0) !== 0) throw new Error('the safekeeper asks for a password');
    }
  }

  async #nextReply(): Promise<AcceptorMessage> {
    const body = await this.#expect(0x64);
    return decodeAcceptorMessage(body, 3);
  }

  /** Resolves at the next message or failure; rejects if the connection has failed. */
  #wait(): Promise<void> {
    if (this.#error !== null) return Promise.reject(this.#error);
    return new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`no reply from the safekeeper within ${REPLY_TIMEOUT_MS} ms`)), REPLY_TIMEOUT_MS);
      this.#waiter = () => {
        clearTimeout(timer);
        this.#waiter = null;
        if (this.#error !== null) reject(this.#error);
        else resolve();
      };
    });
  }

  #fail(error: Error): void {
    if (this.#error === null) {
      this.#error = error;
      this.#rejectFailed(error);
    }
    this.#waiter?.();
  }
}
