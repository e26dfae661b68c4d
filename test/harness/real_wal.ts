/**
 * Real PostgreSQL 15 WAL for decoder tests and benchmarks, produced once per process and cached.
 *
 * It starts a cluster that keeps every segment (wal_keep_size, no recycling, so segment 1 from initdb is
 * still there and no stale recycled segment follows the end), runs pgbench -i plus some transactions, emits a
 * ~100 KiB logical message (a record spanning many pages), checkpoints, switches WAL (an XLOG_SWITCH and its
 * zero tail), writes a little more and stops cleanly. The segments are copied to a root-owned temp dir
 * (removed at process exit) and pg_waldump lists the records over the same range, which is the reference
 * the tests compare the decoder against.
 */
import { copyFile, readdir, readFile } from 'node:fs/promises';
import { execFile } from 'node:child_process';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { type Lsn, WAL_PAGE_SIZE_BYTES, parseSegmentFileName, segmentStartLsn } from '../../src/wal/lsn.js';
import { LONG_PAGE_HEADER_BYTES, SHORT_PAGE_HEADER_BYTES, XLP_FIRST_IS_CONTRECORD, decodePageHeader } from '../../src/wal/page.js';
import { PG_BIN_DIR, pgWaldump, startPostgres, type WaldumpRecord } from './pg.js';
import { makeTempDir } from './tmp.js';

const execFileAsync = promisify(execFile);
const SEGMENT_SIZE_BYTES = 16 * 1024 * 1024;
const BIG_MESSAGE_BYTES = 100_000;

export interface RealWal {
  /** Root-owned copy of the segments, removed at process exit. */
  readonly dir: string;
  /** Full paths of the contiguous segments from startLsn through the one holding endLsn, in order. */
  readonly segmentPaths: readonly string[];
  readonly segmentSizeBytes: number;
  /** server_version_num of the server that wrote the WAL. */
  readonly pgVersion: number;
  readonly systemId: bigint;
  /** Start of the first segment. */
  readonly startLsn: Lsn;
  /** Whether the first segment starts inside a record (decode with skipLeadingContrecord). */
  readonly startsWithContrecord: boolean;
  /** End of the last record, 8-aligned: the WAL end after the clean shutdown. */
  readonly endLsn: Lsn;
  /** What pg_waldump prints over [startLsn, endLsn). */
  readonly records: readonly WaldumpRecord[];
  /** All segment bytes concatenated: offset 0 is startLsn; the buffer runs to the end of the last segment. */
  readonly bytes: Uint8Array;
}

let cached: Promise<RealWal> | null = null;

/** The real-WAL fixture: built on first call (~10 s), then shared by every caller in this process. */
export function realWal(): Promise<RealWal> {
  cached ??= produceRealWal();
  return cached;
}

async function produceRealWal(): Promise<RealWal> {
  const server = await startPostgres({ extraConf: { wal_keep_size: '4GB', wal_recycle: 'off', max_wal_size: '4GB', fsync: 'off' } });
  let copyDir: string;
  let pgVersion: number;
  try {
    pgVersion = Number((await server.psql('SHOW server_version_num')).trim());
    const pgbench = join(PG_BIN_DIR, 'pgbench');
    const connect = ['-h', server.host, '-p', String(server.port), '-U', 'postgres'];
    await execFileAsync(pgbench, ['-i', '-s', '2', '-q', ...connect, 'postgres']);
    await execFileAsync(pgbench, ['-n', '-t', '200', '-c', '2', '-j', '2', ...connect, 'postgres']);
    await server.psql(`SELECT pg_logical_emit_message(false, 'sk', repeat('x', ${BIG_MESSAGE_BYTES}))`);
    await server.psql(`SELECT pg_logical_emit_message(true, 'sk', repeat('y', 30000))`);
    await server.psql('CHECKPOINT');
    await server.psql('UPDATE pgbench_branches SET bbalance = bbalance + 1'); // full-page images after the checkpoint
    await server.psql('SELECT pg_switch_wal()');
    await server.psql('CREATE TABLE after_switch (id int); INSERT INTO after_switch SELECT generate_series(1, 1000)');
    await server.stop({ keepDir: true });
    copyDir = makeTempDir('sk-real-wal-');
    const walDir = join(server.dataDir, 'pg_wal');
    for (const name of await readdir(walDir)) {
      if (parseSegmentFileName(name, SEGMENT_SIZE_BYTES) !== null) await copyFile(join(walDir, name), join(copyDir, name));
    }
  } finally {
    await server.stop();
  }
  return await describeCopy(copyDir, pgVersion);
}

async function describeCopy(dir: string, pgVersion: number): Promise<RealWal> {
  const names = (await readdir(dir)).filter((name) => parseSegmentFileName(name, SEGMENT_SIZE_BYTES) !== null).sort();
  const first = names[0];
  if (first === undefined) throw new Error('no WAL segments were produced');
  const firstSegno = parseSegmentFileName(first, SEGMENT_SIZE_BYTES)?.segno ?? 0n;
  const startLsn = segmentStartLsn(firstSegno, SEGMENT_SIZE_BYTES);
  const firstPage = decodePageHeader(await readFile(join(dir, first)));
  const startsWithContrecord = (firstPage.info & XLP_FIRST_IS_CONTRECORD) !== 0;
  const records = await pgWaldump(dir, startLsn);
  const last = records.at(-1);
  if (last === undefined) throw new Error('pg_waldump found no records');
  const endLsn = recordEndLsn(last.lsn, last.totalLengthBytes, SEGMENT_SIZE_BYTES);
  const segmentCount = Number((endLsn - 1n - startLsn) / BigInt(SEGMENT_SIZE_BYTES)) + 1;
  const segmentPaths: string[] = [];
  for (let i = 0; i < segmentCount; i++) {
    const name = names[i];
    if (name === undefined || parseSegmentFileName(name, SEGMENT_SIZE_BYTES)?.segno !== firstSegno + BigInt(i)) throw new Error(`WAL segment ${i} after ${first} is missing`);
    segmentPaths.push(join(dir, name));
  }
  if (segmentCount < 2) throw new Error('the real WAL fixture must cross a segment boundary');
  const bytes = new Uint8Array(segmentCount * SEGMENT_SIZE_BYTES);
  for (const [i, path] of segmentPaths.entries()) bytes.set(await readFile(path), i * SEGMENT_SIZE_BYTES);
  const systemId = firstPage.long?.systemId ?? 0n;
  return { dir, segmentPaths, segmentSizeBytes: SEGMENT_SIZE_BYTES, pgVersion, systemId, startLsn, startsWithContrecord, endLsn, records, bytes };
}

/**
 * The 8-aligned end of a record of `totalLengthBytes` starting at `startLsn`, stepping over the page headers
 * it crosses. Pure layout arithmetic, independent of the decoder under test.
 */
export function recordEndLsn(startLsn: Lsn, totalLengthBytes: number, segmentSizeBytes: number): Lsn {
  const page = BigInt(WAL_PAGE_SIZE_BYTES);
  let lsn = startLsn;
  let left = BigInt(totalLengthBytes);
  for (;;) {
    const pageLeft = page - (lsn % page);
    if (left <= pageLeft) return (lsn + left + 7n) & ~7n;
    left -= pageLeft;
    lsn += pageLeft;
    lsn += BigInt(lsn % BigInt(segmentSizeBytes) === 0n ? LONG_PAGE_HEADER_BYTES : SHORT_PAGE_HEADER_BYTES);
  }
}
