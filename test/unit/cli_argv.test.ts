/**
 * joinNegativeValues (src/config/argv.ts): a negative number after a flag that takes a value is its value; and
 * through `safekeeper run`'s own parseArgs options and loadConfig, every integer flag given a negative number,
 * as `--flag -1` or `--flag=-1`, is refused naming its config key, never as ambiguous option syntax.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { parseArgs } from 'node:util';
import { joinNegativeValues, runCommandOptions } from '../../src/config/argv.js';
import { loadConfig } from '../../src/config/load.js';
import { CONFIG_KEYS, CONFIG_KEY_NAMES, flagName } from '../../src/config/schema.js';
import { ConfigError } from '../../src/errors.js';

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

/** What `safekeeper run ARGS` hands loadConfig: main.ts's parse, then the flags without help, version and config. */
function loadRunFlags(args: readonly string[]): unknown {
  const runOptions = runCommandOptions();
  const { values } = parseArgs({ args: joinNegativeValues(['run', ...args], runOptions), options: runOptions, allowPositionals: true, strict: true });
  const { help: _help, version: _version, config: _config, ...flags } = values;
  return loadConfig({ flags: flags as Record<string, string | boolean>, cwd: '/srv/sk' });
}

test('every integer flag of run refuses a negative number naming its key, in both flag forms', () => {
  const integerKeys = CONFIG_KEY_NAMES.filter((name) => CONFIG_KEYS[name].flag === 'integer');
  assert.ok(integerKeys.includes('id') && integerKeys.length >= 5, 'the schema still has its integer keys');
  for (const name of integerKeys) {
    const flag = `--${flagName(name)}`;
    for (const args of [[flag, '-1'], [`${flag}=-1`], [flag, '-7', '--no-sync']]) {
      assert.throws(() => loadRunFlags(args), (error: unknown) => {
        assert.ok(error instanceof ConfigError, `${args.join(' ')}: expected a ConfigError, got ${String(error)}`);
        assert.equal(error.key, name);
        assert.equal(error.source, `flag ${flag}`);
        assert.match(error.message, /must be at least \d+$/);
        return true;
      });
    }
  }
});
