/**
 * The JSON body of the control file (control_file.ts has the framing around it): the zod schema that
 * checks a body read from disk, and the two conversions between `TimelinePersistentState` and that JSON.
 *
 * Design: names are snake_case as in Neon's JSON dump, so an operator reading the file sees familiar
 * fields; u64s are decimal strings and LSNs "X/Y" strings, because JSON numbers lose precision above
 * 2^53; creation_ts is an ISO 8601 string. Objects are strict, so an unknown field is a schema error, not
 * silently dropped state. Field order in `toControlFileJson` is fixed, so equal states encode to equal
 * bytes. Pure; any thread.
 */
import { z } from 'zod';
import type { EvictionState, SafekeeperMember, TenantId, TimelineId, TimelinePersistentState } from '../acceptor/state.js';
import { assert, unreachable } from '../sync/assert.js';
import { formatLsn, parseLsn } from '../wal/lsn.js';

const U64_MAX = 0xffff_ffff_ffff_ffffn;
const u64 = z
  .string()
  .regex(/^(0|[1-9][0-9]{0,19})$/, 'a u64 as a decimal string')
  .refine((text) => BigInt(text) <= U64_MAX, 'a u64 as a decimal string')
  .transform((text) => BigInt(text));
const lsn = z
  .string()
  .regex(/^[0-9A-Fa-f]{1,8}\/[0-9A-Fa-f]{1,8}$/, 'an LSN as "X/Y"')
  .transform((text) => parseLsn(text));
const id32 = z.string().regex(/^[0-9a-f]{32}$/, '32 lower-case hex chars');
const member = z.strictObject({ id: u64, host: z.string(), pg_port: z.number().int().min(0).max(65_535) });
const timestamp = z.string().refine((text) => {
  const ms = Date.parse(text);
  return Number.isInteger(ms) && new Date(ms).toISOString() === text;
}, 'an ISO 8601 UTC timestamp with milliseconds');

/** What a control-file body must look like; parsing also converts u64s to bigint and LSNs to `Lsn`. */
export const controlFileJsonSchema = z.strictObject({
  tenant_id: id32,
  timeline_id: id32,
  mconf: z.strictObject({
    generation: z.number().int().min(0).max(0xffff_ffff),
    members: z.array(member),
    new_members: z.array(member).nullable(),
  }),
  acceptor_state: z.strictObject({
    term: u64,
    term_history: z.array(z.strictObject({ term: u64, lsn })),
  }),
  server: z.strictObject({
    pg_version: z.number().int().min(0).max(0xffff_ffff),
    system_id: u64,
    wal_seg_size: z.number().int().min(0).max(0xffff_ffff),
  }),
  timeline_start_lsn: lsn,
  local_start_lsn: lsn,
  commit_lsn: lsn,
  backup_lsn: lsn,
  peer_horizon_lsn: lsn,
  remote_consistent_lsn: lsn,
  partial_backup: z.strictObject({
    segments: z.array(
      z.strictObject({
        status: z.enum(['InProgress', 'Uploaded', 'Deleting']),
        name: z.string().min(1),
        commit_lsn: lsn,
        flush_lsn: lsn,
        term: u64,
      }),
    ),
  }),
  eviction_state: z.union([z.literal('Present'), z.strictObject({ Offloaded: lsn })]),
  creation_ts: timestamp,
});
export type ControlFileJson = z.output<typeof controlFileJsonSchema>;

const memberToJson = (m: SafekeeperMember): object => ({ id: m.id.toString(), host: m.host, pg_port: m.pgPort });
const memberFromJson = (m: ControlFileJson['mconf']['members'][number]): SafekeeperMember => ({ id: m.id, host: m.host, pgPort: m.pg_port });

function evictionToJson(state: EvictionState): 'Present' | { Offloaded: string } {
  switch (state.kind) {
    case 'Present':
      return 'Present';
    case 'Offloaded':
      return { Offloaded: formatLsn(state.flushLsn) };
    default:
      return unreachable(state, 'unknown eviction state');
  }
}

/** The JSON body of `state`. Field order is fixed, so equal states encode to equal bytes. */
export function toControlFileJson(state: TimelinePersistentState): object {
  assert(Number.isInteger(state.creationTimeMs), 'creation time is whole milliseconds');
  return {
    tenant_id: state.tenantId,
    timeline_id: state.timelineId,
    mconf: {
      generation: state.mconf.generation,
      members: state.mconf.members.map(memberToJson),
      new_members: state.mconf.newMembers === null ? null : state.mconf.newMembers.map(memberToJson),
    },
    acceptor_state: {
      term: state.acceptorState.term.toString(),
      term_history: state.acceptorState.termHistory.map((entry) => ({ term: entry.term.toString(), lsn: formatLsn(entry.lsn) })),
    },
    server: { pg_version: state.server.pgVersion, system_id: state.server.systemId.toString(), wal_seg_size: state.server.walSegSizeBytes },
    timeline_start_lsn: formatLsn(state.timelineStartLsn),
    local_start_lsn: formatLsn(state.localStartLsn),
    commit_lsn: formatLsn(state.commitLsn),
    backup_lsn: formatLsn(state.backupLsn),
    peer_horizon_lsn: formatLsn(state.peerHorizonLsn),
    remote_consistent_lsn: formatLsn(state.remoteConsistentLsn),
    partial_backup: {
      segments: state.partialBackup.segments.map((segment) => ({
        status: segment.status,
        name: segment.name,
        commit_lsn: formatLsn(segment.commitLsn),
        flush_lsn: formatLsn(segment.flushLsn),
        term: segment.term.toString(),
      })),
    },
    eviction_state: evictionToJson(state.evictionState),
    creation_ts: new Date(state.creationTimeMs).toISOString(),
  };
}

/** The state a schema-checked body holds; the caller still checks its invariants (`controlFileProblem`). */
export function fromControlFileJson(json: ControlFileJson): TimelinePersistentState {
  return {
    tenantId: json.tenant_id as TenantId,
    timelineId: json.timeline_id as TimelineId,
    mconf: {
      generation: json.mconf.generation,
      members: json.mconf.members.map(memberFromJson),
      newMembers: json.mconf.new_members === null ? null : json.mconf.new_members.map(memberFromJson),
    },
    acceptorState: { term: json.acceptor_state.term, termHistory: json.acceptor_state.term_history.map((e) => ({ term: e.term, lsn: e.lsn })) },
    server: { pgVersion: json.server.pg_version, systemId: json.server.system_id, walSegSizeBytes: json.server.wal_seg_size },
    timelineStartLsn: json.timeline_start_lsn,
    localStartLsn: json.local_start_lsn,
    commitLsn: json.commit_lsn,
    backupLsn: json.backup_lsn,
    peerHorizonLsn: json.peer_horizon_lsn,
    remoteConsistentLsn: json.remote_consistent_lsn,
    partialBackup: {
      segments: json.partial_backup.segments.map((s) => ({ status: s.status, name: s.name, commitLsn: s.commit_lsn, flushLsn: s.flush_lsn, term: s.term })),
    },
    evictionState: json.eviction_state === 'Present' ? { kind: 'Present' } : { kind: 'Offloaded', flushLsn: json.eviction_state.Offloaded },
    creationTimeMs: Date.parse(json.creation_ts),
  };
}
