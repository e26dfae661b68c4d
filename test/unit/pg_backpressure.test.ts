import assert from 'node:assert/strict';
import net, { type Socket } from 'node:net';
import { after, before, describe, it } from 'node:test';
import { InvalidArgumentError } from '../../src/errors.js';
import { PgConnection, type PgQueryHandler } from '../../src/pg/connection.js';

/** The server side of one connection, with the most bytes its socket ever held unsent. */
interface Served {
  conn: PgConnection;
  socket: Socket;
  writableBytesMax: number;
}

/** Long enough for the stall below to be reached and lifted well inside it, on a loaded CI machine too. */
const READ_TIMEOUT_MS = 3000;
/**
 * How long the server may take to answer everything once the client reads. The pipelined case sends ~85
 * chunks of 10,000 Syncs: some 850,000 ReadyForQuery to parse, answer and count, which takes 1.5 s on an
 * idle machine and was seen taking 5 s under CPU load; the speed is not what is tested, only that all come.
 */
const ANSWER_ALL_WAIT_MS = 60_000;
/** Far above what loopback buffers hold before the server must stop reading (a few MB). */
const SENT_BYTES_MAX = 64 * 1024 * 1024;

const queries: string[] = [];
/** Answers every query with an error that echoes it, like "unsupported command <text>". */
const handler: PgQueryHandler = {
  async onQuery(text) {
    queries.push(text);
    throw new InvalidArgumentError(`unsupported command ${text}`);
  },
};

function startupPacket(): Buffer {
  const params = Buffer.from('user\0u\0database\0d\0\0');
  const packet = Buffer.alloc(8 + params.length);
  packet.writeInt32BE(packet.length, 0);
  packet.writeInt32BE(196608, 4); // protocol 3.0
  params.copy(packet, 8);
  return packet;
}

function typedMessage(tag: string, body: Buffer): Buffer {
  const message = Buffer.alloc(5 + body.length);
  message.write(tag, 0, 'latin1');
  message.writeInt32BE(4 + body.length, 1);
  body.copy(message, 5);
  return message;
}

/** Counts backend messages by tag in a byte stream split anywhere. */
class TagCounter {
  readonly counts = new Map<string, number>();
  #pending = Buffer.alloc(0);

  push(chunk: Buffer): void {
    let data = this.#pending.length === 0 ? chunk : Buffer.concat([this.#pending, chunk]);
    while (data.length >= 5) {
      const messageBytes = 1 + data.readInt32BE(1);
      if (data.length < messageBytes) break;
      const tag = String.fromCharCode(data[0] as number);
      this.counts.set(tag, (this.counts.get(tag) ?? 0) + 1);
      data = data.subarray(messageBytes);
    }
    this.#pending = Buffer.from(data);
  }
}

/** Resolves true once `socket` drains, false if it does not within `waitMs`. */
function drainedWithin(socket: Socket, waitMs: number): Promise<boolean> {
  return new Promise((resolve) => {
    const timer = setTimeout(() => (socket.off('drain', onDrain), resolve(false)), waitMs);
    const onDrain = (): void => (clearTimeout(timer), resolve(true));
    socket.once('drain', onDrain);
  });
}

async function waitFor(condition: () => boolean, what: string, waitMs = 10_000): Promise<void> {
  const deadline = Date.now() + waitMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
}

describe('PgConnection replies to a client that does not read', () => {
  let server: net.Server;
  let port = 0;
  let served: Served[] = [];

  before(async () => {
    server = net.createServer((socket) => {
      const entry: Served = { conn: new PgConnection(socket, { frameBytesMax: 256 * 1024, readTimeoutMs: READ_TIMEOUT_MS }, handler), socket, writableBytesMax: 0 };
      // Every reply goes through socket.write: record the buffered bytes right after each one.
      const write = socket.write.bind(socket) as (chunk: Uint8Array) => boolean;
      socket.write = ((chunk: Uint8Array) => {
        const ok = write(chunk);
        entry.writableBytesMax = Math.max(entry.writableBytesMax, socket.writableLength);
        return ok;
      }) as typeof socket.write;
      served.push(entry);
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const address = server.address();
    assert.ok(address !== null && typeof address === 'object');
    port = address.port;
  });

  after(async () => {
    for (const entry of served) entry.socket.destroy(); // a failed test may leave one open: close() would wait for it
    await new Promise<void>((resolve) => server.close(() => resolve()));
  });

  const cases = [
    // An unsupported query is echoed back in its ErrorResponse: the reply is as large as the request.
    { name: 'simple queries answered with an ErrorResponse echoing them', chunk: typedMessage('Q', Buffer.from(`${'x'.repeat(60 * 1024)}\0`)), messagesPerChunk: 1, replyBytesMax: 60 * 1024 + 256 },
    // Syncs are answered synchronously from the data handler, many per chunk: the pause must take effect mid-chunk.
    { name: 'pipelined Syncs answered with ReadyForQuery', chunk: Buffer.concat(Array.from({ length: 10_000 }, () => typedMessage('S', Buffer.alloc(0)))), messagesPerChunk: 10_000, replyBytesMax: 6 },
  ];

  for (const { name, chunk, messagesPerChunk, replyBytesMax } of cases) {
    it(`stops reading at the high-water mark, and answers everything once the client reads: ${name}`, async () => {
      served = [];
      queries.length = 0;
      const client = net.connect(port, '127.0.0.1');
      client.pause(); // never reads until told to
      await new Promise<void>((resolve, reject) => client.once('connect', resolve).once('error', reject));
      client.write(startupPacket());
      let sentChunks = 0;
      let stalled = false;
      while (!stalled && sentChunks * chunk.length < SENT_BYTES_MAX) {
        sentChunks += 1;
        if (!client.write(chunk)) stalled = !(await drainedWithin(client, 200));
      }
      assert.ok(stalled, 'the server stopped reading');
      const entry = served[0];
      assert.ok(entry !== undefined);
      assert.equal(entry.conn.isClosed, false, 'within the read timeout the client may still read');
      const bufferedBytesMax = entry.socket.writableHighWaterMark + replyBytesMax;
      assert.ok(entry.writableBytesMax <= bufferedBytesMax, `buffered ${entry.writableBytesMax} bytes, bound ${bufferedBytesMax}`);

      // Once the client reads, the server drains, resumes and answers everything that was sent.
      const tags = new TagCounter();
      client.on('data', (data: Buffer) => tags.push(data));
      client.resume();
      const expectedReady = 1 + sentChunks * messagesPerChunk;
      await waitFor(() => (tags.counts.get('Z') ?? 0) === expectedReady, `${expectedReady} ReadyForQuery`, ANSWER_ALL_WAIT_MS);
      if (messagesPerChunk === 1) assert.equal(queries.length, sentChunks);
      assert.equal(entry.writableBytesMax <= bufferedBytesMax, true);
      client.destroy();
      await entry.conn.closed;
    });
  }

  it('closes a client that reads none of our replies for the read timeout: it cannot hold its slot forever', async () => {
    served = [];
    const client = net.connect(port, '127.0.0.1');
    client.pause(); // never reads
    await new Promise<void>((resolve, reject) => client.once('connect', resolve).once('error', reject));
    client.write(startupPacket());
    const chunk = cases[0]!.chunk;
    let stalled = false;
    for (let sent = 0; !stalled && sent < SENT_BYTES_MAX; sent += chunk.length) {
      if (!client.write(chunk)) stalled = !(await drainedWithin(client, 200));
    }
    assert.ok(stalled, 'the server stopped reading');
    const stalledAtMs = Date.now();
    const entry = served[0];
    assert.ok(entry !== undefined);
    await waitFor(() => entry.conn.isClosed, 'the connection closed', 4 * READ_TIMEOUT_MS);
    const closedAfterMs = Date.now() - stalledAtMs;
    assert.ok(closedAfterMs >= READ_TIMEOUT_MS / 2, `closed after ${closedAfterMs} ms: not before the read timeout`);
    client.destroy();
  });
});
