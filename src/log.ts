/**
 * The process logger (pino). Logs are JSON lines on stderr, or pretty-printed (pino-pretty, in process)
 * when `log_format` is `pretty`, or `auto` and stderr is a terminal. stdout is kept for the machine-read
 * lines: the `listening pg=... http=...` ready line and `safekeeper config`.
 *
 * Context travels in child loggers with snake_case fields: `node_id`, `tenant_id`, `timeline_id`,
 * `conn_id`, `task` (`childLogger`). Messages are constant strings; data goes in fields.
 * LSNs, terms and ids are bigints, which JSON cannot hold: the `log` formatter turns every bigint field
 * into text, `X/Y` for fields named like an LSN (`flush_lsn`, `commitLsn`) and decimal otherwise, so a
 * bigint never crashes a log call nor loses precision. Child bindings are converted in `childLogger`,
 * since pino does not run formatters over them.
 *
 * Writes are synchronous (pino's default for a file descriptor): log volume is lifecycle events and
 * per-batch debug lines, never per record, and a crash must not lose the line that explains it.
 * `log` is the root logger; it exists before the config is loaded, and `setRootLogger` replaces it
 * once it is. Main thread (workers return their measurements instead of logging).
 */
import { pino, type DestinationStream, type Logger, type LoggerOptions } from 'pino';
import pretty from 'pino-pretty';
import type { LogFormat, LogLevel } from './config/schema.js';
import { formatLsn } from './wal/lsn.js';

export type { Logger } from 'pino';

/** The part of a Logger that components take: the node passes its pino logger, unit tests a silent stub. */
export interface LogSink {
  info(fields: object, message: string): void;
  warn(fields: object, message: string): void;
  error(fields: object, message: string): void;
  debug(fields: object, message: string): void;
}

/** Fields child loggers carry. Ids are strings (32-hex or decimal), never bigints in output. */
export interface LogContext {
  readonly node_id?: bigint | number | string;
  readonly tenant_id?: string;
  readonly timeline_id?: string;
  readonly conn_id?: number | string;
  readonly task?: string;
  readonly [field: string]: unknown;
}

export interface LoggerSettings {
  readonly logLevel: LogLevel;
  readonly logFormat: LogFormat;
  readonly nodeId?: bigint;
}

/** Formats an LSN for a log field: `X/Y`, as PostgreSQL prints it. */
export const lsnField = (lsn: bigint): string => formatLsn(lsn);

const LSN_FIELD = /(_lsn|Lsn)$/;
/** Nested objects deeper than this are left to pino's safe stringifier (which turns bigints into numbers). */
const BIGINT_WALK_DEPTH_MAX = 3;

/** Copies `value` with every bigint turned into text. Only plain objects and arrays are walked. */
export function toLogValue(value: unknown, fieldName = '', depth = 0): unknown {
  if (typeof value === 'bigint') return LSN_FIELD.test(fieldName) ? formatLsn(value) : value.toString();
  if (depth >= BIGINT_WALK_DEPTH_MAX || typeof value !== 'object' || value === null) return value;
  if (Array.isArray(value)) return value.map((item) => toLogValue(item, fieldName, depth + 1));
  const prototype = Object.getPrototypeOf(value) as unknown;
  if (prototype !== Object.prototype && prototype !== null) return value;
  const copy: Record<string, unknown> = {};
  for (const [name, inner] of Object.entries(value)) copy[name] = toLogValue(inner, name, depth + 1);
  return copy;
}

function loggerOptions(settings: LoggerSettings): LoggerOptions {
  return {
    level: settings.logLevel,
    base: settings.nodeId === undefined ? { pid: process.pid } : { pid: process.pid, node_id: settings.nodeId.toString() },
    timestamp: pino.stdTimeFunctions.isoTime,
    serializers: { err: pino.stdSerializers.err, error: pino.stdSerializers.err },
    formatters: {
      level: (label) => ({ level: label }),
      log: (object) => toLogValue(object) as Record<string, unknown>,
    },
  };
}

/**
 * Creates a logger for `settings`. `destination` defaults to stderr (fd 2); tests pass a stream to
 * capture lines. `pretty` output is only chosen for the default destination.
 */
export function createLogger(settings: LoggerSettings, destination?: DestinationStream): Logger {
  const options = loggerOptions(settings);
  if (destination !== undefined) return pino(options, destination);
  const usePretty = settings.logFormat === 'pretty' || (settings.logFormat === 'auto' && process.stderr.isTTY === true);
  if (usePretty) {
    return pino(options, pretty({ destination: 2, sync: true, colorize: process.stderr.isTTY === true, translateTime: 'SYS:HH:MM:ss.l', ignore: 'pid,hostname' }));
  }
  return pino(options, pino.destination({ fd: 2, sync: true }));
}

/** The root logger. Before `setRootLogger`, it logs at info in the `auto` format. */
export let log: Logger = createLogger({ logLevel: 'info', logFormat: 'auto' });

/** Installs the configured logger as the root `log` (ESM live binding: importers see the new one). */
export function setRootLogger(logger: Logger): void {
  log = logger;
}

/** A child logger carrying `context`; bigint values are converted here since pino skips formatters for bindings. */
export function childLogger(parent: Logger, context: LogContext): Logger {
  return parent.child(toLogValue(context) as Record<string, unknown>);
}
