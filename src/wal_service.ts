/**
 * The WAL service: what a client can ask on the pg port, after Neon's `handler.rs`. Commands are parsed by
 * `pg/commands.ts`; this module checks the timeline they name and runs them: START_WAL_PUSH (ingest),
 * START_REPLICATION (send/wal_sender.ts), TIMELINE_HISTORY (as PostgreSQL for a timeline without history),
 * IDENTIFY_SYSTEM, TIMELINE_STATUS, `SHOW` of the parameters replication clients ask for, and psycopg2's
 * `set datestyle`. Anything else is "unsupported command" (an ErrorResponse; the connection stays usable).
 * Main thread.
 */
import type { TenantId, TimelineId } from './acceptor/state.js';
import { parseProtocolVersion } from './acceptor/messages.js';
import { InvalidArgumentError, NotFoundError, SafekeeperError } from './errors.js';
import { serveWalPush, type WalReceiverDeps } from './ingest/wal_receiver.js';
import { timelineHistory } from './send/timeline_history.js';
import { serveStartReplication, type WalSenderDeps } from './send/wal_sender.js';
import { INT4_OID, TEXT_OID, commandComplete } from './pg/backend_encoder.js';
import { parseCommand } from './pg/commands.js';
import type { PgConnection, PgQueryHandler } from './pg/connection.js';
import { isRecoveryClient, type StartupParams } from './pg/startup.js';
import type { TimelineRegistry } from './timeline/registry.js';
import { formatLsn } from './wal/lsn.js';

/** Reported when the timeline a client names is unknown (stock clients check the major version). */
export function serverVersionText(pgVersionNum: number): string {
  const major = Math.floor(pgVersionNum / 10000);
  return `${major}.${pgVersionNum % 10000}`;
}

export class UnsupportedCommandError extends SafekeeperError {
  override readonly name = 'UnsupportedCommandError';
  readonly code = 'SK_UNSUPPORTED_COMMAND';
  readonly sqlState = '0A000'; // feature_not_supported
}

export interface WalServiceDeps extends WalReceiverDeps, WalSenderDeps {
  registry: TimelineRegistry;
  defaultPgVersion: number;
  countQuery?: (kind: string) => void;
}

export function createWalService(deps: WalServiceDeps): { handler: PgQueryHandler; serverParameters: (startup: StartupParams) => Record<string, string> } {
  const handler: PgQueryHandler = {
    async onQuery(text: string, conn: PgConnection): Promise<void> {
      const command = parseCommand(text);
      deps.countQuery?.(command.kind);
      switch (command.kind) {
        case 'set_datestyle':
          conn.write(commandComplete('SELECT 1'));
          return;
        case 'start_wal_push':
          return serveWalPush(conn, { protoVersion: parseProtocolVersion(command.protoVersion), allowTimelineCreation: command.allowTimelineCreation }, requireIds(conn), deps);
        case 'start_replication':
          return serveStartReplication(conn, { startLsn: command.startLsn, pgTimeline: command.timeline, term: command.term }, requireIds(conn), deps);
        case 'timeline_history':
          return timelineHistory(command.timeline);
        case 'identify_system':
          return identifySystem(conn, deps.registry);
        case 'timeline_status':
          return timelineStatus(conn, deps.registry);
        case 'show':
          return show(conn, command.name, deps);
        default:
          throw new UnsupportedCommandError(`unsupported command ${text}`);
      }
    },
  };
  const serverParameters = (startup: StartupParams): Record<string, string> => {
    const timeline = startup.tenantId !== null && startup.timelineId !== null ? deps.registry.get(startup.tenantId, startup.timelineId) : undefined;
    const pgVersion = timeline?.control?.state.server.pgVersion ?? deps.defaultPgVersion;
    return { server_version: serverVersionText(pgVersion) };
  };
  return { handler, serverParameters };
}

function requireIds(conn: PgConnection): { tenantId: TenantId; timelineId: TimelineId } {
  const { tenantId, timelineId } = conn.startup;
  if (tenantId === null) throw new InvalidArgumentError('tenantid is required');
  if (timelineId === null) throw new InvalidArgumentError('timelineid is required');
  return { tenantId, timelineId };
}


async function identifySystem(conn: PgConnection, registry: TimelineRegistry): Promise<void> {
  const { tenantId, timelineId } = requireIds(conn);
  const timeline = registry.require(tenantId, timelineId);
  const acceptor = timeline.activeAcceptor();
  const xlogpos = isRecoveryClient(conn.startup) ? acceptor.flushLsn : acceptor.commitLsn;
  conn.sendRows(
    [
      { name: 'systemid', typeOid: TEXT_OID, typeLengthBytes: -1 },
      { name: 'timeline', typeOid: INT4_OID, typeLengthBytes: 4 },
      { name: 'xlogpos', typeOid: TEXT_OID, typeLengthBytes: -1 },
      { name: 'dbname', typeOid: TEXT_OID, typeLengthBytes: -1 },
    ],
    [[acceptor.state.server.systemId.toString(), '1', formatLsn(xlogpos), null]],
    'IDENTIFY_SYSTEM',
  );
}

async function timelineStatus(conn: PgConnection, registry: TimelineRegistry): Promise<void> {
  const { tenantId, timelineId } = requireIds(conn);
  const acceptor = registry.get(tenantId, timelineId)?.acceptor ?? null;
  const columns = [
    { name: 'flush_lsn', typeOid: TEXT_OID, typeLengthBytes: -1 },
    { name: 'commit_lsn', typeOid: TEXT_OID, typeLengthBytes: -1 },
  ];
  // As in Neon: a missing timeline is zero rows, not an error (compute_ctl relies on it).
  const rows = acceptor === null ? [] : [[formatLsn(acceptor.flushLsn), formatLsn(acceptor.commitLsn)]];
  conn.sendRows(columns, rows, 'TIMELINE_STATUS');
}

async function show(conn: PgConnection, name: string, deps: WalServiceDeps): Promise<void> {
  const { tenantId, timelineId } = conn.startup;
  const timeline = tenantId !== null && timelineId !== null ? deps.registry.get(tenantId, timelineId) : undefined;
  let value: string;
  switch (name) {
    case 'wal_segment_size': {
      const bytes = timeline?.control?.state.server.walSegSizeBytes;
      if (bytes === undefined) throw new NotFoundError('wal_segment_size: the connection names no known timeline');
      value = `${bytes / (1024 * 1024)}MB`;
      break;
    }
    case 'data_directory_mode':
      value = '0700';
      break;
    case 'server_version':
      value = serverVersionText(timeline?.control?.state.server.pgVersion ?? deps.defaultPgVersion);
      break;
    default:
      throw new UnsupportedCommandError(`unsupported command SHOW ${name}`);
  }
  conn.sendRows([{ name, typeOid: TEXT_OID, typeLengthBytes: -1 }], [[value]], 'SHOW');
}
