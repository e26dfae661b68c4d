/**
 * A TCP proxy that can freeze the connections going through it, to play a primary whose host froze or whose
 * route drops everything: `freezeExisting()` makes every connection open at that moment a black hole in both
 * directions (bytes are read and dropped, nothing is forwarded, both sockets stay open), while connections
 * made later pass normally, so a client that gives up and reconnects gets through. A close or reset on
 * either side is still passed on (closing the other side), so the server's end of a connection the client
 * dropped goes away at once instead of after the server's own timeout. `freezeAtFirstQuery()` instead makes
 * every later connection freeze when its client sends its first simple Query (after startup and
 * authentication passed), to play a primary that stops answering during a client's setup. Backpressure: a side whose writes
 * queue pauses the other until 'drain'. `close()` ends every connection and the listener.
 */
import net from 'node:net';

interface Pair {
  client: net.Socket;
  server: net.Socket;
  frozen: boolean;
}

export class FreezableProxy {
  readonly #pairs = new Set<Pair>();
  #freezeAtFirstQuery = false;

  private constructor(readonly listener: net.Server, readonly port: number) {}

  /** Listens on 127.0.0.1 (an ephemeral port) and forwards to `targetPort` on 127.0.0.1. */
  static async start(targetPort: number): Promise<FreezableProxy> {
    const listener = net.createServer();
    await new Promise<void>((resolve, reject) => {
      listener.once('error', reject);
      listener.listen(0, '127.0.0.1', () => resolve());
    });
    const address = listener.address();
    if (address === null || typeof address === 'string') throw new Error('the proxy has no TCP address');
    const proxy = new FreezableProxy(listener, address.port);
    listener.on('connection', (client) => proxy.#accept(client, targetPort));
    return proxy;
  }

  /** Connections open now and not frozen. */
  get liveConnections(): number {
    let count = 0;
    for (const pair of this.#pairs) if (!pair.frozen) count += 1;
    return count;
  }

  /** Freezes every connection open now; returns how many. */
  freezeExisting(): number {
    for (const pair of this.#pairs) {
      pair.frozen = true;
      pair.client.resume(); // a paused side would stop reading, and a close would go unnoticed
      pair.server.resume();
    }
    return this.#pairs.size;
  }

  /** From now on, a new connection freezes when its client sends a simple Query message ('Q'). */
  freezeAtFirstQuery(): void {
    this.#freezeAtFirstQuery = true;
  }

  async close(): Promise<void> {
    for (const pair of this.#pairs) {
      pair.client.destroy();
      pair.server.destroy();
    }
    await new Promise<void>((resolve) => this.listener.close(() => resolve()));
  }

  #accept(client: net.Socket, targetPort: number): void {
    const server = net.connect({ host: '127.0.0.1', port: targetPort });
    const pair: Pair = { client, server, frozen: false };
    const freezeAtQuery = this.#freezeAtFirstQuery;
    this.#pairs.add(pair);
    const forward = (from: net.Socket, to: net.Socket): void => {
      from.on('data', (chunk: Buffer) => {
        // A client sends a Query only after ReadyForQuery, so it starts a chunk of its own.
        if (freezeAtQuery && from === client && chunk[0] === 0x51) pair.frozen = true;
        if (pair.frozen) return; // the black hole
        if (!to.write(chunk)) {
          from.pause();
          to.once('drain', () => from.resume());
        }
      });
    };
    forward(client, server);
    forward(server, client);
    const end = (): void => {
      this.#pairs.delete(pair);
      client.destroy();
      server.destroy();
    };
    for (const socket of [client, server]) {
      socket.on('error', end);
      socket.on('close', end);
      socket.on('end', end);
    }
  }
}
