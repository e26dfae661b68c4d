/**
 * How the HTTP server answers and logs a route's error (src/http/server.ts): a ShutdownError (a request cut
 * short by the node's shutdown) is 503 and logged at info, as Neon logs ShuttingDown; an unexpected error is
 * 500 "internal error", logged at error. Uses fastify's inject, with a pino logger writing into an array.
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
