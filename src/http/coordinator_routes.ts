/**
 * HTTP routes served by the coordinator (background work):
 * - POST /v1/tenant/{t}/timeline/{l}/checkpoint: save the control file now, run a manager pass (backup,
 *   removal, partial backup decisions) and wait for the WAL removal it starts. `null`.
 * Testing only (`testing_failpoints = true`; the routes do not exist otherwise):
 * - PUT /v1/failpoints `[{"name": ..., "actions": "off|pause|error|exit|sleep(N)"}]` (Neon's body shape);
 * - GET /v1/failpoints → `[{name, action, hits}]`;
 * - GET /v1/tenant/{t}/timeline/{l}/remote_wal?start_lsn=X/Y&length=N → the bytes the on-demand download
 *   (`readRemoteWal`) returns, as application/octet-stream.
 * Main thread.
 */
import { z } from 'zod';
import { parseTenantId, parseTimelineId } from '../acceptor/state.js';
import { InvalidArgumentError } from '../errors.js';
import type { CoordinatorClient } from '../timeline/coordinator_client.js';
import type { TimelineRegistry } from '../timeline/registry.js';
import { parseLsn } from '../wal/lsn.js';
import type { RouteGroup } from './server.js';

const failpointsBody = z.array(z.strictObject({ name: z.string().min(1).max(100), actions: z.string().min(1).max(100) })).max(100);
const remoteWalQuery = z.object({ start_lsn: z.string(), length: z.string().regex(/^\d{1,9}$/) });

function parse<T>(schema: z.ZodType<T>, value: unknown, what: string): T {
  const result = schema.safeParse(value);
  if (!result.success) throw new InvalidArgumentError(`bad ${what}: ${result.error.issues[0]?.message ?? 'invalid'}`);
  return result.data;
}

function timelineOf(registry: TimelineRegistry, params: unknown) {
  const { tenant_id: tenant, timeline_id: timeline } = params as { tenant_id: string; timeline_id: string };
  return registry.require(parseTenantId(tenant), parseTimelineId(timeline));
}

export function coordinatorRoutes(registry: TimelineRegistry, coordinator: CoordinatorClient, options: { testing: boolean }): RouteGroup {
  return (app) => {
    app.post('/v1/tenant/:tenant_id/timeline/:timeline_id/checkpoint', async (request) => {
      await coordinator.checkpoint(timelineOf(registry, request.params));
      return null;
    });
    if (!options.testing) return;

    app.put('/v1/failpoints', async (request) => {
      for (const { name, actions } of parse(failpointsBody, request.body, 'failpoints body')) await coordinator.setFailpoint(name, actions);
      return null;
    });
    app.get('/v1/failpoints', async () => coordinator.listFailpoints());
    app.get('/v1/tenant/:tenant_id/timeline/:timeline_id/remote_wal', async (request, reply) => {
      const timeline = timelineOf(registry, request.params);
      const query = parse(remoteWalQuery, request.query, 'query');
      const bytes = await coordinator.readRemoteWal(timeline.ttid, parseLsn(query.start_lsn), Number(query.length));
      return reply.type('application/octet-stream').send(Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength));
    });
  };
}
