/**
 * Checks on what a safekeeper acknowledged and kept, shared by the ingest, crash and background tests:
 * acknowledged flush_lsns must be monotonic record ends, and a timeline's segment files (`.partial` or
 * complete, local or already uploaded to the default remote storage) must hold the source's bytes and
 * nothing after the end. `copySegmentsForWaldump` prepares the files for pg_waldump.
 *
 * Design: files are read as a user would find them on disk, after the fact; a running node may move a
 * complete segment to remote storage between a listing and a read, so reads fall back to the remote copy.
 * Failures are node:assert errors that name the first bad LSN.
 */
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { readdir, readFile, writeFile } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { formatLsn, parseSegmentFileName, segmentFileName, segmentNumber, segmentStartLsn, type Lsn } from '../../src/wal/lsn.js';
import type { WaldumpRecord } from './pg.js';
import { recordEndLsn } from './real_wal.js';

/**
 * The LSNs a safekeeper may acknowledge as flush_lsn for these pg_waldump records: each record's end,
 * MAXALIGNed, and the next segment start after an XLOG_SWITCH.
 */
export function recordEndsOf(records: readonly WaldumpRecord[], segmentSizeBytes: number): Set<Lsn> {
  const ends = new Set<Lsn>();
  for (const record of records) {
    ends.add(recordEndLsn(record.lsn, record.totalLengthBytes, segmentSizeBytes));
    if (record.rmgr === 'XLOG' && record.desc.startsWith('SWITCH')) ends.add(segmentStartLsn(segmentNumber(record.lsn, segmentSizeBytes) + 1n, segmentSizeBytes));
  }
  return ends;
}

/** Asserts that acknowledged flush_lsns never go backwards and each is one of `validEnds`. */
export function assertAcksAreRecordEnds(acks: readonly Lsn[], validEnds: ReadonlySet<Lsn>): void {
  let previous = 0n;
  for (const [index, lsn] of acks.entries()) {
    assert.ok(lsn >= previous, `acknowledged flush_lsn went backwards at reply ${index}: ${formatLsn(previous)} then ${formatLsn(lsn)}`);
    assert.ok(validEnds.has(lsn), `acknowledged flush_lsn ${formatLsn(lsn)} (reply ${index}) is not a record end`);
    previous = lsn;
  }
}

export const timelineDirOf = (dataDir: string, tenantId: string, timelineId: string): string => join(dataDir, tenantId, timelineId);

export interface SegmentFile {
  segno: bigint;
  partial: boolean;
  path: string;
}

/** The segment files of a timeline directory, by segment number. */
export async function listSegmentFiles(dir: string, segmentSizeBytes: number): Promise<SegmentFile[]> {
  const files: SegmentFile[] = [];
  for (const name of await readdir(dir)) {
    const parsed = parseSegmentFileName(name, segmentSizeBytes);
    if (parsed !== null) files.push({ segno: parsed.segno, partial: parsed.partial, path: join(dir, name) });
  }
  return files.sort((a, b) => (a.segno < b.segno ? -1 : a.segno > b.segno ? 1 : 0));
}

/**
 * The node's default remote storage (`file://{data_dir}/remote`) for a timeline dir `<data_dir>/<t>/<l>`.
 * Once a segment is uploaded, WAL removal deletes it locally; its bytes are then only there.
 */
export function defaultRemoteDirOf(dir: string): string {
  const tenantDir = dirname(dir);
  return join(dirname(tenantDir), 'remote', basename(tenantDir), basename(dir));
}

/** A timeline's segment files, plus those only in its default remote storage (removed locally after upload). */
export async function segmentFilesWithRemote(dir: string, segmentSizeBytes: number): Promise<SegmentFile[]> {
  const local = await listSegmentFiles(dir, segmentSizeBytes);
  const remoteDir = defaultRemoteDirOf(dir);
  if (!existsSync(remoteDir)) return local;
  const present = new Set(local.map((file) => file.segno));
  const remote = (await listSegmentFiles(remoteDir, segmentSizeBytes)).filter((file) => !file.partial && !present.has(file.segno));
  return [...local, ...remote].sort((a, b) => (a.segno < b.segno ? -1 : a.segno > b.segno ? 1 : 0));
}

/**
 * A listed segment's bytes. A running node may remove a complete local segment (after its upload) between
 * the listing and the read: then it is read from the default remote storage.
 */
async function readSegmentFile(file: SegmentFile, dir: string, segmentSizeBytes: number): Promise<Buffer> {
  try {
    return await readFile(file.path);
  } catch (error) {
    if ((error as { code?: string }).code !== 'ENOENT' || file.partial) throw error;
    return readFile(join(defaultRemoteDirOf(dir), segmentFileName(file.segno, segmentSizeBytes)));
  }
}

/** The bytes of [fromLsn, toLsn) from a timeline's segment files (`.partial` or complete, local or uploaded). */
export async function readTimelineWal(dir: string, fromLsn: Lsn, toLsn: Lsn, segmentSizeBytes: number): Promise<Uint8Array> {
  const files = await segmentFilesWithRemote(dir, segmentSizeBytes);
  const out = new Uint8Array(Number(toLsn - fromLsn));
  const segmentSize = BigInt(segmentSizeBytes);
  for (let lsn = fromLsn; lsn < toLsn; ) {
    const segno = segmentNumber(lsn, segmentSizeBytes);
    const matching = files.filter((file) => file.segno === segno);
    assert.equal(matching.length, 1, `exactly one file for segment ${segno} (found ${matching.map((file) => file.path).join(', ') || 'none'})`);
    const content = await readSegmentFile(matching[0]!, dir, segmentSizeBytes);
    assert.equal(content.length, segmentSizeBytes, `segment ${segno} has its full size`);
    const offset = Number(lsn % segmentSize);
    const take = Math.min(segmentSizeBytes - offset, Number(toLsn - lsn));
    out.set(content.subarray(offset, offset + take), Number(lsn - fromLsn));
    lsn += BigInt(take);
  }
  return out;
}

/** Asserts byte equality, naming the first differing LSN. */
export function assertSameWal(actual: Uint8Array, expected: Uint8Array, fromLsn: Lsn, what: string): void {
  assert.equal(actual.length, expected.length, `${what}: length`);
  if (Buffer.compare(Buffer.from(actual.buffer, actual.byteOffset, actual.length), Buffer.from(expected.buffer, expected.byteOffset, expected.length)) === 0) return;
  let index = 0;
  while (index < actual.length && actual[index] === expected[index]) index += 1;
  assert.fail(`${what}: first difference at ${formatLsn(fromLsn + BigInt(index))} (safekeeper 0x${(actual[index] ?? 0).toString(16)}, source 0x${(expected[index] ?? 0).toString(16)})`);
}

/** The offset of the first non-zero byte, or -1. */
export function firstNonZero(bytes: Uint8Array): number {
  for (let index = 0; index < bytes.length; index += 1) if (bytes[index] !== 0) return index;
  return -1;
}

/** Asserts that nothing is kept after `lsn`: the rest of its segment is zero and no later segment holds a non-zero byte. */
export async function assertNothingAfter(dir: string, lsn: Lsn, segmentSizeBytes: number): Promise<void> {
  const segno = segmentNumber(lsn, segmentSizeBytes);
  const segmentEnd = segmentStartLsn(segno + 1n, segmentSizeBytes);
  if (lsn < segmentEnd) {
    const tail = await readTimelineWal(dir, lsn, segmentEnd, segmentSizeBytes);
    const bad = firstNonZero(tail);
    assert.equal(bad, -1, `non-zero byte kept at ${formatLsn(lsn + BigInt(bad))}, after ${formatLsn(lsn)}`);
  }
  for (const file of await listSegmentFiles(dir, segmentSizeBytes)) {
    if (file.segno <= segno) continue;
    const bad = firstNonZero(await readFile(file.path));
    assert.equal(bad, -1, `segment file ${file.path} after ${formatLsn(lsn)} holds data at offset ${bad}`);
  }
}

/**
 * Copies a timeline's segments into `targetDir` under their complete names (pg_waldump skips `.partial`
 * files) and returns `targetDir`. All-zero segments (prepared ahead of the writer) are left out: pg_waldump
 * learns the segment size from the long page header of whichever file it opens first.
 */
export async function copySegmentsForWaldump(dir: string, segmentSizeBytes: number, targetDir: string): Promise<string> {
  for (const file of await segmentFilesWithRemote(dir, segmentSizeBytes)) {
    const content = await readSegmentFile(file, dir, segmentSizeBytes);
    if (firstNonZero(content) < 0) continue;
    await writeFile(join(targetDir, segmentFileName(file.segno, segmentSizeBytes)), content);
  }
  return targetDir;
}
