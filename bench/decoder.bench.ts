/**
 * WAL record decoder throughput on one thread, fed in 128 KiB chunks (the size of a walproposer batch):
 *   - real PostgreSQL 15 WAL (pgbench -i plus transactions, from test/harness/real_wal.ts), up to the
 *     XLOG_SWITCH, so the skipped zero tail after it does not flatter the number;
 *   - synthetic 128-byte records (the per-record cost: target ~1 µs per small record or better).
 * Targets: hundreds of MiB/s on real WAL. Run: `node --import tsx bench/decoder.bench.ts` (needs PostgreSQL 15).
 */
import { pathToFileURL } from 'node:url';
import { Bench } from 'tinybench';
import { CRC_NATIVE_NAME } from '../src/wal/crc.js';
import type { Lsn } from '../src/wal/lsn.js';
import { WalRecordDecoder, initialDecoderState } from '../src/wal/record_decoder.js';
import { WalBuilder } from '../src/wal/wal_builder.js';
import { realWal } from '../test/harness/real_wal.js';

const CHUNK_BYTES = 128 * 1024;
const SYNTHETIC_RECORD_BYTES = 128;
const SYNTHETIC_STREAM_BYTES = 32 * 1024 * 1024;
const SYNTHETIC_SEGMENT_BYTES = 16 * 1024 * 1024;
const PG_VERSION = 150008;

export interface DecoderBenchResult {
  task: string;
  mibPerSecond: number;
  recordsPerSecond: number;
  nsPerRecord: number;
}

interface Input {
  name: string;
  startLsn: Lsn;
  segmentSizeBytes: number;
  pgVersion: number;
  chunks: Uint8Array[];
  bytes: number;
  records: number;
}

function chunked(bytes: Uint8Array): Uint8Array[] {
  const chunks: Uint8Array[] = [];
  for (let pos = 0; pos < bytes.length; pos += CHUNK_BYTES) chunks.push(bytes.subarray(pos, pos + CHUNK_BYTES));
  return chunks;
}

async function realInput(): Promise<Input> {
  const wal = await realWal();
  const switchRecord = wal.records.find((r) => r.rmgr === 'XLOG' && r.desc.startsWith('SWITCH'));
  const endLsn = switchRecord?.lsn ?? wal.endLsn;
  const bytes = wal.bytes.subarray(0, Number(endLsn - wal.startLsn));
  const records = wal.records.filter((r) => r.lsn < endLsn).length;
  return { name: `real PG15 WAL (${(bytes.length / 2 ** 20).toFixed(1)} MiB, ${records} records)`, startLsn: wal.startLsn, segmentSizeBytes: wal.segmentSizeBytes, pgVersion: wal.pgVersion, chunks: chunked(bytes), bytes: bytes.length, records };
}

function syntheticInput(): Input {
  const startLsn = BigInt(SYNTHETIC_SEGMENT_BYTES);
  const builder = new WalBuilder({ startLsn, segmentSizeBytes: SYNTHETIC_SEGMENT_BYTES, pgVersion: PG_VERSION, systemId: 1n });
  const data = new Uint8Array(SYNTHETIC_RECORD_BYTES - 24).fill(0x5a);
  let records = 0;
  while (builder.lsn - startLsn < BigInt(SYNTHETIC_STREAM_BYTES)) {
    builder.appendRecord({ rmid: 21, info: 0, data });
    records++;
  }
  const bytes = builder.take();
  return { name: `synthetic ${SYNTHETIC_RECORD_BYTES}-byte records (${records} records)`, startLsn, segmentSizeBytes: SYNTHETIC_SEGMENT_BYTES, pgVersion: PG_VERSION, chunks: chunked(bytes), bytes: bytes.length, records };
}

/** Decodes the whole input once; throws if the decoder disagrees with the expected record count. */
function decodeAll(input: Input): void {
  const decoder = new WalRecordDecoder(initialDecoderState({ startLsn: input.startLsn, segmentSizeBytes: input.segmentSizeBytes, pgVersion: input.pgVersion }));
  let records = 0;
  for (const chunk of input.chunks) records += decoder.feed(chunk);
  if (records !== input.records) throw new Error(`${input.name}: decoded ${records} records, expected ${input.records}`);
}

export async function run(): Promise<DecoderBenchResult[]> {
  const inputs = [await realInput(), syntheticInput()];
  const bench = new Bench({ name: 'WAL record decoder', time: 1_500, iterations: 10 });
  for (const input of inputs) bench.add(`decode ${input.name} in 128 KiB chunks`, () => decodeAll(input));
  await bench.run();
  const results: DecoderBenchResult[] = [];
  for (const [index, task] of bench.tasks.entries()) {
    const input = inputs[index];
    const result = task.result;
    if (input === undefined || result.state !== 'completed') throw new Error(`${task.name}: ${result.state}`);
    const secondsPerIteration = result.latency.mean / 1000;
    results.push({
      task: task.name,
      mibPerSecond: Math.round(input.bytes / 2 ** 20 / secondsPerIteration),
      recordsPerSecond: Math.round(input.records / secondsPerIteration),
      nsPerRecord: Math.round((secondsPerIteration * 1e9) / input.records),
    });
  }
  return results;
}

if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href) {
  console.log(`CRC-32C: ${CRC_NATIVE_NAME === null ? 'portable fallback' : `native ${CRC_NATIVE_NAME}`}`);
  console.table(await run());
}
