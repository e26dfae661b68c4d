/**
 * Wires the node's components: the writer pool, the coordinator thread (timeline managers, remote storage),
 * the timeline registry, the WAL service on the pg port and the HTTP routes. `createNodeHooks` returns the
 * hooks `SafekeeperNode` calls: `onStart` starts the coordinator and loads the timelines (each is handed to
 * its manager as it opens), before the node listens; `onStop` shuts every timeline down (which stops its
 * manager), then the coordinator, then the pool, after all connections are gone. Main thread.
 */
import type { Socket } from 'node:net';
import type { Config } from './config/schema.js';
import type { TooManyConnectionsError } from './errors.js';
import { coordinatorRoutes } from './http/coordinator_routes.js';
import { timelineRoutes } from './http/timeline_routes.js';
import { createWriterPool, type WriterPool } from './ingest/writer_pool.js';
import type { PrepareResult, WriteResult } from './ingest/writer_protocol.js';
import type { Logger } from './log.js';
import { commitLsn, flushLsn, fsyncSeconds, observeMs, onScrape, pgQueriesReceivedTotal, walRingBytes, walSegmentsPreparedTotal, writeWalBytesTotal, writeWalSeconds } from './metrics.js';
import type { NodeHooks, PgConnectionInfo, SafekeeperNode } from './node.js';
import { PgConnection } from './pg/connection.js';
import { PgRefusals } from './pg/server.js';
import { CoordinatorClient } from './timeline/coordinator_client.js';
import { TimelineRegistry } from './timeline/registry.js';
import { assert } from './sync/assert.js';
import { createWalService } from './wal_service.js';

export function createNodeHooks(config: Config): NodeHooks {
  let pool: WriterPool | null = null;
  let registry: TimelineRegistry | null = null;
  let coordinator: CoordinatorClient | null = null;
  let service: ReturnType<typeof createWalService> | null = null;
  let unhookScrape: (() => void) | null = null;
  // Sockets over max_connections: answered 53300 and closed within a bounded time and number (pg/server.ts).
  const refusals = new PgRefusals();
  return {
    onStart: async (node) => {
      pool = createWriterPool(config.walWriterThreads);
      const background = startCoordinator(config, node);
      coordinator = background;
      if (config.testingFailpoints) node.log.warn({ testing_failpoints: true }, 'testing_failpoints is on: /v1/failpoints can pause, fail or kill background tasks');
      registry = await loadTimelines(config, node, pool, background);
      service = createWalService({
        registry,
        residency: background,
        remoteWal: background,
        log: node.log,
        defaultPgVersion: config.defaultPgVersion,
        countQuery: (kind) => pgQueriesReceivedTotal.inc({ query: kind }),
      });
      unhookScrape = hookLsnGauges(registry);
      node.log.info({ timelines: registry.list().length }, 'timelines loaded');
    },
    onStop: async () => {
      unhookScrape?.();
      await registry?.shutdown();
      await coordinator?.stop();
      await pool?.close();
    },
    onPgConnection: (socket: Socket, signal: AbortSignal, info: PgConnectionInfo) => {
      assert(service !== null, 'the WAL service exists once the node listens');
      const conn = new PgConnection(
        socket,
        { frameBytesMax: config.maxMessageBytes, serverParameters: service.serverParameters, signal, log: info.log },
        service.handler,
      );
      return conn.closed;
    },
    onPgConnectionRefused: (socket: Socket, error: TooManyConnectionsError) => refusals.refuse(socket, error),
    httpRoutes: [
      (app) => {
        // The node registers route groups after onStart, so the registry is loaded by now.
        assert(registry !== null, 'registry loaded before HTTP routes are registered');
        timelineRoutes(registry, { nodeId: config.nodeId })(app);
        assert(coordinator !== null, 'coordinator started before HTTP routes are registered');
        coordinatorRoutes(registry, coordinator, { testing: config.testingFailpoints })(app);
      },
    ],
  };
}

/** Starts the coordinator thread (timeline managers, remote storage) with the config it needs. */
function startCoordinator(config: Config, node: SafekeeperNode): CoordinatorClient {
  return CoordinatorClient.start(
    {
      nodeId: node.id,
      dataDir: config.dataDir,
      noSync: config.noSync,
      remoteStorage: config.remoteStorage,
      remoteRequestTimeoutMs: config.remoteRequestTimeoutMs,
      controlFileSaveIntervalMs: config.controlFileSaveIntervalMs,
      partialBackupTimeoutMs: config.partialBackupTimeoutMs,
      evictionMinResidentMs: config.evictionMinResidentMs,
      enableOffload: config.enableOffload,
      deleteOffloadedWal: config.deleteOffloadedWal,
      walBackupParallelJobs: config.walBackupParallelJobs,
      walRecycleSegments: config.walRecycleSegments,
      failpointsEnabled: config.testingFailpoints,
    },
    node.log,
  );
}

/** Loads the timelines; each is handed to its manager on the coordinator as it opens. A failure stops the coordinator. */
function loadTimelines(config: Config, node: SafekeeperNode, pool: WriterPool, background: CoordinatorClient): Promise<TimelineRegistry> {
  return TimelineRegistry.load({
    dataDir: config.dataDir,
    nodeId: node.id,
    noSync: config.noSync,
    ringSizeBytes: config.ringSizeBytes,
    ringReleaseDelayMs: config.ringReleaseDelayMs,
    pool,
    cancel: node.cancel,
    log: node.log,
    onBatch,
    onPrepared,
    onRingBytes: (deltaBytes) => walRingBytes.inc(deltaBytes),
    onOpen: (timeline) => background.register(timeline),
    deleteRemote: (tenantId, timelineId) => background.deleteRemote(tenantId, timelineId),
  }).catch(async (error: unknown) => {
    await background.stop(); // onStop does not run when onStart fails
    throw error;
  });
}

/** Sets the per-timeline LSN gauges from the registry at each scrape; returns the unhook. */
function hookLsnGauges(registry: TimelineRegistry): () => void {
  return onScrape(async () => {
    const timelines = registry.list();
    flushLsn.set(timelines.map((t) => ({ tenantId: t.tenantId, timelineId: t.timelineId, value: Number(t.state.get('flushLsn')) })));
    commitLsn.set(timelines.map((t) => ({ tenantId: t.tenantId, timelineId: t.timelineId, value: Number(t.state.get('commitLsn')) })));
  });
}

/** A write task's result, counted in the WAL write metrics. */
function onBatch(bytes: number, result: WriteResult): void {
  if (!result.ok) return;
  writeWalBytesTotal.inc(bytes);
  observeMs(writeWalSeconds, result.timings.writeMs);
  observeMs(fsyncSeconds, result.timings.fsyncMs);
}

/** A segment preparation's result, counted by where the segment came from. */
function onPrepared(result: PrepareResult): void {
  if (!result.ok) walSegmentsPreparedTotal.inc({ source: 'failed' });
  else if (result.prepared !== 'existing') walSegmentsPreparedTotal.inc({ source: result.prepared });
}
