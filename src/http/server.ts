/**
 * The HTTP management API (fastify 5): Neon's routes plus GET /metrics. This file owns the server and
 * its cross-cutting rules; route groups live in their own files (`timeline_routes.ts`, ...) and are
 * added with `registerRoutes` before the server listens.
 *
 * Rules every route gets from here:
 * - errors are `{"msg": "..."}` with the SafekeeperError's `httpStatus`; fastify's own client errors keep
 *   their status (400 bad JSON, 413 body over `HTTP_BODY_BYTES_MAX`, 415, and 400 or 414 for a URL the router
 *   refuses); unknown paths are 404, and a known path asked with a method it does not have is 405 with an `Allow` header;
 *   anything else is 500 "internal error", logged once here with its stack. A ShutdownError (a request cut
 *   short by the node's shutdown) is 503 and logged at info, as Neon logs ShuttingDown. An AssertionError is a bug:
 *   it is answered with 500 and then rethrown outside fastify so the process exits, as everywhere.
 * - replies are serialized by `stringifyJson`, which writes bigints as exact JSON numbers (Neon's u64s), and
 *   JSON bodies are parsed by `parseJsonBody`, which reads integers beyond 2^53 as bigints; LSNs are "X/Y"
 *   strings both ways, formatted and parsed by the routes themselves.
 * - requests are logged at debug by our pino logger; fastify's logger is off.
 * - connections are bounded (limits.ts): HTTP_CONNECTIONS_MAX at once, closed after HTTP_IDLE_TIMEOUT_MS
 *   without traffic, and HTTP_REQUESTS_PER_CONNECTION_MAX requests each, so that no client, idle or
 *   pipelining without reading, holds file descriptors or buffered replies without limit.
 * Main thread. Closing waits for in-flight requests; idle keep-alive sockets are closed by Node.
 */
import { fastify, type FastifyError, type FastifyInstance, type FastifyReply } from 'fastify';
import { isInteger, isSafeNumber, parse as parseLosslessJson } from 'lossless-json';
import { SafekeeperError, ShutdownError } from '../errors.js';
import { HTTP_BODY_BYTES_MAX, HTTP_CONNECTIONS_MAX, HTTP_IDLE_TIMEOUT_MS, HTTP_REQUESTS_PER_CONNECTION_MAX } from '../limits.js';
import type { Logger } from '../log.js';
import { renderMetrics } from '../metrics.js';
import { AssertionError } from '../sync/assert.js';

export type HttpApp = FastifyInstance;
/** A group of routes, registered on the app before it listens. */
export type RouteGroup = (app: HttpApp) => void;

export interface StatusResponse {
  readonly id: bigint;
  readonly version: string;
  /** Actual addresses (after port 0 is resolved), as HOST:PORT. */
  readonly listen_pg: string;
  readonly listen_http: string;
}

export interface HttpServerDeps {
  readonly log: Logger;
  /** Called per GET /v1/status; the addresses are only known once both listeners are bound. */
  readonly status: () => StatusResponse;
}

const BIGINT_MARK = '__sk_bigint__';
const BIGINT_MARK_PATTERN = new RegExp(`"${BIGINT_MARK}(-?\\d+)"`, 'g');

/**
 * JSON.stringify that writes bigints as exact JSON numbers (Node 20 has no JSON.rawJSON): each bigint
 * becomes a marked string, and the marks are unquoted afterwards.
 */
export function stringifyJson(value: unknown): string {
  const text = JSON.stringify(value, (_name, inner: unknown) => (typeof inner === 'bigint' ? `${BIGINT_MARK}${inner.toString()}` : inner));
  return text === undefined ? 'null' : text.replace(BIGINT_MARK_PATTERN, '$1');
}

export function createHttpServer(deps: HttpServerDeps): HttpApp {
  const app = fastify({
    logger: false, bodyLimit: HTTP_BODY_BYTES_MAX, connectionTimeout: HTTP_IDLE_TIMEOUT_MS, maxRequestsPerSocket: HTTP_REQUESTS_PER_CONNECTION_MAX,
    // A URL the router refuses before any route runs (bad percent-encoding: 400; a parameter over find-my-way's
    // maxParamLength: 414) bypasses the error handler, and fastify would answer it in a shape of its own.
    frameworkErrors: (error, _request, reply) => answerFrameworkError(error, reply as FastifyReply),
  });
  app.server.maxConnections = HTTP_CONNECTIONS_MAX; // Node closes connections over it at once
  app.addContentTypeParser('application/json', { parseAs: 'string' }, (_request, body, done) => {
    try {
      done(null, parseJsonBody(body as string));
    } catch (error) {
      done(Object.assign(new Error(`body is not valid JSON: ${(error as Error).message}`), { statusCode: 400 }), undefined);
    }
  });
  app.setReplySerializer((payload) => stringifyJson(payload));
  app.setErrorHandler((error: FastifyError | Error, request, reply) => {
    const { status, msg } = describeError(error);
    // A request cut short by the node's shutdown gets its 503, as Neon answers ShuttingDown; like Neon we log
    // that at info: nothing failed (a chaos soak saw a checkpoint in flight at SIGTERM logged as an error).
    if (error instanceof ShutdownError) deps.log.info({ err: error, method: request.method, url: request.url }, 'http request cut short by shutdown');
    else if (status >= 500) deps.log.error({ err: error, method: request.method, url: request.url }, 'http request failed');
    void reply.code(status).send({ msg });
    if (error instanceof AssertionError) setImmediate(() => { throw error; });
  });
  // The methods of every route, as they are added (route groups come later), so that a known path asked with
  // another method is told which ones it has (405 and Allow, RFC 9110 §15.5.6) instead of "no route".
  const routeMethods: { path: RegExp; method: string }[] = [];
  app.addHook('onRoute', (route) => {
    for (const method of [route.method].flat()) routeMethods.push({ path: routePathPattern(route.url ?? route.path), method });
  });
  app.setNotFoundHandler((request, reply) => {
    const path = request.url.split('?')[0] ?? '';
    const allowed = [...new Set(routeMethods.filter((route) => route.path.test(path)).map((route) => route.method))];
    if (allowed.length === 0) return void reply.code(404).send({ msg: `no route for ${request.method} ${path}` });
    void reply.code(405).header('allow', allowed.join(', ')).send({ msg: `method ${request.method} is not allowed on ${path}; allowed: ${allowed.join(', ')}` });
  });
  app.addHook('onResponse', (request, reply, done) => {
    if (deps.log.isLevelEnabled('debug')) {
      deps.log.debug({ method: request.method, url: request.url, status_code: reply.statusCode, duration_ms: reply.elapsedTime }, 'http request');
    }
    done();
  });

  registerRoutes(app, (scope) => {
    scope.get('/v1/status', async () => deps.status());
    scope.get('/metrics', async (_request, reply) => {
      const metrics = await renderMetrics();
      return reply.type(metrics.contentType).send(metrics.body);
    });
  });
  return app;
}

/**
 * JSON request bodies, with integers beyond 2^53 as bigints: Neon's clients send u64s (a system_id is about
 * 7e18) as JSON numbers, which JSON.parse would round. Other numbers are what JSON.parse gives.
 */
export function parseJsonBody(text: string): unknown {
  return parseLosslessJson(text, null, (value) => (!isSafeNumber(value) && isInteger(value) ? BigInt(value) : Number.parseFloat(value)));
}

/** Adds a route group. Must run before `listen`; fastify refuses routes after the server is ready. */
export function registerRoutes(app: HttpApp, group: RouteGroup): void {
  group(app);
}

/**
 * A fastify route path (`/v1/tenant/:tenant_id/...`) as a pattern for concrete paths: a parameter is one segment,
 * possibly empty, as the router matches it (`/v1/tenant//timeline/x` reaches the route, which refuses the id).
 */
function routePathPattern(routePath: string): RegExp {
  const segments = routePath.split('/').map((segment) => (segment.startsWith(':') ? '[^/]*' : segment.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')));
  return new RegExp(`^${segments.join('/')}$`);
}

/** Answers a URL the router refused as every other error is answered (the cast above: fastify's option is generic over routes). */
function answerFrameworkError(error: FastifyError, reply: FastifyReply): void {
  void reply.code(error.statusCode ?? 400).send({ msg: error.message });
}

function describeError(error: FastifyError | Error): { status: number; msg: string } {
  if (error instanceof SafekeeperError) return { status: error.httpStatus, msg: error.message };
  const statusCode = (error as Partial<FastifyError>).statusCode;
  if (typeof statusCode === 'number' && statusCode >= 400 && statusCode < 500) return { status: statusCode, msg: error.message };
  return { status: 500, msg: 'internal error' };
}
