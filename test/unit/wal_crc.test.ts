import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { describe, it } from 'node:test';
import { CRC_NATIVE_AVAILABLE, CRC_NATIVE_NAME, crc32c, crc32cNative, crc32cPortable, crc32cPortableRange } from '../../src/wal/crc.js';

const IMPLEMENTATIONS = [
  ['native', crc32cNative],
  ['portable', crc32cPortable],
  ['dispatching', crc32c],
] as const;

const ascii = (text: string): Uint8Array => new TextEncoder().encode(text);

describe('crc32c', () => {
  it('loads a native implementation on this platform', () => {
    assert.equal(CRC_NATIVE_AVAILABLE, true);
    assert.ok(CRC_NATIVE_NAME === 'sse4_crc32' || CRC_NATIVE_NAME === '@node-rs/crc32');
  });

  for (const [name, crc] of IMPLEMENTATIONS) {
    it(`${name}: matches the standard CRC-32C check values`, () => {
      assert.equal(crc(ascii('123456789')), 0xe3069283);
      assert.equal(crc(new Uint8Array(0)), 0);
      assert.equal(crc(new Uint8Array(32)), 0x8a9136aa); // RFC 3720 B.4: 32 bytes of zeros
      assert.equal(crc(new Uint8Array(32).fill(0xff)), 0x62a8ab43); // RFC 3720 B.4: 32 bytes of ones
      const ascending = Uint8Array.from({ length: 32 }, (_, i) => i);
      assert.equal(crc(ascending), 0x46dd794e); // RFC 3720 B.4: incrementing bytes
    });

    it(`${name}: chained pieces equal one shot`, () => {
      const data = randomBytes(10_000);
      const whole = crc(data);
      for (const cut of [0, 1, 7, 8, 9, 20, 24, 159, 160, 4096, 9999, 10_000]) {
        assert.equal(crc(data.subarray(cut), crc(data.subarray(0, cut))), whole, `cut at ${cut}`);
      }
    });

    it(`${name}: honours the view's byteOffset`, () => {
      const backing = randomBytes(300);
      const view = backing.subarray(17, 290);
      assert.equal(crc(view), crc(Uint8Array.from(view)));
    });

    it(`${name}: reads views of a SharedArrayBuffer (the WAL ring)`, () => {
      const shared = new Uint8Array(new SharedArrayBuffer(1024));
      shared.set(randomBytes(1024));
      for (const [start, end] of [[0, 1024], [3, 286], [500, 520], [1000, 1000]] as const) {
        assert.equal(crc(shared.subarray(start, end), 7), crc(Uint8Array.from(shared.subarray(start, end)), 7), `[${start}, ${end})`);
      }
    });
  }

  it('native and portable agree on random buffers of every small size and some large ones', () => {
    for (let size = 0; size <= 600; size++) {
      const data = randomBytes(size);
      const previous = size * 2654435761 >>> 0;
      assert.equal(crc32cNative(data, previous), crc32cPortable(data, previous), `size ${size}`);
    }
    for (const size of [8191, 8192, 65_536 + 3, 1 << 20]) {
      const data = randomBytes(size);
      assert.equal(crc32cNative(data), crc32cPortable(data), `size ${size}`);
    }
  });

  it('crc32cPortableRange equals crc32cPortable over the same subarray', () => {
    const data = randomBytes(1000);
    for (const [start, end] of [[0, 0], [0, 20], [3, 23], [100, 999], [0, 1000]] as const) {
      assert.equal(crc32cPortableRange(data, start, end, 12345), crc32cPortable(data.subarray(start, end), 12345));
    }
  });
});
