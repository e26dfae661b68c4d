/**
 * HTTP routes for timelines (reference §13): list, create, status, delete (one, or a tenant's), and the
 * acceptor-state changes a storage controller makes: term_bump (fences proposers of older terms), membership
 * (switches to a higher configuration generation) and exclude (drops the local copy once this node left the
 * configuration). Bodies are validated with zod and errors are `{"msg": ...}` with the SafekeeperError's HTTP
 * status (400 bad input, 403 a configuration that does or does not name this node where the route needs the
 * other, 404 missing, 409 conflict). LSNs are "X/Y" strings, ids 32-hex strings, terms and system ids exact
 * JSON numbers.
 * Main thread.
 */
import { z } from 'zod';
import type { Acceptor } from '../acceptor/acceptor.js';
import { MEMBERS_PER_SET_MAX, memberHostProblem, parseTenantId, parseTimelineId, type MembershipConfiguration, type TenantId, type TimelineId } from '../acceptor/state.js';
import { AuthError, ConflictError, InvalidArgumentError } from '../errors.js';
import { walReceiversJson } from '../ingest/wal_receiver_set.js';
import type { Timeline } from '../timeline/timeline.js';
import type { TimelineRegistry } from '../timeline/registry.js';
import { formatLsn, parseLsn, SEGMENT_SIZE_BYTES_DEFAULT } from '../wal/lsn.js';
import type { RouteGroup } from './server.js';
import { walSendersJson } from '../send/reader_set.js';

const lsnText = z.string().transform((text, context) => {
  try {
    return parseLsn(text);
  } catch {
    context.addIssue({ code: 'custom', message: `not an LSN: ${JSON.stringify(text)}` });
    return z.NEVER;
  }
});
// What the body may hold is what the control file can (storage/control_file_json.ts): a value the control
// file refuses would fail its encoder's checks, which are assertions.
const U64_MAX = 0xffff_ffff_ffff_ffffn;
const u64 = z
  .union([z.number().int().nonnegative(), z.bigint().nonnegative(), z.string().regex(/^\d{1,20}$/, 'a u64 as a decimal string')])
  .transform((value) => BigInt(value))
  .refine((value) => value <= U64_MAX, 'must fit in 64 bits');
const member = z.object({ id: u64, host: z.string().superRefine((host, context) => void (memberHostProblem(host) !== null && context.addIssue({ code: 'custom', message: `host ${memberHostProblem(host)}` }))), pg_port: z.number().int().min(0).max(65535) });
const memberSet = z
  .array(member)
  .max(MEMBERS_PER_SET_MAX)
  .refine((members) => new Set(members.map((m) => m.id)).size === members.length, 'duplicate member id');
const mconfSchema = z.object({
  generation: z.number().int().nonnegative().max(0xffff_ffff),
  members: memberSet,
  new_members: memberSet.nullable().optional(),
});
const createBody = z.strictObject({
  tenant_id: z.string(),
  timeline_id: z.string(),
  mconf: mconfSchema.optional(),
  pg_version: z.number().int().positive().max(0xffff_ffff),
  system_id: u64.optional(),
  wal_seg_size: z.number().int().positive().max(0xffff_ffff).optional(),
  start_lsn: lsnText,
  commit_lsn: lsnText.optional(),
});
const deleteQuery = z.object({ only_local: z.enum(['true', 'false']).optional() });
/** Neon's TimelineTermBumpRequest; a missing body is `{}` (a bump by one). */
const termBumpBody = z.strictObject({ term: u64.nullable().optional() });
/** Neon's TimelineMembershipSwitchRequest. */
const membershipBody = z.strictObject({ mconf: mconfSchema });

/** Validates a request body or query string (`what` says which, for the message). */
function parseBody<T>(schema: z.ZodType<T>, body: unknown, what: 'request body' | 'query' = 'request body'): T {
  const result = schema.safeParse(body);
  if (!result.success) {
    const issue = result.error.issues[0];
    throw new InvalidArgumentError(`bad ${what}: ${issue?.path.join('.') || '(root)'}: ${issue?.message ?? 'invalid'}`);
  }
  return result.data;
}

function ids(params: unknown): { tenantId: TenantId; timelineId: TimelineId } {
  const { tenant_id: tenant, timeline_id: timeline } = params as { tenant_id: string; timeline_id: string };
  return { tenantId: parseTenantId(tenant), timelineId: parseTimelineId(timeline) };
}

function toMembership(body: z.output<typeof mconfSchema>): MembershipConfiguration {
  return {
    generation: body.generation,
    members: body.members.map((m) => ({ id: m.id, host: m.host, pgPort: m.pg_port })),
    newMembers: body.new_members?.map((m) => ({ id: m.id, host: m.host, pgPort: m.pg_port })) ?? null,
  };
}

const isMember = (mconf: MembershipConfiguration, nodeId: bigint): boolean => [...mconf.members, ...(mconf.newMembers ?? [])].some((member) => member.id === nodeId);

const mconfJson = (mconf: MembershipConfiguration): object => ({
  generation: mconf.generation,
  members: mconf.members.map((m) => ({ id: m.id, host: m.host, pg_port: m.pgPort })),
  new_members: mconf.newMembers?.map((m) => ({ id: m.id, host: m.host, pg_port: m.pgPort })) ?? null,
});

/** The status document of GET /v1/tenant/{t}/timeline/{l}; in-memory LSNs, like Neon. */
export function timelineStatusJson(timeline: Timeline): object {
  const base = { tenant_id: timeline.tenantId, timeline_id: timeline.timelineId, status: timeline.status };
  const acceptor: Acceptor | null = timeline.acceptor;
  if (acceptor === null) return { ...base, broken_reason: timeline.brokenReason };
  const state = acceptor.state;
  const proposers = timeline.state.get('proposerCount');
  return {
    ...base,
    mconf: mconfJson(state.mconf),
    acceptor_state: {
      term: acceptor.term,
      epoch: acceptor.lastLogTerm,
      term_history: acceptor.termHistory.map((entry) => ({ term: entry.term, lsn: formatLsn(entry.lsn) })),
    },
    pg_info: { pg_version: state.server.pgVersion, system_id: state.server.systemId, wal_seg_size: state.server.walSegSizeBytes },
    flush_lsn: formatLsn(acceptor.flushLsn),
    write_lsn: formatLsn(acceptor.writeLsn),
    timeline_start_lsn: formatLsn(state.timelineStartLsn),
    local_start_lsn: formatLsn(state.localStartLsn),
    commit_lsn: formatLsn(acceptor.commitLsn),
    backup_lsn: formatLsn(acceptor.backupLsn),
    peer_horizon_lsn: formatLsn(acceptor.peerHorizonLsn),
    remote_consistent_lsn: formatLsn(acceptor.remoteConsistentLsn),
    peers: [],
    walsenders: walSendersJson(timeline),
    walreceivers: walReceiversJson(timeline),
    num_computes: Number(proposers),
  };
}

export function timelineRoutes(registry: TimelineRegistry, options: { nodeId: bigint }): RouteGroup {
  return (app) => {
    app.get('/v1/tenant/timeline', async () =>
      registry.list().map((timeline) => ({ tenant_id: timeline.tenantId, timeline_id: timeline.timelineId })),
    );

    app.post('/v1/tenant/timeline', async (request) => {
      const body = parseBody(createBody, request.body);
      const mconf = body.mconf === undefined ? undefined : toMembership(body.mconf);
      await registry.create({
        tenantId: parseTenantId(body.tenant_id),
        timelineId: parseTimelineId(body.timeline_id),
        server: { pgVersion: body.pg_version, systemId: body.system_id ?? 0n, walSegSizeBytes: body.wal_seg_size ?? SEGMENT_SIZE_BYTES_DEFAULT },
        startLsn: body.start_lsn,
        commitLsn: body.commit_lsn ?? body.start_lsn,
        ...(mconf !== undefined ? { mconf } : {}),
      });
      return null;
    });

    app.get('/v1/tenant/:tenant_id/timeline/:timeline_id', async (request) => {
      const { tenantId, timelineId } = ids(request.params);
      return timelineStatusJson(registry.require(tenantId, timelineId));
    });

    app.delete('/v1/tenant/:tenant_id/timeline/:timeline_id', async (request) => {
      const { tenantId, timelineId } = ids(request.params);
      const query = parseBody(deleteQuery, request.query, 'query');
      const { dirExisted } = await registry.delete(tenantId, timelineId, { onlyLocal: query.only_local === 'true' });
      return { dir_existed: dirExisted };
    });

    // Every timeline of the tenant, as Neon: `{"<timeline_id>": {dir_existed}}`.
    app.delete('/v1/tenant/:tenant_id', async (request) => {
      const tenantId = parseTenantId((request.params as { tenant_id: string }).tenant_id);
      const query = parseBody(deleteQuery, request.query, 'query');
      const timelines = registry.list().filter((timeline) => timeline.tenantId === tenantId);
      const deleted = await Promise.all(
        timelines.map(async (timeline) => [timeline.timelineId, await registry.delete(tenantId, timeline.timelineId, { onlyLocal: query.only_local === 'true' })] as const),
      );
      return Object.fromEntries(deleted.map(([timelineId, result]) => [timelineId, { dir_existed: result.dirExisted }]));
    });

    // Under the acceptor lock, as a proposer message is: a proposer of an older term is answered with the new
    // term from its next message on, and stops. Also on an offloaded timeline (its control file is local).
    app.post('/v1/tenant/:tenant_id/timeline/:timeline_id/term_bump', async (request) => {
      const { tenantId, timelineId } = ids(request.params);
      const body = parseBody(termBumpBody, request.body ?? {});
      const timeline = registry.require(tenantId, timelineId);
      const acceptor = timeline.activeAcceptor();
      const bumped = await timeline.runTask('term_bump', (signal) => timeline.acceptorLock.run(signal, () => acceptor.termBump(body.term ?? null, signal)));
      return { previous_term: bumped.previousTerm, current_term: bumped.currentTerm };
    });

    app.put('/v1/tenant/:tenant_id/timeline/:timeline_id/membership', async (request) => {
      const { tenantId, timelineId } = ids(request.params);
      const mconf = toMembership(parseBody(membershipBody, request.body).mconf);
      // A configuration without us is the exclude route's business (it deletes the timeline), as in Neon.
      if (!isMember(mconf, options.nodeId)) {
        throw new AuthError(`refused to switch into generation ${mconf.generation}: node ${options.nodeId} is not a member of it`);
      }
      const timeline = registry.require(tenantId, timelineId);
      const acceptor = timeline.activeAcceptor();
      const switched = await timeline.runTask('membership', (signal) => timeline.acceptorLock.run(signal, () => acceptor.membershipSwitch(mconf, signal)));
      if (switched.current.generation !== mconf.generation) {
        throw new ConflictError(`request to switch into generation ${mconf.generation} ignored, current generation ${switched.current.generation}`);
      }
      return { previous_conf: mconfJson(switched.previous), current_conf: mconfJson(switched.current), last_log_term: acceptor.lastLogTerm, flush_lsn: formatLsn(acceptor.flushLsn) };
    });

    // This node left the timeline's configuration: its local copy goes (the remote objects belong to the
    // members). Refused when the configuration names us (403) or is older than ours (409). The generation is
    // checked under the acceptor lock and the delete begins inside it (a delete unpublishes the timeline before
    // its first await), so a membership switch to a newer generation cannot slip in between.
    app.put('/v1/tenant/:tenant_id/timeline/:timeline_id/exclude', async (request) => {
      const { tenantId, timelineId } = ids(request.params);
      const mconf = toMembership(parseBody(membershipBody, request.body).mconf);
      if (isMember(mconf, options.nodeId)) {
        throw new AuthError(`refused to switch into generation ${mconf.generation}: node ${options.nodeId} is a member of it (use the membership route)`);
      }
      const timeline = registry.get(tenantId, timelineId);
      const acceptor = timeline?.acceptor ?? null;
      let deleting: { result: Promise<{ dirExisted: boolean }> };
      if (timeline === undefined || acceptor === null) {
        deleting = { result: registry.delete(tenantId, timelineId, { onlyLocal: true }) }; // missing or broken: nothing to compare
      } else {
        deleting = await timeline.runTask('exclude', (signal) =>
          timeline.acceptorLock.run(signal, async () => {
            const current = acceptor.mconf.generation;
            if (current > mconf.generation) throw new ConflictError(`refused to switch into excluding generation ${mconf.generation}: current generation ${current}`);
            // Not awaited here: the delete waits for this task to leave the timeline's gate.
            return { result: registry.delete(tenantId, timelineId, { onlyLocal: true }) };
          }),
        );
      }
      return { dir_existed: (await deleting.result).dirExisted };
    });
  };
}
