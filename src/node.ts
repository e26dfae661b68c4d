/**
 * SafekeeperNode: one running safekeeper. It owns the data directory (lock file and node id), the root
 * CancelToken and Gate, and the two listeners (pg and HTTP); components are plugged in through
 * `NodeHooks` (timeline registry, worker pools, the pg connection handler, HTTP route groups).
 *
 * Start order: create the data dir, take the lock, settle the node id, `onStart` (load timelines), then
 * listen, so the WAL service only starts once everything is loaded. Stop order (structured concurrency):
 * cancel the root token, stop accepting, give connections `SOCKET_SHUTDOWN_GRACE_MS` to end on their own
 * (their handlers see the abort and send 57P01), destroy the rest, wait for the gate (every connection and
 * task holds it), `onStop`, and only then release the lock file. The lock file and the node id file are
 * in data_dir.ts. Main thread.
 */
import { existsSync, readFileSync } from 'node:fs';
import { createServer, type AddressInfo, type Server, type Socket } from 'node:net';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Config } from './config/schema.js';
import { formatHostPort, type HostPort } from './config/value_parsers.js';
import { acquireLock, checkDataDirIsOurs, releaseLock, settleNodeId } from './data_dir.js';
import { ConfigError, ShutdownError, TooManyConnectionsError } from './errors.js';
import { createHttpServer, registerRoutes, type HttpApp, type RouteGroup } from './http/server.js';
import { childLogger, log as rootLog, type Logger } from './log.js';
import { buildInfo, pgConnectionsTotal } from './metrics.js';
import { AssertionError } from './sync/assert.js';
import { CancelToken, sleep } from './sync/cancel.js';
import { Gate } from './sync/gate.js';
import { SLOW_WAIT_MS } from './limits.js';
import { makeDirectories } from './storage/layout.js';
import { CRC_NATIVE_NAME } from './wal/crc.js';
import { RECORD_CRC_NATIVE } from './wal/record_crc.js';

/** How long stop() lets connections finish on their own (send 57P01, flush) before destroying them. */
export const SOCKET_SHUTDOWN_GRACE_MS = 500;

export interface PgConnectionInfo {
  /** Unique per node run, for the `conn_id` log field. */
  readonly connId: number;
  readonly log: Logger;
}

export interface NodeHooks {
  /**
   * Serves one accepted pg socket. The connection holds the node's gate until the returned promise
   * settles and the socket has closed. When `signal` fires, it should send its ErrorResponse and end the
   * socket; stop() destroys sockets still open after SOCKET_SHUTDOWN_GRACE_MS.
   */
  readonly onPgConnection: (socket: Socket, signal: AbortSignal, info: PgConnectionInfo) => Promise<void> | void;
  /**
   * A socket over `max_connections`: reply 53300 and close it, bounding how long and how many such sockets
   * stay open (pg/server.ts `PgRefusals`), or max_connections bounds nothing. The default destroys it.
   */
  readonly onPgConnectionRefused?: (socket: Socket, error: TooManyConnectionsError) => void;
  /** After the lock and id, before listening: load timelines, start pools. A throw aborts start. */
  readonly onStart?: (node: SafekeeperNode) => Promise<void>;
  /** After connections and gate holders are gone, before the lock is released. Only if onStart succeeded. */
  readonly onStop?: (node: SafekeeperNode) => Promise<void>;
  readonly httpRoutes?: readonly RouteGroup[];
}

export class SafekeeperNode {
  /** The root of the cancellation tree; timelines take children of it. */
  readonly cancel = new CancelToken();
  readonly gate: Gate;
  readonly #sockets = new Set<Socket>();
  #nextConnId = 1;
  #pgServer: Server | null = null;
  #http: HttpApp | null = null;
  #started = false;
  #stopping: Promise<void> | null = null;

  private constructor(
    readonly config: Config,
    /** The node id: from the id file when one exists, else from config. */
    readonly id: bigint,
    readonly log: Logger,
    readonly version: string,
    private readonly hooks: NodeHooks,
  ) {
    this.gate = new Gate('node', SLOW_WAIT_MS, (holderNames) => log.warn({ holders: holderNames }, 'node shutdown waits for tasks'));
  }

  static async start(config: Config, hooks: NodeHooks, parentLog: Logger = rootLog): Promise<SafekeeperNode> {
    await makeDirectories(config.dataDir).catch((error: unknown) => {
      throw new ConfigError('data_dir', config.sources.data_dir, `cannot create ${config.dataDir}: ${error instanceof Error ? error.message : String(error)}`);
    });
    await checkDataDirIsOurs(config);
    await acquireLock(config.dataDir, parentLog);
    let node: SafekeeperNode | null = null;
    try {
      const id = await settleNodeId(config, parentLog);
      const log = childLogger(parentLog, { node_id: id });
      if (config.noSync) log.warn({ no_sync: true }, '!!! no_sync is on: fsync is skipped and acknowledged WAL can be lost; tests and benchmarks only !!!');
      const version = readPackageVersion();
      buildInfo.set({ version }, 1);
      node = new SafekeeperNode(config, id, log, version, hooks);
      await node.#start();
      return node;
    } catch (error) {
      if (node !== null) await node.#closeListeners();
      await releaseLock(config.dataDir);
      throw error;
    }
  }

  /** The bound pg address (the real port when 0 was asked for). */
  get pgAddress(): HostPort {
    return boundAddress(this.#pgServer, this.config.listenPg);
  }

  get httpAddress(): HostPort {
    return boundAddress(this.#http?.server ?? null, this.config.listenHttp);
  }

  /** The line `safekeeper run` prints on stdout once it serves: `listening pg=HOST:PORT http=HOST:PORT`. */
  readyLine(): string {
    return `listening pg=${formatHostPort(this.pgAddress)} http=${formatHostPort(this.httpAddress)}`;
  }

  get pgConnectionCount(): number {
    return this.#sockets.size;
  }

  async #start(): Promise<void> {
    await this.hooks.onStart?.(this);
    this.#started = true;
    const http = createHttpServer({
      log: this.log,
      status: () => ({ id: this.id, version: this.version, listen_pg: formatHostPort(this.pgAddress), listen_http: formatHostPort(this.httpAddress) }),
    });
    for (const group of this.hooks.httpRoutes ?? []) registerRoutes(http, group);
    this.#http = http;
    const pgServer = createServer({ noDelay: true }, (socket) => this.#onPgConnection(socket));
    this.#pgServer = pgServer;
    await listen(pgServer, this.config.listenPg, this.config.sources.listen_pg, 'listen_pg');
    try {
      await http.listen({ host: this.config.listenHttp.host, port: this.config.listenHttp.port });
    } catch (error) {
      throw listenError(error, this.config.listenHttp, this.config.sources.listen_http, 'listen_http');
    }
    const crc32c = CRC_NATIVE_NAME ?? 'portable (no native package loaded: WAL verification is several times slower)';
    const walRecordCrc = RECORD_CRC_NATIVE ? 'native batch walk (native/wal_crc)' : 'one CRC call per record (native/wal_crc not built or not usable here)';
    this.log.info({ listen_pg: formatHostPort(this.pgAddress), listen_http: formatHostPort(this.httpAddress), data_dir: this.config.dataDir, version: this.version, crc32c, wal_record_crc: walRecordCrc }, 'safekeeper started');
  }

  #onPgConnection(socket: Socket): void {
    if (this.cancel.cancelled) {
      socket.destroy();
      return;
    }
    socket.on('error', (error) => this.log.debug({ err: error }, 'pg socket error'));
    if (this.#sockets.size >= this.config.maxConnections) {
      const error = new TooManyConnectionsError(`too many connections (max_connections = ${this.config.maxConnections})`);
      if (this.hooks.onPgConnectionRefused === undefined) socket.destroy();
      else this.hooks.onPgConnectionRefused(socket, error);
      return;
    }
    const connId = this.#nextConnId++;
    const leave = this.gate.enter(`pg connection ${connId}`);
    const token = this.cancel.child();
    const log = childLogger(this.log, { conn_id: connId });
    this.#sockets.add(socket);
    pgConnectionsTotal.inc();
    const closed = new Promise<void>((resolve) => socket.once('close', () => resolve()));
    const served = (async () => this.hooks.onPgConnection(socket, token.signal, { connId, log }))();
    void served
      .catch((error: unknown) => {
        if (error instanceof AssertionError) setImmediate(() => { throw error; });
        log.error({ err: error }, 'pg connection handler failed');
        socket.destroy();
      })
      .then(() => closed)
      .finally(() => {
        this.#sockets.delete(socket);
        token.release();
        leave();
      });
  }

  /** Graceful shutdown; idempotent. Resolves once the lock file is released. */
  stop(): Promise<void> {
    this.#stopping ??= this.#stop();
    return this.#stopping;
  }

  async #stop(): Promise<void> {
    this.log.info({ connections: this.#sockets.size }, 'safekeeper stopping');
    this.cancel.cancel(new ShutdownError());
    const listenersClosed = this.#closeListeners();
    const drained = this.gate.close();
    const graceOver = sleep(SOCKET_SHUTDOWN_GRACE_MS, new CancelToken().signal, true).then(() => 'grace over' as const);
    // The HTTP server's close waits for its connections, and one with a request in flight stays open after the
    // response (keep-alive, as a Prometheus scraper's) until the keep-alive timeout, past the shutdown timeout.
    void graceOver.then(() => this.#http?.server.closeAllConnections());
    if ((await Promise.race([drained.then(() => 'drained' as const), graceOver])) === 'grace over') {
      for (const socket of this.#sockets) socket.destroy();
    }
    await drained;
    await listenersClosed;
    if (this.#started) await this.hooks.onStop?.(this);
    await releaseLock(this.config.dataDir);
    this.log.info('safekeeper stopped');
  }

  async #closeListeners(): Promise<void> {
    const pgServer = this.#pgServer;
    const pgClosed = pgServer === null || !pgServer.listening ? Promise.resolve() : new Promise<void>((resolve) => pgServer.close(() => resolve()));
    await Promise.all([pgClosed, this.#http?.close()]);
  }
}

function boundAddress(server: Server | null, configured: HostPort): HostPort {
  const address = server?.address();
  if (address === null || address === undefined || typeof address === 'string') return configured;
  return { host: configured.host, port: (address as AddressInfo).port };
}

async function listen(server: Server, address: HostPort, source: string, key: string): Promise<void> {
  await new Promise<void>((resolve, reject) => {
    server.once('error', (error) => reject(listenError(error, address, source, key)));
    server.listen({ host: address.host, port: address.port }, () => resolve());
  });
}

function listenError(error: unknown, address: HostPort, source: string, key: string): unknown {
  const code = (error as NodeJS.ErrnoException).code;
  if (code === undefined) return error;
  return new ConfigError(key, source, `cannot listen on ${formatHostPort(address)}: ${code}`);
}

/** The version in package.json, found by walking up from this file (src/ under tsx, dist/src/ when built). */
export function readPackageVersion(): string {
  let directory = dirname(fileURLToPath(import.meta.url));
  for (;;) {
    const candidate = join(directory, 'package.json');
    if (existsSync(candidate)) {
      const manifest = JSON.parse(readFileSync(candidate, 'utf8')) as { name?: string; version?: string };
      if (manifest.name === 'safekeeper-ts' && typeof manifest.version === 'string') return manifest.version;
    }
    const parent = dirname(directory);
    if (parent === directory) return '0.0.0-unknown';
    directory = parent;
  }
}
