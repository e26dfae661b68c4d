/**
 * Talking to a stock PostgreSQL primary before streaming: parse the `--from` URL, open a physical
 * replication connection, identify the server (and whether it is a standby: `warnIfStandby`), and make sure
 * our physical slot exists. Used by
 * `postgres_source.ts` for the first connection and by every reconnect (`primary_reconnect.ts`), so both
 * go through the same checks.
 * Errors: everything the primary or the socket says becomes a SourceError that keeps the PgServerError /
 * PgConnectionError as its `cause` (the reconnect logic classifies by it). Abort-safe: a connection being
 * set up is destroyed when the signal fires. Main thread.
 */
import type { Logger } from '../log.js';
import { PgClient, PgConnectionError, PgServerError } from '../pg/client.js';
import { isValidSegmentSize, type Lsn, parseLsn } from '../wal/lsn.js';
import { SourceError } from './errors.js';
import { CONNECT_TIMEOUT_MS } from './limits.js';

export interface ConnectionTarget {
  host: string;
  port: number;
  user: string;
  password?: string;
  database: string;
}

/** What IDENTIFY_SYSTEM and three SHOWs tell about the primary. */
export interface PrimaryIdentity {
  systemId: bigint;
  /** The PostgreSQL timeline (TimeLineID) the primary writes on; a promotion changes it. */
  pgTimeline: number;
  /** server_version_num, e.g. 150008. */
  pgVersion: number;
  walSegSizeBytes: number;
  /** The server is in recovery (a standby): `SHOW in_hot_standby`. */
  inRecovery: boolean;
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

/**
 * `SHOW in_hot_standby` (PostgreSQL 14+; SHOW works on a replication connection, pg_is_in_recovery() does
 * not): "on" while a hot standby accepts connections, which is the only way a standby serves ours.
 */
export function parseInHotStandby(text: string | null | undefined): boolean {
  if (text === 'on') return true;
  if (text === 'off') return false;
  throw new SourceError(`unexpected in_hot_standby ${JSON.stringify(text ?? null)} (expected on or off)`);
}

/**
 * A standby serves its WAL (cascading replication), so `--from` one is allowed, but no commit waits for a
 * standby's own replicas, so the proposer's flush reports make nothing synchronous: say so, once per connection.
 */
export function warnIfStandby(primary: PrimaryIdentity, target: ConnectionTarget, log: Logger): void {
  if (!primary.inRecovery) return;
  log.warn({ primary: `${target.host}:${target.port}`, in_hot_standby: 'on' },
    'the --from server is a standby (in recovery): its WAL streams to the safekeepers, but synchronous commit through the proposer only works against the primary');
}

/** A physical replication connection (`replication=true`) to the primary. */
export async function connectPrimary(target: ConnectionTarget, applicationName: string, signal: AbortSignal): Promise<PgClient> {
  try {
    return await PgClient.connect({ ...target, applicationName, replication: 'true', connectTimeoutMs: CONNECT_TIMEOUT_MS }, signal);
  } catch (error) {
    if (signal.aborted) throw error;
    throw toSourceError(error, `connecting to the primary at ${target.host}:${target.port}`);
  }
}

/** IDENTIFY_SYSTEM, `SHOW server_version_num`, `SHOW wal_segment_size`, `SHOW in_hot_standby`; refuses PostgreSQL before 15. */
export async function identifyPrimary(client: PgClient, signal: AbortSignal): Promise<PrimaryIdentity> {
  const row = (await client.query('IDENTIFY_SYSTEM', signal)).rows[0];
  const systemIdText = row?.[0];
  const timelineText = row?.[1];
  if (typeof systemIdText !== 'string' || !/^\d+$/.test(systemIdText)) throw new SourceError('IDENTIFY_SYSTEM returned no system id');
  if (typeof timelineText !== 'string' || !/^\d+$/.test(timelineText)) throw new SourceError('IDENTIFY_SYSTEM returned no timeline');
  const pgVersion = Number((await client.query('SHOW server_version_num', signal)).rows[0]?.[0]);
  if (!Number.isInteger(pgVersion) || pgVersion < 150000) throw new SourceError(`the primary runs PostgreSQL ${pgVersion}; 15 or later is needed`);
  const walSegSizeBytes = parseSegmentSize((await client.query('SHOW wal_segment_size', signal)).rows[0]?.[0] ?? '');
  const inRecovery = parseInHotStandby((await client.query('SHOW in_hot_standby', signal)).rows[0]?.[0]);
  return { systemId: BigInt(systemIdText), pgTimeline: Number(timelineText), pgVersion, walSegSizeBytes, inRecovery };
}

/**
 * READ_REPLICATION_SLOT, creating the slot (RESERVE_WAL) when it is missing; returns its restart_lsn.
 * `missingIsNews` logs a missing slot at warn: after a reconnect it means someone dropped it.
 */
export async function ensureSlot(client: PgClient, slotName: string, log: Logger, missingIsNews: boolean, signal: AbortSignal): Promise<Lsn> {
  const read = async (): Promise<{ type: string | null; restartLsn: string | null }> => {
    const row = (await client.query(`READ_REPLICATION_SLOT ${slotName}`, signal)).rows[0];
    return { type: row?.[0] ?? null, restartLsn: row?.[1] ?? null };
  };
  let slot = await read();
  if (slot.type === null) {
    await client.query(`CREATE_REPLICATION_SLOT ${slotName} PHYSICAL RESERVE_WAL`, signal);
    if (missingIsNews) log.warn({ slot: slotName }, 'the replication slot was gone from the primary (dropped?); created it again');
    else log.info({ slot: slotName }, 'created a physical replication slot on the primary');
    slot = await read();
  }
  if (slot.type !== 'physical') throw new SourceError(`replication slot ${slotName} is ${slot.type ?? 'missing'}, not physical`);
  if (slot.restartLsn === null) throw new SourceError(`replication slot ${slotName} reserves no WAL (restart_lsn is NULL); drop it or pass --slot`);
  return parseLsn(slot.restartLsn);
}

/** Wraps what the primary or the socket said in a SourceError that names `context` and keeps the cause. */
export function toSourceError(error: unknown, context: string): unknown {
  if (error instanceof SourceError) return error;
  if (error instanceof PgServerError || error instanceof PgConnectionError) return new SourceError(`${context}: ${error.message}`, { cause: error });
  return error;
}
