/**
 * Loads the configuration: defaults < TOML file < flags, each key validated by its schema in
 * `schema.ts`. Every failure is a ConfigError naming the key and where its value came from (the file
 * path, `flag --name`, or `default`), so the operator knows which line to fix. Unknown keys, in the file
 * or as flags, are errors too: a typo must not silently leave a default in place.
 * `renderDefaultConfig()` prints the schema as a TOML file with every key commented out; uncommented, it
 * parses back to the defaults (a unit test holds us to that). Main thread, at startup only: the file is
 * read synchronously.
 */
import { readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { parse as parseToml } from 'smol-toml';
import { ConfigError } from '../errors.js';
import {
  CONFIG_KEYS,
  CONFIG_KEY_NAMES,
  type Config,
  type ConfigKey,
  type ConfigValues,
  flagName,
  keyOfFlag,
  toConfig,
} from './schema.js';

export interface LoadConfigOptions {
  /** TOML file path; relative paths are resolved against `cwd`. */
  readonly file?: string;
  /** Flag values keyed by kebab-case flag name, as `util.parseArgs` returns them. */
  readonly flags: Readonly<Record<string, string | boolean | undefined>>;
  readonly cwd: string;
}

const DEFAULT_SOURCE = 'default';
const isConfigKey = (name: string): name is ConfigKey => Object.hasOwn(CONFIG_KEYS, name);

export function loadConfig(options: LoadConfigOptions): Config {
  const raw = new Map<ConfigKey, { value: unknown; source: string }>();
  for (const name of CONFIG_KEY_NAMES) raw.set(name, { value: CONFIG_KEYS[name].default, source: DEFAULT_SOURCE });
  if (options.file !== undefined) {
    const path = resolve(options.cwd, options.file);
    for (const [name, value] of Object.entries(readTomlFile(path))) {
      if (!isConfigKey(name)) throw new ConfigError(name, path, `unknown key${suggestion(name)}`);
      raw.set(name, { value, source: path });
    }
  }
  for (const [flag, value] of Object.entries(options.flags)) {
    if (value === undefined) continue;
    const name = keyOfFlag(flag);
    const source = `flag --${flag}`;
    if (!isConfigKey(name) || flag !== flagName(name)) throw new ConfigError(name, source, `unknown flag${suggestion(name)}`);
    raw.set(name, { value: flagValue(name, value), source });
  }

  const values: Partial<Record<ConfigKey, unknown>> = {};
  const sources = {} as Record<ConfigKey, string>;
  for (const [name, { value, source }] of raw) {
    const parsed = CONFIG_KEYS[name].schema.safeParse(value);
    if (!parsed.success) throw new ConfigError(name, source, parsed.error.issues[0]?.message ?? 'invalid value');
    values[name] = parsed.data;
    sources[name] = source;
  }
  const built = toConfig(values as ConfigValues, sources, options.cwd);
  if (!built.ok) {
    const name = built.key ?? 'config';
    throw new ConfigError(name, sources[name as ConfigKey] ?? DEFAULT_SOURCE, built.message);
  }
  return built.value;
}

function readTomlFile(path: string): Record<string, unknown> {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code ?? 'unknown error';
    throw new ConfigError('config', 'flag --config', `cannot read ${path}: ${code}`);
  }
  try {
    return parseToml(text, { integersAsBigInt: 'asNeeded', unsafeKeyBehaviour: 'throw' });
  } catch (error) {
    const detail = error instanceof Error ? (error.message.split('\n')[0] ?? error.message) : String(error);
    const line = (error as { line?: number }).line;
    throw new ConfigError('config', path, `not valid TOML${line === undefined ? '' : ` (line ${line})`}: ${detail}`);
  }
}

/** Flags arrive as text (or `true` for a boolean flag); give the schema the type TOML would. */
function flagValue(name: ConfigKey, value: string | boolean): unknown {
  if (typeof value === 'boolean') return value;
  switch (CONFIG_KEYS[name].flag) {
    case 'boolean':
      return value === 'true' ? true : value === 'false' ? false : value;
    case 'integer': {
      if (!/^-?\d+$/.test(value)) return value;
      const integer = BigInt(value);
      return integer >= BigInt(Number.MIN_SAFE_INTEGER) && integer <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(integer) : integer;
    }
    case 'string':
      return value;
  }
}

/** " (did you mean 'x'?)" for a near miss: edit distance at most 2. */
function suggestion(name: string): string {
  let best: { key: string; distance: number } | null = null;
  for (const candidate of CONFIG_KEY_NAMES) {
    const distance = editDistance(name, candidate);
    if (distance <= 2 && (best === null || distance < best.distance)) best = { key: candidate, distance };
  }
  return best === null ? '' : ` (did you mean '${best.key}'?)`;
}

function editDistance(a: string, b: string): number {
  let previous = Array.from({ length: b.length + 1 }, (_, index) => index);
  for (let i = 1; i <= a.length; i += 1) {
    const current = [i];
    for (let j = 1; j <= b.length; j += 1) {
      const substitution = (previous[j - 1] ?? 0) + (a[i - 1] === b[j - 1] ? 0 : 1);
      current.push(Math.min((previous[j] ?? 0) + 1, (current[j - 1] ?? 0) + 1, substitution));
    }
    previous = current;
  }
  return previous[b.length] ?? 0;
}

const UNIT_NOTES = {
  duration: 'Duration: number+unit parts (ms, s, m, h), e.g. "500ms", "300s", "2h30m".',
  bytes: 'Size: bytes as an integer, or with KiB, MiB, GiB (powers of 1024).',
  count: null,
} as const;

/** The whole default config file: a doc comment and `# key = default` for every key. */
export function renderDefaultConfig(): string {
  const lines = [
    '# safekeeper configuration (TOML). Every key is listed with its default value, commented out.',
    '# Precedence: defaults < this file (--config FILE) < flags. Each key has a flag of the same name in',
    '# kebab-case: data_dir is --data-dir. Unknown keys and bad values are errors.',
    '# Relative paths are resolved against the working directory.',
    '',
  ];
  for (const name of CONFIG_KEY_NAMES) {
    const spec = CONFIG_KEYS[name];
    const note = spec.unit === null ? null : UNIT_NOTES[spec.unit];
    for (const line of wrap(note === null ? spec.doc : `${spec.doc} ${note}`, 100)) lines.push(`# ${line}`);
    lines.push(`# ${name} = ${tomlValue(spec.default)}`, '');
  }
  return lines.join('\n');
}

const tomlValue = (value: string | number | boolean): string => (typeof value === 'string' ? JSON.stringify(value) : String(value));

function wrap(text: string, widthMax: number): string[] {
  const lines: string[] = [];
  let line = '';
  for (const word of text.split(' ')) {
    if (line !== '' && line.length + 1 + word.length > widthMax) {
      lines.push(line);
      line = word;
    } else {
      line = line === '' ? word : `${line} ${word}`;
    }
  }
  if (line !== '') lines.push(line);
  return lines;
}
