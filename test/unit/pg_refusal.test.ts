import assert from 'node:assert/strict';
import net, { type Socket } from 'node:net';
import { describe, it } from 'node:test';
import type { PgQueryHandler } from '../../src/pg/connection.js';
import { PgConnectionSet, PgRefusals, servePgConnection } from '../../src/pg/server.js';

const handler: PgQueryHandler = { async onQuery() {} };

/** What a client received until the server ended its side. */
interface Outcome {
  received: Buffer;
}

interface Client {
  socket: Socket;
  outcome: Promise<Outcome>;
}

/** Every client socket a test opened; closing the server destroys them, so a failed test cannot hang. */
const clientSockets = new Set<Socket>();

async function startServer(connections: PgConnectionSet): Promise<{ port: number; close(): Promise<void> }> {
  const server = net.createServer((socket) => void servePgConnection(socket, { frameBytesMax: 64 * 1024, connections }, handler));
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const address = server.address();
  assert.ok(address !== null && typeof address === 'object');
  return {
    port: address.port,
    async close() {
      for (const socket of clientSockets) socket.destroy();
      clientSockets.clear();
      await connections.closeAll(new Error('test over'));
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

/**
 * Connects and then sends nothing. With `keepOpen` it never closes its side, even after the server's FIN
 * (so only the server can close the connection), and with `reading: false` it reads nothing at all.
 */
async function idleClient(port: number, { keepOpen = true, reading = true } = {}): Promise<Client> {
  const socket = net.connect({ port, host: '127.0.0.1', allowHalfOpen: keepOpen });
  clientSockets.add(socket);
  const chunks: Buffer[] = [];
  socket.on('data', (chunk: Buffer) => chunks.push(chunk));
  socket.on('error', () => undefined); // a socket the server destroyed may be reset
  if (!reading) socket.pause();
  await new Promise<void>((resolve, reject) => socket.once('connect', resolve).once('error', reject));
  const outcome = new Promise<Outcome>((resolve) => socket.once('end', () => resolve({ received: Buffer.concat(chunks) })));
  return { socket, outcome };
}

/** The SQLSTATE of the single ErrorResponse in `bytes`. */
function sqlStateOf(bytes: Buffer): string {
  assert.equal(String.fromCharCode(bytes[0] as number), 'E');
  assert.equal(1 + bytes.readInt32BE(1), bytes.length, 'exactly one message');
  const fields = bytes.subarray(5).toString('utf8').split('\0');
  const code = fields.find((field) => field.startsWith('C'));
  assert.ok(code !== undefined);
  return code.slice(1);
}

async function waitFor(condition: () => boolean, what: string, waitMs = 5_000): Promise<void> {
  const deadline = Date.now() + waitMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
}

describe('connections over max_connections', () => {
  it('answers idle extra connections with 53300 and closes them when the linger time is over', async () => {
    const lingerMs = 300;
    const refusals = new PgRefusals(64, lingerMs);
    const connections = new PgConnectionSet(1, refusals);
    const server = await startServer(connections);
    try {
      const first = await idleClient(server.port);
      await waitFor(() => connections.servedCount === 1, 'the first connection served');
      const startMs = Date.now();
      const readers = await Promise.all(Array.from({ length: 20 }, () => idleClient(server.port)));
      const silent = await Promise.all(Array.from({ length: 5 }, () => idleClient(server.port, { reading: false })));
      for (const { outcome } of readers) assert.equal(sqlStateOf((await outcome).received), '53300');
      // None of these clients closes: the server holds them until the timer, then destroys them all.
      await waitFor(() => refusals.openCount === 0, 'no refused socket left', lingerMs + 2_000);
      assert.ok(Date.now() - startMs >= lingerMs - 50, 'held until the linger time');
      assert.equal(connections.servedCount, 1, 'the served connection is untouched');
      for (const client of [...readers, ...silent]) client.socket.destroy();
      first.socket.destroy();
      await waitFor(() => connections.servedCount === 0, 'the served connection closed');
    } finally {
      await server.close();
    }
  });

  it('answers SSLRequest and GSSENCRequest with N first, so libpq shows the 53300 (it hides an error sent during SSL negotiation)', async () => {
    const refusals = new PgRefusals(64, 60_000, 60_000); // no wait timeout: only the client's packets trigger the reply
    const connections = new PgConnectionSet(1, refusals);
    const server = await startServer(connections);
    const negotiation = (code: number): Buffer => {
      const packet = Buffer.alloc(8);
      packet.writeInt32BE(8, 0);
      packet.writeInt32BE(code, 4);
      return packet;
    };
    const startup = Buffer.from('00000000000300007573657200780000', 'hex'); // user=x, length set below
    startup.writeInt32BE(startup.length, 0);
    try {
      const first = await idleClient(server.port);
      await waitFor(() => connections.servedCount === 1, 'the first connection served');
      // GSSENC then SSL then the StartupMessage, the SSLRequest split across two writes.
      const client = await idleClient(server.port, { keepOpen: false });
      client.socket.write(negotiation(80877104));
      const ssl = negotiation(80877103);
      client.socket.write(ssl.subarray(0, 3));
      await new Promise((resolve) => setTimeout(resolve, 20));
      client.socket.write(Buffer.concat([ssl.subarray(3), startup]));
      const received = (await client.outcome).received;
      assert.equal(received.subarray(0, 2).toString('latin1'), 'NN');
      assert.equal(sqlStateOf(received.subarray(2)), '53300');
      // A client that starts with its StartupMessage gets the ErrorResponse alone.
      const plain = await idleClient(server.port, { keepOpen: false });
      plain.socket.write(startup);
      assert.equal(sqlStateOf((await plain.outcome).received), '53300');
      first.socket.destroy();
    } finally {
      await server.close();
    }
  });

  it('closes a refused socket as soon as the client closes its side', async () => {
    const refusals = new PgRefusals(64, 60_000);
    const connections = new PgConnectionSet(1, refusals);
    const server = await startServer(connections);
    try {
      const first = await idleClient(server.port);
      await waitFor(() => connections.servedCount === 1, 'the first connection served');
      const extra = await idleClient(server.port);
      assert.equal(sqlStateOf((await extra.outcome).received), '53300');
      assert.equal(refusals.openCount, 1);
      extra.socket.end();
      await waitFor(() => refusals.openCount === 0, 'the refused socket closed long before the linger time');
      extra.socket.destroy();
      first.socket.destroy();
    } finally {
      await server.close();
    }
  });

  it('destroys refused sockets at once beyond the cap on refused sockets in flight', async () => {
    const refusals = new PgRefusals(2, 60_000);
    const connections = new PgConnectionSet(1, refusals);
    const server = await startServer(connections);
    try {
      const first = await idleClient(server.port);
      await waitFor(() => connections.servedCount === 1, 'the first connection served');
      const lingering = [await idleClient(server.port), await idleClient(server.port)];
      await waitFor(() => refusals.openCount === 2, 'two refused sockets lingering');
      const beyondCap = await Promise.all(Array.from({ length: 5 }, () => idleClient(server.port)));
      for (const { outcome } of beyondCap) assert.equal((await outcome).received.length, 0, 'closed without a reply');
      assert.equal(refusals.openCount, 2);
      for (const client of [...lingering, ...beyondCap]) client.socket.destroy();
      await waitFor(() => refusals.openCount === 0, 'the lingering sockets closed');
      // Below the cap again: the next extra connection gets its ErrorResponse.
      const again = await idleClient(server.port, { keepOpen: false });
      assert.equal(sqlStateOf((await again.outcome).received), '53300');
      await waitFor(() => refusals.openCount === 0, 'closed when the client closed');
      first.socket.destroy();
    } finally {
      await server.close();
    }
  });
});
