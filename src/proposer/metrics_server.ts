/**
 * `safekeeper propose --http-listen HOST:PORT`: a minimal node:http server with one route, GET /metrics
 * (Prometheus text from the proposer's own registry). The node's fastify API (`src/http/`) brings routes,
 * JSON and error mapping the proposer does not need, so plain node:http keeps this small.
 * Bounds: at most METRICS_CONNECTIONS_MAX sockets (a scraper or two, plus a curl), and requests must finish
 * within METRICS_REQUEST_TIMEOUT_MS. Other paths are 404, other methods 405. A failed render is a 500,
 * logged once here. `close()` stops listening and drops open sockets. Main thread.
 */
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Registry } from 'prom-client';
import { formatHostPort, type HostPort } from '../config/schema.js';
import { InvalidArgumentError } from '../errors.js';
import type { Logger } from '../log.js';

/** Scrapers are few; more sockets than this are a leak or an attack, and are refused. */
const METRICS_CONNECTIONS_MAX = 16;
/** Rendering takes milliseconds; a request slower than this is a stuck client. */
const METRICS_REQUEST_TIMEOUT_MS = 10_000;

export interface MetricsServer {
  /** The bound address (port 0 resolved). */
  readonly address: HostPort;
  close(): Promise<void>;
}

/** Listens on `listen`; rejects with an InvalidArgumentError naming the flag when it cannot. */
export async function startMetricsServer(listen: HostPort, registry: Registry, log: Logger): Promise<MetricsServer> {
  const server = createServer({ requestTimeout: METRICS_REQUEST_TIMEOUT_MS }, (request, response) => {
    void handle(request, response, registry, log);
  });
  server.maxConnections = METRICS_CONNECTIONS_MAX;
  await new Promise<void>((resolve, reject) => {
    server.once('error', (error: NodeJS.ErrnoException) => reject(new InvalidArgumentError(`--http-listen: cannot listen on ${formatHostPort(listen)}: ${error.code ?? error.message}`)));
    server.listen({ host: listen.host, port: listen.port }, () => resolve());
  });
  const address: HostPort = { host: listen.host, port: (server.address() as AddressInfo).port };
  log.info({ http: formatHostPort(address) }, 'serving metrics');
  return {
    address,
    close: () => new Promise<void>((resolve) => {
      server.close(() => resolve());
      server.closeAllConnections();
    }),
  };
}

async function handle(request: IncomingMessage, response: ServerResponse, registry: Registry, log: Logger): Promise<void> {
  const path = (request.url ?? '/').split('?')[0];
  if (path !== '/metrics') return reply(response, 404, 'text/plain', `no route for ${request.method ?? 'GET'} ${path ?? '/'}\n`);
  if (request.method !== 'GET' && request.method !== 'HEAD') return reply(response, 405, 'text/plain', 'only GET\n');
  let body: string;
  try {
    body = await registry.metrics();
  } catch (error) {
    log.error({ err: error }, 'rendering metrics failed');
    return reply(response, 500, 'text/plain', 'internal error\n');
  }
  reply(response, 200, registry.contentType, body); // node:http sends no body for HEAD
}

function reply(response: ServerResponse, status: number, contentType: string, body: string): void {
  response.writeHead(status, { 'content-type': contentType, 'content-length': Buffer.byteLength(body) });
  response.end(body);
}
