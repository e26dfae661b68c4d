/**
 * readSegment: what the backup uploads is exactly one whole segment file, or a clear SegmentMissingError; and
 * under it and every other async reader of local segments, openSegmentFile (which name is opened) and
 * readUpTo (the read loop).
 */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { open } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import { SegmentMissingError, readSegment } from '../../src/remote/wal_backup.js';
import { readUpTo } from '../../src/storage/file_read.js';
import { openSegmentFile } from '../../src/storage/segment_read.js';
import { segmentPath } from '../../src/storage/layout.js';

const SEGMENT_BYTES = 1024 * 1024;

describe('readSegment', () => {
  const dir = mkdtempSync(join(tmpdir(), 'sk-read-segment-'));
  after(() => rmSync(dir, { recursive: true, force: true }));
  const content = (seed: number, length = SEGMENT_BYTES) => Buffer.from(Uint8Array.from({ length }, (_, i) => (i * seed + 3) & 0xff));

  test('reads the complete file, else the .partial, byte for byte', async () => {
    writeFileSync(segmentPath(dir, 1n, SEGMENT_BYTES, true), content(7));
    assert.deepEqual(Buffer.from(await readSegment(dir, 1n, SEGMENT_BYTES)), content(7));
    writeFileSync(segmentPath(dir, 1n, SEGMENT_BYTES, false), content(11));
    assert.deepEqual(Buffer.from(await readSegment(dir, 1n, SEGMENT_BYTES)), content(11));
  });

  test('a missing, short or long file is a SegmentMissingError naming the segment', async () => {
    await assert.rejects(readSegment(dir, 2n, SEGMENT_BYTES), (error: unknown) => error instanceof SegmentMissingError && /not on local disk/.test(error.message));
    writeFileSync(segmentPath(dir, 3n, SEGMENT_BYTES, false), content(5, SEGMENT_BYTES - 8));
    await assert.rejects(readSegment(dir, 3n, SEGMENT_BYTES), (error: unknown) => error instanceof SegmentMissingError && /has 1048568 bytes, not 1048576/.test(error.message));
    writeFileSync(segmentPath(dir, 4n, SEGMENT_BYTES, false), content(5, SEGMENT_BYTES + 1));
    await assert.rejects(readSegment(dir, 4n, SEGMENT_BYTES), (error: unknown) => error instanceof SegmentMissingError && /has more than 1048576 bytes, not 1048576/.test(error.message));
  });

  test('reads into a given (reused) buffer, and still sees a file that is too long', async () => {
    writeFileSync(segmentPath(dir, 5n, SEGMENT_BYTES, false), content(13));
    const into = Buffer.alloc(SEGMENT_BYTES + 1, 0xee);
    const body = await readSegment(dir, 5n, SEGMENT_BYTES, into);
    assert.equal(body.buffer, into.buffer, 'a view of the given buffer');
    assert.deepEqual(Buffer.from(body), content(13));
    const stale = Buffer.alloc(2 * SEGMENT_BYTES, 0xee); // longer than needed, old bytes after the segment
    await assert.rejects(readSegment(dir, 4n, SEGMENT_BYTES, stale), /has more than 1048576 bytes/);
    assert.equal((await readSegment(dir, 5n, SEGMENT_BYTES, stale)).length, SEGMENT_BYTES, 'old bytes past the segment are not read back');
  });
});

describe('openSegmentFile', () => {
  const dir = mkdtempSync(join(tmpdir(), 'sk-open-segment-'));
  after(() => rmSync(dir, { recursive: true, force: true }));

  test('opens the .partial first unless asked for the complete name first; null when neither exists', async () => {
    assert.equal(await openSegmentFile(dir, 1n, SEGMENT_BYTES), null);
    assert.equal(await openSegmentFile(dir, 1n, SEGMENT_BYTES, true), null);
    writeFileSync(segmentPath(dir, 1n, SEGMENT_BYTES, false), 'complete');
    writeFileSync(segmentPath(dir, 1n, SEGMENT_BYTES, true), 'partial');
    for (const [completeFirst, expected] of [[false, 'partial'], [true, 'complete']] as const) {
      const opened = await openSegmentFile(dir, 1n, SEGMENT_BYTES, completeFirst);
      assert.ok(opened !== null);
      try {
        assert.equal(opened.path, segmentPath(dir, 1n, SEGMENT_BYTES, expected === 'partial'));
        assert.equal(String(await opened.handle.readFile()), expected);
      } finally {
        await opened.handle.close();
      }
    }
  });
});

describe('readUpTo', () => {
  const dir = mkdtempSync(join(tmpdir(), 'sk-read-up-to-'));
  after(() => rmSync(dir, { recursive: true, force: true }));

  test('reads at a position into an offset, and stops short only at the end of the file', async () => {
    const path = join(dir, 'file');
    writeFileSync(path, Buffer.from(Array.from({ length: 100 }, (_, i) => i)));
    const handle = await open(path, 'r');
    try {
      const into = Buffer.alloc(64, 0xee);
      assert.equal(await readUpTo(handle, into, 4, 30, 10), 30);
      assert.deepEqual([...into.subarray(4, 34)], Array.from({ length: 30 }, (_, i) => 10 + i));
      assert.equal(into[3], 0xee);
      assert.equal(into[34], 0xee);
      assert.equal(await readUpTo(handle, into, 0, 64, 90), 10, 'only the 10 bytes before the end');
      assert.equal(await readUpTo(handle, into, 0, 8, 100), 0, 'nothing at the end');
    } finally {
      await handle.close();
    }
  });
});
