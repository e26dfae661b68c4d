/**
 * `safekeeper propose --http-listen HOST:PORT`: GET /metrics (Prometheus text from the proposer's own
 * registry) on a fastify app, the HTTP library the node's API uses too. Other paths are 404 (fastify's
 * default). A failed render is a 500, logged once here. `close()` stops listening and drops open sockets.
 * Main thread.
 */
import type { AddressInfo } from 'node:net';
import { fastify } from 'fastify';
import type { Registry } from 'prom-client';
import { formatHostPort, type HostPort } from '../config/value_parsers.js';
import { InvalidArgumentError } from '../errors.js';
import type { Logger } from '../log.js';

export interface MetricsServer {
  /** The bound address (port 0 resolved). */
  readonly address: HostPort;
  close(): Promise<void>;
}

/** Listens on `listen`; rejects with an InvalidArgumentError naming the flag when it cannot. */
export async function startMetricsServer(listen: HostPort, registry: Registry, log: Logger): Promise<MetricsServer> {
  // Closing drops idle keep-alive sockets too, so a scraper's connection does not hold the exit.
  const app = fastify({ logger: false, forceCloseConnections: true });
  app.get('/metrics', async (_request, reply) => {
    try {
      return await reply.type(registry.contentType).send(await registry.metrics());
    } catch (error) {
      log.error({ err: error }, 'rendering metrics failed');
      return reply.code(500).type('text/plain').send('internal error\n');
    }
  });
  try {
    await app.listen({ host: listen.host, port: listen.port });
  } catch (error) {
    await app.close();
    const code = (error as NodeJS.ErrnoException).code ?? String(error);
    throw new InvalidArgumentError(`--http-listen: cannot listen on ${formatHostPort(listen)}: ${code}`);
  }
  const address: HostPort = { host: listen.host, port: (app.server.address() as AddressInfo).port };
  log.info({ http: formatHostPort(address) }, 'serving metrics');
  return { address, close: () => app.close() };
}
