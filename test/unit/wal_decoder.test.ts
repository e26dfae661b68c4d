import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { AssertionError } from '../../src/sync/assert.js';
import { InvalidArgumentError, WalCorruptionError } from '../../src/errors.js';
import { WAL_PAGE_SIZE_BYTES, type Lsn } from '../../src/wal/lsn.js';
import { type DecoderState, WalRecordDecoder, initialDecoderState } from '../../src/wal/record_decoder.js';
import { PORTABLE_RECORD_CHECKS, RECORD_CRC_NATIVE, recordChecks, type RecordChecks } from '../../src/wal/record_crc.js';
import { WalBuilder, type BuiltRecord } from '../../src/wal/wal_builder.js';

const SEGMENT_BYTES = 1 << 20;
const SEGMENT = BigInt(SEGMENT_BYTES);
const PG_VERSION = 150008;
const PAGE = BigInt(WAL_PAGE_SIZE_BYTES);

interface Stream {
  startLsn: Lsn;
  bytes: Uint8Array;
  records: BuiltRecord[];
}

interface Decoded {
  starts: Lsn[];
  ends: Lsn[];
}

function builderAt(startLsn: Lsn): WalBuilder {
  return new WalBuilder({ startLsn, segmentSizeBytes: SEGMENT_BYTES, pgVersion: PG_VERSION, systemId: 7n });
}

/** Appends filler records until the next record would start `pageLeftBytes` before a page end. */
function moveToPageLeft(builder: WalBuilder, pageLeftBytes: number, records: BuiltRecord[]): void {
  for (;;) {
    const pageLeft = WAL_PAGE_SIZE_BYTES - Number(builder.lsn % PAGE);
    if (pageLeft === pageLeftBytes) return;
    const gap = pageLeftBytes === WAL_PAGE_SIZE_BYTES ? pageLeft : pageLeft - pageLeftBytes;
    records.push(builder.appendRecord({ rmid: 1, info: 0, data: new Uint8Array(gap >= 24 ? gap - 24 : pageLeft) }));
  }
}

/** Flips the bits of `mask` in `bytes[index]` (setting or clearing a flag the test knows the state of). */
function xorAt(bytes: Uint8Array, index: number, mask: number): void {
  bytes[index] = (bytes[index] ?? 0) ^ mask;
}

function filled(size: number, seed: number): Uint8Array {
  return Uint8Array.from({ length: size }, (_, i) => (i * 31 + seed) & 0xff);
}

/** Small records, page-crossing ones, a header split across a page, a segment crossing and an XLOG_SWITCH. */
function buildMixedStream(startLsn: Lsn): Stream {
  const builder = builderAt(startLsn);
  const records: BuiltRecord[] = [];
  for (let i = 0; i < 20; i++) records.push(builder.appendLogicalMessage(filled(i * 37, i)));
  records.push(builder.appendRecord({ rmid: 10, info: 0x10, xid: 3, data: filled(20_000, 1) })); // spans pages
  for (const pageLeft of [8, 16]) {
    moveToPageLeft(builder, pageLeft, records); // the next record header is split across the page boundary
    records.push(builder.appendRecord({ rmid: 2, info: 0, data: filled(100, pageLeft) }));
  }
  moveToPageLeft(builder, 8, records);
  records.push(builder.appendRecord({ rmid: 2, info: 0, data: new Uint8Array(0) })); // a bare header, split
  moveToPageLeft(builder, WAL_PAGE_SIZE_BYTES, records);
  records.push(builder.appendLogicalMessage(filled(50, 3))); // first on its page, right after the header
  records.push(builder.appendRecord({ rmid: 3, info: 0, data: filled(SEGMENT_BYTES + 5000, 2) })); // spans a segment
  records.push(builder.appendSwitch());
  for (let i = 0; i < 5; i++) records.push(builder.appendLogicalMessage(filled(200, i)));
  return { startLsn, bytes: builder.take(), records };
}

/** A short stream around a page and a segment boundary, small enough to split at every offset. */
function buildSmallStream(): Stream {
  const startLsn = 2n * SEGMENT - 600n;
  const builder = builderAt(startLsn);
  const records: BuiltRecord[] = [];
  for (let i = 0; i < 4; i++) records.push(builder.appendLogicalMessage(filled(60 + i, i)));
  moveToPageLeft(builder, 16, records);
  records.push(builder.appendRecord({ rmid: 2, info: 0, data: filled(300, 9) })); // header split across the segment start
  records.push(builder.appendRecord({ rmid: 2, info: 0, data: filled(9000, 4) })); // spans a page
  records.push(builder.appendLogicalMessage(filled(5, 5)));
  return { startLsn, bytes: builder.take(), records };
}

function decodeInChunks(stream: Stream, chunkBytes: number, state?: DecoderState): Decoded {
  const decoder = new WalRecordDecoder(state ?? initialDecoderState({ startLsn: stream.startLsn, segmentSizeBytes: SEGMENT_BYTES, pgVersion: PG_VERSION }));
  const decoded: Decoded = { starts: [], ends: [] };
  const onRecord = (start: Lsn, end: Lsn): void => {
    decoded.starts.push(start);
    decoded.ends.push(end);
  };
  let count = 0;
  for (let pos = 0; pos < stream.bytes.length; pos += chunkBytes) {
    count += decoder.feed(stream.bytes.subarray(pos, pos + chunkBytes), onRecord);
  }
  assert.equal(count, decoded.starts.length);
  assert.equal(decoder.lsn, stream.startLsn + BigInt(stream.bytes.length));
  return decoded;
}

function expectRecords(decoded: Decoded, stream: Stream): void {
  assert.deepEqual(decoded.starts, stream.records.map((record) => record.startLsn));
  assert.deepEqual(decoded.ends, stream.records.map((record) => record.endLsn));
}

/** Decodes `bytes`, expecting a WalCorruptionError; returns it and the decoder's lastRecordEndLsn. */
function decodeExpectingError(startLsn: Lsn, bytes: Uint8Array, options: { skipLeadingContrecord?: boolean } = {}): { error: WalCorruptionError; lastRecordEndLsn: Lsn } {
  const decoder = new WalRecordDecoder(initialDecoderState({ startLsn, segmentSizeBytes: SEGMENT_BYTES, pgVersion: PG_VERSION, ...options }));
  try {
    decoder.feed(bytes);
  } catch (error) {
    assert.ok(error instanceof WalCorruptionError, `expected WalCorruptionError, got ${String(error)}`);
    assert.throws(() => decoder.feed(new Uint8Array(1)), AssertionError);
    return { error, lastRecordEndLsn: decoder.lastRecordEndLsn };
  }
  assert.fail('decoder accepted corrupt WAL');
}

/**
 * Every way the decoder checks whole records: the native walk (the default when the addon is built), the
 * native batch CRC with the headers parsed in JS, and the portable code.
 */
const CHECKS: { name: string; checks: RecordChecks }[] = RECORD_CRC_NATIVE
  ? [{ name: 'native walk', checks: recordChecks }, { name: 'native CRC', checks: { verify: recordChecks.verify, walk: null } }, { name: 'portable', checks: PORTABLE_RECORD_CHECKS }]
  : [{ name: 'portable', checks: PORTABLE_RECORD_CHECKS }];

/** Decodes `bytes` in `chunkBytes` pieces without a callback (the writer's way: CRCs checked in batches). */
function decodeBatched(startLsn: Lsn, bytes: Uint8Array, chunkBytes: number, checks: RecordChecks): { count: number; error: unknown; lastRecordEndLsn: Lsn } {
  const decoder = new WalRecordDecoder(initialDecoderState({ startLsn, segmentSizeBytes: SEGMENT_BYTES, pgVersion: PG_VERSION }), checks);
  let count = 0;
  try {
    for (let pos = 0; pos < bytes.length; pos += chunkBytes) count += decoder.feed(bytes.subarray(pos, pos + chunkBytes));
  } catch (error) {
    return { count, error, lastRecordEndLsn: decoder.lastRecordEndLsn };
  }
  return { count, error: null, lastRecordEndLsn: decoder.lastRecordEndLsn };
}

describe('WalRecordDecoder batch CRC checks', () => {
  // More records than one batch holds (1024), of varied sizes, some crossing pages.
  const builder = builderAt(SEGMENT + 40n);
  const records: BuiltRecord[] = [];
  for (let i = 0; i < 3000; i++) records.push(builder.appendLogicalMessage(filled((i * 97) % 600, i)));
  const bytes = builder.take();
  const startLsn = SEGMENT + 40n;
  const recordAt = (index: number): BuiltRecord => records[index] ?? assert.fail(`record ${index}`);
  const offsetOf = (lsn: Lsn): number => Number(lsn - startLsn);

  for (const { name, checks } of CHECKS) {
    it(`${name}: counts and ends every record, whatever the piece size`, () => {
      for (const chunkBytes of [bytes.length, 100_000, 8192, 333]) {
        const decoded = decodeBatched(startLsn, bytes, chunkBytes, checks);
        assert.equal(decoded.error, null);
        assert.equal(decoded.count, records.length);
        assert.equal(decoded.lastRecordEndLsn, recordAt(records.length - 1).endLsn);
      }
    });

    it(`${name}: names the first bad record, before and after a batch boundary, and stops the end before it`, () => {
      for (const index of [0, 1, 1023, 1024, 1025, 2999]) {
        const corrupt = bytes.slice();
        xorAt(corrupt, offsetOf(recordAt(index).startLsn) + 21, 0x40); // inside xl_crc: never on a page header
        for (const chunkBytes of [bytes.length, 8192]) {
          const decoded = decodeBatched(startLsn, corrupt, chunkBytes, checks);
          assert.ok(decoded.error instanceof WalCorruptionError, String(decoded.error));
          assert.equal(decoded.error.kind, 'crc_mismatch');
          assert.equal(decoded.error.lsn, recordAt(index).startLsn, `record ${index}, chunk ${chunkBytes}`);
          assert.equal(decoded.lastRecordEndLsn, index === 0 ? startLsn : recordAt(index - 1).endLsn);
        }
      }
    });

    it(`${name}: a bad CRC is reported before a later record's bad xl_prev in the same piece`, () => {
      const corrupt = bytes.slice();
      xorAt(corrupt, offsetOf(recordAt(10).startLsn) + 20, 0x01);
      xorAt(corrupt, offsetOf(recordAt(12).startLsn) + 8, 0x08); // xl_prev
      const decoded = decodeBatched(startLsn, corrupt, bytes.length, checks);
      assert.ok(decoded.error instanceof WalCorruptionError);
      assert.equal(decoded.error.kind, 'crc_mismatch');
      assert.equal(decoded.error.lsn, recordAt(10).startLsn);
      assert.equal(decoded.lastRecordEndLsn, recordAt(9).endLsn);
    });
  }
});

describe('WalRecordDecoder on synthetic WAL', () => {
  const mixed = buildMixedStream(SEGMENT);

  for (const chunkBytes of [1, 7, 24, 8192, 100_000, 1 << 30]) {
    it(`finds every record fed in ${chunkBytes}-byte chunks`, () => {
      if (chunkBytes === 1) {
        const partial = { ...mixed, bytes: mixed.bytes.subarray(0, 40_000), records: mixed.records.filter((r) => r.endLsn <= mixed.startLsn + 40_000n) };
        expectRecords(decodeInChunks(partial, 1), partial);
      } else {
        expectRecords(decodeInChunks(mixed, chunkBytes), mixed);
      }
    });
  }

  it('reports the next segment start as the end of an XLOG_SWITCH record before the tail arrives', () => {
    const switchIndex = mixed.records.length - 6;
    const switchRecord = mixed.records[switchIndex];
    assert.ok(switchRecord !== undefined);
    assert.equal(switchRecord.endLsn % SEGMENT, 0n);
    const decoder = new WalRecordDecoder(initialDecoderState({ startLsn: mixed.startLsn, segmentSizeBytes: SEGMENT_BYTES, pgVersion: PG_VERSION }));
    const switchEndOffset = Number(switchRecord.startLsn - mixed.startLsn) + 24;
    decoder.feed(mixed.bytes.subarray(0, switchEndOffset));
    assert.equal(decoder.lastRecordEndLsn, switchRecord.endLsn);
    assert.equal(decoder.lsn, switchRecord.startLsn + 24n);
  });

  it('starts at a record start inside a page', () => {
    const third = mixed.records[2];
    assert.ok(third !== undefined);
    const offset = Number(third.startLsn - mixed.startLsn);
    const tail: Stream = { startLsn: third.startLsn, bytes: mixed.bytes.subarray(offset), records: mixed.records.slice(2) };
    expectRecords(decodeInChunks(tail, 5000), tail);
  });

  it('resumes from a structured-cloned snapshot at every split offset', () => {
    const small = buildSmallStream();
    const initial = initialDecoderState({ startLsn: small.startLsn, segmentSizeBytes: SEGMENT_BYTES, pgVersion: PG_VERSION });
    for (let split = 0; split <= small.bytes.length; split++) {
      const decoded: Decoded = { starts: [], ends: [] };
      const onRecord = (start: Lsn, end: Lsn): void => void (decoded.starts.push(start), decoded.ends.push(end));
      const first = new WalRecordDecoder(structuredClone(initial));
      first.feed(small.bytes.subarray(0, split), onRecord);
      const second = new WalRecordDecoder(structuredClone(first.snapshot()));
      assert.equal(second.lsn, small.startLsn + BigInt(split));
      assert.equal(second.lastRecordEndLsn, first.lastRecordEndLsn);
      second.feed(small.bytes.subarray(split), onRecord);
      expectRecords(decoded, small);
    }
  });

  it('resumes byte by byte through a fresh decoder for every byte', () => {
    const small = buildSmallStream();
    let state = initialDecoderState({ startLsn: small.startLsn, segmentSizeBytes: SEGMENT_BYTES, pgVersion: PG_VERSION });
    const decoded: Decoded = { starts: [], ends: [] };
    for (let pos = 0; pos < small.bytes.length; pos++) {
      const decoder = new WalRecordDecoder(structuredClone(state));
      decoder.feed(small.bytes.subarray(pos, pos + 1), (start, end) => void (decoded.starts.push(start), decoded.ends.push(end)));
      state = decoder.snapshot();
    }
    expectRecords(decoded, small);
    assert.equal(state.lastRecordEndLsn, small.records.at(-1)?.endLsn);
  });

  it('skips a leading continuation record when asked, and refuses it otherwise', () => {
    const builder = builderAt(SEGMENT + 8192n + 24n);
    builder.appendRecord({ rmid: 1, info: 0, data: filled(30_000, 3) }); // covers pages 1..4 of the segment
    const after = [builder.appendLogicalMessage(filled(10, 1)), builder.appendLogicalMessage(filled(10, 2))];
    const bytes = builder.take();
    const pageStart = SEGMENT + 2n * 8192n; // a page in the middle of the big record
    const fromPage = bytes.subarray(Number(pageStart - (SEGMENT + 8192n + 24n)));
    expectRecords(decodeInChunks({ startLsn: pageStart, bytes: fromPage, records: after }, 3000,
      initialDecoderState({ startLsn: pageStart, segmentSizeBytes: SEGMENT_BYTES, pgVersion: PG_VERSION, skipLeadingContrecord: true })), { startLsn: pageStart, bytes: fromPage, records: after });
    const { error } = decodeExpectingError(pageStart, fromPage);
    assert.equal(error.kind, 'unexpected_contrecord');
    assert.equal(error.lsn, pageStart);
  });

  it('validates its start arguments', () => {
    const args = { segmentSizeBytes: SEGMENT_BYTES, pgVersion: PG_VERSION };
    assert.throws(() => initialDecoderState({ ...args, startLsn: 8192n + 28n }), InvalidArgumentError);
    assert.throws(() => initialDecoderState({ ...args, startLsn: 8192n + 8n }), InvalidArgumentError);
    assert.throws(() => initialDecoderState({ ...args, startLsn: 32n }), InvalidArgumentError); // inside the long header
    assert.throws(() => initialDecoderState({ ...args, startLsn: 8192n + 24n, skipLeadingContrecord: true }), InvalidArgumentError);
    assert.throws(() => initialDecoderState({ ...args, startLsn: 0n, pgVersion: 120000 }), InvalidArgumentError);
    assert.throws(() => initialDecoderState({ ...args, startLsn: 0n, segmentSizeBytes: 3 << 20 }), InvalidArgumentError);
    assert.equal(new WalRecordDecoder(initialDecoderState({ ...args, startLsn: 40n })).lastRecordEndLsn, 40n);
  });
});

describe('WalRecordDecoder corruption errors', () => {
  const stream = buildMixedStream(SEGMENT);
  const at = (lsn: Lsn): number => Number(lsn - stream.startLsn);
  const record = (index: number): BuiltRecord => {
    const found = stream.records[index];
    assert.ok(found !== undefined);
    return found;
  };
  const corrupt = (edit: (bytes: Uint8Array, view: DataView) => void): Uint8Array => {
    const bytes = stream.bytes.slice();
    edit(bytes, new DataView(bytes.buffer));
    return bytes;
  };
  const expectError = (bytes: Uint8Array, kind: WalCorruptionError['kind'], lsn: Lsn, lastEndLsn: Lsn): void => {
    for (const [{ checks }, chunkBytes] of CHECKS.flatMap((c) => [bytes.length, 4096, 13].map((size) => [c, size] as const))) {
      const decoder = new WalRecordDecoder(initialDecoderState({ startLsn: stream.startLsn, segmentSizeBytes: SEGMENT_BYTES, pgVersion: PG_VERSION }), checks);
      const error = (() => {
        try {
          for (let pos = 0; pos < bytes.length; pos += chunkBytes) decoder.feed(bytes.subarray(pos, pos + chunkBytes));
        } catch (caught) {
          return caught;
        }
        return null;
      })();
      assert.ok(error instanceof WalCorruptionError, `chunk ${chunkBytes}: expected WalCorruptionError, got ${String(error)}`);
      assert.equal(error.kind, kind, error.message);
      assert.equal(error.lsn, lsn, error.message);
      assert.equal(error.code, 'SK_WAL_CORRUPTION');
      assert.equal(decoder.lastRecordEndLsn, lastEndLsn);
    }
  };

  /** The stream offset of byte `delta` of the record starting at `startLsn`, skipping page headers. */
  const recordByte = (startLsn: Lsn, delta: number): number => {
    let lsn = startLsn;
    for (let left = delta; ; ) {
      const pageLeft = Number(PAGE - (lsn % PAGE));
      if (left < pageLeft) return at(lsn + BigInt(left));
      left -= pageLeft;
      lsn += BigInt(pageLeft);
      lsn += lsn % SEGMENT === 0n ? 40n : 24n;
    }
  };

  it('crc_mismatch at the record start for a flipped body byte, header byte or CRC', () => {
    const split = stream.records.findIndex((r) => r.startLsn % PAGE === PAGE - 8n);
    assert.ok(split > 0, 'the stream has a record header split after 8 bytes');
    for (const [index, delta] of [[5, 30], [20, 15_000], [20, 4], [20, 21], [split, 5], [split, 18], [split, 22], [split, 60]] as const) {
      const target = record(index);
      const bytes = corrupt((b) => xorAt(b, recordByte(target.startLsn, delta), 0x01));
      expectError(bytes, 'crc_mismatch', target.startLsn, record(index - 1).endLsn);
    }
  });

  it('bad_record_length for xl_tot_len 0, below 24 and above the maximum', () => {
    for (const totalBytes of [0, 23, 0x7000_0000]) {
      const target = record(7);
      expectError(corrupt((_, v) => v.setUint32(at(target.startLsn), totalBytes, true)), 'bad_record_length', target.startLsn, record(6).endLsn);
    }
  });

  it('bad_record_prev when xl_prev does not point at the previous record', () => {
    const target = record(3);
    expectError(corrupt((_, v) => v.setUint32(at(target.startLsn) + 8, 0x1234, true)), 'bad_record_prev', target.startLsn, record(2).endLsn);
  });

  it('bad_page_magic and bad_page_address at the page LSN', () => {
    const page = SEGMENT + 3n * 8192n;
    const lastBefore = stream.records.filter((r) => r.endLsn <= page).at(-1)?.endLsn ?? stream.startLsn;
    expectError(corrupt((b) => xorAt(b, at(page), 0x10)), 'bad_page_magic', page, lastBefore);
    expectError(corrupt((b) => xorAt(b, at(page) + 9, 0x10)), 'bad_page_address', page, lastBefore);
    expectError(corrupt((b) => xorAt(b, at(page) + 2, 0x20)), 'bad_page_header', page, lastBefore);
  });

  it('bad_page_header for a wrong segment size, system id or missing long header', () => {
    const secondSegment = 2n * SEGMENT;
    const lastBefore = stream.records.filter((r) => r.endLsn <= secondSegment).at(-1)?.endLsn ?? 0n;
    expectError(corrupt((_, v) => v.setUint32(at(secondSegment) + 32, 2 << 20, true)), 'bad_page_header', secondSegment, lastBefore);
    expectError(corrupt((_, v) => v.setUint32(at(secondSegment) + 24, 99, true)), 'bad_page_header', secondSegment, lastBefore);
    expectError(corrupt((b) => xorAt(b, at(secondSegment) + 2, 0x02)), 'bad_page_header', secondSegment, lastBefore);
  });

  it('missing_contrecord and bad_contrecord_length at the continued record start', () => {
    const big = record(20);
    const nextPage = big.startLsn - (big.startLsn % PAGE) + PAGE;
    expectError(corrupt((b) => xorAt(b, at(nextPage) + 2, 0x01)), 'missing_contrecord', big.startLsn, record(19).endLsn);
    expectError(corrupt((b) => xorAt(b, at(nextPage) + 16, 0x08)), 'bad_contrecord_length', big.startLsn, record(19).endLsn);
  });

  it('unexpected_contrecord and a stray remaining length where a new record starts', () => {
    // Find a page whose first record starts right after the header.
    const page = stream.records.map((r) => r.startLsn).find((lsn) => lsn % PAGE === 24n && lsn % SEGMENT !== 24n);
    assert.ok(page !== undefined, 'the stream has a record at a page start');
    const pageLsn = page - 24n;
    const lastBefore = stream.records.filter((r) => r.endLsn <= pageLsn).at(-1)?.endLsn ?? 0n;
    expectError(corrupt((b, v) => { xorAt(b, at(pageLsn) + 2, 0x01); v.setUint32(at(pageLsn) + 16, 8, true); }), 'unexpected_contrecord', pageLsn, lastBefore);
    expectError(corrupt((_, v) => v.setUint32(at(pageLsn) + 16, 8, true)), 'bad_page_header', pageLsn, lastBefore);
  });
});

interface OverwriteStream extends Stream {
  /** R: the record the crash cut, whose first part the stream holds. */
  cut: BuiltRecord;
  /** The page PostgreSQL's recovery flagged XLP_FIRST_IS_OVERWRITE_CONTRECORD, inside R. */
  pageLsn: Lsn;
}

/**
 * WAL as a PostgreSQL 15 primary leaves it after it crashed with its flush inside record R and recovered: a
 * few records, R (starting `pageLeftBytes` before a page end, `cutBytes` long) cut at its `cutPage`-th page
 * boundary, then the page recovery wrote there (XLP_FIRST_IS_OVERWRITE_CONTRECORD, xlp_rem_len 0) holding an
 * XLOG_OVERWRITE_CONTRECORD record and more records. `records` holds every record but R.
 */
function buildOverwriteStream(args: { startLsn: Lsn; pageLeftBytes: number; cutBytes: number; cutPage: number }): OverwriteStream {
  const builder = builderAt(args.startLsn);
  const records: BuiltRecord[] = [];
  for (let i = 0; i < 3; i++) records.push(builder.appendLogicalMessage(filled(40 + i, i)));
  moveToPageLeft(builder, args.pageLeftBytes, records);
  const prevLsn = builder.prevRecordLsn;
  const cut = builder.appendRecord({ rmid: 2, info: 0, data: filled(args.cutBytes, 5) });
  const flushed = builder.take();
  const pageLsn = cut.startLsn - (cut.startLsn % PAGE) + BigInt(args.cutPage) * PAGE;
  assert.ok(pageLsn < cut.endLsn - 8n, 'R continues past the page where it is cut');
  const recovered = new WalBuilder({ startLsn: pageLsn, segmentSizeBytes: SEGMENT_BYTES, pgVersion: PG_VERSION, systemId: 7n, prevLsn });
  records.push(recovered.appendOverwriteContrecord(cut.startLsn, 0x2_0000_0000n));
  for (let i = 0; i < 3; i++) records.push(recovered.appendLogicalMessage(filled(30 + i, i)));
  moveToPageLeft(recovered, 16, records);
  records.push(recovered.appendRecord({ rmid: 2, info: 0, data: filled(9000, 6) })); // a normal page crossing after it
  const after = recovered.take();
  const head = flushed.subarray(0, Number(pageLsn - args.startLsn));
  const bytes = new Uint8Array(head.length + after.length);
  bytes.set(head);
  bytes.set(after, head.length);
  return { startLsn: args.startLsn, bytes, records, cut, pageLsn };
}

describe('WalRecordDecoder on an overwrite contrecord page (PostgreSQL 15 crash mid-record)', () => {
  const variants: { name: string; stream: OverwriteStream }[] = [
    { name: 'mid-segment', stream: buildOverwriteStream({ startLsn: SEGMENT + 40n, pageLeftBytes: 200, cutBytes: 3000, cutPage: 1 }) },
    { name: 'at a segment start', stream: buildOverwriteStream({ startLsn: 2n * SEGMENT - PAGE, pageLeftBytes: 200, cutBytes: 3000, cutPage: 1 }) },
    { name: 'with R\'s header split by the cut', stream: buildOverwriteStream({ startLsn: SEGMENT + 40n, pageLeftBytes: 8, cutBytes: 3000, cutPage: 1 }) },
    { name: 'at R\'s third page', stream: buildOverwriteStream({ startLsn: 2n * SEGMENT - 3n * PAGE, pageLeftBytes: 200, cutBytes: 30_000, cutPage: 3 }) },
  ];
  const offsetOf = (stream: Stream, lsn: Lsn): number => Number(lsn - stream.startLsn);
  const recordsBefore = (stream: OverwriteStream): BuiltRecord[] => stream.records.filter((r) => r.startLsn < stream.cut.startLsn);

  it('builds the page as PostgreSQL does', () => {
    const { stream } = variants[1] ?? assert.fail('variant');
    assert.equal(stream.pageLsn % SEGMENT, 0n);
    const view = new DataView(stream.bytes.buffer);
    const at = offsetOf(stream, stream.pageLsn);
    assert.equal(view.getUint16(at + 2, true), 0x0008 | 0x0002); // XLP_FIRST_IS_OVERWRITE_CONTRECORD | XLP_LONG_HEADER
    assert.equal(view.getUint32(at + 16, true), 0); // xlp_rem_len
    const first = stream.records[recordsBefore(stream).length] ?? assert.fail('overwrite record');
    assert.equal(first.startLsn, stream.pageLsn + 40n);
    assert.equal(view.getUint8(at + 40 + 17), 0); // RM_XLOG_ID
    assert.equal(view.getUint8(at + 40 + 16), 0xd0); // XLOG_OVERWRITE_CONTRECORD
    assert.equal(view.getBigUint64(at + 40 + 26, true), stream.cut.startLsn); // overwritten_lsn
  });

  for (const { name, stream } of variants) {
    it(`${name}: reports every record before R, none for R, then the new records, whatever the piece size`, () => {
      for (const chunkBytes of [1, 7, 24, 1000, 8192, stream.bytes.length]) expectRecords(decodeInChunks(stream, chunkBytes), stream);
    });

    for (const { name: checksName, checks } of CHECKS) {
      it(`${name}, ${checksName}: the flush point stays at R's start until the page arrives in a later batch, on another decoder`, () => {
        const whole = decodeBatched(stream.startLsn, stream.bytes, stream.bytes.length, checks);
        assert.equal(whole.error, null);
        assert.equal(whole.count, stream.records.length);
        assert.equal(whole.lastRecordEndLsn, stream.records.at(-1)?.endLsn);
        // At the page, inside its header, and inside the XLOG_OVERWRITE_CONTRECORD record (or the long header).
        const pageAt = offsetOf(stream, stream.pageLsn);
        for (const split of [pageAt, pageAt + 10, pageAt + 30]) {
          const first = new WalRecordDecoder(initialDecoderState({ startLsn: stream.startLsn, segmentSizeBytes: SEGMENT_BYTES, pgVersion: PG_VERSION }), checks);
          let count = first.feed(stream.bytes.subarray(0, split));
          assert.equal(count, recordsBefore(stream).length);
          assert.equal(first.lastRecordEndLsn, stream.cut.startLsn);
          const state = structuredClone(first.snapshot());
          if (split < pageAt + 24) assert.equal(state.recordStartLsn, stream.cut.startLsn, 'R is dropped only once the page header is complete');
          const second = new WalRecordDecoder(state, checks);
          count += second.feed(stream.bytes.subarray(split));
          assert.equal(count, stream.records.length);
          assert.equal(second.lastRecordEndLsn, stream.records.at(-1)?.endLsn);
        }
      });
    }

    it(`${name}: resumes from a structured-cloned snapshot at every split offset around the page`, () => {
      const pageAt = offsetOf(stream, stream.pageLsn);
      for (let split = offsetOf(stream, stream.cut.startLsn) - 8; split <= pageAt + 120; split++) {
        const decoded: Decoded = { starts: [], ends: [] };
        const onRecord = (start: Lsn, end: Lsn): void => void (decoded.starts.push(start), decoded.ends.push(end));
        const first = new WalRecordDecoder(initialDecoderState({ startLsn: stream.startLsn, segmentSizeBytes: SEGMENT_BYTES, pgVersion: PG_VERSION }));
        first.feed(stream.bytes.subarray(0, split), onRecord);
        const second = new WalRecordDecoder(structuredClone(first.snapshot()));
        second.feed(stream.bytes.subarray(split), onRecord);
        expectRecords(decoded, stream);
      }
    });
  }

  /** Decodes `bytes` with every way of checking records and piece size; each must stop with this error. */
  const expectError = (stream: OverwriteStream, bytes: Uint8Array, kind: WalCorruptionError['kind'], lsn: Lsn): void => {
    for (const { checks } of CHECKS) {
      for (const chunkBytes of [bytes.length, 13]) {
        const decoded = decodeBatched(stream.startLsn, bytes, chunkBytes, checks);
        assert.ok(decoded.error instanceof WalCorruptionError, `expected WalCorruptionError, got ${String(decoded.error)}`);
        assert.equal(decoded.error.kind, kind, decoded.error.message);
        assert.equal(decoded.error.lsn, lsn, decoded.error.message);
        assert.equal(decoded.lastRecordEndLsn, stream.cut.startLsn);
      }
    }
  };

  for (const { name, stream } of variants) {
    it(`${name}: a page with neither flag while R continues is still missing_contrecord at R`, () => {
      const bytes = stream.bytes.slice();
      xorAt(bytes, offsetOf(stream, stream.pageLsn) + 2, 0x08);
      expectError(stream, bytes, 'missing_contrecord', stream.cut.startLsn);
    });
  }

  it('refuses a contrecord flag or a remaining length beside the overwrite flag, as a page where a new record starts', () => {
    const { stream } = variants[0] ?? assert.fail('variant');
    const at = offsetOf(stream, stream.pageLsn);
    const both = stream.bytes.slice();
    xorAt(both, at + 2, 0x01);
    new DataView(both.buffer).setUint32(at + 16, Number(stream.cut.endLsn - stream.pageLsn), true); // even with the right rem_len
    expectError(stream, both, 'unexpected_contrecord', stream.pageLsn);
    const remaining = stream.bytes.slice();
    new DataView(remaining.buffer).setUint32(at + 16, 8, true);
    expectError(stream, remaining, 'bad_page_header', stream.pageLsn);
  });

  it('checks xl_prev of the first record on the page against the record before R', () => {
    const { stream } = variants[0] ?? assert.fail('variant');
    const bytes = stream.bytes.slice();
    const firstAt = offsetOf(stream, stream.pageLsn) + 24;
    new DataView(bytes.buffer).setBigUint64(firstAt + 8, stream.cut.startLsn, true); // as if R had completed
    expectError(stream, bytes, 'bad_record_prev', stream.pageLsn + 24n);
  });

  it('ignores the flag on a page where a new record starts anyway, as PostgreSQL does', () => {
    const builder = builderAt(SEGMENT + 40n);
    const records: BuiltRecord[] = [builder.appendLogicalMessage(filled(10, 1))];
    moveToPageLeft(builder, WAL_PAGE_SIZE_BYTES, records);
    const pageLsn = builder.lsn;
    for (let i = 0; i < 3; i++) records.push(builder.appendLogicalMessage(filled(20, i)));
    const stream: Stream = { startLsn: SEGMENT + 40n, bytes: builder.take(), records };
    xorAt(stream.bytes, Number(pageLsn - stream.startLsn) + 2, 0x08);
    for (const chunkBytes of [1, 100, stream.bytes.length]) expectRecords(decodeInChunks(stream, chunkBytes), stream);
  });

  it('abandons a leading continuation being skipped, too (a start inside R with skipLeadingContrecord)', () => {
    const { stream } = variants[3] ?? assert.fail('variant');
    const fromLsn = stream.pageLsn - PAGE; // R's second page boundary: a continuation of R starts there
    const tail: Stream = { startLsn: fromLsn, bytes: stream.bytes.subarray(offsetOf(stream, fromLsn)), records: stream.records.filter((r) => r.startLsn > fromLsn) };
    const state = initialDecoderState({ startLsn: fromLsn, segmentSizeBytes: SEGMENT_BYTES, pgVersion: PG_VERSION, skipLeadingContrecord: true });
    for (const chunkBytes of [1, 500, tail.bytes.length]) expectRecords(decodeInChunks(tail, chunkBytes, structuredClone(state)), tail);
  });
});
