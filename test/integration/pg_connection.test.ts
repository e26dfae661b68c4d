import assert from 'node:assert/strict';
import net from 'node:net';
import { after, before, describe, it } from 'node:test';
import pg from 'pg';
import { serialize } from 'pg-protocol';
import { AuthError, InvalidArgumentError } from '../../src/errors.js';
import { INT4_OID, TEXT_OID } from '../../src/pg/backend_encoder.js';
import { parseCommand } from '../../src/pg/commands.js';
import type { PgConnection, PgConnectionOptions, PgQueryHandler } from '../../src/pg/connection.js';
import { PgConnectionSet, servePgConnection } from '../../src/pg/server.js';
import { DatabaseError, errorResponseFields, PgTestClient, RawPgSocket } from '../harness/pg_client.js';

const TENANT = '0123456789abcdef0123456789abcdef';
const TIMELINE = 'fedcba9876543210fedcba9876543210';

/** What the test handler's copy-both sink saw, per connection. */
interface CopySession {
  conn: PgConnection;
  received: string[];
  closeCalls: unknown[];
}

const sessions: CopySession[] = [];

/** A handler in the shape the safekeeper's will have: parse, then rows, errors or copy-both. */
const handler: PgQueryHandler = {
  async onQuery(text, conn) {
    if (text === 'ROWS') {
      conn.sendRows(
        [
          { name: 'name', typeOid: TEXT_OID, typeLengthBytes: -1 },
          { name: 'number', typeOid: INT4_OID, typeLengthBytes: 4 },
        ],
        [
          ['one', '1'],
          [null, '2'],
        ],
        'SELECT 2',
      );
      return;
    }
    if (text === 'WHOAMI') {
      const { tenantId, timelineId, applicationName } = conn.startup;
      conn.sendRows(['tenant_id', 'timeline_id', 'application_name'].map((name) => ({ name, typeOid: TEXT_OID, typeLengthBytes: -1 })), [[tenantId, timelineId, applicationName]], 'SELECT 1');
      return;
    }
    if (text === 'FAIL') throw new InvalidArgumentError('bad thing');
    if (text === 'BOOM') throw new Error('a secret internal detail');
    if (text === 'SLOW') return new Promise((resolve) => setTimeout(resolve, 50));
    const command = parseCommand(text);
    if (command.kind !== 'start_wal_push') throw new InvalidArgumentError(`unsupported command ${text}`);
    const session: CopySession = { conn, received: [], closeCalls: [] };
    sessions.push(session);
    conn.startCopyBoth({
      onCopyData(payload) {
        const text = Buffer.from(payload).toString();
        session.received.push(text);
        if (text === 'pause') conn.pauseReading();
        if (text === 'throw') throw new InvalidArgumentError('sink refused the message');
        conn.sendCopyDataParts(Buffer.from('echo:'), payload);
      },
      onCopyDone() {
        conn.sendCopyDone();
        conn.close();
      },
      onCopyFail(message) {
        session.received.push(`fail:${message}`);
        conn.close();
      },
      onClose(error) {
        session.closeCalls.push(error);
      },
    });
  },
};

interface TestServer {
  port: number;
  connections: PgConnectionSet;
  internalErrors: unknown[];
  close(): Promise<void>;
}

async function startServer(options: Partial<PgConnectionOptions> = {}, maxConnections = 100): Promise<TestServer> {
  const connections = new PgConnectionSet(maxConnections);
  const internalErrors: unknown[] = [];
  const log = { debug: () => undefined, warn: () => undefined, error: (fields: Record<string, unknown>) => internalErrors.push(fields['err']) };
  const server = net.createServer((socket) =>
    servePgConnection(socket, { frameBytesMax: 64 * 1024, connections, log, serverParameters: () => ({ server_version: '15.8' }), ...options }, handler),
  );
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const address = server.address();
  assert.ok(address !== null && typeof address === 'object');
  return {
    port: address.port,
    connections,
    internalErrors,
    async close() {
      await connections.closeAll(new InvalidArgumentError('test over'));
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

async function waitFor(condition: () => boolean, waitMs = 5_000): Promise<void> {
  const deadline = Date.now() + waitMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error('condition not met in time');
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
}

/** Startup over a raw socket up to ReadyForQuery. */
async function rawStartup(port: number): Promise<RawPgSocket> {
  const raw = await RawPgSocket.connect(port);
  raw.write(serialize.startup({ user: 'u', database: 'd' }));
  const messages = await raw.readUntilReady();
  assert.equal(messages[0]?.tag, 'R');
  return raw;
}

async function expectProtocolViolation(raw: RawPgSocket): Promise<void> {
  const message = await raw.readMessage();
  assert.equal(message.tag, 'E');
  const fields = errorResponseFields(message.body);
  assert.equal(fields['C'], '08P01');
  assert.equal(fields['S'], 'ERROR');
  await raw.expectClosed();
}

describe('PgConnection', () => {
  let server: TestServer;
  before(async () => {
    server = await startServer();
  });
  after(async () => {
    await server.close();
  });

  it('serves the pg client: startup options, rows, errors that keep the connection usable', async () => {
    const client = new pg.Client({ host: '127.0.0.1', port: server.port, user: 'u', database: 'd', application_name: 'pg-test', options: `-c tenant_id=${TENANT} timeline_id=${TIMELINE}` });
    await client.connect();
    try {
      const whoami = await client.query('WHOAMI');
      assert.deepEqual(whoami.rows, [{ tenant_id: TENANT, timeline_id: TIMELINE, application_name: 'pg-test' }]);
      const rows = await client.query('ROWS');
      assert.deepEqual(rows.rows, [{ name: 'one', number: 1 }, { name: null, number: 2 }]);
      assert.equal(rows.command, 'SELECT');
      await assert.rejects(client.query('FAIL'), (error: unknown) => error instanceof Error && (error as { code?: string }).code === '22023' && error.message === 'bad thing');
      await assert.rejects(client.query('BOOM'), (error: unknown) => (error as { code?: string }).code === 'XX000' && (error as Error).message === 'internal error');
      assert.equal(server.internalErrors.length, 1);
      const extended = await client.query({ text: 'ROWS', values: ['ignored'] });
      assert.equal(extended.rows.length, 2);
      await assert.rejects(client.query({ text: 'FAIL', values: [1] }), (error: unknown) => (error as { code?: string }).code === '22023');
      assert.equal((await client.query('ROWS')).rows.length, 2);
      const empty = await client.query('');
      assert.equal(empty.rows.length, 0);
    } finally {
      await client.end();
    }
  });

  it('refuses SSL with N and goes on in plain text, reporting the server parameters', async () => {
    const client = await PgTestClient.connect({ port: server.port, requestSsl: true });
    assert.equal(client.parameters.get('server_version'), '15.8');
    assert.equal(client.parameters.get('client_encoding'), 'UTF8');
    assert.equal(client.parameters.get('integer_datetimes'), 'on');
    assert.equal(client.parameters.get('DateStyle'), 'ISO');
    assert.equal(client.parameters.get('standard_conforming_strings'), 'on');
    assert.equal(client.parameters.get('server_encoding'), 'UTF8');
    assert.deepEqual((await client.simpleQuery('ROWS')).rows, [['one', '1'], [null, '2']]);
    await assert.rejects(client.simpleQuery('FAIL'), (error: unknown) => error instanceof DatabaseError && error.code === '22023');
    await client.terminate();
  });

  it('refuses GSSENCRequest with N', async () => {
    const raw = await RawPgSocket.connect(server.port);
    const gss = Buffer.alloc(8);
    gss.writeInt32BE(8, 0);
    gss.writeInt32BE(80877104, 4);
    raw.write(gss);
    assert.equal((await raw.read(1)).toString('latin1'), 'N');
    raw.write(serialize.startup({ user: 'u' }));
    const tags = (await raw.readUntilReady()).map((message) => message.tag);
    assert.equal(tags[0], 'R');
    assert.equal(tags.at(-1), 'Z');
    raw.destroy();
  });

  it('closes silently on CancelRequest', async () => {
    const raw = await RawPgSocket.connect(server.port);
    raw.write(serialize.cancel(1, 2));
    await raw.expectClosed();
    await assert.rejects(raw.read(1), /closed after 0/);
  });

  it('ends a connection that sends garbage after startup with 08P01', async () => {
    const raw = await rawStartup(server.port);
    raw.write(Buffer.from('garbage that is not a message'));
    await expectProtocolViolation(raw);
  });

  it('ends a connection that sends an unknown message type with 08P01', async () => {
    const raw = await rawStartup(server.port);
    raw.write(Buffer.from([0x7a, 0, 0, 0, 4]));
    await expectProtocolViolation(raw);
  });

  it('closes on a truncated message followed by EOF, and keeps serving others', async () => {
    const raw = await rawStartup(server.port);
    raw.socket.end(serialize.query('ROWS').subarray(0, 6));
    await raw.expectClosed();
    const client = await PgTestClient.connect({ port: server.port });
    assert.equal((await client.simpleQuery('ROWS')).rows.length, 2);
    await client.terminate();
  });

  it('ends an oversized message with 08P01 while another connection keeps working', async () => {
    const bystander = await PgTestClient.connect({ port: server.port });
    const raw = await rawStartup(server.port);
    const header = Buffer.alloc(5);
    header[0] = 0x51;
    header.writeInt32BE(64 * 1024 + 1, 1);
    raw.write(header);
    await expectProtocolViolation(raw);
    assert.equal((await bystander.simpleQuery('ROWS')).rows.length, 2);
    await bystander.terminate();
  });

  it('echoes CopyData through the sink and ends the stream on CopyDone', async () => {
    const client = await PgTestClient.connect({ port: server.port, options: `-c tenant_id=${TENANT} timeline_id=${TIMELINE}` });
    await client.startCopyBoth("START_WAL_PUSH (proto_version '3', allow_timeline_creation 'false')");
    const session = sessions.at(-1);
    assert.ok(session !== undefined);
    const large = 'x'.repeat(20_000);
    for (const text of ['a', 'bb', large]) client.sendCopyData(Buffer.from(text));
    assert.equal((await client.nextCopyData()).toString(), 'echo:a');
    assert.equal((await client.nextCopyData()).toString(), 'echo:bb');
    assert.equal((await client.nextCopyData()).toString(), `echo:${large}`);
    client.sendCopyDone();
    assert.equal((await client.next()).name, 'copyDone');
    await client.closed;
    assert.deepEqual(session.closeCalls, [undefined]);
  });

  it('holds the rest of a chunk while the sink has paused reading, and delivers it on resume', async () => {
    const client = await PgTestClient.connect({ port: server.port });
    await client.startCopyBoth('START_WAL_PUSH');
    const session = sessions.at(-1);
    assert.ok(session !== undefined);
    client.socket.write(Buffer.concat(['a', 'pause', 'b', 'c'].map((text) => serialize.copyData(Buffer.from(text)))));
    await waitFor(() => session.received.length >= 2);
    await new Promise((resolve) => setTimeout(resolve, 50));
    assert.deepEqual(session.received, ['a', 'pause']);
    client.sendCopyData(Buffer.from('d')); // arrives while paused: queued behind the held messages
    await new Promise((resolve) => setTimeout(resolve, 20));
    assert.deepEqual(session.received, ['a', 'pause']);
    session.conn.resumeReading();
    await waitFor(() => session.received.length === 5);
    assert.deepEqual(session.received, ['a', 'pause', 'b', 'c', 'd']);
    client.sendCopyFail('client gave up');
    await client.closed;
    assert.equal(session.received.at(-1), 'fail:client gave up');
  });

  it('ends the connection with ErrorResponse when the sink throws', async () => {
    const client = await PgTestClient.connect({ port: server.port });
    await client.startCopyBoth('START_WAL_PUSH');
    const session = sessions.at(-1);
    assert.ok(session !== undefined);
    client.sendCopyData(Buffer.from('throw'));
    await assert.rejects(client.nextCopyData(), (error: unknown) => error instanceof DatabaseError && error.code === '22023');
    await client.closed;
    assert.equal(session.closeCalls.length, 1);
    assert.ok(session.closeCalls[0] instanceof InvalidArgumentError);
  });

  it('refuses a Query in copy-both mode with 08P01', async () => {
    const client = await PgTestClient.connect({ port: server.port });
    await client.startCopyBoth('START_WAL_PUSH');
    client.socket.write(serialize.query('ROWS'));
    await assert.rejects(client.nextCopyData(), (error: unknown) => error instanceof DatabaseError && error.code === '08P01');
    await client.closed;
  });

  it('processes pipelined queries one at a time, in order', async () => {
    const raw = await rawStartup(server.port);
    raw.write(Buffer.concat([serialize.query('SLOW'), serialize.query('ROWS'), serialize.query('FAIL'), serialize.query('SLOW')]));
    const first = await raw.readUntilReady();
    assert.deepEqual(first.map((message) => message.tag), ['Z']);
    assert.deepEqual((await raw.readUntilReady()).map((message) => message.tag), ['T', 'D', 'D', 'C', 'Z']);
    assert.deepEqual((await raw.readUntilReady()).map((message) => message.tag), ['E', 'Z']);
    assert.deepEqual((await raw.readUntilReady()).map((message) => message.tag), ['Z']);
    raw.destroy();
  });
});

describe('PgConnection options', () => {
  it('answers the StartupMessage with 53300 above the connection limit', async () => {
    const server = await startServer({}, 1);
    try {
      const first = await PgTestClient.connect({ port: server.port });
      await assert.rejects(PgTestClient.connect({ port: server.port }), (error: unknown) => error instanceof DatabaseError && error.code === '53300');
      await first.terminate();
      await waitFor(() => server.connections.servedCount === 0);
      const again = await PgTestClient.connect({ port: server.port });
      await again.terminate();
    } finally {
      await server.close();
    }
  });

  it('drops a client that sends nothing for the read timeout', async () => {
    const server = await startServer({ readTimeoutMs: 100 });
    try {
      const raw = await RawPgSocket.connect(server.port);
      await raw.expectClosed(3_000);
    } finally {
      await server.close();
    }
  });

  it('asks for a password when an authenticate hook is set', async () => {
    const authenticate = async (_startup: unknown, password: string): Promise<unknown> => {
      if (password !== 'secret-jwt') throw new AuthError('JWT authentication error');
      return { scope: 'tenant' };
    };
    const server = await startServer({ authenticate });
    try {
      const client = await PgTestClient.connect({ port: server.port, password: 'secret-jwt' });
      assert.equal((await client.simpleQuery('ROWS')).rows.length, 2);
      await client.terminate();
      await assert.rejects(PgTestClient.connect({ port: server.port, password: 'wrong' }), (error: unknown) => error instanceof DatabaseError && error.code === '28000');
    } finally {
      await server.close();
    }
  });
});
