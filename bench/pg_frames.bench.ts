/**
 * Frame decoder throughput on the ingest hot path: 64-byte CopyData payloads (69-byte frames) arriving in
 * 64 KiB socket chunks, so about one frame per chunk is split and assembled. Target: well above 300,000
 * messages/s on one core, leaving most of the core for the acceptor. One iteration decodes 1 MiB of chunks.
 * Run: `node --import tsx bench/pg_frames.bench.ts`.
 */
import { pathToFileURL } from 'node:url';
import { Bench } from 'tinybench';
import { writeCopyDataHeader } from '../src/pg/backend_encoder.js';
import { FrameDecoder } from '../src/pg/frame_decoder.js';
import { FRAME_BYTES_DEFAULT } from '../src/limits.js';

const PAYLOAD_BYTES = 64;
const CHUNK_BYTES = 64 * 1024;
const STREAM_BYTES_TARGET = 1024 * 1024;

export interface FramesBenchResult {
  task: string;
  messagesPerSecond: number;
}

/** A stream of whole frames of about 1 MiB, cut into 64 KiB chunks (copies, like socket reads). */
function buildChunks(): { chunks: Buffer[]; messages: number } {
  const frameBytes = 5 + PAYLOAD_BYTES;
  const messages = Math.floor(STREAM_BYTES_TARGET / frameBytes);
  const stream = Buffer.alloc(messages * frameBytes);
  for (let index = 0; index < messages; index += 1) {
    const offset = writeCopyDataHeader(stream, index * frameBytes, PAYLOAD_BYTES);
    stream[offset] = 0x61; // 'a': an AppendRequest tag, as the acceptor would dispatch on it
    stream.writeUInt32BE(index, offset + 1);
  }
  const chunks: Buffer[] = [];
  for (let offset = 0; offset < stream.length; offset += CHUNK_BYTES) chunks.push(Buffer.from(stream.subarray(offset, offset + CHUNK_BYTES)));
  return { chunks, messages };
}

function typedDecoder(): FrameDecoder {
  const decoder = new FrameDecoder(FRAME_BYTES_DEFAULT);
  const startup = Buffer.from([0, 0, 0, 9, 0, 3, 0, 0, 0]);
  decoder.push(startup, () => decoder.startTypedPhase());
  return decoder;
}

export async function run(): Promise<FramesBenchResult[]> {
  const { chunks, messages } = buildChunks();
  let checksum = 0;
  const counting = typedDecoder();
  const countFrame = (): void => {
    checksum += 1;
  };
  const dispatching = typedDecoder();
  // What a sink does per message: read the tag and a field straight from the view.
  const dispatchFrame = (_tag: number, body: Buffer): void => {
    if (body[0] === 0x61) checksum += body.readUInt32BE(1) & 1;
  };

  const bench = new Bench({ name: 'pg frame decoder', time: 1_000 });
  bench
    .add('decode 64-byte CopyData in 64 KiB chunks', () => {
      for (const chunk of chunks) counting.push(chunk, countFrame);
    })
    .add('decode + read tag and u32 per message', () => {
      for (const chunk of chunks) dispatching.push(chunk, dispatchFrame);
    });
  await bench.run();
  if (checksum < 0) throw new Error('unreachable: keeps the callbacks observable');

  const results: FramesBenchResult[] = [];
  for (const task of bench.tasks) {
    const result = task.result;
    if (result.state !== 'completed') throw new Error(`${task.name}: ${result.state}`);
    results.push({ task: task.name, messagesPerSecond: Math.round(result.throughput.mean * messages) });
  }
  return results;
}

if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href) {
  for (const { task, messagesPerSecond } of await run()) {
    console.log(`${task}: ${messagesPerSecond.toLocaleString('en-US')} messages/s`);
  }
}
