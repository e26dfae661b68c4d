/**
 * Temporary directories for tests. `makeTempDir(prefix)` creates one under the OS temp dir and registers it;
 * `removeTempDir(dir)` deletes one, and `removeAllTempDirs()` (for `after()` hooks) deletes every one this
 * process created and has not removed yet. A process-exit hook removes leftovers synchronously as a last resort.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const liveDirs = new Set<string>();
let exitHookInstalled = false;

export function makeTempDir(prefix = 'sk-test-'): string {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  liveDirs.add(dir);
  if (!exitHookInstalled) {
    exitHookInstalled = true;
    process.once('exit', () => {
      for (const leftover of liveDirs) rmSync(leftover, { recursive: true, force: true });
    });
  }
  return dir;
}

export async function removeTempDir(dir: string): Promise<void> {
  await rm(dir, { recursive: true, force: true, maxRetries: 3 });
  liveDirs.delete(dir);
}

export async function removeAllTempDirs(): Promise<void> {
  for (const dir of [...liveDirs]) await removeTempDir(dir);
}

/** Runs `body` with a fresh temp dir and removes the dir afterwards, whether `body` succeeds or throws. */
export async function withTempDir<T>(prefix: string, body: (dir: string) => Promise<T>): Promise<T> {
  const dir = makeTempDir(prefix);
  try {
    return await body(dir);
  } finally {
    await removeTempDir(dir);
  }
}
