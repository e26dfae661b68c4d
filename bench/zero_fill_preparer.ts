/**
 * Worker thread of the zero-filled-segment ceiling (disk_ceiling.ts): prepares segments with the node's own
 * `prepareSegment` (zero-filled, synced in chunks) one ahead of the writing thread, as the node's writer
 * pool prepares the next segment of a timeline. No event loop: requests and answers are two counters in a
 * SharedArrayBuffer, so the measuring thread can stay in its synchronous loop.
 */
import { workerData } from 'node:worker_threads';
import { prepareSegment } from '../src/storage/segment_file.js';
import { PREPARER_PREPARED, PREPARER_REQUESTED, PREPARER_STOP, type PreparerData } from './disk_ceiling.js';

const { control, dir, segmentBytes } = workerData as PreparerData;
const state = new Int32Array(control);
let prepared = Atomics.load(state, PREPARER_PREPARED);
for (;;) {
  const requested = Atomics.load(state, PREPARER_REQUESTED);
  if (requested === PREPARER_STOP) break;
  if (prepared >= requested) {
    Atomics.wait(state, PREPARER_REQUESTED, requested);
    continue;
  }
  prepared += 1;
  prepareSegment(dir, BigInt(prepared), segmentBytes, 'zeros', { noSync: false });
  Atomics.store(state, PREPARER_PREPARED, prepared);
  Atomics.notify(state, PREPARER_PREPARED);
}
