import assert from 'node:assert/strict';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { WalCorruptionError } from '../../src/errors.js';
import { type Lsn, WAL_PAGE_SIZE_BYTES, formatLsn, parseLsn, segmentNumber, segmentStartLsn } from '../../src/wal/lsn.js';
import { LONG_PAGE_HEADER_BYTES, RM_XLOG_ID, XLP_FIRST_IS_OVERWRITE_CONTRECORD, decodePageHeader } from '../../src/wal/page.js';
import { WalRecordDecoder, initialDecoderState, type DecoderState, type WalCorruptionKind } from '../../src/wal/record_decoder.js';
import { segmentFileName } from '../../src/wal/lsn.js';
import { WalBuilder, type BuiltRecord } from '../../src/wal/wal_builder.js';
import { pgWaldump, type WaldumpRecord } from '../harness/pg.js';
import { type OverwrittenContrecordWal, overwrittenContrecordWal } from '../harness/overwrite_contrecord_wal.js';
import { type RealWal, realWal, recordEndLsn } from '../harness/real_wal.js';
import { makeTempDir, removeAllTempDirs } from '../harness/tmp.js';

const PAGE = BigInt(WAL_PAGE_SIZE_BYTES);
let wal: RealWal;

before(async () => {
  wal = await realWal();
});

after(async () => {
  await removeAllTempDirs();
});

/** Chunk sizes from a seeded generator, so a failure reproduces. */
function seededSizes(seed: number, maxBytes: number): () => number {
  let x = seed >>> 0 || 1;
  return () => {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    return 1 + ((x >>> 0) % maxBytes);
  };
}

/** The WAL bytes a range is decoded from: `bytes[0]` is the byte at `startLsn`. */
type WalBytes = Pick<RealWal, 'bytes' | 'startLsn' | 'segmentSizeBytes' | 'pgVersion'>;

/** What `onRecord` reported for one record. */
interface DecodedRecord {
  startLsn: Lsn;
  endLsn: Lsn;
  rmid: number;
  info: number;
}

interface DecodeRun {
  startLsn: Lsn;
  endLsn: Lsn;
  nextChunkBytes: () => number;
  resumeAtEveryChunk?: boolean;
  skipLeadingContrecord?: boolean;
}

/** Decodes [startLsn, endLsn) of `source` (the shared fixture by default) and returns what it reported and the decoder. */
function decodeRange(run: DecodeRun, source: WalBytes = wal): { starts: Lsn[]; records: DecodedRecord[]; decoder: WalRecordDecoder } {
  const base = Number(run.startLsn - source.startLsn);
  const bytes = source.bytes.subarray(base, Number(run.endLsn - source.startLsn));
  let state: DecoderState = initialDecoderState({ startLsn: run.startLsn, segmentSizeBytes: source.segmentSizeBytes, pgVersion: source.pgVersion, skipLeadingContrecord: run.skipLeadingContrecord ?? false });
  let decoder = new WalRecordDecoder(state);
  const starts: Lsn[] = [];
  const records: DecodedRecord[] = [];
  const onRecord = (startLsn: Lsn, endLsn: Lsn, rmid: number, info: number): void => {
    starts.push(startLsn);
    records.push({ startLsn, endLsn, rmid, info });
  };
  let count = 0;
  for (let pos = 0; pos < bytes.length; ) {
    const size = run.nextChunkBytes();
    count += decoder.feed(bytes.subarray(pos, pos + size), onRecord);
    pos += size;
    if (run.resumeAtEveryChunk === true) {
      state = structuredClone(decoder.snapshot());
      decoder = new WalRecordDecoder(state);
    }
  }
  assert.equal(count, starts.length);
  assert.equal(decoder.lsn, run.endLsn);
  return { starts, records, decoder };
}

const startsIn = (from: Lsn, to: Lsn): Lsn[] => wal.records.filter((r) => r.lsn >= from && r.lsn < to).map((r) => r.lsn);

function assertSameStarts(actual: Lsn[], expected: Lsn[]): void {
  assert.equal(actual.length, expected.length, 'record count');
  for (let i = 0; i < expected.length; i++) {
    if (actual[i] !== expected[i]) assert.fail(`record ${i}: decoder ${formatLsn(actual[i] ?? -1n)}, pg_waldump ${formatLsn(expected[i] ?? -1n)}`);
  }
}

describe('WalRecordDecoder on real PostgreSQL 15 WAL', () => {
  it('the fixture covers a segment crossing, an XLOG_SWITCH and a record spanning many pages', () => {
    assert.ok(wal.segmentPaths.length >= 2);
    assert.ok(wal.records.some((r) => r.rmgr === 'XLOG' && r.desc.startsWith('SWITCH')));
    assert.ok(wal.records.some((r) => r.totalLengthBytes > 12 * WAL_PAGE_SIZE_BYTES));
    assert.ok(wal.records.length > 10_000);
  });

  for (const [name, chunkBytes] of [['7 B', 7], ['8 KiB', 8192], ['1 MiB', 1 << 20]] as const) {
    it(`finds exactly pg_waldump's records fed in ${name} chunks`, () => {
      const { starts, decoder } = decodeRange({ startLsn: wal.startLsn, endLsn: wal.endLsn, nextChunkBytes: () => chunkBytes, skipLeadingContrecord: wal.startsWithContrecord });
      assertSameStarts(starts, startsIn(wal.startLsn, wal.endLsn));
      assert.equal(decoder.lastRecordEndLsn, wal.endLsn);
    });
  }

  it('finds the same records fed in random chunks, resuming from a structured-cloned snapshot at every chunk', () => {
    for (const seed of [1, 2]) {
      const { starts, decoder } = decodeRange({ startLsn: wal.startLsn, endLsn: wal.endLsn, nextChunkBytes: seededSizes(seed, 200_000), resumeAtEveryChunk: true, skipLeadingContrecord: wal.startsWithContrecord });
      assertSameStarts(starts, startsIn(wal.startLsn, wal.endLsn));
      assert.equal(decoder.lastRecordEndLsn, wal.endLsn);
    }
  });

  it('finds the same records fed byte by byte over the first 512 KiB, the big record and the switch', () => {
    const big = bigRecord();
    const switchRecord = wal.records.find((r) => r.rmgr === 'XLOG' && r.desc.startsWith('SWITCH'));
    assert.ok(switchRecord !== undefined);
    const firstEnd = recordAtOrAfter(wal.startLsn + 512n * 1024n).lsn;
    const ranges: Array<[Lsn, Lsn]> = [[wal.startLsn, firstEnd], [recordBefore(big.lsn).lsn, recordAtOrAfter(big.lsn + 1n).lsn], [recordBefore(switchRecord.lsn).lsn, recordAtOrAfter(switchRecord.lsn + 1n).lsn]];
    for (const [startLsn, endLsn] of ranges) {
      const { starts } = decodeRange({ startLsn, endLsn, nextChunkBytes: () => 1, resumeAtEveryChunk: endLsn - startLsn < 300_000n });
      assertSameStarts(starts, startsIn(startLsn, endLsn));
    }
  });

  it('skips a leading continuation record when started at a later segment or in the middle of the big record', () => {
    const big = bigRecord();
    const middlePage = big.lsn - (big.lsn % PAGE) + 4n * PAGE;
    for (const startLsn of [wal.startLsn + BigInt(wal.segmentSizeBytes), middlePage]) {
      const { starts } = decodeRange({ startLsn, endLsn: wal.endLsn, nextChunkBytes: () => 65_536, skipLeadingContrecord: true });
      assertSameStarts(starts, startsIn(startLsn, wal.endLsn));
    }
  });
});

describe('WalBuilder output', () => {
  it('is read by pg_waldump with the same record starts, across pages, segments and a switch', async () => {
    const segmentSizeBytes = 1 << 20;
    const startLsn = BigInt(segmentSizeBytes);
    const builder = new WalBuilder({ startLsn, segmentSizeBytes, pgVersion: wal.pgVersion, systemId: wal.systemId });
    const records: BuiltRecord[] = [];
    for (let i = 0; i < 200; i++) records.push(builder.appendLogicalMessage(new Uint8Array((i * 97) % 3000).fill(i & 0xff)));
    records.push(builder.appendLogicalMessage(new Uint8Array(1_200_000).fill(1))); // crosses into the next segment
    records.push(builder.appendSwitch());
    records.push(builder.appendLogicalMessage(new Uint8Array(10)));
    const bytes = builder.take();
    const dir = makeTempDir('sk-builder-wal-');
    const segmentCount = Math.ceil(bytes.length / segmentSizeBytes);
    for (let i = 0; i < segmentCount; i++) {
      const segment = new Uint8Array(segmentSizeBytes);
      segment.set(bytes.subarray(i * segmentSizeBytes, (i + 1) * segmentSizeBytes));
      await writeFile(join(dir, segmentFileName(BigInt(i + 1), segmentSizeBytes)), segment);
    }
    const dumped = await pgWaldump(dir, startLsn);
    assert.deepEqual(dumped.map((r) => r.lsn), records.map((r) => r.startLsn));
    assert.deepEqual(dumped.map((r) => r.rmgr).slice(-3), ['LogicalMessage', 'XLOG', 'LogicalMessage']);
  });
});

describe('WalRecordDecoder on corrupted real WAL', () => {
  /** Decodes a corrupted copy of [from, to) and returns the error and lastRecordEndLsn. */
  function decodeCorrupted(from: Lsn, to: Lsn, flipAt: Lsn, mask = 0x04): { error: WalCorruptionError; lastRecordEndLsn: Lsn } {
    const bytes = wal.bytes.slice(Number(from - wal.startLsn), Number(to - wal.startLsn));
    bytes[Number(flipAt - from)]! ^= mask;
    const decoder = new WalRecordDecoder(initialDecoderState({ startLsn: from, segmentSizeBytes: wal.segmentSizeBytes, pgVersion: wal.pgVersion }));
    try {
      for (let pos = 0; pos < bytes.length; pos += 8192) decoder.feed(bytes.subarray(pos, pos + 8192));
    } catch (error) {
      assert.ok(error instanceof WalCorruptionError, String(error));
      return { error, lastRecordEndLsn: decoder.lastRecordEndLsn };
    }
    assert.fail(`a flipped byte at ${formatLsn(flipAt)} went unnoticed`);
  }

  function expectRecordError(target: WaldumpRecord, delta: number, kinds: readonly WalCorruptionKind[], mask = 0x04): void {
    const previous = recordBefore(target.lsn);
    const to = recordEndLsn(target.lsn, target.totalLengthBytes, wal.segmentSizeBytes) + 2n * PAGE;
    const { error, lastRecordEndLsn } = decodeCorrupted(previous.lsn, to, recordByteLsn(target.lsn, delta), mask);
    assert.ok(kinds.includes(error.kind), `flip at +${delta} of ${formatLsn(target.lsn)}: ${error.kind} (${error.message})`);
    assert.equal(error.lsn, target.lsn, error.message);
    assert.equal(lastRecordEndLsn, recordEndLsn(previous.lsn, previous.totalLengthBytes, wal.segmentSizeBytes));
  }

  const headerKinds: readonly WalCorruptionKind[] = ['crc_mismatch', 'bad_record_length', 'bad_record_prev', 'bad_contrecord_length', 'missing_contrecord'];

  it('a flipped byte in a record body is a crc_mismatch at the record start', () => {
    const big = bigRecord();
    const pageCrossing = wal.records.find((r) => r.totalLengthBytes > 200 && r.totalLengthBytes < 8000 && (r.lsn % PAGE) + BigInt(r.totalLengthBytes) > PAGE);
    assert.ok(pageCrossing !== undefined);
    const small = wal.records[1000];
    assert.ok(small !== undefined && small.totalLengthBytes > 30);
    for (const [target, delta] of [[small, small.totalLengthBytes - 1], [big, 30], [big, 50_000], [big, big.totalLengthBytes - 1], [pageCrossing, pageCrossing.totalLengthBytes - 2]] as const) {
      expectRecordError(target, delta, ['crc_mismatch']);
    }
  });

  it('a flipped byte in a record header is caught at the record start', () => {
    const big = bigRecord();
    const small = wal.records[2000];
    assert.ok(small !== undefined);
    const splitHeader = wal.records.find((r) => r.lsn % PAGE > PAGE - 24n);
    assert.ok(splitHeader !== undefined, 'the fixture has a record header split across pages');
    const targets = [small, big, splitHeader];
    for (const target of targets) {
      for (const delta of [0, 1, 3, 4, 9, 16, 17, 20, 23]) expectRecordError(target, delta, headerKinds);
      expectRecordError(target, 4, ['crc_mismatch']); // xl_xid
      expectRecordError(target, 12, ['bad_record_prev']);
      expectRecordError(target, 3, ['bad_record_length'], 0x40); // xl_tot_len + 1 GiB
    }
  });

  it('a flipped byte in a page header is bad_page_magic or bad_page_address at the page', () => {
    for (const page of [wal.startLsn + 37n * PAGE, wal.startLsn + BigInt(wal.segmentSizeBytes) + 5n * PAGE, bigRecord().lsn - (bigRecord().lsn % PAGE) + 3n * PAGE]) {
      const previous = recordBefore(page);
      for (const [delta, kind] of [[0, 'bad_page_magic'], [1, 'bad_page_magic'], [8, 'bad_page_address'], [10, 'bad_page_address']] as const) {
        const { error } = decodeCorrupted(previous.lsn, page + PAGE, page + BigInt(delta));
        assert.equal(error.kind, kind, error.message);
        assert.equal(error.lsn, page);
      }
    }
  });
});

describe('WalRecordDecoder on real WAL where recovery overwrote a record a crash cut (PostgreSQL t/026_overwrite_contrecord.pl)', () => {
  /** xl_info of XLOG_OVERWRITE_CONTRECORD (PostgreSQL's pg_control.h), spelled out here so the test does not trust src/. */
  const XLOG_OVERWRITE_CONTRECORD_INFO = 0xd0;
  let cut: OverwrittenContrecordWal;

  before(async () => {
    cut = await overwrittenContrecordWal();
  });

  /** The one XLOG_OVERWRITE_CONTRECORD pg_waldump lists, and the LSN its desc ("lsn X/Y; time ...") names as overwritten. */
  function overwriteRecord(): { record: WaldumpRecord; overwrittenLsn: Lsn } {
    const found = cut.records.filter((r) => r.rmgr === 'XLOG' && r.desc.startsWith('OVERWRITE_CONTRECORD'));
    const record = found[0];
    assert.ok(found.length === 1 && record !== undefined, `pg_waldump lists ${found.length} OVERWRITE_CONTRECORD records`);
    const match = /\blsn ([0-9A-F]+\/[0-9A-F]+)/.exec(record.desc);
    assert.ok(match?.[1] !== undefined, record.desc);
    return { record, overwrittenLsn: parseLsn(match[1]) };
  }

  /** pg_waldump's records from `startLsn` on, as "start-end" (the end is the next segment's start after a switch). */
  function expectedFrom(startLsn: Lsn): string[] {
    return cut.records.filter((r) => r.lsn >= startLsn).map((r) => {
      const endLsn = r.rmgr === 'XLOG' && r.desc.startsWith('SWITCH')
        ? segmentStartLsn(segmentNumber(r.lsn, cut.segmentSizeBytes) + 1n, cut.segmentSizeBytes)
        : recordEndLsn(r.lsn, r.totalLengthBytes, cut.segmentSizeBytes);
      return `${formatLsn(r.lsn)}-${formatLsn(endLsn)}`;
    });
  }

  /** decodeRange over the copy, turning a refusal into a failure that names the corruption kind. */
  function decodeCut(run: DecodeRun): ReturnType<typeof decodeRange> {
    try {
      return decodeRange(run, cut);
    } catch (error) {
      if (!(error instanceof WalCorruptionError)) throw error;
      assert.fail(`the decoder refused WAL PostgreSQL wrote: ${error.kind}: ${error.message}`);
    }
  }

  it('is WAL where pg_waldump drops the cut record and lists the XLOG_OVERWRITE_CONTRECORD recovery wrote at the cut', () => {
    const page = decodePageHeader(cut.bytes, Number(cut.overwritePageLsn - cut.startLsn));
    assert.notEqual(page.info & XLP_FIRST_IS_OVERWRITE_CONTRECORD, 0, 'the page where the record was cut is flagged XLP_FIRST_IS_OVERWRITE_CONTRECORD');
    assert.equal(page.remainingBytes, 0);
    assert.ok(cut.records.every((r) => r.lsn !== cut.cutRecord.lsn), 'pg_waldump does not list the cut record');
    const { record, overwrittenLsn } = overwriteRecord();
    assert.equal(record.lsn, cut.overwritePageLsn + BigInt(LONG_PAGE_HEADER_BYTES));
    assert.equal(overwrittenLsn, cut.cutRecord.lsn);
    assert.equal(record.prevLsn, cut.cutRecord.prevLsn, 'xl_prev skips the cut record');
    assert.ok(cut.records.some((r) => r.lsn < cut.cutRecord.lsn), 'the range starts before the cut record');
    assert.ok(cut.records.some((r) => r.rmgr === 'XLOG' && r.desc.startsWith('SWITCH') && r.lsn > record.lsn), 'WAL goes on past the overwrite and a switch');
  });

  const previousRecord = (): WaldumpRecord => {
    const found = cut.records.findLast((r) => r.lsn < cut.cutRecord.lsn);
    assert.ok(found !== undefined);
    return found;
  };

  for (const [name, chunkBytes] of [['7 B', 7], ['8 KiB', 8192], ['1 MiB', 1 << 20]] as const) {
    it(`reports exactly pg_waldump's records across the overwrite, fed in ${name} chunks from two record starts before the cut record`, () => {
      for (const startLsn of [cut.records[0]?.lsn ?? -1n, previousRecord().lsn]) {
        const { records, decoder } = decodeCut({ startLsn, endLsn: cut.endLsn, nextChunkBytes: () => chunkBytes });
        assert.deepEqual(records.map((r) => `${formatLsn(r.startLsn)}-${formatLsn(r.endLsn)}`), expectedFrom(startLsn));
        assert.equal(decoder.lastRecordEndLsn, cut.endLsn);
        assert.ok(records.every((r) => r.startLsn !== cut.cutRecord.lsn), 'the cut record is not reported');
        const overwrite = records.find((r) => r.startLsn === overwriteRecord().record.lsn);
        assert.ok(overwrite !== undefined, 'the XLOG_OVERWRITE_CONTRECORD record is reported');
        assert.equal(overwrite.rmid, RM_XLOG_ID);
        assert.equal(overwrite.info & 0xf0, XLOG_OVERWRITE_CONTRECORD_INFO);
      }
    });
  }

  it('reports the same records fed in random chunks, resuming from a structured-cloned snapshot at every chunk', () => {
    const startLsn = previousRecord().lsn;
    for (const seed of [3, 4]) {
      const { records } = decodeCut({ startLsn, endLsn: cut.endLsn, nextChunkBytes: seededSizes(seed, 50_000), resumeAtEveryChunk: true });
      assert.deepEqual(records.map((r) => `${formatLsn(r.startLsn)}-${formatLsn(r.endLsn)}`), expectedFrom(startLsn));
    }
  });

  it('keeps lastRecordEndLsn (flush_lsn) at the end of the record before the cut one until the overwrite page', () => {
    const previous = previousRecord();
    const { decoder } = decodeCut({ startLsn: previous.lsn, endLsn: cut.overwritePageLsn, nextChunkBytes: () => 8192 });
    assert.equal(decoder.lastRecordEndLsn, recordEndLsn(previous.lsn, previous.totalLengthBytes, cut.segmentSizeBytes));
  });
});

function bigRecord(): WaldumpRecord {
  const big = wal.records.find((r) => r.rmgr === 'LogicalMessage' && r.totalLengthBytes > 100_000);
  assert.ok(big !== undefined, 'the fixture has the 100 KiB logical message');
  return big;
}

function recordBefore(lsn: Lsn): WaldumpRecord {
  const found = wal.records.findLast((r) => r.lsn < lsn);
  assert.ok(found !== undefined);
  return found;
}

function recordAtOrAfter(lsn: Lsn): WaldumpRecord {
  const found = wal.records.find((r) => r.lsn >= lsn);
  assert.ok(found !== undefined);
  return found;
}

/** The LSN of byte `delta` of the record starting at `startLsn`, stepping over page headers. */
function recordByteLsn(startLsn: Lsn, delta: number): Lsn {
  let lsn = startLsn;
  let left = BigInt(delta);
  for (;;) {
    const pageLeft = PAGE - (lsn % PAGE);
    if (left < pageLeft) return lsn + left;
    left -= pageLeft;
    lsn += pageLeft;
    lsn += lsn % BigInt(wal.segmentSizeBytes) === 0n ? 40n : 24n;
  }
}
