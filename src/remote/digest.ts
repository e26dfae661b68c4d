/**
 * Object digests: every remote object carries an xxhash64 of its whole body plus one xxhash64 per block,
 * in its metadata, so a ranged download (a reader's on-demand WAL) can be checked too: the range is widened
 * to whole blocks, each block is checked, and the wanted bytes are cut out.
 *
 * Blocks are `DIGEST_BLOCK_BYTES_MIN` (1 MiB) or, for objects of more than `DIGEST_BLOCKS_MAX` MiB, the next
 * power of two that keeps the count at or below `DIGEST_BLOCKS_MAX`; so the metadata stays under 1.1 KiB
 * (S3 allows 2 KiB of user metadata) and a 16 MiB segment has 16 blocks.
 *
 * Metadata keys (lower case: S3 lower-cases user metadata names):
 *   xxhash64             16 hex digits of the whole body
 *   xxhash64-block-bytes block size in bytes, decimal
 *   xxhash64-blocks      16 hex digits per block, concatenated
 * The hashing is the native `@node-rs/xxhash` (XXH64, seed 0): it reads the caller's bytes in place, ~1.2 ms
 * per 16 MiB here, where the WebAssembly build used before copied every body into its own memory first and
 * took ~3 ms; both compute the same XXH64, so digests of older objects still verify. Pure; any thread.
 */
import { xxh64 } from '@node-rs/xxhash';
import { assert } from '../sync/assert.js';

export const DIGEST_KEY = 'xxhash64';
export const DIGEST_BLOCK_BYTES_KEY = 'xxhash64-block-bytes';
export const DIGEST_BLOCKS_KEY = 'xxhash64-blocks';
export const DIGEST_BLOCK_BYTES_MIN = 1 << 20;
/** 64 blocks × 16 hex digits = 1 KiB of metadata, half of S3's 2 KiB user-metadata limit. */
export const DIGEST_BLOCKS_MAX = 64;
const HEX_DIGITS = 16;

/** xxhash64 of `bytes` as 16 lower-case hex digits. */
export function xxhash64Hex(bytes: Uint8Array): string {
  return xxh64(bytes).toString(16).padStart(HEX_DIGITS, '0');
}

/** The block size for an object of `sizeBytes`. */
export function digestBlockBytes(sizeBytes: number): number {
  let block = DIGEST_BLOCK_BYTES_MIN;
  while (Math.ceil(sizeBytes / block) > DIGEST_BLOCKS_MAX) block *= 2;
  return block;
}

/** The digest metadata of a body. */
export function digestMetadata(body: Uint8Array): Record<string, string> {
  const blockBytes = digestBlockBytes(body.length);
  let blocks = '';
  for (let offset = 0; offset < body.length; offset += blockBytes) {
    blocks += xxhash64Hex(body.subarray(offset, Math.min(offset + blockBytes, body.length)));
  }
  return { [DIGEST_KEY]: xxhash64Hex(body), [DIGEST_BLOCK_BYTES_KEY]: String(blockBytes), [DIGEST_BLOCKS_KEY]: blocks };
}

/** A digest problem, as a sentence; null when the metadata is well formed for `sizeBytes`. */
export function digestMetadataProblem(metadata: Readonly<Record<string, string>>, sizeBytes: number): string | null {
  const whole = metadata[DIGEST_KEY];
  const blockBytesText = metadata[DIGEST_BLOCK_BYTES_KEY];
  const blocks = metadata[DIGEST_BLOCKS_KEY];
  if (whole === undefined || blockBytesText === undefined || blocks === undefined) return 'object has no xxhash64 digest metadata';
  if (!/^[0-9a-f]{16}$/.test(whole)) return 'malformed xxhash64 digest';
  const blockBytes = Number(blockBytesText);
  if (blockBytes !== digestBlockBytes(sizeBytes)) return `digest block size ${blockBytesText} does not fit an object of ${sizeBytes} bytes`;
  if (blocks.length !== Math.ceil(sizeBytes / blockBytes) * HEX_DIGITS || !/^[0-9a-f]*$/.test(blocks)) return 'malformed xxhash64 block digests';
  return null;
}

/** The block-aligned byte range [start, end) that covers [startBytes, endBytes) of an object of `sizeBytes`. */
export function blockAlignedRange(startBytes: number, endBytes: number, sizeBytes: number): { startBytes: number; endBytes: number } {
  const blockBytes = digestBlockBytes(sizeBytes);
  assert(0 <= startBytes && startBytes <= endBytes && endBytes <= sizeBytes, 'range inside the object');
  return { startBytes: Math.floor(startBytes / blockBytes) * blockBytes, endBytes: Math.min(Math.ceil(endBytes / blockBytes) * blockBytes, sizeBytes) };
}

/**
 * Checks `bytes`, which are the object's bytes from `startBytes`, against the metadata. A whole-object body
 * is checked against the whole digest as well. Returns a problem sentence or null.
 * `sizeBytes` and the body come from the remote store, so a body that does not cover whole digest blocks
 * (a reply of the wrong length, an object replaced between two requests, a server that answered another
 * range) is a problem of the remote data, reported like a digest mismatch, never an assertion.
 */
export function verifyAgainstDigest(metadata: Readonly<Record<string, string>>, sizeBytes: number, startBytes: number, bytes: Uint8Array): string | null {
  assert(Number.isInteger(startBytes) && startBytes >= 0, 'verification starts at a byte offset');
  const malformed = digestMetadataProblem(metadata, sizeBytes);
  if (malformed !== null) return malformed;
  const blockBytes = digestBlockBytes(sizeBytes);
  const endBytes = startBytes + bytes.length;
  if (endBytes > sizeBytes) return `${bytes.length} bytes from offset ${startBytes} run past the object end ${sizeBytes}`;
  if (startBytes % blockBytes !== 0) return `bytes from offset ${startBytes} do not start at a ${blockBytes}-byte digest block boundary`;
  if (endBytes !== sizeBytes && endBytes % blockBytes !== 0) return `${bytes.length} bytes from offset ${startBytes} end inside a ${blockBytes}-byte digest block`;
  const blocks = metadata[DIGEST_BLOCKS_KEY] ?? '';
  for (let offset = 0; offset < bytes.length; offset += blockBytes) {
    const index = (startBytes + offset) / blockBytes;
    const expected = blocks.slice(index * HEX_DIGITS, (index + 1) * HEX_DIGITS);
    const actual = xxhash64Hex(bytes.subarray(offset, Math.min(offset + blockBytes, bytes.length)));
    if (actual !== expected) return `block ${index} xxhash64 ${actual} differs from the stored ${expected}`;
  }
  if (startBytes === 0 && bytes.length === sizeBytes) {
    const actual = xxhash64Hex(bytes);
    if (actual !== metadata[DIGEST_KEY]) return `xxhash64 ${actual} differs from the stored ${metadata[DIGEST_KEY] ?? ''}`;
  }
  return null;
}
