/**
 * The runtime floor's server, a child process of the ingest benchmark: the safekeeper's thread shape with
 * nothing else in it. The main thread copies received bytes into a SharedArrayBuffer ring (16 MiB, the
 * node's default) and keeps one task in flight on a one-thread Piscina pool configured as the node's writer
 * pool; the task checksums, pwrites and fdatasyncs what arrived (runtime_floor_writer.ts); its result becomes
 * an ack. A full ring pauses the socket, as in the node. No protocol, no record decoding, no segment
 * preparation, no backup: what it reaches is what this runtime and machine allow the shape.
 *
 * Run: `node --import tsx bench/runtime_floor_server.ts DIR [RECORD_BYTES]` (DIR must exist and is used for
 * two 16 MiB files; RECORD_BYTES, default 0, see FloorWorkerData); prints RUNTIME_FLOOR_READY and the port;
 * serves one connection, then exits.
 */
import { createServer, type Socket } from 'node:net';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Piscina } from 'piscina';
import { RING_SIZE_BYTES_DEFAULT } from '../src/limits.js';
import { closeFile, openFile, syncData, writeZeros } from '../src/storage/segment_io.js';
import { RUNTIME_FLOOR_ACK_BYTES, RUNTIME_FLOOR_READY, RUNTIME_FLOOR_SEGMENT_BYTES, type FloorWorkerData } from './runtime_floor_protocol.js';

const dir = process.argv[2];
const recordBytes = Number(process.argv[3] ?? 0);
if (dir === undefined || !Number.isInteger(recordBytes) || recordBytes < 0) throw new Error('usage: runtime_floor_server.ts DIR [RECORD_BYTES]');

/** Written zeros, synced, as the node prepares a segment (src/storage/segment_file.ts). */
function preallocate(path: string): void {
  const fd = openFile(path, 'w');
  try {
    writeZeros(fd, path, 0, RUNTIME_FLOOR_SEGMENT_BYTES);
    syncData(fd, path, { noSync: false });
  } finally {
    closeFile(fd, path);
  }
}
for (const index of [0, 1]) preallocate(join(dir, `floor-segment-${index}`));

const ring = new Uint8Array(new SharedArrayBuffer(RING_SIZE_BYTES_DEFAULT));
const workerData: FloorWorkerData = { ring: ring.buffer as SharedArrayBuffer, dir, recordBytes };
// The node's writer pool options (src/ingest/writer_pool.ts), on one thread.
const pool = new Piscina({
  filename: fileURLToPath(new URL('./runtime_floor_writer.ts', import.meta.url)),
  workerData,
  minThreads: 1,
  maxThreads: 1,
  idleTimeout: 2 ** 31 - 1,
  atomics: 'sync',
  concurrentTasksPerWorker: 1,
  recordTiming: false,
});

/** Stream offsets: bytes received, handed to the writer, and durable. */
let received = 0;
let dispatched = 0;
let durable = 0;
/** What arrived while the ring was full; the socket is paused meanwhile. */
let held: Buffer | null = null;

/** Copies as much of `chunk` as the ring has room for; returns the rest (empty when all fit). */
function store(chunk: Buffer): Buffer {
  const n = Math.min(chunk.length, ring.length - (received - durable));
  for (let copied = 0; copied < n; ) {
    const at = (received + copied) % ring.length;
    const piece = Math.min(n - copied, ring.length - at);
    ring.set(chunk.subarray(copied, copied + piece), at);
    copied += piece;
  }
  received += n;
  return chunk.subarray(n);
}

function dispatch(socket: Socket): void {
  if (dispatched !== durable || received === dispatched) return; // one task in flight, as per timeline in the node
  dispatched = received;
  pool.run({ begin: durable, end: dispatched }).then(
    (end: number) => {
      durable = end;
      const ack = Buffer.allocUnsafe(RUNTIME_FLOOR_ACK_BYTES);
      ack.writeDoubleLE(durable);
      socket.write(ack);
      if (held !== null) {
        const rest = store(held);
        held = rest.length > 0 ? rest : null;
        if (held === null) socket.resume();
      }
      dispatch(socket);
    },
    (error: unknown) => {
      console.error('runtime floor writer failed:', error);
      process.exit(1);
    },
  );
}

const server = createServer((socket) => {
  server.close(); // one connection
  socket.setNoDelay(true);
  socket.on('data', (chunk: Buffer) => {
    const rest = held === null ? store(chunk) : Buffer.concat([held, chunk]); // keep the order behind what waits
    if (rest.length > 0) {
      held = rest;
      socket.pause();
    }
    dispatch(socket);
  });
  socket.on('close', () => void pool.destroy());
  socket.on('error', () => socket.destroy());
});
server.listen(0, '127.0.0.1', () => {
  const address = server.address();
  if (address === null || typeof address === 'string') throw new Error('runtime floor: no TCP address');
  process.stdout.write(`${RUNTIME_FLOOR_READY}${address.port}\n`);
});
