/**
 * The writer of the runtime floor (bench/runtime_floor.ts): a Piscina task that checksums, pwrites and
 * fdatasyncs ring bytes, as the real writer does minus record decoding, segment preparation and naming.
 * Two preallocated, zero-filled 16 MiB files stand in for segments and are overwritten in turn. One task at
 * a time (the server keeps one in flight), so the module-level file state needs no locking; the files stay
 * open until the server process exits.
 */
import { join } from 'node:path';
import { workerData } from 'node:worker_threads';
import { openFile, pwriteAll, syncData } from '../src/storage/segment_io.js';
import { crc32cNative } from '../src/wal/crc.js';
import { RUNTIME_FLOOR_SEGMENT_BYTES, type FloorWorkerData } from './runtime_floor_protocol.js';

const { ring, dir } = workerData as FloorWorkerData;
const ringBytes = new Uint8Array(ring);
const paths = [0, 1].map((index) => join(dir, `floor-segment-${index}`));
let files: number[] | null = null;
let checksum = 0;

function segmentFiles(): number[] {
  files ??= paths.map((path) => openFile(path, 'r+'));
  return files;
}

/** Makes ring bytes [begin, end) (stream offsets) durable; returns `end`. */
export default function writeRange({ begin, end }: { begin: number; end: number }): number {
  const fds = segmentFiles();
  const touched = new Set<number>(); // indexes into files/paths
  for (let offset = begin; offset < end; ) {
    const ringAt = offset % ringBytes.length;
    const segmentAt = offset % RUNTIME_FLOOR_SEGMENT_BYTES;
    const n = Math.min(end - offset, ringBytes.length - ringAt, RUNTIME_FLOOR_SEGMENT_BYTES - segmentAt);
    const piece = ringBytes.subarray(ringAt, ringAt + n);
    checksum = crc32cNative(piece, checksum); // every byte checksummed, one native call per piece
    const file = Math.floor(offset / RUNTIME_FLOOR_SEGMENT_BYTES) % 2;
    pwriteAll(fds[file] as number, paths[file] as string, piece, 0, n, segmentAt);
    touched.add(file);
    offset += n;
  }
  for (const file of touched) syncData(fds[file] as number, paths[file] as string, { noSync: false });
  return end;
}

