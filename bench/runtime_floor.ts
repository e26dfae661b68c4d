/**
 * The runtime floor: how fast, and with what ack latency, this machine runs the safekeeper's thread shape
 * when the shape does nothing else (bench/runtime_floor_server.ts: loopback TCP, one copy into a
 * SharedArrayBuffer ring, a Piscina task that checksums, pwrites and fdatasyncs, an ack). The disk ceiling
 * says what the disk can do; this says what Node, the threads and the 2-core budget leave of it before any
 * protocol, record verification, segment preparation or backup. The ingest benchmark prints both next to
 * the node's numbers, measured in the same run.
 *
 * The client here mirrors bench/ingest_client.ts: the throughput run writes appends back to back until the
 * socket asks to drain (the server pauses it while its ring is full) and is durable once an ack covers the
 * last byte; the latency run sends one append and waits for the ack that covers it.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { mkdtempSync, rmSync } from 'node:fs';
import { connect, type Socket } from 'node:net';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { setImmediate as yieldToLoop } from 'node:timers/promises';
import { assert } from '../src/sync/assert.js';
import { V8_FLAGS } from '../src/v8_flags.js';
import { processCpuSeconds } from './machine_load.js';
import { RUNTIME_FLOOR_ACK_BYTES, RUNTIME_FLOOR_READY } from './runtime_floor_protocol.js';

const SERVER_PATH = fileURLToPath(new URL('./runtime_floor_server.ts', import.meta.url));
/** tsx compiles the server on start; a loaded machine can take seconds. */
const START_TIMEOUT_MS = 30_000;
const ACK_TIMEOUT_MS = 30_000;
const STOP_TIMEOUT_MS = 10_000;

export interface FloorThroughput {
  appendBytes: number;
  bytes: number;
  seconds: number;
  mibPerSecond: number;
  /** CPU of the server process and of this (client) process over the run, in cores; null without /proc. */
  serverCores: number | null;
  clientCores: number;
}

export class RuntimeFloor {
  readonly #child: ChildProcess;
  readonly #socket: Socket;
  readonly #dir: string;
  #sent = 0;
  #durable = 0;
  /** performance.now() when the last ack was parsed (latencies end there, as in ingest_client.ts). */
  #ackAtMs = 0;
  #partialAck = Buffer.alloc(0);
  #waiter: { target: number; resolve: () => void; reject: (error: Error) => void; timer: NodeJS.Timeout } | null = null;
  #failure: Error | null = null;

  private constructor(child: ChildProcess, socket: Socket, dir: string) {
    this.#child = child;
    this.#socket = socket;
    this.#dir = dir;
    socket.setNoDelay(true);
    socket.on('data', (chunk: Buffer) => this.#onAcks(chunk));
    socket.on('error', (error) => this.#fail(error));
    socket.on('close', () => this.#fail(new Error('runtime floor server closed the connection')));
  }

  /**
   * Starts the server with its files in a fresh directory under `parentDir` (the disk being measured).
   * `recordBytes` > 0 checks the bytes as records of that size, as the node's portable path verifies WAL (FloorWorkerData).
   */
  static async start(parentDir: string, recordBytes = 0): Promise<RuntimeFloor> {
    const dir = mkdtempSync(join(parentDir, 'runtime-floor-'));
    // The node's V8 flags: the floor's main thread reads sockets the same way and would pay the same GCs.
    const child = spawn(process.execPath, [...V8_FLAGS, '--import', 'tsx', SERVER_PATH, dir, String(recordBytes)], { stdio: ['ignore', 'pipe', 'inherit'] });
    try {
      const port = await readyPort(child);
      const socket = connect(port, '127.0.0.1');
      await once(socket, 'connect');
      return new RuntimeFloor(child, socket, dir);
    } catch (error) {
      child.kill('SIGKILL');
      rmSync(dir, { recursive: true, force: true });
      throw error;
    }
  }

  /** Appends of `appendBytes`, back to back for `durationMs`, until all are durable. */
  async throughput(appendBytes: number, durationMs: number): Promise<FloorThroughput> {
    const payload = Buffer.alloc(appendBytes, 0x5a);
    const serverCpuBefore = processCpuSeconds(this.#child.pid ?? -1);
    const clientCpuBefore = process.cpuUsage();
    const firstByte = this.#sent;
    const startMs = performance.now();
    while (performance.now() - startMs < durationMs) {
      this.#send(payload);
      if (this.#socket.writableNeedDrain) await once(this.#socket, 'drain');
      else await yieldToLoop(); // let acks in
      this.#check();
    }
    await this.#durableAt(this.#sent);
    const seconds = (performance.now() - startMs) / 1000;
    const serverCpuAfter = processCpuSeconds(this.#child.pid ?? -1);
    const clientCpu = process.cpuUsage(clientCpuBefore);
    const bytes = this.#sent - firstByte;
    return {
      appendBytes,
      bytes,
      seconds,
      mibPerSecond: bytes / (1024 * 1024) / seconds,
      serverCores: serverCpuBefore === null || serverCpuAfter === null ? null : (serverCpuAfter - serverCpuBefore) / seconds,
      clientCores: (clientCpu.user + clientCpu.system) / 1e6 / seconds,
    };
  }

  /** `warmup` unmeasured, then `samples` measured lone appends of `appendBytes`: ms from send to ack. */
  async latency(appendBytes: number, warmup: number, samples: number): Promise<number[]> {
    const payload = Buffer.alloc(appendBytes, 0x5a);
    const samplesMs: number[] = [];
    for (let index = 0; index < warmup + samples; index += 1) {
      const sentMs = performance.now();
      this.#send(payload);
      await this.#durableAt(this.#sent);
      if (index >= warmup) samplesMs.push(this.#ackAtMs - sentMs);
    }
    return samplesMs;
  }

  async stop(): Promise<void> {
    const exited = this.#child.exitCode !== null ? Promise.resolve() : once(this.#child, 'exit').then(() => undefined);
    this.#failure ??= new Error('runtime floor stopped');
    this.#socket.end();
    const timer = setTimeout(() => this.#child.kill('SIGKILL'), STOP_TIMEOUT_MS);
    await exited;
    clearTimeout(timer);
    rmSync(this.#dir, { recursive: true, force: true });
  }

  #send(payload: Buffer): void {
    this.#socket.write(payload);
    this.#sent += payload.length;
  }

  #onAcks(chunk: Buffer): void {
    const bytes = this.#partialAck.length > 0 ? Buffer.concat([this.#partialAck, chunk]) : chunk;
    const whole = bytes.length - (bytes.length % RUNTIME_FLOOR_ACK_BYTES);
    if (whole > 0) {
      this.#durable = bytes.readDoubleLE(whole - RUNTIME_FLOOR_ACK_BYTES); // acks only grow
      this.#ackAtMs = performance.now();
    }
    this.#partialAck = Buffer.from(bytes.subarray(whole));
    const waiter = this.#waiter;
    if (waiter !== null && this.#durable >= waiter.target) {
      this.#waiter = null;
      clearTimeout(waiter.timer);
      waiter.resolve();
    }
  }

  #durableAt(target: number): Promise<void> {
    this.#check();
    if (this.#durable >= target) return Promise.resolve();
    assert(this.#waiter === null, 'one waiter at a time');
    return new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => this.#fail(new Error(`runtime floor: no ack for byte ${target} within ${ACK_TIMEOUT_MS} ms`)), ACK_TIMEOUT_MS);
      this.#waiter = { target, resolve, reject, timer };
    });
  }

  #fail(error: Error): void {
    this.#failure ??= error;
    const waiter = this.#waiter;
    this.#waiter = null;
    if (waiter !== null) {
      clearTimeout(waiter.timer);
      waiter.reject(this.#failure);
    }
  }

  #check(): void {
    if (this.#failure !== null) throw this.#failure;
  }
}

async function readyPort(child: ChildProcess): Promise<number> {
  const stdout = child.stdout;
  assert(stdout !== null, 'server stdout is piped');
  stdout.setEncoding('utf8');
  let out = '';
  return await new Promise<number>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`runtime floor server not ready within ${START_TIMEOUT_MS} ms`)), START_TIMEOUT_MS);
    child.once('exit', (code) => reject(new Error(`runtime floor server exited (${code}) before it was ready`)));
    stdout.on('data', (text: string) => {
      out += text;
      const at = out.indexOf(RUNTIME_FLOOR_READY);
      const end = out.indexOf('\n', at);
      if (at >= 0 && end > at) {
        clearTimeout(timer);
        resolve(Number(out.slice(at + RUNTIME_FLOOR_READY.length, end)));
      }
    });
  });
}
