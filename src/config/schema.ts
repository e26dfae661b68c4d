/**
 * The only list of configuration keys. Each key appears once, with its value type, default, unit and doc;
 * `load.ts` merges defaults < TOML file < flags, and `safekeeper config` prints this table as a commented
 * TOML file. Keys are snake_case, and each has a flag of the same name in kebab-case (`ring_size` is
 * `--ring-size`).
 *
 * Values are written the way a human reads them and converted here, at the edge, into the frozen `Config`
 * object whose names carry their unit (`"300s"` → `controlFileSaveIntervalMs: 300_000`, `"16MiB"` →
 * `ringSizeBytes: 16777216`); the text parsers themselves are `value_parsers.ts`. Units:
 * - durations are strings of number+unit parts (`ms`, `s`, `m`, `h`), as in "500ms", "300s", "2h30m". A bare
 *   number is refused, since "300" could mean seconds or milliseconds.
 * - byte sizes are an integer number of bytes (`4096` or `"4096"`) or a string with an IEC suffix (`B`, `KiB`,
 *   `MiB`, `GiB`). Decimal suffixes ("16MB", "16M") are refused with a hint: they are ambiguous by 5 %, and a
 *   ring or frame limit is the kind of thing people copy between tools.
 * - optional keys (`advertise_pg`, `auth_public_key`) take "" for "not set", so the default file parses.
 * Relative paths are resolved against the working directory. `remote_storage` may contain `{data_dir}`,
 * which is replaced by the resolved data directory. Pure; any thread.
 */
import { resolve } from 'node:path';
import { z } from 'zod';
import * as limits from '../limits.js';
import {
  type BrokerConfig,
  formatBytes,
  type HostPort,
  ok,
  parseBroker,
  parseBytes,
  parseDurationMs,
  parseHostPort,
  parseRemoteStorage,
  type Parsed,
  type RemoteStorageConfig,
} from './value_parsers.js';

/** setTimeout's ceiling (2^31 - 1 ms, about 24.8 days): a longer duration would fire at once. */
export const DURATION_MS_MAX = 2 ** 31 - 1;
/** A SharedArrayBuffer ring larger than this is a mistake, not a tuning choice. */
export const RING_SIZE_BYTES_MAX = 1024 * 1024 * 1024;
/** A frame limit must admit the largest AppendRequest walproposer sends, plus its header. */
export const MESSAGE_BYTES_MIN = limits.APPEND_WAL_BYTES_MAX + 128;
export const U64_MAX = 0xffff_ffff_ffff_ffffn;

export const LOG_LEVELS = ['trace', 'debug', 'info', 'warn', 'error'] as const;
export const LOG_FORMATS = ['auto', 'json', 'pretty'] as const;
export type LogLevel = (typeof LOG_LEVELS)[number];
export type LogFormat = (typeof LOG_FORMATS)[number];

/** Wraps a string parser as a zod schema whose failures carry the parser's message. */
function stringValue<T>(parse: (text: string) => Parsed<T>, what: string) {
  return z.string({ error: `expected a string (${what})` }).transform((text, context): T => {
    const parsed = parse(text);
    if (parsed.ok) return parsed.value;
    context.issues.push({ code: 'custom', message: parsed.message, input: text });
    return z.NEVER;
  });
}

const integer = (min: number, max: number) =>
  z.number({ error: 'expected an integer' }).int('expected an integer').min(min, `must be at least ${min}`).max(max, `must be at most ${max}`);

const duration = () =>
  z
    .string({ error: (issue) => (typeof issue.input === 'number' ? 'a duration needs a unit, e.g. "300s", "15m" or "500ms"' : 'expected a duration string, e.g. "300s"') })
    .transform((text, context): number => {
      const parsed = parseDurationMs(text);
      if (parsed.ok) return parsed.value;
      context.issues.push({ code: 'custom', message: parsed.message, input: text });
      return z.NEVER;
    })
    .pipe(z.number().min(1, 'must be at least 1ms').max(DURATION_MS_MAX, `must be at most ${DURATION_MS_MAX}ms (about 24 days)`));

const bytes = (min: number, max: number) =>
  z
    .union([z.string(), z.number()], { error: 'expected a byte size: an integer or a string such as "16MiB"' })
    .transform((value, context): number => {
      const parsed = parseBytes(value);
      if (parsed.ok) return parsed.value;
      context.issues.push({ code: 'custom', message: parsed.message, input: value });
      return z.NEVER;
    })
    .pipe(z.number().min(min, `must be at least ${formatBytes(min)}`).max(max, `must be at most ${formatBytes(max)}`));

const optional = <T>(parse: (text: string) => Parsed<T>) => (text: string): Parsed<T | null> => (text === '' ? ok(null) : parse(text));

/** How a flag's text becomes the value type the schema expects (TOML already has types). */
export type FlagKind = 'boolean' | 'integer' | 'string';
export interface KeySpec<S extends z.ZodType = z.ZodType> {
  /** Default as written in TOML; it goes through `schema` like any other value. */
  readonly default: string | number | boolean;
  readonly flag: FlagKind;
  /** What the value measures, shown in `safekeeper config`; null when it is not a quantity. */
  readonly unit: 'duration' | 'bytes' | 'count' | null;
  readonly doc: string;
  readonly schema: S;
}
const key = <S extends z.ZodType>(spec: KeySpec<S>): KeySpec<S> => spec;

export const CONFIG_KEYS = {
  id: key({ default: 1, flag: 'integer', unit: null, doc: 'Node id, unique in the cluster (u64). Stored in <data_dir>/safekeeper.id on first start; a later start with a different explicit id is refused.', schema: z.union([z.number().int('expected an integer').min(0, 'must be at least 0'), z.bigint()], { error: 'expected a non-negative integer' }).transform((value) => BigInt(value)).pipe(z.bigint().min(0n, 'must be at least 0').max(U64_MAX, 'must fit in 64 bits')) }),
  data_dir: key({ default: './.safekeeper', flag: 'string', unit: null, doc: 'Data directory: node id, lock file and one directory per timeline. Created if missing.', schema: z.string().min(1, 'must not be empty') }),
  listen_pg: key({ default: '127.0.0.1:5454', flag: 'string', unit: null, doc: 'Address of the PostgreSQL-protocol WAL service (proposers, readers). Port 0 picks a free port.', schema: stringValue((text) => parseHostPort(text, 0), 'HOST:PORT') }),
  listen_http: key({ default: '127.0.0.1:7676', flag: 'string', unit: null, doc: 'Address of the HTTP management API and /metrics. Port 0 picks a free port.', schema: stringValue((text) => parseHostPort(text, 0), 'HOST:PORT') }),
  advertise_pg: key({ default: '', flag: 'string', unit: null, doc: 'Address published to peers and the broker for the WAL service; "" means listen_pg (no effect yet: only the embedded one-node broker exists, so nothing is published).', schema: stringValue(optional((text) => parseHostPort(text, 1)), 'HOST:PORT or ""') }),
  remote_storage: key({ default: 'file://{data_dir}/remote', flag: 'string', unit: null, doc: 'Where WAL is backed up: file:///PATH or s3://BUCKET/PREFIX[?endpoint=URL&region=R]. {data_dir} is replaced by the data directory.', schema: stringValue((text) => { const checked = parseRemoteStorage(text.replaceAll('{data_dir}', '/data_dir')); return checked.ok ? ok(text) : checked; }, 'URL') }),
  broker: key({ default: 'embedded', flag: 'string', unit: null, doc: 'Peer discovery: "embedded" (one node, in process) or "etcd://HOST:PORT[,HOST:PORT...]" (not implemented yet: refused at start).', schema: stringValue(parseBroker, 'broker') }),
  enable_offload: key({ default: false, flag: 'boolean', unit: null, doc: 'Evict timelines: remove local WAL of idle timelines once it is in remote storage, keeping only the control file.', schema: z.boolean({ error: 'expected true or false' }) }),
  delete_offloaded_wal: key({ default: false, flag: 'boolean', unit: null, doc: 'With enable_offload: when a timeline is evicted, also delete its last (partial) local segment; it is downloaded again when a proposer or reader needs it.', schema: z.boolean({ error: 'expected true or false' }) }),
  control_file_save_interval: key({ default: '300s', flag: 'string', unit: 'duration', doc: 'Persist in-memory LSNs to the control file at least this often.', schema: duration() }),
  partial_backup_timeout: key({ default: '15m', flag: 'string', unit: 'duration', doc: 'Upload the partial (last, unfinished) segment after this long without a newer upload.', schema: duration() }),
  eviction_min_resident: key({ default: '15m', flag: 'string', unit: 'duration', doc: 'A timeline stays local at least this long after it was loaded or unevicted.', schema: duration() }),
  heartbeat_timeout: key({ default: '5s', flag: 'string', unit: 'duration', doc: 'A peer that has not published for this long is considered dead (no effect yet: the embedded one-node broker has no peers).', schema: duration() }),
  wal_backup_parallel_jobs: key({ default: 5, flag: 'integer', unit: 'count', doc: 'Segment uploads in flight per timeline.', schema: integer(1, 64) }),
  remote_request_timeout: key({ default: '60s', flag: 'string', unit: 'duration', doc: 'Deadline of one remote storage request; a request that takes longer is abandoned and retried.', schema: duration() }),
  testing_failpoints: key({ default: false, flag: 'boolean', unit: null, doc: 'Testing only: enables PUT/GET /v1/failpoints, which pause, fail or kill background tasks at named points.', schema: z.boolean({ error: 'expected true or false' }) }),
  no_sync: key({ default: false, flag: 'boolean', unit: null, doc: 'Skip every fsync (UNSAFE: acknowledged WAL can be lost; tests and benchmarks only). Logged loudly at start.', schema: z.boolean({ error: 'expected true or false' }) }),
  auth_public_key: key({ default: '', flag: 'string', unit: null, doc: 'Path of the PEM public key that verifies JWTs on the pg and HTTP ports (not implemented yet: a path is refused at start); "" turns auth off.', schema: z.string({ error: 'expected a path string' }) }),
  wal_writer_threads: key({ default: 2, flag: 'integer', unit: 'count', doc: 'Worker threads that decode, checksum and write WAL (Piscina pool size).', schema: integer(1, 64) }),
  wal_recycle_segments: key({ default: 2, flag: 'integer', unit: 'count', doc: 'Removed WAL segments kept per timeline to be zeroed and reused as later segments: overwriting a file is much cheaper for the disk than allocating a new one. Each takes a segment of disk (16 MiB by default) until reused, until the timeline has had no proposer and nothing new for partial_backup_timeout, or until it is evicted; 0 deletes removed segments.', schema: integer(0, 64) }),
  ring_size: key({ default: formatBytes(limits.RING_SIZE_BYTES_DEFAULT), flag: 'string', unit: 'bytes', doc: 'Shared ring buffer per timeline with a proposer, between the socket and the writer (freed ring_release_delay after the last proposer left); a full ring pauses the proposer. A multiple of 8 bytes.', schema: bytes(limits.RING_SIZE_BYTES_MIN, RING_SIZE_BYTES_MAX).refine((value) => value % 8 === 0, 'must be a multiple of 8 bytes') }),
  ring_release_delay: key({ default: '10s', flag: 'string', unit: 'duration', doc: 'How long a timeline keeps its WAL ring after its last proposer left: a proposer that reconnects meanwhile reuses it (a new ring costs page faults on its first pass); then the memory is freed.', schema: duration() }),
  max_message_size: key({ default: formatBytes(limits.FRAME_BYTES_DEFAULT), flag: 'string', unit: 'bytes', doc: 'Largest protocol message accepted on the pg port; larger ones end the connection with 08P01.', schema: bytes(MESSAGE_BYTES_MIN, limits.FRAME_BYTES_MAX) }),
  default_pg_version: key({ default: 150000, flag: 'integer', unit: null, doc: 'server_version reported to clients before a timeline is known (PostgreSQL numbering, 150000 = 15.0).', schema: integer(90_000, 999_999) }),
  max_connections: key({ default: limits.CONNECTIONS_MAX, flag: 'integer', unit: 'count', doc: 'Concurrent connections on the pg port; more are refused with 53300.', schema: integer(1, limits.CONNECTIONS_MAX) }),
  log_level: key({ default: 'info', flag: 'string', unit: null, doc: `Least severe log level written: ${LOG_LEVELS.join(', ')}.`, schema: z.enum(LOG_LEVELS, { error: `expected one of ${LOG_LEVELS.join(', ')}` }) }),
  log_format: key({ default: 'auto', flag: 'string', unit: null, doc: 'Log output: json (one object per line), pretty, or auto (pretty when stderr is a terminal).', schema: z.enum(LOG_FORMATS, { error: `expected one of ${LOG_FORMATS.join(', ')}` }) }),
} as const;

export type ConfigKey = keyof typeof CONFIG_KEYS;
export const CONFIG_KEY_NAMES = Object.keys(CONFIG_KEYS) as ConfigKey[];
/** Each key's value after its schema, before paths and placeholders are resolved. */
export type ConfigValues = { [K in ConfigKey]: z.output<(typeof CONFIG_KEYS)[K]['schema']> };

export const flagName = (configKey: string): string => configKey.replaceAll('_', '-');
export const keyOfFlag = (flag: string): string => flag.replaceAll('-', '_');

/** The typed, frozen configuration. Names carry units; durations are ms, sizes bytes. */
export interface Config {
  readonly nodeId: bigint;
  readonly dataDir: string;
  readonly listenPg: HostPort;
  readonly listenHttp: HostPort;
  readonly advertisePg: HostPort | null;
  readonly remoteStorage: RemoteStorageConfig;
  readonly broker: BrokerConfig;
  readonly enableOffload: boolean;
  readonly deleteOffloadedWal: boolean;
  readonly controlFileSaveIntervalMs: number;
  readonly partialBackupTimeoutMs: number;
  readonly evictionMinResidentMs: number;
  readonly heartbeatTimeoutMs: number;
  readonly walBackupParallelJobs: number;
  readonly remoteRequestTimeoutMs: number;
  readonly testingFailpoints: boolean;
  readonly noSync: boolean;
  readonly authPublicKeyPath: string | null;
  readonly walWriterThreads: number;
  readonly walRecycleSegments: number;
  readonly ringSizeBytes: number;
  readonly ringReleaseDelayMs: number;
  readonly maxMessageBytes: number;
  readonly defaultPgVersion: number;
  readonly maxConnections: number;
  readonly logLevel: LogLevel;
  readonly logFormat: LogFormat;
  /** Where each key's value came from: "default", a file path, or "flag --name". */
  readonly sources: Readonly<Record<ConfigKey, string>>;
}

/**
 * Builds the Config from validated values. Returns the key and message of the first value that is only
 * invalid in context (today: remote_storage after `{data_dir}` substitution).
 */
export function toConfig(values: ConfigValues, sources: Record<ConfigKey, string>, cwd: string): Parsed<Config> & { key?: ConfigKey } {
  const dataDir = resolve(cwd, values.data_dir);
  const remoteStorage = parseRemoteStorage(values.remote_storage.replaceAll('{data_dir}', dataDir));
  if (!remoteStorage.ok) return { ...remoteStorage, key: 'remote_storage' };
  // Accepted by the schema (the contract in DESIGN.md), refused here until implemented: a node that silently
  // ignored them would run without the authentication or the peers its operator asked for.
  if (values.broker.kind !== 'embedded') return { ok: false, message: 'the etcd broker (multi-node clusters) is not implemented yet; use "embedded"', key: 'broker' };
  if (values.auth_public_key !== '') return { ok: false, message: 'JWT authentication is not implemented yet; leave it "" (auth off)', key: 'auth_public_key' };
  const config: Config = {
    nodeId: values.id,
    dataDir,
    listenPg: values.listen_pg,
    listenHttp: values.listen_http,
    advertisePg: values.advertise_pg,
    remoteStorage: remoteStorage.value,
    broker: values.broker,
    enableOffload: values.enable_offload,
    deleteOffloadedWal: values.delete_offloaded_wal,
    controlFileSaveIntervalMs: values.control_file_save_interval,
    partialBackupTimeoutMs: values.partial_backup_timeout,
    evictionMinResidentMs: values.eviction_min_resident,
    heartbeatTimeoutMs: values.heartbeat_timeout,
    walBackupParallelJobs: values.wal_backup_parallel_jobs,
    remoteRequestTimeoutMs: values.remote_request_timeout,
    testingFailpoints: values.testing_failpoints,
    noSync: values.no_sync,
    authPublicKeyPath: values.auth_public_key === '' ? null : resolve(cwd, values.auth_public_key),
    walWriterThreads: values.wal_writer_threads,
    walRecycleSegments: values.wal_recycle_segments,
    ringSizeBytes: values.ring_size,
    ringReleaseDelayMs: values.ring_release_delay,
    maxMessageBytes: values.max_message_size,
    defaultPgVersion: values.default_pg_version,
    maxConnections: values.max_connections,
    logLevel: values.log_level,
    logFormat: values.log_format,
    sources: Object.freeze({ ...sources }),
  };
  return ok(deepFreeze(config));
}

function deepFreeze<T>(value: T): T {
  if (typeof value === 'object' && value !== null && !Object.isFrozen(value)) {
    for (const inner of Object.values(value)) deepFreeze(inner);
    Object.freeze(value);
  }
  return value;
}
