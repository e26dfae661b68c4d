/** joinNegativeValues (src/config/argv.ts): a negative number after a flag that takes a value is its value. */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { joinNegativeValues } from '../../src/config/argv.js';

const options = { id: { type: 'string' }, 'no-sync': { type: 'boolean' }, help: { type: 'boolean', short: 'h' } } as const;

test('joins a negative number to the value flag before it, and nothing else', () => {
  assert.deepEqual(joinNegativeValues(['run', '--id', '-1'], options), ['run', '--id=-1']);
  assert.deepEqual(joinNegativeValues(['--id', '-.5', '--no-sync'], options), ['--id=-.5', '--no-sync']);
  assert.deepEqual(joinNegativeValues(['--id', '-h'], options), ['--id', '-h'], 'a flag is left for parseArgs to call ambiguous');
  assert.deepEqual(joinNegativeValues(['--no-sync', '-1'], options), ['--no-sync', '-1'], 'a boolean flag takes no value');
  assert.deepEqual(joinNegativeValues(['--id=-1', '-1'], options), ['--id=-1', '-1'], 'already joined');
  assert.deepEqual(joinNegativeValues(['--', '--id', '-1'], options), ['--', '--id', '-1'], 'positionals after --');
  assert.deepEqual(joinNegativeValues(['--id'], options), ['--id']);
});
