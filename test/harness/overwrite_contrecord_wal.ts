/**
 * Real PostgreSQL 15 WAL in which a crash cut a record and recovery overwrote its missing part, made the way
 * PostgreSQL's own src/test/recovery/t/026_overwrite_contrecord.pl makes it.
 *
 * A fresh cluster with 1 MiB segments (small, so the whole run takes seconds) fills its current segment to
 * FILL_MARGIN_BYTES before the end, then emits a ~600 KiB transactional logical message R, which starts in
 * segment N and ends in N+1; its commit flushes both. An immediate shutdown follows (no shutdown checkpoint),
 * then segment N+1 is deleted, so only R's first part is left. At the next start crash recovery finds R cut
 * at the start of N+1 and writes there a page flagged XLP_FIRST_IS_OVERWRITE_CONTRECORD whose first record is
 * XLOG_OVERWRITE_CONTRECORD (naming R's start). Some more WAL, a switch and a clean shutdown follow; segments
 * N-1 onward are copied to a root-owned temp dir (removed by `removeAllTempDirs()` or at process exit) and
 * pg_waldump lists their records, the reference for the decoder. The cluster's own temp dir is removed
 * before this returns, whether it succeeds or throws.
 */
import { copyFile, readdir, readFile, unlink } from 'node:fs/promises';
import { join } from 'node:path';
import { type Lsn, parseLsn, parseSegmentFileName, segmentFileName, segmentNumber, segmentStartLsn, WAL_PAGE_SIZE_BYTES } from '../../src/wal/lsn.js';
import { SHORT_PAGE_HEADER_BYTES } from '../../src/wal/page.js';
import { pgWaldump, startPostgres, type WaldumpRecord } from './pg.js';
import { recordEndLsn } from './real_wal.js';
import { makeTempDir } from './tmp.js';

const SEGMENT_SIZE_MB = 1;
const SEGMENT_SIZE_BYTES = SEGMENT_SIZE_MB * 1024 * 1024;
/** 026's message: repeat('xyzxz', 123456), 617,280 bytes, longer than the margin, so it crosses into N+1. */
const CUT_MESSAGE_SQL = "SELECT pg_logical_emit_message(true, 'test 026', repeat('xyzxz', 123456))";
const CUT_MESSAGE_BYTES = 5 * 123_456;
/** Room left in segment N for R's start: enough for its header and for a few background records. */
const FILL_MARGIN_BYTES = 16 * 1024;
/** A logical message's record bytes besides its payload: record header, main-data header, message header, prefix. */
const MESSAGE_OVERHEAD_BYTES = 64;

export interface OverwrittenContrecordWal {
  /** Root-owned copy of segments N-1 onward. */
  readonly dir: string;
  readonly segmentSizeBytes: number;
  /** server_version_num of the server that wrote the WAL. */
  readonly pgVersion: number;
  /** Start of segment N-1, the first copied segment; offset 0 of `bytes`. */
  readonly startLsn: Lsn;
  /** All copied segments concatenated. */
  readonly bytes: Uint8Array;
  /** R as pg_waldump listed it before the crash, when it was whole. */
  readonly cutRecord: WaldumpRecord;
  /** Start of segment N+1: where R was cut and recovery wrote the overwrite page. */
  readonly overwritePageLsn: Lsn;
  /** What pg_waldump prints from `startLsn` over the copy. */
  readonly records: readonly WaldumpRecord[];
  /** End of the last record pg_waldump lists. */
  readonly endLsn: Lsn;
}

/** Runs the 026 scenario on a fresh cluster (~3 s) and returns the WAL it leaves. */
export async function overwrittenContrecordWal(): Promise<OverwrittenContrecordWal> {
  // wal_recycle off and wal_keep_size: every segment stays, and no recycled segment with stale pages follows the end.
  const server = await startPostgres({ walSegmentSizeMb: SEGMENT_SIZE_MB, extraConf: { wal_keep_size: '1GB', wal_recycle: 'off', autovacuum: 'off', fsync: 'off' } });
  let copyDir: string;
  let pgVersion: number;
  let cutRecord: WaldumpRecord;
  let cutSegno: bigint;
  try {
    pgVersion = Number((await server.psql('SHOW server_version_num')).trim());
    cutSegno = await fillToSegmentEnd(server.psql.bind(server));
    await server.psql(CUT_MESSAGE_SQL);
    const insertLsn = parseLsn((await server.psql('SELECT pg_current_wal_insert_lsn()')).trim());
    if (segmentNumber(insertLsn, SEGMENT_SIZE_BYTES) !== cutSegno + 1n) throw new Error('the message did not end in the segment after the filled one');
    await server.immediateShutdown();

    const walDir = join(server.dataDir, 'pg_wal');
    cutRecord = findCutRecord(await pgWaldump(walDir, segmentStartLsn(cutSegno, SEGMENT_SIZE_BYTES)), cutSegno);
    await unlink(join(walDir, segmentFileName(cutSegno + 1n, SEGMENT_SIZE_BYTES)));

    await server.start(); // crash recovery ends at the missing segment and writes the overwrite page there
    await server.psql("CREATE TABLE foo (a text); INSERT INTO foo VALUES ('hello')");
    await server.psql("SELECT pg_logical_emit_message(true, 'test 026', 'AABBCC')");
    await server.psql('SELECT pg_switch_wal()');
    await server.psql('CREATE TABLE after_switch (id int); INSERT INTO after_switch SELECT generate_series(1, 100)');
    await server.shutdown(); // a clean shutdown checkpoint flushes the rest
    copyDir = makeTempDir('sk-overwrite-wal-');
    for (const name of await readdir(walDir)) {
      const parsed = parseSegmentFileName(name, SEGMENT_SIZE_BYTES);
      if (parsed !== null && !parsed.partial && parsed.segno >= cutSegno - 1n) await copyFile(join(walDir, name), join(copyDir, name));
    }
  } finally {
    await server.stop();
  }
  return await describeCopy(copyDir, pgVersion, cutRecord, cutSegno);
}

/**
 * Writes one non-transactional logical message sized so that the next record starts about FILL_MARGIN_BYTES
 * before the end of segment N, the one after the current segment (so segment N-1 holds WAL too: initdb's
 * checkpoint has removed the segments before the current one), and returns N. Page headers take 24 of every
 * 8192 bytes, hence the scaling; the position only needs to be near, and the caller checks the crossing.
 */
async function fillToSegmentEnd(psql: (sql: string) => Promise<string>): Promise<bigint> {
  const insertLsn = parseLsn((await psql('SELECT pg_current_wal_insert_lsn()')).trim());
  const cutSegno = segmentNumber(insertLsn, SEGMENT_SIZE_BYTES) + 1n;
  const fillBytes = Number(segmentStartLsn(cutSegno + 1n, SEGMENT_SIZE_BYTES) - insertLsn) - FILL_MARGIN_BYTES;
  const payloadBytes = Math.floor((fillBytes * (WAL_PAGE_SIZE_BYTES - SHORT_PAGE_HEADER_BYTES)) / WAL_PAGE_SIZE_BYTES) - MESSAGE_OVERHEAD_BYTES;
  await psql(`SELECT pg_logical_emit_message(false, 'fill', repeat('f', ${payloadBytes}))`);
  return cutSegno;
}

/** R in pg_waldump's listing before the crash: the one message with 026's prefix, starting in N and ending in N+1. */
function findCutRecord(records: readonly WaldumpRecord[], cutSegno: bigint): WaldumpRecord {
  const found = records.filter((r) => r.rmgr === 'LogicalMessage' && r.desc.includes('prefix "test 026"') && r.totalLengthBytes > CUT_MESSAGE_BYTES);
  const record = found[0];
  if (found.length !== 1 || record === undefined) throw new Error(`expected one ${CUT_MESSAGE_BYTES}-byte message before the crash, found ${found.length}`);
  if (segmentNumber(record.lsn, SEGMENT_SIZE_BYTES) !== cutSegno) throw new Error('the message does not start in the filled segment');
  const endLsn = recordEndLsn(record.lsn, record.totalLengthBytes, SEGMENT_SIZE_BYTES);
  if (segmentNumber(endLsn, SEGMENT_SIZE_BYTES) !== cutSegno + 1n) throw new Error('the message does not end in the next segment');
  return record;
}

async function describeCopy(dir: string, pgVersion: number, cutRecord: WaldumpRecord, cutSegno: bigint): Promise<OverwrittenContrecordWal> {
  const names = (await readdir(dir)).sort();
  const firstSegno = cutSegno - 1n;
  const startLsn = segmentStartLsn(firstSegno, SEGMENT_SIZE_BYTES);
  const records = await pgWaldump(dir, startLsn);
  const last = records.at(-1);
  if (last === undefined) throw new Error('pg_waldump found no records after the overwrite');
  const endLsn = recordEndLsn(last.lsn, last.totalLengthBytes, SEGMENT_SIZE_BYTES);
  const segmentCount = Number(segmentNumber(endLsn - 1n, SEGMENT_SIZE_BYTES) - firstSegno) + 1;
  const bytes = new Uint8Array(segmentCount * SEGMENT_SIZE_BYTES);
  for (let i = 0; i < segmentCount; i++) {
    const name = names[i];
    if (name !== segmentFileName(firstSegno + BigInt(i), SEGMENT_SIZE_BYTES)) throw new Error(`WAL segment ${i} after the first copied one is missing`);
    bytes.set(await readFile(join(dir, name)), i * SEGMENT_SIZE_BYTES);
  }
  const overwritePageLsn = segmentStartLsn(cutSegno + 1n, SEGMENT_SIZE_BYTES);
  return { dir, segmentSizeBytes: SEGMENT_SIZE_BYTES, pgVersion, startLsn, bytes, cutRecord, overwritePageLsn, records, endLsn };
}
