import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { serialize } from 'pg-protocol';
import { ProtocolViolationError } from '../../src/errors.js';
import { FrameDecoder, STARTUP_PACKET_TAG, StartupCode } from '../../src/pg/frame_decoder.js';

type Decoded = [tag: number, body: Buffer];

/** A stream as a client sends it: SSLRequest, StartupMessage, then typed messages of many sizes. */
function clientStream(): Buffer {
  return Buffer.concat([
    serialize.requestSsl(),
    serialize.startup({ user: 'u', database: 'd', options: '-c tenant_id=x' }),
    serialize.query('START_WAL_PUSH'),
    serialize.copyData(Buffer.alloc(0)),
    serialize.copyData(Buffer.from('a')),
    serialize.copyData(Buffer.alloc(300, 7)),
    serialize.copyData(Buffer.alloc(4000, 9)),
    serialize.parse({ text: 'IDENTIFY_SYSTEM' }),
    serialize.bind(),
    serialize.describe({ type: 'P' }),
    serialize.execute(),
    serialize.sync(),
    serialize.copyDone(),
    serialize.end(),
  ]);
}

/** Decodes `chunks`, switching to typed messages at the StartupMessage, as the connection does. */
function decode(chunks: Buffer[], frameBytesMax = 64 * 1024): Decoded[] {
  const decoder = new FrameDecoder(frameBytesMax);
  const decoded: Decoded[] = [];
  const onMessage = (tag: number, body: Buffer): void => {
    decoded.push([tag, Buffer.from(body)]);
    if (tag === STARTUP_PACKET_TAG && body.readInt32BE(0) === StartupCode.Protocol3) decoder.startTypedPhase();
  };
  for (const chunk of chunks) decoder.push(chunk, onMessage);
  assert.equal(decoder.bufferedBytes, 0);
  return decoded;
}

function chunked(stream: Buffer, chunkBytes: number): Buffer[] {
  const chunks: Buffer[] = [];
  for (let offset = 0; offset < stream.length; offset += chunkBytes) chunks.push(Buffer.from(stream.subarray(offset, offset + chunkBytes)));
  return chunks;
}

describe('FrameDecoder', () => {
  const stream = clientStream();
  const expected = decode([stream]);

  it('decodes startup packets, then typed messages', () => {
    assert.equal(expected.length, 14);
    assert.deepEqual(expected.map(([tag]) => tag).slice(0, 2), [STARTUP_PACKET_TAG, STARTUP_PACKET_TAG]);
    assert.equal(expected[0]?.[1].readInt32BE(0), StartupCode.SslRequest);
    assert.equal(expected[1]?.[1].readInt32BE(0), StartupCode.Protocol3);
    assert.deepEqual(
      expected.slice(2).map(([tag]) => String.fromCharCode(tag)),
      ['Q', 'd', 'd', 'd', 'd', 'P', 'B', 'D', 'E', 'S', 'c', 'X'],
    );
    assert.equal(expected[2]?.[1].toString(), 'START_WAL_PUSH\0');
    assert.equal(expected[6]?.[1].length, 4000);
  });

  it('yields identical messages for the stream split at every offset', () => {
    for (let offset = 1; offset < stream.length; offset += 1) {
      assert.deepEqual(decode([stream.subarray(0, offset), stream.subarray(offset)]), expected, `split at ${offset}`);
    }
  });

  it('yields identical messages for the stream fed in n-byte chunks', () => {
    for (const chunkBytes of [1, 2, 3, 4, 5, 6, 7, 13, 64, 511, 4096]) {
      assert.deepEqual(decode(chunked(stream, chunkBytes)), expected, `${chunkBytes}-byte chunks`);
    }
  });

  it('hands out a message inside one chunk as a view of that chunk', () => {
    const decoder = new FrameDecoder(1024);
    decoder.push(serialize.startup({ user: 'u' }), () => decoder.startTypedPhase());
    const chunk = Buffer.concat([serialize.copyData(Buffer.from('abc')), serialize.copyData(Buffer.from('de'))]);
    const views: Buffer[] = [];
    decoder.push(chunk, (_tag, body) => views.push(body));
    assert.equal(views.length, 2);
    for (const view of views) assert.equal(view.buffer, chunk.buffer);
    assert.equal(views[0]?.byteOffset, chunk.byteOffset + 5);
  });

  it('rejects an oversize declared length as soon as the header is complete', () => {
    const decoder = new FrameDecoder(1024);
    decoder.push(serialize.startup({ user: 'u' }), () => decoder.startTypedPhase());
    const header = Buffer.from([0x64, 0, 0, 0x04, 0x01]); // 'd', length 1025
    decoder.push(header.subarray(0, 3), () => assert.fail('no message'));
    assert.equal(decoder.bufferedBytes, 3);
    assert.throws(() => decoder.push(header.subarray(3), () => assert.fail('no message')), ProtocolViolationError);
  });

  it('rejects declared lengths below 4 and above the cap, and accepts the cap itself', () => {
    for (const lengthBytes of [-1, 0, 3, 1025, 0x7fff_ffff]) {
      const decoder = new FrameDecoder(1024);
      decoder.push(serialize.startup({ user: 'u' }), () => decoder.startTypedPhase());
      const header = Buffer.alloc(5);
      header[0] = 0x64;
      header.writeInt32BE(lengthBytes, 1);
      assert.throws(() => decoder.push(header, () => undefined), (error: unknown) => error instanceof ProtocolViolationError && error.sqlState === '08P01');
    }
    const decoder = new FrameDecoder(1024);
    decoder.push(serialize.startup({ user: 'u' }), () => decoder.startTypedPhase());
    const bodies: number[] = [];
    decoder.push(serialize.copyData(Buffer.alloc(1020)), (_tag, body) => bodies.push(body.length));
    assert.deepEqual(bodies, [1020]);
  });

  it('caps startup packets at STARTUP_PACKET_BYTES_MAX and refuses packets without a code', () => {
    for (const lengthBytes of [4, 7, 10_001, 1 << 30]) {
      const decoder = new FrameDecoder(1024);
      const header = Buffer.alloc(4);
      header.writeInt32BE(lengthBytes, 0);
      assert.throws(() => decoder.push(header, () => undefined), ProtocolViolationError);
    }
  });

  it('stops delivery mid-chunk on pause and resumes in order, queueing later chunks', () => {
    const decoder = new FrameDecoder(1024);
    decoder.push(serialize.startup({ user: 'u' }), () => decoder.startTypedPhase());
    const payloads = ['1', '2', '3', '4', '5'].map((text) => serialize.copyData(Buffer.from(text)));
    const seen: string[] = [];
    const onMessage = (_tag: number, body: Buffer): void => {
      seen.push(body.toString());
      if (body.toString() === '2') decoder.pause();
    };
    decoder.push(Buffer.concat(payloads.slice(0, 3)), onMessage);
    assert.deepEqual(seen, ['1', '2']);
    assert.ok(decoder.paused);
    decoder.push(Buffer.concat(payloads.slice(3)), onMessage);
    assert.deepEqual(seen, ['1', '2']);
    assert.equal(decoder.bufferedBytes, 3 * 6);
    decoder.resume(onMessage);
    assert.deepEqual(seen, ['1', '2', '3', '4', '5']);
    assert.equal(decoder.bufferedBytes, 0);
  });

  it('goes on when a callback pauses and resumes before returning', () => {
    const decoder = new FrameDecoder(1024);
    decoder.push(serialize.startup({ user: 'u' }), () => decoder.startTypedPhase());
    const seen: string[] = [];
    const onMessage = (_tag: number, body: Buffer): void => {
      seen.push(body.toString());
      decoder.pause();
      decoder.resume(onMessage);
    };
    decoder.push(Buffer.concat(['a', 'b', 'c'].map((text) => serialize.copyData(Buffer.from(text)))), onMessage);
    assert.deepEqual(seen, ['a', 'b', 'c']);
  });

  it('delivers nothing after discard()', () => {
    const decoder = new FrameDecoder(1024);
    decoder.push(serialize.startup({ user: 'u' }), () => decoder.startTypedPhase());
    let count = 0;
    decoder.push(Buffer.concat([serialize.sync(), serialize.sync()]), () => {
      count += 1;
      decoder.discard();
    });
    decoder.push(serialize.sync(), () => (count += 1));
    assert.equal(count, 1);
  });
});
