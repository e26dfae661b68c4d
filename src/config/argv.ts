/**
 * Command-line preprocessing shared by `safekeeper run` and `safekeeper propose` before `util.parseArgs`, and
 * the `run` command's parseArgs options, built from the config schema (tests parse with the same ones).
 *
 * parseArgs (strict) refuses `--id -1`: a value that starts with a dash is "ambiguous" (it could be a
 * forgotten value followed by a short flag). None of our flags is a single dash plus a digit, so a negative
 * number after a flag that takes a value is that flag's value: it is joined as `--id=-1`, and the value's own
 * check then names the key ("must be at least 0") instead of the user reading about option syntax.
 * Pure.
 */
import type { ParseArgsConfig } from 'node:util';
import { CONFIG_KEYS, CONFIG_KEY_NAMES, flagName } from './schema.js';

export type ArgOptions = NonNullable<ParseArgsConfig['options']>;

const NEGATIVE_NUMBER = /^-(\d|\.\d)/;

/** `safekeeper run`'s flags: --help, --version, --config, and each config key's kebab-case flag (a switch for a boolean key). */
export function runCommandOptions(): ArgOptions {
  const options: ArgOptions = {
    help: { type: 'boolean', short: 'h' },
    version: { type: 'boolean', short: 'V' },
    config: { type: 'string' },
  };
  for (const name of CONFIG_KEY_NAMES) options[flagName(name)] = { type: CONFIG_KEYS[name].flag === 'boolean' ? 'boolean' : 'string' };
  return options;
}

export function joinNegativeValues(argv: readonly string[], options: ArgOptions): string[] {
  const joined: string[] = [];
  for (let index = 0; index < argv.length; index += 1) {
    const arg = argv[index]!;
    if (arg === '--') return [...joined, ...argv.slice(index)]; // positionals from here on
    const next = argv[index + 1];
    const takesValue = arg.startsWith('--') && !arg.includes('=') && options[arg.slice(2)]?.type === 'string';
    if (takesValue && next !== undefined && NEGATIVE_NUMBER.test(next)) {
      joined.push(`${arg}=${next}`);
      index += 1;
    } else joined.push(arg);
  }
  return joined;
}
