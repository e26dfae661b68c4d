/**
 * Local WAL removal (`timeline/wal_removal.ts`) on a real directory: ascending deletion up to a limit, up to
 * `recycleMax` complete segments kept under `recycled-<name>` for reuse (counting those already there),
 * leftover `.partial` files never kept, a quiet timeline's recycled files dropped, and an offloaded
 * timeline's cleanup removing recycled files too.
 */
import assert from 'node:assert/strict';
import { readdirSync, writeFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, beforeEach, describe, test } from 'node:test';
import { segmentFileName } from '../../src/wal/lsn.js';
import { Failpoints } from '../../src/sync/failpoints.js';
import { dropRecycledSegments, localWal, removeSegmentsFrom, removeSegmentsUpTo } from '../../src/timeline/wal_removal.js';

const SEG = 1024 * 1024;
const dirs: string[] = [];
let dir = '';
beforeEach(async () => {
  dir = await mkdtemp(join(tmpdir(), 'sk-removal-'));
  dirs.push(dir);
});
after(async () => {
  for (const d of dirs) await rm(d, { recursive: true, force: true });
});

const name = (segno: bigint): string => segmentFileName(segno, SEG);
const names = (): string[] => readdirSync(dir).sort();
const touch = (file: string): void => writeFileSync(join(dir, file), 'x');
const options = (recycleMax: number) => ({ noSync: true, recycleMax, failpoints: new Failpoints(false), signal: new AbortController().signal });

describe('WAL removal', () => {
  test('removes segments up to the limit in order and keeps the first recycleMax complete ones for reuse', async () => {
    for (const segno of [1n, 2n, 3n, 4n, 5n]) touch(name(segno));
    touch(`${name(6n)}.partial`);
    touch('safekeeper.control');
    assert.equal(await removeSegmentsUpTo(dir, SEG, 4n, options(2)), 4);
    assert.deepEqual(names(), [name(5n), `${name(6n)}.partial`, `recycled-${name(1n)}`, `recycled-${name(2n)}`, 'safekeeper.control'].sort());
    // Recycled files already there count against the limit: segment 5 is deleted.
    assert.equal(await removeSegmentsUpTo(dir, SEG, 5n, options(2)), 1);
    assert.deepEqual(names(), [`${name(6n)}.partial`, `recycled-${name(1n)}`, `recycled-${name(2n)}`, 'safekeeper.control'].sort());
  });

  test('recycleMax 0 deletes everything; a leftover .partial below the limit is deleted, never kept', async () => {
    touch(`${name(1n)}.partial`);
    touch(name(2n));
    assert.equal(await removeSegmentsUpTo(dir, SEG, 2n, options(5)), 2);
    assert.deepEqual(names(), [`recycled-${name(2n)}`]);
    touch(name(3n));
    assert.equal(await removeSegmentsUpTo(dir, SEG, 3n, options(0)), 1);
    assert.deepEqual(names(), [`recycled-${name(2n)}`]);
  });

  test('the manager learns the local segment range and the recycled files from one listing', async () => {
    assert.deepEqual(await localWal(dir, SEG), { range: null, recycledFiles: 0 });
    touch(`recycled-${name(1n)}`);
    touch(name(3n));
    touch(`${name(5n)}.partial`);
    touch('safekeeper.control');
    assert.deepEqual(await localWal(dir, SEG), { range: { lowest: 3n, highest: 5n }, recycledFiles: 1 });
  });

  test('a quiet timeline drops its recycled files and nothing else', async () => {
    touch(`recycled-${name(1n)}`);
    touch(`recycled-${name(2n)}`);
    touch(name(3n));
    touch(`${name(4n)}.partial`);
    touch('safekeeper.control');
    assert.equal(await dropRecycledSegments(dir), 2);
    assert.deepEqual(names(), [name(3n), `${name(4n)}.partial`, 'safekeeper.control'].sort());
    assert.equal(await dropRecycledSegments(dir), 0);
  });

  test("an offloaded timeline's cleanup removes the segments from a point on and every recycled file", async () => {
    touch(name(3n));
    touch(`${name(4n)}.partial`);
    touch(`recycled-${name(1n)}`);
    touch('safekeeper.control');
    assert.equal(await removeSegmentsFrom(dir, SEG, 4n, true), 2);
    assert.deepEqual(names(), [name(3n), 'safekeeper.control']);
  });
});
