/**
 * The client-side backend message framer: a stream of messages split at every offset and fed in n-byte
 * chunks yields the same messages; a declared length above the cap or below 4 is refused before buffering.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { BackendMessageParser, decodeDataRow, decodeErrorFields, decodeRowDescription } from '../../src/pg/backend_parser.js';
import { dataRow, errorResponse, readyForQuery, rowDescription } from '../../src/pg/backend_encoder.js';

function copyData(payload: Buffer): Buffer {
  const header = Buffer.alloc(5);
  header[0] = 0x64;
  header.writeInt32BE(payload.length + 4, 1);
  return Buffer.concat([header, payload]);
}

const messages = [
  rowDescription([{ name: 'systemid', typeOid: 25, typeLengthBytes: -1 }, { name: 'timeline', typeOid: 23, typeLengthBytes: 4 }]),
  dataRow(['7710570714944875444', null]),
  copyData(Buffer.alloc(3000, 7)),
  errorResponse({ code: '57P01', message: 'bye' }),
  readyForQuery('I'),
];
const stream = Buffer.concat(messages);

function parse(chunks: Buffer[]): { tag: number; body: Buffer }[] {
  const parser = new BackendMessageParser(1 << 20);
  const out: { tag: number; body: Buffer }[] = [];
  for (const chunk of chunks) parser.push(chunk, (tag, body) => out.push({ tag, body: Buffer.from(body) }));
  assert.equal(parser.pendingBytes, 0);
  return out;
}

describe('backend message parser', () => {
  const expected = parse([stream]);

  it('decodes the messages and their bodies', () => {
    assert.deepEqual(expected.map((message) => String.fromCharCode(message.tag)), ['T', 'D', 'd', 'E', 'Z']);
    assert.deepEqual(decodeRowDescription(expected[0]?.body as Buffer), ['systemid', 'timeline']);
    assert.deepEqual(decodeDataRow(expected[1]?.body as Buffer), ['7710570714944875444', null]);
    assert.equal(expected[2]?.body.length, 3000);
    assert.deepEqual(decodeErrorFields(expected[3]?.body as Buffer), { S: 'ERROR', V: 'ERROR', C: '57P01', M: 'bye' });
  });

  it('yields the same messages for a stream split at every offset', () => {
    for (let offset = 0; offset <= stream.length; offset += 1) {
      assert.deepEqual(parse([stream.subarray(0, offset), stream.subarray(offset)]), expected);
    }
  });

  it('yields the same messages when fed in n-byte chunks', () => {
    for (const size of [1, 2, 3, 5, 7, 64, 1000]) {
      const chunks: Buffer[] = [];
      for (let offset = 0; offset < stream.length; offset += size) chunks.push(stream.subarray(offset, offset + size));
      assert.deepEqual(parse(chunks), expected);
    }
  });

  it('refuses a length above the cap or below 4 as soon as the header is in', () => {
    const parser = new BackendMessageParser(1024);
    const header = Buffer.from([0x64, 0, 0, 8, 0]);
    assert.throws(() => parser.push(header, () => undefined), /declares 2048 bytes/);
    assert.throws(() => new BackendMessageParser(1024).push(Buffer.from([0x5a, 0, 0, 0, 3]), () => undefined), /declares 3 bytes/);
  });
});
