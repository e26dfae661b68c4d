import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { describe, it } from 'node:test';
import { InvalidArgumentError } from '../../src/errors.js';
import { crc32c } from '../../src/wal/crc.js';
import {
  LONG_PAGE_HEADER_BYTES, RECORD_HEADER_BYTES, SHORT_PAGE_HEADER_BYTES, XLP_FIRST_IS_CONTRECORD, XLP_LONG_HEADER,
  computeRecordCrc, decodePageHeader, decodeRecordHeader, encodePageHeader, encodeRecord, isSwitchRecord,
  pageMagicForPgVersion, writeRecordHeader, type PageHeader, type RecordHeader,
} from '../../src/wal/page.js';
import { WalBuilder, logicalMessageRecordBytes } from '../../src/wal/wal_builder.js';

describe('page headers', () => {
  it('round-trips a short header', () => {
    const header: PageHeader = { magic: 0xd110, info: XLP_FIRST_IS_CONTRECORD, timelineId: 1, pageAddrLsn: 0x1_0000_2000n, remainingBytes: 1234, long: null };
    const bytes = encodePageHeader(header);
    assert.equal(bytes.length, SHORT_PAGE_HEADER_BYTES);
    assert.deepEqual(decodePageHeader(bytes), header);
  });

  it('round-trips a long header with a 64-bit system id', () => {
    const header: PageHeader = {
      magic: 0xd110, info: XLP_LONG_HEADER, timelineId: 7, pageAddrLsn: 0xffff_0000_0100_0000n, remainingBytes: 0,
      long: { systemId: 0xfedc_ba98_7654_3210n, segmentSizeBytes: 16 << 20, pageSizeBytes: 8192 },
    };
    const bytes = encodePageHeader(header);
    assert.equal(bytes.length, LONG_PAGE_HEADER_BYTES);
    assert.deepEqual(decodePageHeader(bytes), header);
  });

  it('lays out fields little-endian at PostgreSQL offsets', () => {
    const bytes = encodePageHeader({ magic: 0xd110, info: 2, timelineId: 1, pageAddrLsn: 0x0102_0304_0506_0708n, remainingBytes: 9, long: { systemId: 1n, segmentSizeBytes: 0x100_0000, pageSizeBytes: 0x2000 } });
    assert.deepEqual([...bytes.subarray(0, 4)], [0x10, 0xd1, 0x02, 0x00]);
    assert.deepEqual([...bytes.subarray(8, 16)], [8, 7, 6, 5, 4, 3, 2, 1]);
    assert.equal(bytes[16], 9);
    assert.deepEqual([...bytes.subarray(32, 40)], [0, 0, 0, 1, 0, 0x20, 0, 0]);
  });

  it('maps server_version_num to the page magic', () => {
    assert.equal(pageMagicForPgVersion(140011), 0xd10d);
    assert.equal(pageMagicForPgVersion(150008), 0xd110);
    assert.equal(pageMagicForPgVersion(160004), 0xd113);
    assert.equal(pageMagicForPgVersion(170000), 0xd116);
    for (const bad of [130000, 180000, 15, 0, -1, 150000.5]) assert.throws(() => pageMagicForPgVersion(bad), InvalidArgumentError);
  });
});

describe('record headers', () => {
  it('round-trips a record header', () => {
    const header: RecordHeader = { totalLengthBytes: 77, xid: 0xdeadbeef, prevLsn: 0x0000_0001_0000_0028n, info: 0x40, rmid: 0, crc: 0x12345678 };
    const bytes = new Uint8Array(RECORD_HEADER_BYTES);
    writeRecordHeader(bytes, 0, header);
    assert.deepEqual(decodeRecordHeader(bytes), header);
  });

  it('encodeRecord fills xl_tot_len and a CRC over the body then the first 20 header bytes', () => {
    const data = Uint8Array.from(randomBytes(333));
    const record = encodeRecord({ rmid: 21, info: 0, xid: 5, prevLsn: 0x1_0000_0028n, data });
    const header = decodeRecordHeader(record);
    assert.equal(header.totalLengthBytes, RECORD_HEADER_BYTES + 333);
    assert.equal(header.crc, crc32c(record.subarray(0, 20), crc32c(record.subarray(24))));
    assert.equal(computeRecordCrc(record), header.crc);
    assert.deepEqual(record.subarray(24), data);
  });

  it('recognises XLOG_SWITCH regardless of the generic info bits', () => {
    assert.equal(isSwitchRecord(0, 0x40), true);
    assert.equal(isSwitchRecord(0, 0x41), true);
    assert.equal(isSwitchRecord(0, 0x50), false);
    assert.equal(isSwitchRecord(1, 0x40), false);
  });
});

describe('WalBuilder layout', () => {
  const segmentSizeBytes = 1 << 20;
  const options = { segmentSizeBytes, pgVersion: 150008, systemId: 42n };

  it('writes a long header at a segment start and puts the first record after it', () => {
    const builder = new WalBuilder({ ...options, startLsn: 3n * BigInt(segmentSizeBytes) });
    const record = builder.appendLogicalMessage(new Uint8Array(10));
    assert.equal(record.startLsn, 3n * BigInt(segmentSizeBytes) + 40n);
    const bytes = builder.take();
    const page = decodePageHeader(bytes);
    assert.equal(page.info, XLP_LONG_HEADER);
    assert.equal(page.pageAddrLsn, 3n * BigInt(segmentSizeBytes));
    assert.deepEqual(page.long, { systemId: 42n, segmentSizeBytes, pageSizeBytes: 8192 });
    assert.equal(decodeRecordHeader(bytes, 40).totalLengthBytes, logicalMessageRecordBytes(10));
    assert.equal(record.endLsn, record.startLsn + BigInt((logicalMessageRecordBytes(10) + 7) & ~7));
    assert.equal(bytes.length, Number(record.endLsn - 3n * BigInt(segmentSizeBytes)));
  });

  it('continues a record onto the next page with the contrecord flag and remaining length', () => {
    const builder = new WalBuilder({ ...options, startLsn: 8192n * 5n + 24n });
    const record = builder.appendRecord({ rmid: 21, info: 0, data: new Uint8Array(10_000) });
    const bytes = builder.take();
    const nextPage = decodePageHeader(bytes, 8192 - 24);
    assert.equal(nextPage.info, XLP_FIRST_IS_CONTRECORD);
    assert.equal(nextPage.pageAddrLsn, 8192n * 6n);
    assert.equal(nextPage.remainingBytes, 10_024 - (8192 - 24));
    assert.equal(record.endLsn, 8192n * 6n + 24n + BigInt(nextPage.remainingBytes)); // 10_024 is already 8-aligned
  });

  it('xl_prev links each record to the previous one', () => {
    const builder = new WalBuilder({ ...options, startLsn: 8192n + 24n, prevLsn: 99n * 8n });
    const first = builder.appendRecord({ rmid: 1, info: 0, data: new Uint8Array(5) });
    const second = builder.appendRecord({ rmid: 1, info: 0, data: new Uint8Array(5) });
    const bytes = builder.take();
    assert.equal(decodeRecordHeader(bytes, 0).prevLsn, 99n * 8n);
    assert.equal(decodeRecordHeader(bytes, Number(second.startLsn - first.startLsn)).prevLsn, first.startLsn);
  });

  it('fills the rest of the segment after XLOG_SWITCH', () => {
    const builder = new WalBuilder({ ...options, startLsn: BigInt(segmentSizeBytes) - 8192n });
    const record = builder.appendSwitch();
    assert.equal(record.endLsn, BigInt(segmentSizeBytes));
    assert.equal(builder.take().length, 8192);
    const next = builder.appendRecord({ rmid: 1, info: 0, data: new Uint8Array(1) });
    assert.equal(next.startLsn, BigInt(segmentSizeBytes) + 40n);
  });
});
