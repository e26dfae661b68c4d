/** The real `safekeeper` binary: start, status, metrics, graceful stop, data directory lock and node id, config errors. */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { connect, type Socket } from 'node:net';
import { Writable } from 'node:stream';
import { mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { parse as parseToml } from 'smol-toml';
import { loadConfig } from '../../src/config/load.js';
import { TooManyConnectionsError } from '../../src/errors.js';
import { HTTP_CONNECTIONS_MAX, HTTP_REQUESTS_PER_CONNECTION_MAX } from '../../src/limits.js';
import { onScrape } from '../../src/metrics.js';
import { createLogger, lsnField } from '../../src/log.js';
import { SafekeeperNode, type NodeHooks } from '../../src/node.js';
import { killAllNodes, runCli, spawnNode, testNodeArgs } from '../harness/node_process.js';
import { waitFor } from '../harness/wait.js';

let root = '';
before(async () => {
  root = await mkdtemp(join(tmpdir(), 'sk-lifecycle-'));
});
after(async () => {
  await killAllNodes();
  await rm(root, { recursive: true, force: true });
});

let dirCount = 0;
const newDataDir = (): string => join(root, `node-${++dirCount}`);

/** A pid that is certainly not running: a process that has already exited. */
async function deadPid(): Promise<number> {
  const child = spawn(process.execPath, ['-e', '']);
  await new Promise((resolve) => child.once('exit', resolve));
  assert.ok(child.pid !== undefined);
  return child.pid;
}

describe('safekeeper run', () => {
  test('serves status and metrics, then exits 0 within a second of SIGTERM', async () => {
    const dataDir = newDataDir();
    const node = await spawnNode(testNodeArgs(dataDir));
    assert.ok(node.pgPort > 0);
    assert.ok(node.httpPort > 0);

    const status = await fetch(`${node.httpUrl}/v1/status`);
    assert.equal(status.status, 200);
    const body = (await status.json()) as Record<string, unknown>;
    assert.equal(body.id, 1);
    assert.equal(body.version, JSON.parse(await readFile('package.json', 'utf8')).version);
    assert.equal(body.listen_pg, `127.0.0.1:${node.pgPort}`);
    assert.equal(body.listen_http, `127.0.0.1:${node.httpPort}`);

    const metrics = await (await fetch(`${node.httpUrl}/metrics`)).text();
    assert.match(metrics, /^process_cpu_user_seconds_total /m);
    assert.match(metrics, /^safekeeper_build_info\{version="[^"]+"\} 1$/m);

    const missing = await fetch(`${node.httpUrl}/v1/no_such_route`);
    assert.equal(missing.status, 404);
    assert.equal(typeof ((await missing.json()) as { msg: unknown }).msg, 'string');

    assert.equal((await readFile(join(dataDir, 'safekeeper.id'), 'utf8')).trim(), '1');
    assert.equal((await readFile(join(dataDir, 'safekeeper.pid'), 'utf8')).trim(), String(node.process.pid));

    const stopStartedMs = Date.now();
    const exit = await node.stop();
    assert.equal(exit.code, 0, node.stderr());
    assert.ok(Date.now() - stopStartedMs < 1000, `stopped in ${Date.now() - stopStartedMs} ms`);
    await assert.rejects(readFile(join(dataDir, 'safekeeper.pid')), { code: 'ENOENT' });
  });

  test('refuses a second instance on the same data directory', async () => {
    const dataDir = newDataDir();
    const first = await spawnNode(testNodeArgs(dataDir));
    const second = await runCli(testNodeArgs(dataDir));
    assert.notEqual(second.code, 0);
    assert.match(second.stderr, new RegExp(`data directory ${dataDir} is in use by process ${first.process.pid}`));
    assert.equal((await first.stop()).code, 0);
  });

  test('takes over a stale lock file whose process is gone', async () => {
    const dataDir = newDataDir();
    const first = await spawnNode(testNodeArgs(dataDir));
    await first.kill9();
    const stalePid = await deadPid();
    await writeFile(join(dataDir, 'safekeeper.pid'), `${stalePid}\n`);
    const second = await spawnNode(testNodeArgs(dataDir));
    assert.match(second.stderr(), /taking over a stale lock file/);
    assert.equal((await readFile(join(dataDir, 'safekeeper.pid'), 'utf8')).trim(), String(second.process.pid));
    assert.equal((await second.stop()).code, 0);
  });

  test('keeps the node id of the data directory and refuses a different explicit id', async () => {
    const dataDir = newDataDir();
    const first = await spawnNode(testNodeArgs(dataDir, ['--id', '7']));
    assert.equal((await first.stop()).code, 0);

    const defaulted = await spawnNode(testNodeArgs(dataDir));
    const status = (await (await fetch(`${defaulted.httpUrl}/v1/status`)).json()) as { id: number };
    assert.equal(status.id, 7);
    assert.equal((await defaulted.stop()).code, 0);

    const conflicting = await runCli(testNodeArgs(dataDir, ['--id', '8']));
    assert.equal(conflicting.code, 2);
    assert.match(conflicting.stderr, /config key 'id' \(from flag --id\): .*belongs to node 7, not 8/);
  });

  test('refuses a non-empty directory that is not a safekeeper data directory, and leaves it untouched', async () => {
    // Found by running `--data-dir /`: the start emptied <data_dir>/tmp, that is /tmp.
    const dataDir = newDataDir();
    await mkdir(join(dataDir, 'tmp'), { recursive: true });
    await writeFile(join(dataDir, 'tmp', 'keep.txt'), 'not ours\n');
    await writeFile(join(dataDir, 'notes.txt'), 'not ours either\n');
    const result = await runCli(testNodeArgs(dataDir));
    assert.equal(result.code, 2);
    assert.match(result.stderr, new RegExp(`config key 'data_dir' \\(from flag --data-dir\\): ${dataDir} is not a safekeeper data directory: it is not empty \\("notes.txt", "tmp"\\) and has no safekeeper.id`));
    assert.equal(await readFile(join(dataDir, 'tmp', 'keep.txt'), 'utf8'), 'not ours\n');
    assert.deepEqual((await readdir(dataDir)).sort(), ['notes.txt', 'tmp'], 'no lock, pid or id file left behind');
  });

  test('starts in a directory a first start left with only its lock and pid files', async () => {
    const dataDir = newDataDir();
    await mkdir(dataDir, { recursive: true });
    await writeFile(join(dataDir, 'safekeeper.lock'), '');
    await writeFile(join(dataDir, 'safekeeper.pid'), `${await deadPid()}\n`);
    const node = await spawnNode(testNodeArgs(dataDir));
    assert.equal((await readFile(join(dataDir, 'safekeeper.id'), 'utf8')).trim(), '1');
    await node.stop();
  });

  test('a data directory that cannot be created is a config error naming data_dir, even under /proc', async () => {
    // Node's recursive mkdir spins forever on /proc (ENOENT with an existing parent); the node must not.
    const result = await runCli(testNodeArgs('/proc/no-such-safekeeper-dir/data'));
    assert.equal(result.code, 2);
    assert.match(result.stderr, /config key 'data_dir' \(from flag --data-dir\): cannot create \/proc\/no-such-safekeeper-dir\/data: ENOENT/);
  });

  test('exits 2 naming the key for a bad config file value', async () => {
    const dataDir = newDataDir();
    const file = join(root, 'bad.toml');
    await writeFile(file, 'ring_size = "16MB"\n');
    const result = await runCli([...testNodeArgs(dataDir), '--config', file]);
    assert.equal(result.code, 2);
    assert.match(result.stderr, new RegExp(`config key 'ring_size' \\(from ${file}\\)`));
  });

  test('exits 2 for a bad flag value and for an unknown flag', async () => {
    const badValue = await runCli(testNodeArgs(newDataDir(), ['--heartbeat-timeout', '5']));
    assert.equal(badValue.code, 2);
    assert.match(badValue.stderr, /config key 'heartbeat_timeout' \(from flag --heartbeat-timeout\): a duration needs a unit/);
    const unknown = await runCli(testNodeArgs(newDataDir(), ['--no-such-flag']));
    assert.equal(unknown.code, 2);
    assert.match(unknown.stderr, /no-such-flag/);
    // A negative number after a flag is its value, checked as such (parseArgs alone calls it "ambiguous").
    const negative = await runCli(testNodeArgs(newDataDir(), ['--id', '-1']));
    assert.equal(negative.code, 2);
    assert.match(negative.stderr, /config key 'id' \(from flag --id\): must be at least 0/);
  });
});

describe('safekeeper config, --help, --version', () => {
  test('config prints a TOML file that parses, with every key commented', async () => {
    const result = await runCli(['config']);
    assert.equal(result.code, 0, result.stderr);
    assert.equal(Object.keys(parseToml(result.stdout)).length, 0);
    const uncommented = result.stdout.replace(/^# ([a-z_]+ = )/gm, '$1');
    const table = parseToml(uncommented);
    assert.equal(table.listen_pg, '127.0.0.1:5454');
    assert.equal(table.control_file_save_interval, '300s');
  });

  test('--version prints the package version and --help lists the flags', async () => {
    const version = await runCli(['--version']);
    assert.equal(version.code, 0);
    assert.match(version.stdout, /^safekeeper \d+\.\d+\.\d+/);
    const help = await runCli(['--help']);
    assert.equal(help.code, 0);
    assert.match(help.stdout, /--control-file-save-interval VALUE/);
    assert.match(help.stdout, /--no-sync .*UNSAFE/);
    // --help shows each doc's first sentence: keys refused at start must say so there.
    assert.match(help.stdout, /--auth-public-key VALUE .*not implemented yet/);
    assert.match(help.stdout, /--broker VALUE .*not implemented yet/);
    // Keys accepted for the multi-node broker but without effect until it exists say so too.
    assert.match(help.stdout, /--advertise-pg VALUE .*no effect yet/);
    assert.match(help.stdout, /--heartbeat-timeout VALUE .*no effect yet/);
  });
});

/** A logger whose JSON lines are kept in `lines`. */
function capturingLogger(): { log: ReturnType<typeof createLogger>; lines: Record<string, unknown>[] } {
  const lines: Record<string, unknown>[] = [];
  const stream = new Writable({
    write(chunk: Buffer, _encoding, done) {
      for (const line of chunk.toString('utf8').split('\n')) if (line !== '') lines.push(JSON.parse(line) as Record<string, unknown>);
      done();
    },
  });
  return { log: createLogger({ logLevel: 'debug', logFormat: 'json' }, stream), lines };
}

async function openSocket(port: number): Promise<Socket> {
  const socket = connect({ host: '127.0.0.1', port });
  await new Promise<void>((resolve, reject) => socket.once('connect', resolve).once('error', reject));
  return socket;
}

const socketClosed = (socket: Socket): Promise<void> => new Promise((resolve) => (socket.destroyed ? resolve() : socket.once('close', () => resolve())));

describe('SafekeeperNode in process', () => {
  const startNode = (dataDir: string, hooks: NodeHooks, flags: Record<string, string | boolean> = {}) => {
    const config = loadConfig({ flags: { 'data-dir': dataDir, 'listen-pg': '127.0.0.1:0', 'listen-http': '127.0.0.1:0', ...flags }, cwd: root });
    const { log, lines } = capturingLogger();
    return SafekeeperNode.start(config, hooks, log).then((node) => ({ node, lines }));
  };

  test('runs hooks in order, waits for connections on stop, and ends them via the signal', async () => {
    const events: string[] = [];
    const dataDir = newDataDir();
    const { node } = await startNode(dataDir, {
      onStart: async () => void events.push('start'),
      onStop: async () => void events.push('stop'),
      onPgConnection: async (socket, signal, info) => {
        events.push(`connection ${info.connId}`);
        await new Promise((resolve) => signal.addEventListener('abort', resolve, { once: true }));
        events.push(`abort seen ${info.connId}`);
        socket.end('bye');
      },
    });
    assert.match(node.readyLine(), /^listening pg=127\.0\.0\.1:\d+ http=127\.0\.0\.1:\d+$/);
    const client = await openSocket(node.pgAddress.port);
    let received = '';
    client.on('data', (chunk: Buffer) => (received += chunk.toString()));
    await waitFor(() => node.pgConnectionCount === 1, { what: 'connection accepted' });
    const clientClosed = socketClosed(client);
    client.on('end', () => client.end());
    await node.stop();
    await clientClosed;
    assert.equal(received, 'bye');
    assert.deepEqual(events, ['start', 'connection 1', 'abort seen 1', 'stop']);
    await assert.rejects(readFile(join(dataDir, 'safekeeper.pid')), { code: 'ENOENT' });
  });

  test('destroys connections whose handler ignores the abort, after the grace period', async () => {
    const { node } = await startNode(newDataDir(), { onPgConnection: () => {} });
    const client = await openSocket(node.pgAddress.port);
    await waitFor(() => node.pgConnectionCount === 1, { what: 'connection accepted' });
    await node.stop();
    await socketClosed(client);
    assert.equal(node.pgConnectionCount, 0);
  });

  test('hands connections over max_connections to onPgConnectionRefused', async () => {
    const refused: TooManyConnectionsError[] = [];
    const { node } = await startNode(newDataDir(), {
      onPgConnection: () => {},
      onPgConnectionRefused: (socket, error) => {
        refused.push(error);
        socket.destroy();
      },
    }, { 'max-connections': '1' });
    const first = await openSocket(node.pgAddress.port);
    await waitFor(() => node.pgConnectionCount === 1, { what: 'first connection accepted' });
    const second = await openSocket(node.pgAddress.port);
    await socketClosed(second);
    assert.equal(refused.length, 1);
    assert.equal(refused[0]?.sqlState, '53300');
    first.destroy();
    await node.stop();
  });

  test('refuses a second node on the same data directory in the same process', async () => {
    const dataDir = newDataDir();
    const { node } = await startNode(dataDir, { onPgConnection: () => {} });
    await assert.rejects(startNode(dataDir, { onPgConnection: () => {} }), { code: 'SK_DATA_DIR_LOCKED', message: new RegExp(`data directory ${dataDir} is in use`) });
    await node.stop();
  });

  test('HTTP: connections over HTTP_CONNECTIONS_MAX are closed; a freed slot serves again', async () => {
    const { node } = await startNode(newDataDir(), { onPgConnection: () => {} });
    const port = node.httpAddress.port;
    const held: Socket[] = [];
    try {
      // In batches well under the listen backlog (511): a burst above it overflows the accept queue, and a
      // client whose handshake completed there is only accepted after SYN-ACK retransmits (1 s, 3 s, 7 s...),
      // so the node would count fewer connections than the test holds for seconds.
      while (held.length < HTTP_CONNECTIONS_MAX) {
        const batch = Math.min(100, HTTP_CONNECTIONS_MAX - held.length);
        held.push(...(await Promise.all(Array.from({ length: batch }, () => openSocket(port)))));
      }
      await waitFor(async () => {
        const extra = await openSocket(port).catch(() => null);
        if (extra === null) return true; // refused outright
        const closedAtOnce = await Promise.race([socketClosed(extra).then(() => true), new Promise<boolean>((resolve) => setTimeout(() => resolve(false), 1_000))]);
        extra.destroy();
        return closedAtOnce;
      }, { what: 'a connection over the limit is closed by the node' });
      for (const socket of held.splice(0, 10)) socket.destroy();
      await waitFor(async () => (await fetch(`http://127.0.0.1:${port}/v1/status`).then((response) => response.status, () => 0)) === 200, { what: 'a freed slot serves requests' });
    } finally {
      for (const socket of held) socket.destroy(); // else a failure here leaves the node up and the file hangs
      await node.stop();
    }
  });

  test('HTTP: a client that pipelines scrapes without reading gets one render for the burst and at most HTTP_REQUESTS_PER_CONNECTION_MAX answers', async () => {
    const { node } = await startNode(newDataDir(), { onPgConnection: () => {} });
    let renders = 0;
    const unhook = onScrape(async () => void (renders += 1));
    try {
      const socket = await openSocket(node.httpAddress.port);
      let received = '';
      socket.on('data', (chunk: Buffer) => (received += chunk.toString('latin1')));
      const requests = 3 * HTTP_REQUESTS_PER_CONNECTION_MAX;
      socket.write('GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n'.repeat(requests));
      const count = (status: number): number => received.match(new RegExp(`^HTTP/1\\.1 ${status} `, 'gm'))?.length ?? 0;
      await waitFor(() => count(200) + count(503) === requests, { what: 'every pipelined request answered' });
      assert.equal(count(200), HTTP_REQUESTS_PER_CONNECTION_MAX, 'requests past the limit get 503, not a render');
      assert.ok(renders < 10, `one render serves the scrapes that arrived together (${renders} renders for ${count(200)} answers)`);
      socket.destroy();
    } finally {
      unhook();
      await node.stop();
    }
  });

  test('HTTP: exact u64 ids, 413 for a large body, 400 for bad JSON, JSON errors', async () => {
    const { node } = await startNode(newDataDir(), { onPgConnection: () => {} }, { id: '1152921504606846977' });
    const url = `http://127.0.0.1:${node.httpAddress.port}`;
    const statusText = await (await fetch(`${url}/v1/status`)).text();
    assert.match(statusText, /^\{"id":1152921504606846977,/);
    const large = await fetch(`${url}/v1/status`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: `"${'x'.repeat(2 * 1024 * 1024)}"` });
    assert.equal(large.status, 413);
    assert.equal(typeof ((await large.json()) as { msg: unknown }).msg, 'string');
    const badJson = await fetch(`${url}/v1/status`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{oops' });
    assert.equal(badJson.status, 400);
    assert.match(((await badJson.json()) as { msg: string }).msg, /JSON/);
    await node.stop();
  });

  test('logs bigints as text, LSN fields as X/Y, with node_id on every line', async () => {
    const { node, lines } = await startNode(newDataDir(), { onPgConnection: () => {} }, { id: '5' });
    node.log.info({ flush_lsn: 0x1_0000_00a0n, term: 2n ** 60n, nested: { commitLsn: 0x16b_3748n } }, 'test line');
    const line = lines.find((candidate) => candidate.msg === 'test line');
    assert.ok(line !== undefined);
    assert.equal(line.flush_lsn, '1/A0');
    assert.equal(line.term, '1152921504606846976');
    assert.deepEqual(line.nested, { commitLsn: lsnField(0x16b_3748n) });
    assert.equal(line.node_id, '5');
    await node.stop();
  });
});
