import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { InvalidArgumentError } from '../../src/errors.js';
import { initialSegmentImage, xlogPageMagic } from '../../src/wal/segment_image.js';

const MIB = 1024 * 1024;
const SEG16 = 16 * MIB;
const SYSID = 0x6f3a_1122_3344_5566n;

interface Header {
  magic: number;
  info: number;
  tli: number;
  pageaddr: bigint;
  remLen: number;
  pad: number;
}

function shortHeader(image: Uint8Array, offset: number): Header {
  const view = new DataView(image.buffer, image.byteOffset, image.byteLength);
  return {
    magic: view.getUint16(offset, true),
    info: view.getUint16(offset + 2, true),
    tli: view.getUint32(offset + 4, true),
    pageaddr: view.getBigUint64(offset + 8, true),
    remLen: view.getUint32(offset + 16, true),
    pad: view.getUint32(offset + 20, true),
  };
}

function longTail(image: Uint8Array): { sysid: bigint; segSize: number; blcksz: number } {
  const view = new DataView(image.buffer, image.byteOffset, image.byteLength);
  return { sysid: view.getBigUint64(24, true), segSize: view.getUint32(32, true), blcksz: view.getUint32(36, true) };
}

/** Every byte outside the given [offset, length) ranges is zero. */
function assertZeroExcept(image: Uint8Array, ranges: Array<[number, number]>): void {
  const nonZero: number[] = [];
  for (let index = 0; index < image.length; index++) {
    if (image[index] !== 0 && !ranges.some(([start, length]) => index >= start && index < start + length)) nonZero.push(index);
  }
  assert.deepEqual(nonZero.slice(0, 5), []);
}

describe('initial segment image', () => {
  test('xlp_magic follows the PostgreSQL major version, given as PG_VERSION_NUM or a bare major', () => {
    assert.equal(xlogPageMagic(140_011), 0xd10d);
    assert.equal(xlogPageMagic(150_008), 0xd110);
    assert.equal(xlogPageMagic(16), 0xd113);
    assert.equal(xlogPageMagic(170_004), 0xd116);
    assert.throws(() => xlogPageMagic(130_000), InvalidArgumentError);
    assert.throws(() => xlogPageMagic(0), InvalidArgumentError);
  });

  test('LSN on the first page: long header fakes a continued record ending at the LSN', () => {
    const lsn = 0x2_0300_0000n + 0x128n; // segment 0x203, offset 0x128
    const image = initialSegmentImage({ lsn, segmentSizeBytes: SEG16, systemId: SYSID, pgVersion: 150_008 });
    assert.equal(image.length, SEG16);
    assert.deepEqual(shortHeader(image, 0), { magic: 0xd110, info: 0x3, tli: 1, pageaddr: 0x2_0300_0000n, remLen: 0x128 - 40, pad: 0 });
    assert.deepEqual(longTail(image), { sysid: SYSID, segSize: SEG16, blcksz: 8192 });
    assertZeroExcept(image, [[0, 40]]);
  });

  test('LSN at the segment start: long header only, no contrecord', () => {
    const lsn = 0x0100_0000n;
    const image = initialSegmentImage({ lsn, segmentSizeBytes: SEG16, systemId: SYSID, pgVersion: 160_000 });
    assert.deepEqual(shortHeader(image, 0), { magic: 0xd113, info: 0x2, tli: 1, pageaddr: lsn, remLen: 0, pad: 0 });
    assertZeroExcept(image, [[0, 40]]);
  });

  test('LSN right after the long header: no contrecord flag (PostgreSQL refuses one with rem_len 0)', () => {
    const lsn = 0x0100_0000n + 40n;
    const image = initialSegmentImage({ lsn, segmentSizeBytes: SEG16, systemId: SYSID, pgVersion: 150_000 });
    assert.deepEqual(shortHeader(image, 0), { magic: 0xd110, info: 0x2, tli: 1, pageaddr: 0x0100_0000n, remLen: 0, pad: 0 });
  });

  test('LSN mid-page on a later page: long header plain, short header with contrecord on that page', () => {
    const segmentStart = 0x1_6b00_0000n;
    const pageOffsetInSegment = 5 * 8192;
    const lsn = segmentStart + BigInt(pageOffsetInSegment) + 0x1a8n;
    const image = initialSegmentImage({ lsn, segmentSizeBytes: SEG16, systemId: SYSID, pgVersion: 170_004 });
    assert.deepEqual(shortHeader(image, 0), { magic: 0xd116, info: 0x2, tli: 1, pageaddr: segmentStart, remLen: 0, pad: 0 });
    assert.deepEqual(longTail(image), { sysid: SYSID, segSize: SEG16, blcksz: 8192 });
    assert.deepEqual(shortHeader(image, pageOffsetInSegment), {
      magic: 0xd116,
      info: 0x1,
      tli: 1,
      pageaddr: segmentStart + BigInt(pageOffsetInSegment),
      remLen: 0x1a8 - 24,
      pad: 0,
    });
    assertZeroExcept(image, [
      [0, 40],
      [pageOffsetInSegment, 24],
    ]);
  });

  test('page-aligned LSN on a later page: short header without contrecord', () => {
    const lsn = 0x0100_0000n + 3n * 8192n;
    const image = initialSegmentImage({ lsn, segmentSizeBytes: SEG16, systemId: 0n, pgVersion: 15 });
    assert.deepEqual(shortHeader(image, 3 * 8192), { magic: 0xd110, info: 0, tli: 1, pageaddr: lsn, remLen: 0, pad: 0 });
    assert.equal(longTail(image).sysid, 0n);
    assertZeroExcept(image, [
      [0, 40],
      [3 * 8192, 24],
    ]);
  });

  test('the last page of a small segment', () => {
    const segmentStart = 7n * BigInt(MIB);
    const lsn = segmentStart + BigInt(MIB - 8192) + 0x100n;
    const image = initialSegmentImage({ lsn, segmentSizeBytes: MIB, systemId: SYSID, pgVersion: 150_000 });
    assert.equal(image.length, MIB);
    assert.equal(longTail(image).segSize, MIB);
    assert.deepEqual(shortHeader(image, MIB - 8192), { magic: 0xd110, info: 1, tli: 1, pageaddr: segmentStart + BigInt(MIB - 8192), remLen: 0x100 - 24, pad: 0 });
  });

  test('refuses LSNs inside a page header, bad segment sizes and unknown versions', () => {
    const args = { segmentSizeBytes: SEG16, systemId: SYSID, pgVersion: 150_000 };
    assert.throws(() => initialSegmentImage({ ...args, lsn: 0x0100_0000n + 39n }), InvalidArgumentError);
    assert.throws(() => initialSegmentImage({ ...args, lsn: 0x0100_0000n + 8192n + 8n }), InvalidArgumentError);
    assert.throws(() => initialSegmentImage({ ...args, lsn: 0x0100_0000n, segmentSizeBytes: 3 * MIB }), InvalidArgumentError);
    assert.throws(() => initialSegmentImage({ ...args, lsn: 0x0100_0000n, pgVersion: 120_000 }), InvalidArgumentError);
  });
});
