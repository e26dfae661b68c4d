/**
 * `safekeeper propose`: parses its flags (node:util parseArgs, strict), builds the WAL source and the
 * proposer, runs it until SIGTERM/SIGINT (exit 0), a finished synthetic load (exit 0, after a summary on
 * stdout) or a fatal error (exit 1, the error on stderr). Bad flags exit 2.
 *
 * stdout carries machine-readable lines: `elected term=T term_start_lsn=X/Y` once elected, with
 * `--http-listen` `listening http=HOST:PORT` once the metrics listener is bound (before the election), and
 * for `--synthetic` one `synthetic summary ...` line of key=value pairs at the end. Logs go to stderr; on a
 * terminal `--synthetic` also keeps a live progress line there. Main thread.
 */
import { parseArgs } from 'node:util';
import type { ProtocolVersion } from '../acceptor/messages.js';
import { parseTenantId, parseTimelineId } from '../acceptor/state.js';
import { LOG_FORMATS, LOG_LEVELS, type LogFormat, type LogLevel } from '../config/schema.js';
import { formatHostPort, type HostPort, parseBytes, parseDurationMs, parseHostPort } from '../config/value_parsers.js';
import { SafekeeperError } from '../errors.js';
import { childLogger, createLogger, type Logger } from '../log.js';
import { AssertionError } from '../sync/assert.js';
import { formatLsn, type Lsn, parseLsn } from '../wal/lsn.js';
import { PRIMARY_RECONNECT_TIMEOUT_MS_DEFAULT, PRIMARY_TIMEOUT_MS_DEFAULT, QUORUM_TIMEOUT_MS_DEFAULT, SAFEKEEPERS_MAX, WAL_WINDOW_BYTES_DEFAULT, WAL_WINDOW_BYTES_MIN } from './limits.js';
import { ProposerMetrics } from './metrics.js';
import { startMetricsServer, type MetricsServer } from './metrics_server.js';
import { PostgresSource } from './postgres_source.js';
import { parsePostgresUrl, slotNameFrom } from './primary_connection.js';
import { Proposer } from './proposer.js';
import { duplicateSafekeeper } from './quorum.js';
import { RECORD_BYTES_MAX } from '../wal/page.js';
import type { WalSource } from './source.js';
import { SyntheticSource } from './synthetic_source.js';
import { joinNegativeValues } from '../config/argv.js';

const EXIT_OK = 0;
const EXIT_FAILURE = 1;
const EXIT_USAGE = 2;
const APPLICATION_NAME_DEFAULT = 'safekeeper_proposer';
const RECORD_BYTES_DEFAULT = 100;
const PROGRESS_INTERVAL_MS = 1000;

export const PROPOSE_USAGE = `Usage: safekeeper propose --safekeepers H:P,H:P,H:P --tenant-id T --timeline-id L (--from POSTGRES_URL | --synthetic) [flags]

Streams WAL to a quorum of safekeepers as Neon's walproposer does.
  --from postgres://user@host:port/db   a stock PostgreSQL 15+ primary, followed as a synchronous physical
                                        standby that reports the quorum's commit_lsn as flushed
  --synthetic                           generated WAL (logical-message records) for load tests

Flags:
  --safekeepers LIST        comma-separated HOST:PORT of every safekeeper, each once (a majority must be up)
  --tenant-id HEX32         tenant id
  --timeline-id HEX32       timeline id
  --proto-version 3|2       proposer-acceptor protocol version (default 3)
  --application-name NAME   application_name on the primary (name it in synchronous_standby_names; default ${APPLICATION_NAME_DEFAULT})
  --slot NAME               physical replication slot on the primary (default: from the application name)
  --start-lsn X/Y           where a new timeline starts (default: first record of the slot's segment; synthetic: segment 1)
  --primary-reconnect-timeout DUR
                            after losing the primary mid-stream, keep reconnecting (backoff up to 5s) for this long,
                            counted from the loss, then exit 1; 0s exits at once (default 5m)
  --primary-timeout DUR     a primary connection on which nothing arrives for this long (a frozen host, a dropped
                            route) is dropped and reconnected; a reply is requested at half of it (PostgreSQL's
                            wal_receiver_timeout); it also bounds each setup step of the first connection
                            (then exit 1); 0s never gives up (default 60s)
  --http-listen HOST:PORT   serve Prometheus metrics at GET /metrics (port 0: any free port; default: off)
  --quorum-timeout DUR      give up when no majority has voted within this (default 30s)
  --wal-window-bytes SIZE   WAL kept in memory for lagging safekeepers (default 64MiB)
  --record-bytes N          synthetic: payload bytes per record (default ${RECORD_BYTES_DEFAULT})
  --rate N                  synthetic: records per second (default: as fast as the quorum acknowledges)
  --duration DUR            synthetic: stop after this long (e.g. 10s)
  --total-bytes SIZE        synthetic: stop after this much WAL (e.g. 64MiB)
  --log-level LEVEL         ${LOG_LEVELS.join(', ')} (default info)
  --log-format FORMAT       ${LOG_FORMATS.join(', ')} (default auto)
Exit codes: 0 stopped by SIGTERM/SIGINT or synthetic load done, 1 failure, 2 bad flags.
`;

class UsageError extends Error {}

interface ProposeArgs {
  safekeepers: HostPort[];
  tenantId: ReturnType<typeof parseTenantId>;
  timelineId: ReturnType<typeof parseTimelineId>;
  protocolVersion: ProtocolVersion;
  from: string | null;
  applicationName: string;
  slotName: string;
  startLsn: Lsn | null;
  quorumTimeoutMs: number;
  primaryReconnectTimeoutMs: number;
  primaryTimeoutMs: number;
  httpListen: HostPort | null;
  windowBytes: number;
  recordBytes: number;
  recordsPerSecond: number | null;
  durationMs: number | null;
  totalBytes: number | null;
  logLevel: LogLevel;
  logFormat: LogFormat;
}

function need<T>(parsed: { ok: true; value: T } | { ok: false; message: string }, flag: string): T {
  if (!parsed.ok) throw new UsageError(`--${flag}: ${parsed.message}`);
  return parsed.value;
}

/**
 * The largest payload of a synthetic record: PostgreSQL's record size limit less a logical message's own
 * headers (the record header, the data block header, the message header and its prefix: 56 bytes; 64 kept).
 */
const SYNTHETIC_PAYLOAD_BYTES_MAX = RECORD_BYTES_MAX - 64;

function recordBytesArg(bytes: number): number {
  if (bytes > SYNTHETIC_PAYLOAD_BYTES_MAX) throw new UsageError(`--record-bytes: at most ${SYNTHETIC_PAYLOAD_BYTES_MAX} bytes (PostgreSQL's record size limit less the record's headers)`);
  return bytes;
}

/** `--start-lsn`: where a new timeline starts, so a record start (8-byte aligned, not inside a page header). */
function startLsnArg(text: string): Lsn {
  let startLsn: Lsn;
  try {
    startLsn = parseLsn(text);
  } catch {
    throw new UsageError(`--start-lsn: not an LSN: ${JSON.stringify(text)} (expected X/Y in hex)`);
  }
  if (startLsn % 8n !== 0n) throw new UsageError('--start-lsn: must be 8-byte aligned (a record start)');
  const pageOffset = startLsn % 8192n;
  if (pageOffset !== 0n && pageOffset < 24n) throw new UsageError('--start-lsn: points into a page header (a record starts after it)');
  return startLsn;
}

function parseProposeArgs(argv: string[]): ProposeArgs | 'help' {
  const string = { type: 'string' } as const;
  const options = {
    help: { type: 'boolean', short: 'h' }, safekeepers: string, 'tenant-id': string, 'timeline-id': string, from: string, synthetic: { type: 'boolean' },
    'proto-version': string, 'application-name': string, slot: string, 'start-lsn': string, 'quorum-timeout': string, 'wal-window-bytes': string,
    'record-bytes': string, rate: string, duration: string, 'total-bytes': string, 'log-level': string, 'log-format': string,
    'primary-reconnect-timeout': string, 'primary-timeout': string, 'http-listen': string,
  } as const;
  const { values } = parseArgs({ args: joinNegativeValues(argv, options), strict: true, allowPositionals: false, options });
  if (values.help === true) return 'help';
  const required = (flag: 'safekeepers' | 'tenant-id' | 'timeline-id'): string => {
    const value = values[flag];
    if (value === undefined) throw new UsageError(`--${flag} is required`);
    return value;
  };
  const safekeepers = required('safekeepers').split(',').map((text) => need(parseHostPort(text.trim(), 1), 'safekeepers'));
  if (safekeepers.length > SAFEKEEPERS_MAX) throw new UsageError(`--safekeepers: at most ${SAFEKEEPERS_MAX} safekeepers`);
  const duplicate = duplicateSafekeeper(safekeepers);
  if (duplicate !== null) throw new UsageError(`--safekeepers: ${duplicate[1]} is listed twice (as ${duplicate[0]} too); each safekeeper counts once toward the quorum, so list it once`);
  const idOf = <T>(flag: 'tenant-id' | 'timeline-id', parse: (text: string) => T): T => {
    const text = required(flag); // its UsageError already names the flag
    try {
      return parse(text);
    } catch (error) {
      throw new UsageError(`--${flag}: ${error instanceof Error ? error.message : String(error)}`);
    }
  };
  if ((values.from === undefined) === (values.synthetic !== true)) throw new UsageError('give exactly one of --from POSTGRES_URL and --synthetic');
  if (values.from !== undefined) {
    try {
      parsePostgresUrl(values.from); // a bad URL is a bad flag (exit 2), not a failure to reach the primary
    } catch (error) {
      throw new UsageError(`--from: ${error instanceof Error ? error.message : String(error)}`);
    }
  }
  const synthetic = values.synthetic === true;
  for (const flag of ['record-bytes', 'rate', 'duration', 'total-bytes'] as const) {
    if (!synthetic && values[flag] !== undefined) throw new UsageError(`--${flag} needs --synthetic`);
  }
  if (synthetic && (values.slot !== undefined || values['application-name'] !== undefined || values['primary-reconnect-timeout'] !== undefined || values['primary-timeout'] !== undefined)) {
    throw new UsageError('--slot, --application-name, --primary-reconnect-timeout and --primary-timeout need --from');
  }
  if (values.duration !== undefined && values['total-bytes'] !== undefined) throw new UsageError('give at most one of --duration and --total-bytes');
  const protoText = values['proto-version'] ?? '3';
  if (protoText !== '2' && protoText !== '3') throw new UsageError(`--proto-version: must be 2 or 3, not ${JSON.stringify(protoText)}`);
  const rateText = values.rate;
  if (rateText !== undefined && !/^[1-9]\d*$/.test(rateText)) throw new UsageError(`--rate: a positive whole number of records per second, not ${JSON.stringify(rateText)}`);
  const logLevel = (values['log-level'] ?? 'info') as LogLevel;
  if (!LOG_LEVELS.includes(logLevel)) throw new UsageError(`--log-level: one of ${LOG_LEVELS.join(', ')}`);
  const logFormat = (values['log-format'] ?? 'auto') as LogFormat;
  if (!LOG_FORMATS.includes(logFormat)) throw new UsageError(`--log-format: one of ${LOG_FORMATS.join(', ')}`);
  const startLsn = values['start-lsn'] === undefined ? null : startLsnArg(values['start-lsn']);
  const windowBytes = values['wal-window-bytes'] === undefined ? WAL_WINDOW_BYTES_DEFAULT : need(parseBytes(values['wal-window-bytes']), 'wal-window-bytes');
  if (windowBytes < WAL_WINDOW_BYTES_MIN) throw new UsageError(`--wal-window-bytes: at least ${WAL_WINDOW_BYTES_MIN}`);
  const applicationName = values['application-name'] ?? APPLICATION_NAME_DEFAULT;
  return {
    safekeepers, tenantId: idOf('tenant-id', parseTenantId), timelineId: idOf('timeline-id', parseTimelineId), protocolVersion: protoText === '2' ? 2 : 3,
    from: values.from ?? null, applicationName, slotName: slotNameFrom(values.slot ?? applicationName), startLsn,
    quorumTimeoutMs: values['quorum-timeout'] === undefined ? QUORUM_TIMEOUT_MS_DEFAULT : need(parseDurationMs(values['quorum-timeout']), 'quorum-timeout'),
    primaryReconnectTimeoutMs: values['primary-reconnect-timeout'] === undefined
      ? PRIMARY_RECONNECT_TIMEOUT_MS_DEFAULT : need(parseDurationMs(values['primary-reconnect-timeout']), 'primary-reconnect-timeout'),
    primaryTimeoutMs: values['primary-timeout'] === undefined ? PRIMARY_TIMEOUT_MS_DEFAULT : need(parseDurationMs(values['primary-timeout']), 'primary-timeout'),
    httpListen: values['http-listen'] === undefined ? null : need(parseHostPort(values['http-listen'], 0), 'http-listen'),
    windowBytes,
    recordBytes: values['record-bytes'] === undefined ? RECORD_BYTES_DEFAULT : recordBytesArg(need(parseBytes(values['record-bytes']), 'record-bytes')),
    recordsPerSecond: rateText === undefined ? null : Number(rateText),
    durationMs: values.duration === undefined ? null : need(parseDurationMs(values.duration), 'duration'),
    totalBytes: values['total-bytes'] === undefined ? null : need(parseBytes(values['total-bytes']), 'total-bytes'),
    logLevel, logFormat,
  };
}

/** Runs `safekeeper propose ARGV` and returns the process exit code. */
export async function proposeMain(argv: string[]): Promise<number> {
  let args: ProposeArgs | 'help';
  try {
    args = parseProposeArgs(argv);
  } catch (error) {
    const message = error instanceof Error ? error.message.replace(/^Unknown option '([^']+)'.*$/s, "unknown flag '$1'") : String(error);
    process.stderr.write(`safekeeper propose: ${message} (see safekeeper propose --help)\n`);
    return EXIT_USAGE;
  }
  if (args === 'help') {
    process.stdout.write(PROPOSE_USAGE);
    return EXIT_OK;
  }
  const log = childLogger(createLogger({ logLevel: args.logLevel, logFormat: args.logFormat }), { task: 'propose', tenant_id: args.tenantId, timeline_id: args.timelineId });
  const stop = new AbortController();
  const onSignal = (signal: NodeJS.Signals): void => {
    if (stop.signal.aborted) process.exit(EXIT_FAILURE); // a second signal: give up waiting
    log.info({ signal }, 'signal received: stopping');
    stop.abort();
  };
  process.on('SIGTERM', onSignal);
  process.on('SIGINT', onSignal);
  let source: WalSource | null = null;
  try {
    source = args.from !== null
      ? await PostgresSource.open({
        url: args.from, applicationName: args.applicationName, slotName: args.slotName, startLsn: args.startLsn, reconnectTimeoutMs: args.primaryReconnectTimeoutMs,
        silenceTimeoutMs: args.primaryTimeoutMs, log,
      }, stop.signal)
      : new SyntheticSource({ tenantId: args.tenantId, timelineId: args.timelineId, recordBytes: args.recordBytes, recordsPerSecond: args.recordsPerSecond, durationMs: args.durationMs, totalBytes: args.totalBytes, startLsn: args.startLsn });
    await runProposer(args, source, log, stop.signal);
    if (source instanceof SyntheticSource) process.stdout.write(`${syntheticSummary(source)}\n`);
    return EXIT_OK;
  } catch (error) {
    if (stop.signal.aborted && !(error instanceof SafekeeperError && error.code !== 'SK_CANCELLED')) {
      if (source instanceof SyntheticSource) process.stdout.write(`${syntheticSummary(source)}\n`);
      return EXIT_OK;
    }
    if (error instanceof AssertionError || !(error instanceof SafekeeperError)) log.fatal({ err: error }, 'proposer crashed');
    process.stderr.write(`safekeeper propose: ${error instanceof Error ? error.message : String(error)}\n`);
    return EXIT_FAILURE;
  } finally {
    process.off('SIGTERM', onSignal);
    process.off('SIGINT', onSignal);
    await source?.close().catch(() => undefined); // the run's outcome is already decided; a close error adds nothing
  }
}

async function runProposer(args: ProposeArgs, source: WalSource, log: Logger, signal: AbortSignal): Promise<void> {
  let metrics: ProposerMetrics | null = null;
  const proposer = new Proposer({
    safekeepers: args.safekeepers, tenantId: args.tenantId, timelineId: args.timelineId, protocolVersion: args.protocolVersion,
    source, log, quorumTimeoutMs: args.quorumTimeoutMs, windowBytes: args.windowBytes,
    onElected: (elected) => process.stdout.write(`elected term=${elected.term} term_start_lsn=${formatLsn(elected.termStartLsn)}\n`),
    onAppendAcked: (safekeeper, latencyMs) => metrics?.observeAppendAck(safekeeper, latencyMs),
  });
  let server: MetricsServer | null = null;
  if (args.httpListen !== null) {
    metrics = new ProposerMetrics(proposer, source instanceof PostgresSource ? source : null);
    server = await startMetricsServer(args.httpListen, metrics.registry, log);
    process.stdout.write(`listening http=${formatHostPort(server.address)}\n`);
  }
  const progress = source instanceof SyntheticSource && process.stderr.isTTY === true ? setInterval(() => process.stderr.write(`\r${progressLine(source)}`), PROGRESS_INTERVAL_MS) : null;
  try {
    await proposer.run(signal);
  } finally {
    if (progress !== null) {
      clearInterval(progress);
      process.stderr.write('\n');
    }
    await server?.close();
  }
}

function progressLine(source: SyntheticSource): string {
  const progress = source.progress();
  const seconds = progress.elapsedMs / 1000;
  const mib = progress.bytes / (1024 * 1024);
  return `synthetic: ${progress.records} records, ${mib.toFixed(1)} MiB, ${seconds > 0 ? (mib / seconds).toFixed(1) : '0.0'} MiB/s, committed ${formatLsn(progress.committedLsn)} of ${formatLsn(progress.generatedLsn)}   `;
}

/** One line of key=value pairs: throughput and commit latency percentiles. */
export function syntheticSummary(source: SyntheticSource): string {
  const progress = source.progress();
  const seconds = progress.elapsedMs / 1000;
  const latency = source.latency.summary();
  const rate = (value: number): string => (seconds > 0 ? (value / seconds).toFixed(1) : '0');
  return [
    'synthetic summary', `records=${progress.records}`, `bytes=${progress.bytes}`, `seconds=${seconds.toFixed(2)}`,
    `records_per_second=${rate(progress.records)}`, `mib_per_second=${rate(progress.bytes / (1024 * 1024))}`,
    `commit_latency_ms_p50=${latency.p50Ms.toFixed(2)}`, `commit_latency_ms_p90=${latency.p90Ms.toFixed(2)}`,
    `commit_latency_ms_p99=${latency.p99Ms.toFixed(2)}`, `commit_latency_ms_max=${latency.maxMs.toFixed(2)}`,
    `committed_records=${latency.count}`, `commit_lsn=${formatLsn(progress.committedLsn)}`, `end_lsn=${formatLsn(progress.generatedLsn)}`,
  ].join(' ');
}
