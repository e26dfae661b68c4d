/**
 * WAL from a stock PostgreSQL primary (15+) as a physical replication client, acting as a synchronous
 * standby whose flush position is the safekeepers' quorum commit_lsn.
 *
 * Setup (`open`): IDENTIFY_SYSTEM (system id), `SHOW server_version_num`, `SHOW wal_segment_size`, and a
 * physical replication slot (READ_REPLICATION_SLOT; CREATE_REPLICATION_SLOT ... PHYSICAL RESERVE_WAL if it is
 * missing), so the primary keeps WAL until the quorum has it: the slot's restart_lsn follows the flush
 * position we report. A new timeline starts at the first record boundary of the segment holding the slot's
 * restart_lsn (found by decoding that segment's start with skipLeadingContrecord on a second, short-lived
 * connection; the safekeepers synthesise the segment image below it), or at `--start-lsn`.
 * Streaming: `START_REPLICATION SLOT s PHYSICAL X/Y` on the main connection; XLogData must be contiguous.
 * Standby status updates carry write = flush = apply = commit_lsn, sent at once when commit_lsn moves
 * (further moves in the same event-loop turn coalesce into one more update) and every STATUS_INTERVAL_MS, so with
 * synchronous_standby_names naming our application_name a commit returns once a majority fsynced it.
 * Hot standby feedback from the safekeepers is relayed as 'h' messages.
 * Failure: any error of the primary or the connection is a SourceError (fatal for the proposer; a primary
 * restart needs a proposer restart). Main thread.
 */
import type { Logger } from '../log.js';
import { PgClient, PgConnectionError, PgServerError } from '../pg/client.js';
import { formatLsn, isValidSegmentSize, type Lsn, parseLsn, segmentNumber, segmentStartLsn } from '../wal/lsn.js';
import { initialDecoderState, WalRecordDecoder } from '../wal/record_decoder.js';
import { SourceError } from './errors.js';
import { LatencyStats } from './latency_stats.js';
import { CONNECT_TIMEOUT_MS, STATUS_INTERVAL_MS } from './limits.js';
import { decodeWalSenderMessage, encodeHotStandbyFeedback, encodeStandbyReply, postgresNowUs } from '../pg/replication_messages.js';
import type { ServerIdentity, StreamArgs, WalSource } from './source.js';

/** XLogData pieces tracked for the ack latency; beyond it the newest piece absorbs new ones. */
const RECEIVED_PIECES_MAX = 100_000;

export interface PostgresSourceOptions {
  /** postgres://user:password@host:port/database */
  url: string;
  applicationName: string;
  slotName: string;
  /** `--start-lsn`: where a new timeline starts, instead of the slot's segment. */
  startLsn: Lsn | null;
  log: Logger;
}

interface ConnectionTarget {
  host: string;
  port: number;
  user: string;
  password?: string;
  database: string;
}

/** A slot name PostgreSQL accepts (lower-case letters, digits, underscore; at most 63) derived from `name`. */
export function slotNameFrom(name: string): string {
  const cleaned = name.toLowerCase().replace(/[^a-z0-9_]/g, '_').slice(0, 63);
  return cleaned === '' ? 'safekeeper_proposer' : cleaned;
}

/** Parses `postgres://` / `postgresql://` URLs (TCP only). */
export function parsePostgresUrl(url: string): ConnectionTarget {
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch {
    throw new SourceError(`not a PostgreSQL URL: ${JSON.stringify(url)} (expected postgres://user@host:port/database)`);
  }
  if (parsed.protocol !== 'postgres:' && parsed.protocol !== 'postgresql:') throw new SourceError(`not a PostgreSQL URL (scheme ${parsed.protocol}): ${url}`);
  const user = decodeURIComponent(parsed.username) || 'postgres';
  const password = parsed.password === '' ? undefined : decodeURIComponent(parsed.password);
  const target: ConnectionTarget = {
    host: parsed.hostname.replace(/^\[(.*)\]$/, '$1') || '127.0.0.1', port: parsed.port === '' ? 5432 : Number(parsed.port), user,
    database: decodeURIComponent(parsed.pathname.slice(1)) || user,
  };
  if (password !== undefined) target.password = password;
  return target;
}

/** `SHOW wal_segment_size` prints e.g. "16MB" (units of 1024). */
function parseSegmentSize(text: string): number {
  const match = /^(\d+)\s*(B|kB|MB|GB)?$/.exec(text.trim());
  const scale = { B: 1, kB: 1024, MB: 1024 ** 2, GB: 1024 ** 3 } as const;
  const bytes = match === null ? NaN : Number(match[1]) * scale[(match[2] ?? 'B') as keyof typeof scale];
  if (!isValidSegmentSize(bytes)) throw new SourceError(`unexpected wal_segment_size ${JSON.stringify(text)}`);
  return bytes;
}

export class PostgresSource implements WalSource {
  readonly description: string;
  readonly canRewind = true;
  readonly needsPrevRecordLsn = false;
  readonly #options: PostgresSourceOptions;
  readonly #target: ConnectionTarget;
  readonly #client: PgClient;
  #restartLsn: Lsn;
  #commitLsn: Lsn = 0n;
  #streaming = false;
  #statusScheduled = false;
  #statusTimer: NodeJS.Timeout | null = null;
  /** WAL pieces received and not yet committed, for `latency`. */
  readonly #received: { endLsn: Lsn; receivedMs: number }[] = [];
  #receivedHead = 0;
  /** How long WAL from the primary waited for the quorum: receipt of an XLogData until commit_lsn covers it. */
  readonly latency = new LatencyStats();

  private constructor(options: PostgresSourceOptions, target: ConnectionTarget, client: PgClient, readonly identity: ServerIdentity, restartLsn: Lsn) {
    this.#options = options;
    this.#target = target;
    this.#client = client;
    this.#restartLsn = restartLsn;
    this.description = `postgres ${target.host}:${target.port}`;
  }

  /** Connects, identifies the primary and makes sure the slot exists. Errors are SourceErrors. */
  static async open(options: PostgresSourceOptions, signal: AbortSignal): Promise<PostgresSource> {
    const target = parsePostgresUrl(options.url);
    const client = await connect(target, options.applicationName, signal);
    try {
      const system = await client.query('IDENTIFY_SYSTEM', signal);
      const systemIdText = system.rows[0]?.[0];
      if (typeof systemIdText !== 'string' || !/^\d+$/.test(systemIdText)) throw new SourceError('IDENTIFY_SYSTEM returned no system id');
      const pgVersion = Number((await client.query('SHOW server_version_num', signal)).rows[0]?.[0]);
      if (!Number.isInteger(pgVersion) || pgVersion < 150000) throw new SourceError(`the primary runs PostgreSQL ${pgVersion}; 15 or later is needed`);
      const walSegSizeBytes = parseSegmentSize((await client.query('SHOW wal_segment_size', signal)).rows[0]?.[0] ?? '');
      const restartLsn = await ensureSlot(client, options.slotName, options.log, signal);
      const identity = { systemId: BigInt(systemIdText), pgVersion, walSegSizeBytes };
      options.log.info({ primary: `${target.host}:${target.port}`, system_id: identity.systemId, pg_version: pgVersion, wal_segment_size: walSegSizeBytes, slot: options.slotName, restart_lsn: restartLsn }, 'connected to the primary');
      return new PostgresSource(options, target, client, identity, restartLsn);
    } catch (error) {
      client.destroy();
      throw toSourceError(error, 'setting up replication');
    }
  }

  earliestLsn(): Lsn {
    const segmentSizeBytes = this.identity.walSegSizeBytes;
    return segmentStartLsn(segmentNumber(this.#restartLsn, segmentSizeBytes), segmentSizeBytes);
  }

  async initialLsn(signal: AbortSignal): Promise<Lsn> {
    if (this.#options.startLsn !== null) return this.#options.startLsn;
    const fromLsn = this.earliestLsn();
    const probe = await connect(this.#target, `${this.#options.applicationName}_probe`, signal);
    try {
      await probe.startCopyBoth(`START_REPLICATION PHYSICAL ${formatLsn(fromLsn)}`, signal);
      const decoder = new WalRecordDecoder(initialDecoderState({ startLsn: fromLsn, segmentSizeBytes: this.identity.walSegSizeBytes, pgVersion: this.identity.pgVersion, skipLeadingContrecord: true }));
      for (;;) {
        const event = await probe.nextCopy(signal);
        if (event.kind === 'done') throw new SourceError('the primary ended replication while we looked for the first record');
        const message = decodeWalSenderMessage(event.payload);
        if (message.kind !== 'xlog') continue;
        let firstLsn: Lsn | null = null;
        decoder.feed(message.data, (startLsn) => (firstLsn ??= startLsn));
        if (firstLsn !== null) {
          this.#options.log.info({ segment_start_lsn: fromLsn, first_record_lsn: firstLsn }, 'a new timeline starts at the first record of the slot segment');
          return firstLsn;
        }
      }
    } catch (error) {
      throw toSourceError(error, 'finding the first record');
    } finally {
      probe.destroy();
    }
  }

  async stream(args: StreamArgs): Promise<void> {
    const { signal } = args;
    const client = this.#client;
    try {
      await client.startCopyBoth(`START_REPLICATION SLOT ${this.#options.slotName} PHYSICAL ${formatLsn(args.startLsn)}`, signal);
    } catch (error) {
      throw toSourceError(error, `START_REPLICATION at ${formatLsn(args.startLsn)}`);
    }
    this.#streaming = true;
    this.#statusTimer = setInterval(() => this.#sendStatus(false), STATUS_INTERVAL_MS);
    this.#sendStatus(false);
    let expectedLsn = args.startLsn;
    try {
      for (;;) {
        const event = client.tryNextCopy() ?? (await client.nextCopy(signal));
        if (event.kind === 'done') throw new SourceError('the primary ended replication');
        const message = decodeWalSenderMessage(event.payload);
        if (message.kind === 'keepalive') {
          if (message.replyRequested) this.#sendStatus(false);
          continue;
        }
        if (message.data.length === 0) continue;
        if (message.startLsn !== expectedLsn) throw new SourceError(`the primary sent WAL at ${formatLsn(message.startLsn)}, expected ${formatLsn(expectedLsn)}`);
        expectedLsn += BigInt(message.data.length);
        this.#noteReceived(expectedLsn);
        await args.write(message.startLsn, message.data, signal);
      }
    } catch (error) {
      if (signal.aborted) throw error;
      throw toSourceError(error, 'streaming');
    } finally {
      this.#streaming = false;
    }
  }

  onCommit(commitLsn: Lsn): void {
    this.#commitLsn = commitLsn;
    const nowMs = performance.now();
    while (this.#received.length > this.#receivedHead) {
      const piece = this.#received[this.#receivedHead] as { endLsn: Lsn; receivedMs: number };
      if (piece.endLsn > commitLsn) break;
      this.latency.add(nowMs - piece.receivedMs, 1);
      this.#receivedHead += 1;
    }
    if (this.#receivedHead === this.#received.length || this.#receivedHead > 4096) {
      this.#received.splice(0, this.#receivedHead);
      this.#receivedHead = 0;
    }
    if (commitLsn > this.#restartLsn) this.#restartLsn = commitLsn;
    if (this.#statusScheduled) return;
    // The first advance in an event-loop turn is reported at once (commit latency); later advances in the
    // same turn (acks of the other safekeepers) are folded into one more update at its end.
    this.#sendStatus(false);
    const sentLsn = commitLsn;
    this.#statusScheduled = true;
    setImmediate(() => {
      this.#statusScheduled = false;
      if (this.#commitLsn !== sentLsn) this.#sendStatus(false);
    });
  }

  onHotStandbyFeedback(xmin: bigint, catalogXmin: bigint): void {
    if (!this.#streaming) return;
    this.#client.sendCopyData(encodeHotStandbyFeedback({ timestampUs: postgresNowUs(), xmin: xmin, catalogXmin: catalogXmin }));
  }

  async close(): Promise<void> {
    const latency = this.latency.summary();
    if (latency.count > 0) this.#options.log.info({ pieces: latency.count, ack_latency_ms_p50: latency.p50Ms, ack_latency_ms_p99: latency.p99Ms, ack_latency_ms_max: latency.maxMs }, 'quorum ack latency of WAL from the primary');
    if (this.#statusTimer !== null) clearInterval(this.#statusTimer);
    this.#statusTimer = null;
    if (this.#streaming) this.#sendStatus(false);
    this.#client.terminate();
    this.#client.destroy();
    await this.#client.closed;
  }

  /** Remembers when WAL up to `endLsn` arrived; past RECEIVED_PIECES_MAX pieces in flight, the oldest timing is kept. */
  #noteReceived(endLsn: Lsn): void {
    const last = this.#received[this.#received.length - 1];
    if (last !== undefined && this.#received.length - this.#receivedHead >= RECEIVED_PIECES_MAX) last.endLsn = endLsn;
    else this.#received.push({ endLsn, receivedMs: performance.now() });
  }

  #sendStatus(replyRequested: boolean): void {
    if (!this.#streaming || this.#client.destroyed) return;
    const lsn = this.#commitLsn;
    this.#client.sendCopyData(encodeStandbyReply({ writeLsn: lsn, flushLsn: lsn, applyLsn: lsn, replyTimeUs: postgresNowUs(), replyRequested: replyRequested }));
  }
}

async function connect(target: ConnectionTarget, applicationName: string, signal: AbortSignal): Promise<PgClient> {
  try {
    return await PgClient.connect({ ...target, applicationName, replication: 'true', connectTimeoutMs: CONNECT_TIMEOUT_MS }, signal);
  } catch (error) {
    if (signal.aborted) throw error;
    throw toSourceError(error, `connecting to the primary at ${target.host}:${target.port}`);
  }
}

/** READ_REPLICATION_SLOT, creating the slot when it is missing; returns its restart_lsn. */
async function ensureSlot(client: PgClient, slotName: string, log: Logger, signal: AbortSignal): Promise<Lsn> {
  const read = async (): Promise<{ type: string | null; restartLsn: string | null }> => {
    const row = (await client.query(`READ_REPLICATION_SLOT ${slotName}`, signal)).rows[0];
    return { type: row?.[0] ?? null, restartLsn: row?.[1] ?? null };
  };
  let slot = await read();
  if (slot.type === null) {
    await client.query(`CREATE_REPLICATION_SLOT ${slotName} PHYSICAL RESERVE_WAL`, signal);
    log.info({ slot: slotName }, 'created a physical replication slot on the primary');
    slot = await read();
  }
  if (slot.type !== 'physical') throw new SourceError(`replication slot ${slotName} is ${slot.type ?? 'missing'}, not physical`);
  if (slot.restartLsn === null) throw new SourceError(`replication slot ${slotName} reserves no WAL (restart_lsn is NULL); drop it or pass --slot`);
  return parseLsn(slot.restartLsn);
}

function toSourceError(error: unknown, context: string): unknown {
  if (error instanceof SourceError) return error;
  if (error instanceof PgServerError || error instanceof PgConnectionError) return new SourceError(`${context}: ${error.message}`, { cause: error });
  return error;
}

