/**
 * The node's V8 flags: the check that `run` warns with, and that every way of starting the node passes them
 * (the `safekeeper` command's shebang and `npm start`; the test harness imports V8_FLAGS itself).
 */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, test } from 'node:test';
import { missingV8Flags, V8_FLAGS } from '../../src/v8_flags.js';
import { REPO_ROOT } from '../harness/node_process.js';

describe('V8 flags', () => {
  test('given on the command line, in any value, they count as given', () => {
    assert.deepEqual(missingV8Flags([]), [...V8_FLAGS]);
    assert.deepEqual(missingV8Flags(['--import', 'tsx', ...V8_FLAGS]), []);
    assert.deepEqual(missingV8Flags(['--initial-old-space-size=512']), [], 'an operator may pick another size');
    assert.deepEqual(missingV8Flags(['--max-old-space-size=128', '--trace-gc']), [...V8_FLAGS], 'a different flag is not the flag');
  });

  test('the safekeeper command and npm start pass every flag', () => {
    const shebang = readFileSync(join(REPO_ROOT, 'src', 'main.ts'), 'utf8').split('\n', 1)[0] ?? '';
    assert.match(shebang, /^#!\/usr\/bin\/env -S node /);
    const start = (JSON.parse(readFileSync(join(REPO_ROOT, 'package.json'), 'utf8')) as { scripts: Record<string, string> }).scripts['start'] ?? '';
    for (const flag of V8_FLAGS) {
      assert.ok(shebang.split(' ').includes(flag), `shebang passes ${flag}`);
      assert.ok(start.split(' ').includes(flag), `npm start passes ${flag}`);
    }
  });
});
