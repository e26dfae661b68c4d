import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { describe, it } from 'node:test';
import { computeRecordCrc } from '../../src/wal/page.js';
import { RECORD_CRC_NATIVE, verifyRecords, verifyRecordsPortable } from '../../src/wal/record_crc.js';

const ADDON = fileURLToPath(new URL('../../native/build/Release/wal_crc.node', import.meta.url));

/** `count` records of random bodies (0..700 bytes) with correct xl_crc, 8-aligned, in a view of a SharedArrayBuffer. */
function recordsInSharedMemory(count: number, seed: number): { data: Uint8Array; starts: Int32Array } {
  let state = seed;
  const next = (): number => (state = (Math.imul(state, 1103515245) + 12345) >>> 0);
  const sizes = Array.from({ length: count }, () => 24 + (next() % 700));
  const bytes = sizes.reduce((sum, size) => sum + ((size + 7) & ~7), 0);
  const data = new Uint8Array(new SharedArrayBuffer(bytes + 16), 8, bytes); // a view that does not start at 0
  const view = new DataView(data.buffer, data.byteOffset, data.byteLength);
  const starts = new Int32Array(count);
  let at = 0;
  sizes.forEach((size, index) => {
    starts[index] = at;
    for (let i = 4; i < size; i++) data[at + i] = next() & 0xff;
    view.setUint32(at, size, true);
    view.setUint32(at + 20, computeRecordCrc(data, at, at + size), true);
    at += (size + 7) & ~7;
  });
  return { data, starts };
}

describe('WAL record batch CRC check', () => {
  it('uses the native addon whenever it is built on x64 (a silent fallback would hide a broken build)', () => {
    if (process.arch === 'x64' && existsSync(ADDON)) assert.equal(RECORD_CRC_NATIVE, true);
    assert.equal(verifyRecords !== verifyRecordsPortable, RECORD_CRC_NATIVE);
  });

  for (const [name, verify] of [['default', verifyRecords], ['portable', verifyRecordsPortable]] as const) {
    it(`${name}: accepts good records and names the first one with any flipped bit`, () => {
      const { data, starts } = recordsInSharedMemory(300, 7);
      assert.equal(verify(data, starts, starts.length), -1);
      assert.equal(verify(data, starts, 0), -1);
      for (const [index, delta] of [[0, 4], [0, 23], [17, 5], [150, 20], [299, 24], [299, 12]] as const) {
        const at = (starts[index] as number) + delta;
        data[at] = (data[at] as number) ^ 0x80;
        assert.equal(verify(data, starts, starts.length), index, `record ${index}, byte ${delta}`);
        assert.equal(verify(data, starts, index), -1, 'the records before it are good');
        data[at] = (data[at] as number) ^ 0x80;
      }
      assert.equal(verify(data, starts, starts.length), -1);
    });
  }

  it('native: refuses records outside the buffer and wrong argument types without reading out of bounds', { skip: !RECORD_CRC_NATIVE }, () => {
    const { data, starts } = recordsInSharedMemory(3, 1);
    assert.throws(() => verifyRecords(data, Int32Array.from([-8]), 1), RangeError);
    assert.throws(() => verifyRecords(data, Int32Array.from([data.length - 8]), 1), RangeError);
    assert.throws(() => verifyRecords(data.subarray(0, (starts[1] as number) - 8), starts, 1), RangeError); // record 0 is cut
    assert.throws(() => verifyRecords(data, starts, 4), RangeError); // count past starts
    assert.throws(() => verifyRecords(new Uint16Array(8) as unknown as Uint8Array, starts, 1), TypeError);
    assert.throws(() => verifyRecords(data, Array.from(starts) as unknown as Int32Array, 1), TypeError);
  });
});
