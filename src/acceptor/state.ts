/**
 * The persistent state of one timeline (what the control file holds), after Neon's
 * `TimelinePersistentState`. Pure types and constructors; any thread. The control file codec lives in
 * `storage/control_file.ts`; the acceptor rules that change this state live in `acceptor/acceptor.ts`.
 *
 * Order of the LSNs (documented here as Neon documents it on PhysicalStorage):
 *   timelineStartLsn <= localStartLsn <= commitLsn <= flush_lsn (derived from WAL on disk)
 *   backupLsn <= commitLsn is not guaranteed across peers (backup_lsn is the max seen from anyone).
 */
import { InvalidArgumentError } from '../errors.js';
import type { Lsn } from '../wal/lsn.js';

/** Tenant and timeline ids: 32 lower-case hex chars, parsed once at the edge. */
export type TenantId = string & { readonly __brand: 'TenantId' };
export type TimelineId = string & { readonly __brand: 'TimelineId' };

export interface TermLsn {
  term: bigint;
  lsn: Lsn;
}

/** (term, start LSN) entries, ascending in both. */
export type TermHistory = TermLsn[];

export interface SafekeeperMember {
  id: bigint;
  host: string;
  pgPort: number;
}

/**
 * Bounds on a membership configuration from the wire or the HTTP API, so the control file that persists it
 * always fits (storage/control_file.ts checks the sum): a safekeeper set has a handful of members, and a host
 * name at most 253 bytes (DNS) with no control characters.
 */
export const MEMBERS_PER_SET_MAX = 32;
export const MEMBER_HOST_BYTES_MAX = 255;

/** Why `host` cannot be a member's host name, or null. */
export function memberHostProblem(host: string): string | null {
  if (Buffer.byteLength(host) > MEMBER_HOST_BYTES_MAX) return `is longer than ${MEMBER_HOST_BYTES_MAX} bytes`;
  if (/[\u0000-\u001f\u007f]/.test(host)) return 'has a control character';
  return null;
}

/** Membership configuration; generation 0 = INVALID (legacy, pre-generations). */
export interface MembershipConfiguration {
  generation: number;
  members: SafekeeperMember[];
  newMembers: SafekeeperMember[] | null;
}

export interface ServerInfo {
  /** Full PG_VERSION_NUM, e.g. 150008. */
  pgVersion: number;
  /** PostgreSQL system identifier; 0 = unknown. */
  systemId: bigint;
  walSegSizeBytes: number;
}

export type PartialSegmentStatus = 'InProgress' | 'Uploaded' | 'Deleting';

export interface PartialRemoteSegment {
  status: PartialSegmentStatus;
  name: string;
  commitLsn: Lsn;
  flushLsn: Lsn;
  term: bigint;
}

export type EvictionState = { kind: 'Present' } | { kind: 'Offloaded'; flushLsn: Lsn };

export interface TimelinePersistentState {
  tenantId: TenantId;
  timelineId: TimelineId;
  mconf: MembershipConfiguration;
  acceptorState: {
    term: bigint;
    termHistory: TermHistory;
  };
  server: ServerInfo;
  timelineStartLsn: Lsn;
  localStartLsn: Lsn;
  commitLsn: Lsn;
  backupLsn: Lsn;
  peerHorizonLsn: Lsn;
  remoteConsistentLsn: Lsn;
  partialBackup: { segments: PartialRemoteSegment[] };
  evictionState: EvictionState;
  /** Wall-clock creation time, ms since the Unix epoch. */
  creationTimeMs: number;
}

export const emptyMembership = (): MembershipConfiguration => ({ generation: 0, members: [], newMembers: null });

/**
 * Initial state of a new timeline, as Neon creates it: term 0; history [(0, start)] when commitLsn is set,
 * else empty; all start LSNs = startLsn. A compute-created timeline uses startLsn = commitLsn = 0.
 */
export function newTimelineState(args: {
  tenantId: TenantId;
  timelineId: TimelineId;
  server: ServerInfo;
  mconf?: MembershipConfiguration;
  startLsn: Lsn;
  commitLsn: Lsn;
  nowMs: number;
}): TimelinePersistentState {
  return {
    tenantId: args.tenantId,
    timelineId: args.timelineId,
    mconf: args.mconf ?? emptyMembership(),
    acceptorState: { term: 0n, termHistory: args.commitLsn !== 0n ? [{ term: 0n, lsn: args.startLsn }] : [] },
    server: { ...args.server },
    timelineStartLsn: args.startLsn,
    localStartLsn: args.startLsn,
    commitLsn: args.commitLsn,
    backupLsn: args.startLsn,
    peerHorizonLsn: args.startLsn,
    remoteConsistentLsn: 0n,
    partialBackup: { segments: [] },
    evictionState: { kind: 'Present' },
    creationTimeMs: args.nowMs,
  };
}

/**
 * An id as a user or client wrote it: 32 hex digits of either case, as Neon's hex decoding takes them, returned
 * in lower case, the one form the node uses (paths, remote keys, logs, JSON).
 */
export function parseTenantId(text: string): TenantId {
  if (!/^[0-9a-fA-F]{32}$/.test(text)) throw new InvalidArgumentError(`not a tenant id (32 hex chars): ${JSON.stringify(text)}`);
  return text.toLowerCase() as TenantId;
}

/** As `parseTenantId`. */
export function parseTimelineId(text: string): TimelineId {
  if (!/^[0-9a-fA-F]{32}$/.test(text)) throw new InvalidArgumentError(`not a timeline id (32 hex chars): ${JSON.stringify(text)}`);
  return text.toLowerCase() as TimelineId;
}

/** The map key and log field: `tenant/timeline`. */
export const ttid = (tenantId: TenantId, timelineId: TimelineId): string => `${tenantId}/${timelineId}`;
