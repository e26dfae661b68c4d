/**
 * Command-line preprocessing shared by `safekeeper run` and `safekeeper propose` before `util.parseArgs`.
 *
 * parseArgs (strict) refuses `--id -1`: a value that starts with a dash is "ambiguous" (it could be a
 * forgotten value followed by a short flag). None of our flags is a single dash plus a digit, so a negative
 * number after a flag that takes a value is that flag's value: it is joined as `--id=-1`, and the value's own
 * check then names the key ("must be at least 0") instead of the user reading about option syntax.
 * Pure.
 */
import type { ParseArgsConfig } from 'node:util';

const NEGATIVE_NUMBER = /^-(\d|\.\d)/;

export function joinNegativeValues(argv: readonly string[], options: NonNullable<ParseArgsConfig['options']>): string[] {
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
