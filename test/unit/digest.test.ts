/**
 * Object digests (src/remote/digest.ts): the XXH64 values match those of the WebAssembly build used before
 * the native one (computed with xxhash-wasm 1.1.0), so objects uploaded by older versions still verify.
 * Verification reports remote bytes that do not cover whole digest blocks as a problem, never an assertion.
 */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { DIGEST_BLOCK_BYTES_KEY, DIGEST_BLOCK_BYTES_MIN, DIGEST_BLOCKS_KEY, DIGEST_KEY, digestMetadata, verifyAgainstDigest, xxhash64Hex } from '../../src/remote/digest.js';

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

  test('bytes that do not cover whole digest blocks are a problem of the remote data, not an assertion', () => {
    const block = DIGEST_BLOCK_BYTES_MIN;
    const body = pattern(2 * block + 100);
    const metadata = digestMetadata(body);
    assert.equal(verifyAgainstDigest(metadata, body.length, 0, body), null);
    assert.equal(verifyAgainstDigest(metadata, body.length, block, body.subarray(block)), null);
    assert.equal(verifyAgainstDigest(metadata, body.length, block, body.subarray(block, 2 * block)), null);
    assert.match(verifyAgainstDigest(metadata, body.length, 5, body.subarray(5, block)) ?? '', /do not start at a 1048576-byte digest block boundary/);
    assert.match(verifyAgainstDigest(metadata, body.length, 0, body.subarray(0, block + 1)) ?? '', /end inside a 1048576-byte digest block/);
    assert.match(verifyAgainstDigest(metadata, body.length, 2 * block, body.subarray(block)) ?? '', /run past the object end/);
    // An object that grew between two requests: its digests no longer fit the size the reply claims.
    assert.match(verifyAgainstDigest(metadata, body.length + block, 0, body) ?? '', /malformed xxhash64 block digests/);
  });
});
