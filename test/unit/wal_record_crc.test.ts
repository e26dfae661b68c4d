import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { describe, it } from 'node:test';
import { computeRecordCrc, RM_LOGICALMSG_ID, RM_XLOG_ID, XLOG_SWITCH } from '../../src/wal/page.js';
import {
  RECORD_CRC_NATIVE, recordChecks, verifyRecordsPortable, WALK_FROM, WALK_IO_LENGTH, WALK_LAST_END, WALK_LAST_START, WALK_LSN_HI, WALK_LSN_LO,
  WALK_PREV_HI, WALK_PREV_KNOWN, WALK_PREV_LO, WALK_TO,
} from '../../src/wal/record_crc.js';

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

const verifyRecords = recordChecks.verify;

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

/** The LSN of a chain's first byte: high half 3, low half near the top of the 4 GiB range. */
const CHAIN_LSN_HI = 3;
const CHAIN_LSN_LO = 0xffff_0000 + 8;

/**
 * Records back to back from CHAIN_LSN, each 8-aligned, with xl_prev = the LSN of the one before (the first
 * one's xl_prev is 3/FFFF0000), in a view of a SharedArrayBuffer that does not start at 0.
 */
function chain(sizes: number[]): { data: Uint8Array; starts: number[]; ends: number[]; reseal: (index: number) => void } {
  const starts: number[] = [];
  let at = 0;
  for (const size of sizes) {
    starts.push(at);
    at = (at + size + 7) & ~7;
  }
  const data = new Uint8Array(new SharedArrayBuffer(at + 24), 8, at);
  const view = new DataView(data.buffer, data.byteOffset, data.byteLength);
  const reseal = (index: number): void => {
    const start = starts[index] as number;
    view.setUint32(start + 20, computeRecordCrc(data, start, start + (sizes[index] as number)), true);
  };
  sizes.forEach((size, index) => {
    const start = starts[index] as number;
    for (let i = 24; i < size; i++) data[start + i] = (start * 7 + i) & 0xff;
    view.setUint32(start, size, true);
    view.setUint32(start + 8, index === 0 ? 0xffff_0000 : CHAIN_LSN_LO + (starts[index - 1] as number), true);
    view.setUint32(start + 12, CHAIN_LSN_HI, true);
    data[start + 16] = 0;
    data[start + 17] = RM_LOGICALMSG_ID;
    reseal(index);
  });
  return { data, starts, ends: sizes.map((size, index) => (starts[index] as number) + size), reseal };
}

describe('WAL record native walk', { skip: !RECORD_CRC_NATIVE }, () => {
  const walk = recordChecks.walk ?? ((): number => assert.fail('no native walk'));
  const sizes = [40, 101, 24, 311, 312, 313, 900, 64]; // record 2 has no body
  const io = new Uint32Array(WALK_IO_LENGTH);
  /** Walks data[from, to); the chain's first record has a known predecessor unless `prevKnown` is false. */
  const walkRange = (data: Uint8Array, from: number, to: number, starts: number[], prevKnown = true): number => {
    io.fill(0);
    io[WALK_FROM] = from;
    io[WALK_TO] = to;
    io[WALK_LSN_HI] = CHAIN_LSN_HI;
    io[WALK_LSN_LO] = CHAIN_LSN_LO + from;
    io[WALK_PREV_KNOWN] = prevKnown ? 1 : 0;
    const index = starts.indexOf(from);
    io[WALK_PREV_HI] = CHAIN_LSN_HI;
    io[WALK_PREV_LO] = index === 0 ? 0xffff_0000 : CHAIN_LSN_LO + (starts[index - 1] as number);
    return walk(data, io);
  };

  it('walks a good run to its end, from any record, and says where the last one lies', () => {
    const { data, starts, ends } = chain(sizes);
    for (let first = 0; first < sizes.length; first++) {
      assert.equal(walkRange(data, starts[first] as number, data.length, starts), sizes.length - first);
      assert.equal(io[WALK_LAST_START], starts.at(-1));
      assert.equal(io[WALK_LAST_END], ends.at(-1));
    }
    assert.equal(walkRange(data, starts[1] as number, data.length, starts, false), sizes.length - 1, 'no predecessor known: the first xl_prev is not checked');
  });

  it('stops before a record cut by the range end, and after one whose padding leaves the range', () => {
    const { data, starts, ends } = chain(sizes);
    assert.equal(walkRange(data, 0, (ends[3] as number) - 1, starts), 3);
    assert.equal(io[WALK_LAST_END], ends[2]);
    assert.equal(walkRange(data, 0, (starts[2] as number) + 23, starts), 2, 'a header cut');
    assert.equal(walkRange(data, 0, ends[3] as number, starts), 4, 'record 3 ends unaligned at the range end: walked, its padding is left');
    assert.equal(io[WALK_LAST_END], ends[3]);
    assert.equal(walkRange(data, starts[2] as number, starts[2] as number, starts), 0, 'an empty range');
  });

  it('stops before a record with a bad CRC, a bad xl_prev, a length below 24, or an XLOG_SWITCH', () => {
    const edits: [string, (data: Uint8Array, view: DataView, start: number, reseal: () => void) => void][] = [
      ['flipped body bit', (data, _view, start) => void (data[start + 30] = (data[start + 30] as number) ^ 0x04)],
      ['flipped header bit', (data, _view, start) => void (data[start + 18] = (data[start + 18] as number) ^ 0x01)],
      ['xl_prev, CRC resealed', (_data, view, start, reseal) => (view.setUint32(start + 8, view.getUint32(start + 8, true) + 8, true), reseal())],
      ['xl_prev high half, CRC resealed', (_data, view, start, reseal) => (view.setUint32(start + 12, 4, true), reseal())],
      ['xl_tot_len 16', (_data, view, start) => view.setUint32(start, 16, true)],
      ['xl_tot_len past the range', (_data, view, start) => view.setUint32(start, 1 << 20, true)],
      ['an XLOG_SWITCH, CRC resealed', (data, _view, start, reseal) => ((data[start + 17] = RM_XLOG_ID), (data[start + 16] = XLOG_SWITCH | 0x01), reseal())],
    ];
    for (const [name, edit] of edits) {
      for (const index of [0, 3, sizes.length - 1]) {
        const { data, starts, ends, reseal } = chain(sizes);
        edit(data, new DataView(data.buffer, data.byteOffset, data.byteLength), starts[index] as number, () => reseal(index));
        assert.equal(walkRange(data, 0, data.length, starts), index, `${name} in record ${index}`);
        if (index > 0) assert.deepEqual([io[WALK_LAST_START], io[WALK_LAST_END]], [starts[index - 1], ends[index - 1]], name);
      }
    }
  });

  it('refuses a short io, a range outside data and wrong argument types without reading out of bounds', () => {
    const { data, starts } = chain(sizes);
    assert.throws(() => walk(data, new Uint32Array(WALK_IO_LENGTH - 1)), RangeError);
    io.fill(0);
    io[WALK_TO] = data.length + 8;
    assert.throws(() => walk(data, io), RangeError);
    io[WALK_FROM] = 16;
    io[WALK_TO] = 8;
    assert.throws(() => walk(data, io), RangeError);
    assert.throws(() => walk(Array.from(data) as unknown as Uint8Array, io), TypeError);
    assert.throws(() => walk(data, new Int32Array(WALK_IO_LENGTH) as unknown as Uint32Array), TypeError);
    assert.equal(walkRange(data, 0, data.length, starts), sizes.length, 'io reused after the errors');
  });
});
