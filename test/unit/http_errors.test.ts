/**
 * How the HTTP server answers and logs a route's error (src/http/server.ts): a ShutdownError (a request cut
 * short by the node's shutdown) is 503 and logged at info, as Neon logs ShuttingDown; an unexpected error is
 * 500 "internal error", logged at error; a wrong method on a known path is 405 with Allow; a URL the router
 * refuses is answered in the same {msg} shape. Uses fastify's inject, with a pino logger writing into an array.
 */
import assert from 'node:assert/strict';
import { Writable } from 'node:stream';
import { test } from 'node:test';
import { pino } from 'pino';
import { ShutdownError } from '../../src/errors.js';
import { createHttpServer, registerRoutes } from '../../src/http/server.js';

function capturingLogger(): { log: pino.Logger; lines: { level: number; msg: string }[] } {
  const lines: { level: number; msg: string }[] = [];
  const sink = new Writable({
    write(chunk: Buffer, _encoding, done) {
      for (const line of chunk.toString('utf8').split('\n')) if (line !== '') lines.push(JSON.parse(line) as { level: number; msg: string });
      done();
    },
  });
  return { log: pino({ level: 'info' }, sink), lines };
}

test('a ShutdownError is answered 503 and logged at info, not as an error; an unexpected error is 500 and logged at error', async () => {
  const { log, lines } = capturingLogger();
  const app = createHttpServer({ log, status: () => { throw new Error('unused'); } });
  registerRoutes(app, (scope) => {
    scope.post('/shutting-down', async () => {
      throw new ShutdownError();
    });
    scope.post('/broken', async () => {
      throw new Error('boom');
    });
  });
  const shutdown = await app.inject({ method: 'POST', url: '/shutting-down' });
  assert.equal(shutdown.statusCode, 503);
  assert.deepEqual(shutdown.json(), { msg: 'safekeeper is shutting down' });
  const broken = await app.inject({ method: 'POST', url: '/broken' });
  assert.equal(broken.statusCode, 500);
  assert.deepEqual(broken.json(), { msg: 'internal error' });
  await app.close();
  await new Promise((resolve) => setImmediate(resolve));
  const errors = lines.filter((line) => line.level >= 50).map((line) => line.msg);
  assert.deepEqual(errors, ['http request failed'], 'only the unexpected error is logged as an error');
  assert.ok(lines.some((line) => line.level === 30 && /shutdown/.test(line.msg)), 'the shutdown is logged at info');
});

test('a path that exists for other methods is 405 with an Allow header; an unknown path stays 404', async () => {
  const { log } = capturingLogger();
  const app = createHttpServer({ log, status: () => ({ id: 1n, version: 'test', listen_pg: '127.0.0.1:1', listen_http: '127.0.0.1:2' }) });
  registerRoutes(app, (scope) => {
    scope.get('/v1/tenant/:tenant_id/timeline/:timeline_id', async () => ({}));
    scope.delete('/v1/tenant/:tenant_id/timeline/:timeline_id', async () => ({}));
  });
  const patch = await app.inject({ method: 'PATCH', url: '/v1/tenant/ab/timeline/cd?x=1' });
  assert.equal(patch.statusCode, 405);
  assert.equal(patch.headers['allow'], 'GET, HEAD, DELETE');
  assert.deepEqual(patch.json(), { msg: 'method PATCH is not allowed on /v1/tenant/ab/timeline/cd; allowed: GET, HEAD, DELETE' });
  const status = await app.inject({ method: 'POST', url: '/v1/status' });
  assert.equal(status.statusCode, 405);
  assert.equal(status.headers['allow'], 'GET, HEAD');
  for (const url of ['/v1/tenant/ab/timeline', '/v1/tenant/ab/timeline/cd/extra', '/nope']) {
    const unknown = await app.inject({ method: 'PUT', url });
    assert.equal(unknown.statusCode, 404, url);
    assert.deepEqual(unknown.json(), { msg: `no route for PUT ${url}` });
  }
  assert.equal((await app.inject({ method: 'GET', url: '/v1/tenant/ab/timeline/cd' })).statusCode, 200);
  // The router matches an empty segment as a parameter (the route then refuses the id), so the 405 does too.
  assert.equal((await app.inject({ method: 'GET', url: '/v1/tenant//timeline/cd' })).statusCode, 200);
  const empty = await app.inject({ method: 'PATCH', url: '/v1/tenant//timeline/cd' });
  assert.equal(empty.statusCode, 405);
  assert.equal(empty.headers['allow'], 'GET, HEAD, DELETE');
  await app.close();
});

test('a URL the router refuses before routing (bad percent-encoding, an over-long parameter) is answered with the usual {msg} body', async () => {
  const { log } = capturingLogger();
  const app = createHttpServer({ log, status: () => { throw new Error('unused'); } });
  registerRoutes(app, (scope) => {
    scope.get('/v1/tenant/:tenant_id', async () => ({}));
  });
  const badUrl = await app.inject({ method: 'GET', url: '/v1/tenant/%zz' });
  assert.equal(badUrl.statusCode, 400);
  assert.deepEqual(badUrl.json(), { msg: "'/v1/tenant/%zz' is not a valid url component" });
  const longParam = await app.inject({ method: 'GET', url: `/v1/tenant/${'a'.repeat(101)}` });
  assert.equal(longParam.statusCode, 414);
  assert.deepEqual(Object.keys(longParam.json() as object), ['msg']);
  assert.match((longParam.json() as { msg: string }).msg, /exceeding the max param length/);
  await app.close();
});
