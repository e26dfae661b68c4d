/**
 * The writer of the runtime floor (bench/runtime_floor.ts): a Piscina task that checksums, pwrites and
 * fdatasyncs ring bytes, as the real writer does minus record decoding, segment preparation and naming.
 * Two preallocated, zero-filled 16 MiB files stand in for segments and are overwritten in turn. One task at
 * a time (the server keeps one in flight), so the module-level file state needs no locking; the files stay
 * open until the server process exits.
 *
 * Checksums: one native CRC-32C call per ring piece, or (recordBytes > 0, see FloorWorkerData) the node's
 * record CRC (`computeRecordCrc`) once per record, a large batch checked while its fdatasync runs on libuv's
 * pool. The records are fixed-size slices of each piece (the bytes are not WAL, so their xl_tot_len cannot
 * drive the node's batch check, native/wal_crc): this is the node's portable path, and an upper bound of
 * what verification costs the node when the addon is built. The comparison is folded into a running value,
 * so the work cannot be skipped, and never fails.
 */
import { join } from 'node:path';
import { workerData } from 'node:worker_threads';
import { openFile, pwriteAll, syncData, syncDataAsync } from '../src/storage/segment_io.js';
import { crc32cNative } from '../src/wal/crc.js';
import { RECORD_CRC_OFFSET_BYTES, computeRecordCrc } from '../src/wal/page.js';
import { OVERLAP_VERIFY_MIN_BYTES } from '../workers/wal_writer.js';
import { RUNTIME_FLOOR_SEGMENT_BYTES, type FloorWorkerData } from './runtime_floor_protocol.js';

const { ring, dir, recordBytes } = workerData as FloorWorkerData;
const ringBytes = new Uint8Array(ring);
const ringView = new DataView(ring);
const paths = [0, 1].map((index) => join(dir, `floor-segment-${index}`));
let files: number[] | null = null;
let checksum = 0;

function segmentFiles(): number[] {
  files ??= paths.map((path) => openFile(path, 'r+'));
  return files;
}

/** Checksums ring bytes [at, at + length) as configured: whole records, then what is left in one call. */
function check(at: number, length: number): void {
  const end = at + length;
  let record = at;
  if (recordBytes > 0) {
    for (; record + recordBytes <= end; record += recordBytes) {
      checksum ^= computeRecordCrc(ringBytes, record, record + recordBytes) ^ ringView.getUint32(record + RECORD_CRC_OFFSET_BYTES, true);
    }
  }
  if (record < end) checksum = crc32cNative(ringBytes.subarray(record, end), checksum);
}

/** Makes ring bytes [begin, end) (stream offsets) durable; returns `end`. */
export default async function writeRange({ begin, end }: { begin: number; end: number }): Promise<number> {
  const fds = segmentFiles();
  const touched = new Set<number>(); // indexes into files/paths
  const pieces: [number, number][] = []; // ring offset, length
  for (let offset = begin; offset < end; ) {
    const ringAt = offset % ringBytes.length;
    const segmentAt = offset % RUNTIME_FLOOR_SEGMENT_BYTES;
    const n = Math.min(end - offset, ringBytes.length - ringAt, RUNTIME_FLOOR_SEGMENT_BYTES - segmentAt);
    const file = Math.floor(offset / RUNTIME_FLOOR_SEGMENT_BYTES) % 2;
    pwriteAll(fds[file] as number, paths[file] as string, ringBytes, ringAt, n, segmentAt);
    pieces.push([ringAt, n]);
    touched.add(file);
    offset += n;
  }
  const sync = { noSync: false };
  if (recordBytes > 0 && end - begin >= OVERLAP_VERIFY_MIN_BYTES) {
    // As the node's writer does with a large batch: verify while the syncs run on libuv's pool.
    const synced = Promise.all([...touched].map((file) => syncDataAsync(fds[file] as number, paths[file] as string, sync)));
    for (const [at, length] of pieces) check(at, length);
    await synced;
  } else {
    for (const [at, length] of pieces) check(at, length);
    for (const file of touched) syncData(fds[file] as number, paths[file] as string, sync);
  }
  return end;
}
