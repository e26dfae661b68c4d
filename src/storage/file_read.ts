/**
 * The async positional read every reader of local files shares: `FileHandle.read` may return fewer bytes
 * than asked (a signal, a large request), so callers loop; this is that loop, once. Any thread.
 */
import type { FileHandle } from 'node:fs/promises';

/**
 * Reads into `into[offset, offset + length)` from file position `position`, looping over short reads.
 * Returns how many bytes it read: `length`, or fewer only when the file ends first (the caller decides
 * whether a short file is an error). fs errors propagate unchanged.
 */
export async function readUpTo(handle: FileHandle, into: Uint8Array, offset: number, length: number, position: number): Promise<number> {
  let done = 0;
  while (done < length) {
    const { bytesRead } = await handle.read(into, offset + done, length - done, position + done);
    if (bytesRead === 0) break;
    done += bytesRead;
  }
  return done;
}
