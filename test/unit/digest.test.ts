/**
 * Object digests (src/remote/digest.ts): the XXH64 values match those of the WebAssembly build used before
 * the native one (computed with xxhash-wasm 1.1.0), so objects uploaded by older versions still verify.
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { DIGEST_BLOCK_BYTES_KEY, DIGEST_BLOCKS_KEY, DIGEST_KEY, digestMetadata, xxhash64Hex } from '../../src/remote/digest.js';

/** 1 MiB of a fixed pattern. */
function pattern(bytes: number): Uint8Array {
  const out = new Uint8Array(bytes);
  for (let index = 0; index < bytes; index++) out[index] = (index * 31 + 7) & 0xff;
  return out;
}

describe('object digests', () => {
  test('XXH64 (seed 0) as 16 hex digits, equal to the values the previous implementation stored', () => {
    assert.equal(xxhash64Hex(new Uint8Array(0)), 'ef46db3751d8e999');
    assert.equal(xxhash64Hex(new TextEncoder().encode('safekeeper')), '5e4bf3c1da5ac210');
    assert.equal(xxhash64Hex(pattern(1 << 20)), '292cc494f5a2e5ec');
  });

  test('a view is hashed over its own bytes only', () => {
    const body = pattern(3 << 20);
    const middle = body.subarray(1 << 20, 2 << 20);
    assert.equal(xxhash64Hex(middle), xxhash64Hex(middle.slice()));
    assert.notEqual(xxhash64Hex(middle), xxhash64Hex(body));
  });

  test('metadata: the whole body and each 1 MiB block', () => {
    const body = pattern((2 << 20) + 5);
    const metadata = digestMetadata(body);
    assert.equal(metadata[DIGEST_KEY], xxhash64Hex(body));
    assert.equal(metadata[DIGEST_BLOCK_BYTES_KEY], String(1 << 20));
    const blocks = [0, 1, 2].map((index) => xxhash64Hex(body.subarray(index << 20, Math.min((index + 1) << 20, body.length)))).join('');
    assert.equal(metadata[DIGEST_BLOCKS_KEY], blocks);
  });
});
