/**
 * S3 for tests: an in-process s3rver on 127.0.0.1 (port 0) with one bucket, and `FaultProxy`, an HTTP
 * proxy in front of it that answers chosen requests with faults a real S3 cannot produce on demand:
 * `'500'` (an InternalError reply, body consumed), `'hang'` (never answers; the client's deadline must
 * fire), `'reset'` (the connection is destroyed before the request reaches S3), and `'drop-response'`
 * (the request reaches S3 and succeeds, then the connection is destroyed before the reply: the client
 * cannot know it succeeded). `decide` sees every request in order and picks; `'pass'` forwards it.
 * Client options s3rver needs (reference/test-components.md): path style, credentials S3RVER/S3RVER,
 * checksums only when required.
 */
import { createServer, request as httpRequest, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import S3rver from 's3rver';
import { makeTempDir } from './tmp.js';

export const S3RVER_CREDENTIALS = Object.freeze({ accessKeyId: 'S3RVER', secretAccessKey: 'S3RVER' });

export interface S3Server {
  readonly port: number;
  readonly endpoint: string;
  readonly bucket: string;
  readonly directory: string;
  close(): Promise<void>;
}

export async function startS3rver(bucket: string): Promise<S3Server> {
  const directory = makeTempDir('sk-s3rver-');
  const server = new S3rver({ address: '127.0.0.1', port: 0, silent: true, directory, configureBuckets: [{ name: bucket, configs: [] }] });
  const address = await server.run();
  return { port: address.port, endpoint: `http://127.0.0.1:${address.port}`, bucket, directory, close: () => server.close() };
}

export type Fault = 'pass' | '500' | 'hang' | 'reset' | 'drop-response';

export interface ProxiedRequest {
  readonly method: string;
  readonly url: string;
  /** 0-based, over every request the proxy has seen. */
  readonly index: number;
}

export class FaultProxy {
  decide: (request: ProxiedRequest) => Fault = () => 'pass';
  /** What happened to each request, in order. */
  readonly log: { method: string; url: string; fault: Fault }[] = [];
  readonly #server: Server;
  readonly #sockets = new Set<Socket>();
  #port = 0;

  constructor(private readonly targetPort: number) {
    this.#server = createServer((req, res) => this.#handle(req, res));
    this.#server.on('connection', (socket) => {
      this.#sockets.add(socket);
      socket.once('close', () => this.#sockets.delete(socket));
    });
  }

  async start(): Promise<number> {
    await new Promise<void>((resolve) => this.#server.listen(0, '127.0.0.1', resolve));
    this.#port = (this.#server.address() as AddressInfo).port;
    return this.#port;
  }

  get endpoint(): string {
    return `http://127.0.0.1:${this.#port}`;
  }

  count(fault: Fault, method?: string): number {
    return this.log.filter((entry) => entry.fault === fault && (method === undefined || entry.method === method)).length;
  }

  async close(): Promise<void> {
    for (const socket of this.#sockets) socket.destroy();
    await new Promise<void>((resolve) => this.#server.close(() => resolve()));
  }

  #handle(req: IncomingMessage, res: ServerResponse): void {
    const fault = this.decide({ method: req.method ?? 'GET', url: req.url ?? '/', index: this.log.length });
    this.log.push({ method: req.method ?? 'GET', url: req.url ?? '/', fault });
    switch (fault) {
      case 'reset':
        req.socket.destroy();
        return;
      case 'hang':
        req.resume(); // read the body, answer nothing
        return;
      case '500':
        req.resume();
        req.once('end', () => {
          res.writeHead(500, { 'content-type': 'application/xml' });
          res.end('<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>InternalError</Code><Message>injected fault</Message></Error>');
        });
        return;
      case 'pass':
      case 'drop-response':
        this.#forward(req, res, fault === 'drop-response');
        return;
    }
  }

  #forward(req: IncomingMessage, res: ServerResponse, dropResponse: boolean): void {
    const upstream = httpRequest({ host: '127.0.0.1', port: this.targetPort, method: req.method, path: req.url, headers: req.headers }, (reply) => {
      if (dropResponse) {
        reply.resume();
        reply.once('end', () => req.socket.destroy());
        return;
      }
      res.writeHead(reply.statusCode ?? 502, reply.headers);
      reply.pipe(res);
    });
    upstream.on('error', () => req.socket.destroy());
    req.pipe(upstream);
  }
}
