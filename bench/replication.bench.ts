/**
 * Replication read throughput (START_REPLICATION) next to the ingest rate, in one run:
 *   - a real `safekeeper run` process (--no-sync, so the disk's fsync latency does not set the numbers), fed
 *     SYNTHETIC_WAL_BYTES of valid synthetic WAL by the test proposer (ingest MiB/s: first AppendRequest to
 *     the flush_lsn acknowledgement of the end);
 *   - then 1 and 16 readers at once read it all back from the timeline start: on a node with the smallest
 *     ring (RING_SIZE_BYTES_MIN: nearly every byte comes from the segment files, in the page cache) and on
 *     a node whose ring holds the whole stream (every byte from the ring). A stalled "holder" reader is
 *     attached before ingest so WAL removal (after backup) keeps the segments local; once it leaves and a
 *     checkpoint removes the backed-up segments, the same reads come from remote storage (the default
 *     file:// backend). The split by source is read from `safekeeper_wal_sent_bytes_total{source}` on
 *     /metrics, so each row says where bytes came from;
 *   - live: 16 readers attached while the WAL is ingested (ingest MiB/s with them, and when they finish).
 * Readers are lean raw clients in this process that parse only message and XLogData headers, so the
 * client side costs little next to the server. Aggregate MiB/s = readers × bytes / wall time.
 * Run: `npm run build`, then `node --import tsx bench/replication.bench.ts` (or through bench/run.ts).
 */
import { randomBytes } from 'node:crypto';
import { readdir } from 'node:fs/promises';
import net from 'node:net';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { type Lsn, formatLsn, segmentStartLsn } from '../src/wal/lsn.js';
import { killAllNodes, spawnNode, testNodeArgs, type NodeProcess } from '../test/harness/node_process.js';
import { TestProposer } from '../test/harness/test_proposer.js';
import { syntheticWal, walRange, type SyntheticWal } from '../test/harness/wal_source.js';
import { makeTempDir, removeAllTempDirs } from '../test/harness/tmp.js';

const SEGMENT_BYTES = 16 * 1024 * 1024;
const SYNTHETIC_WAL_BYTES = 128 * 1024 * 1024;
const PG_VERSION = 150008;
const SYSTEM_ID = 7_400_000_000_000_000_001n;
const SMALL_RING = '2MiB';
const LARGE_RING = '256MiB';
const READER_COUNTS = [1, 16] as const;
const READ_TIMEOUT_MS = 120_000;

export interface ReplicationBenchRow {
  scenario: string;
  readers: number;
  mib: number;
  seconds: number;
  aggregateMibPerSecond: number;
  perReaderMibPerSecond: number;
  sources: string;
  ingestMibPerSecond: number;
}

interface Ids {
  tenantId: string;
  timelineId: string;
}

const MIB = 1024 * 1024;
const newIds = (): Ids => ({ tenantId: randomBytes(16).toString('hex'), timelineId: randomBytes(16).toString('hex') });

/** Elects term 1 on a fresh timeline; returns the proposer, ready to stream from the WAL's first record. */
async function electedProposer(node: NodeProcess, ids: Ids, wal: SyntheticWal): Promise<TestProposer> {
  const proposer = await TestProposer.connect({ port: node.pgPort, ...ids, protoVersion: 3, pgVersion: PG_VERSION, systemId: SYSTEM_ID, walSegSizeBytes: SEGMENT_BYTES, waitMs: 60_000 });
  await proposer.greet();
  await proposer.vote(1n);
  const startLsn = wal.firstRecordLsn;
  await proposer.elect({ term: 1n, startStreamingAtLsn: startLsn, termHistory: [{ term: 1n, lsn: startLsn }] });
  await proposer.heartbeat(startLsn);
  await proposer.waitForFlush(startLsn);
  return proposer;
}

/** Streams the WAL and waits for its flush acknowledgement; then commits it. Returns ingest MiB/s. */
async function ingest(proposer: TestProposer, wal: SyntheticWal): Promise<number> {
  const startLsn = wal.firstRecordLsn;
  const startedMs = performance.now();
  await proposer.streamWal(walRange(wal, startLsn), startLsn);
  await proposer.waitForFlush(wal.endLsn, READ_TIMEOUT_MS);
  const seconds = (performance.now() - startedMs) / 1000;
  await proposer.heartbeat(wal.endLsn);
  return Number(wal.endLsn - startLsn) / MIB / seconds;
}

function startupMessage(parameters: Record<string, string>): Buffer {
  const body = Buffer.from(`${Object.entries(parameters).map(([key, value]) => `${key}\0${value}\0`).join('')}\0`, 'utf8');
  const message = Buffer.alloc(8 + body.length);
  message.writeInt32BE(message.length, 0);
  message.writeInt32BE(196608, 4); // protocol 3.0
  body.copy(message, 8);
  return message;
}

function queryMessage(text: string): Buffer {
  const body = Buffer.from(`${text}\0`, 'utf8');
  const message = Buffer.alloc(5 + body.length);
  message[0] = 0x51; // 'Q'
  message.writeInt32BE(4 + body.length, 1);
  body.copy(message, 5);
  return message;
}

/**
 * A raw replication reader: resolves when XLogData up to `endLsn` has arrived. It parses only message
 * headers and the 25-byte XLogData header; WAL bytes are counted, never copied.
 */
class RawReader {
  readonly socket: net.Socket;
  readonly done: Promise<void>;
  #pending = Buffer.alloc(0); // an incomplete message header, or the start of a CopyData payload (≤ 30 bytes)
  #tag = 0;
  #bodyBytes = 0;
  #bodyLeft = -1; // -1 while reading a message header
  #small: Buffer[] = [];
  #started = false;
  #lsn: Lsn;
  #finish: (error?: Error) => void = () => undefined;

  /** Resolves once CopyBothResponse arrived (the reader is registered). */
  readonly started: Promise<void>;
  #onStarted: () => void = () => undefined;

  /** `stall`: stop reading the socket right after CopyBothResponse (a reader that holds WAL and reads nothing). */
  constructor(port: number, ids: Ids, readonly startLsn: Lsn, readonly endLsn: Lsn, readonly stall = false) {
    this.started = new Promise((resolve) => (this.#onStarted = resolve));
    this.#lsn = startLsn;
    this.socket = net.connect({ port, host: '127.0.0.1', noDelay: true });
    this.done = new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => this.#finish(new Error(`reader stuck at ${formatLsn(this.#lsn)}, wanted ${formatLsn(endLsn)}`)), READ_TIMEOUT_MS);
      this.#finish = (error?: Error): void => {
        this.#finish = () => undefined;
        clearTimeout(timer);
        this.socket.destroy();
        if (error === undefined) resolve();
        else reject(error);
      };
    });
    this.socket.on('error', (error) => this.#finish(error));
    this.socket.on('close', () => this.#finish(new Error('connection closed before the end')));
    this.socket.on('connect', () =>
      this.socket.write(startupMessage({ user: 'bench', database: 'bench', application_name: 'bench', options: `-c tenant_id=${ids.tenantId} timeline_id=${ids.timelineId}` })),
    );
    this.socket.on('data', (chunk: Buffer) => this.#onData(chunk));
  }

  #onData(chunk: Buffer): void {
    let at = 0;
    while (at < chunk.length) {
      if (this.#bodyLeft < 0) {
        const take = Math.min(5 - this.#pending.length, chunk.length - at);
        this.#pending = Buffer.concat([this.#pending, chunk.subarray(at, at + take)]);
        at += take;
        if (this.#pending.length < 5) return;
        this.#tag = this.#pending[0]!;
        this.#bodyBytes = this.#bodyLeft = this.#pending.readInt32BE(1) - 4;
        this.#pending = Buffer.alloc(0);
        this.#small = [];
        if (this.#bodyLeft === 0) this.#onMessage();
        continue;
      }
      const take = Math.min(this.#bodyLeft, chunk.length - at);
      if (this.#tag === 0x64) {
        const headerNeed = Math.min(25 - this.#pending.length, take);
        if (headerNeed > 0) this.#pending = Buffer.concat([this.#pending, chunk.subarray(at, at + headerNeed)]);
      } else {
        this.#small.push(chunk.subarray(at, at + take));
      }
      at += take;
      this.#bodyLeft -= take;
      if (this.#bodyLeft === 0) this.#onMessage();
    }
  }

  #onMessage(): void {
    this.#bodyLeft = -1;
    const tag = this.#tag;
    if (tag === 0x57) {
      this.#onStarted(); // CopyBothResponse
      if (this.stall) this.socket.pause();
    } else if (tag === 0x64 && this.#pending[0] === 0x77) {
      const walStartLsn = this.#pending.readBigUInt64BE(1);
      if (walStartLsn !== this.#lsn) return this.#finish(new Error(`XLogData at ${formatLsn(walStartLsn)}, expected ${formatLsn(this.#lsn)}`));
      this.#lsn = walStartLsn + BigInt(this.#bodyBytes - 25);
      if (this.#lsn >= this.endLsn) this.#finish();
    } else if (tag === 0x5a && !this.#started) {
      this.#started = true; // ReadyForQuery after the startup
      this.socket.write(queryMessage(`START_REPLICATION PHYSICAL ${formatLsn(this.startLsn)}`));
    } else if (tag === 0x45) {
      this.#finish(new Error(`ErrorResponse: ${Buffer.concat(this.#small).toString('utf8')}`));
    }
    this.#pending = Buffer.alloc(0);
  }
}

/** Bytes sent by source, from the node's /metrics. */
async function sentBytesBySource(node: NodeProcess): Promise<Record<string, number>> {
  const text = await (await fetch(`${node.httpUrl}/metrics`)).text();
  const out: Record<string, number> = { ring: 0, segment: 0, remote: 0, initial_image: 0 };
  for (const match of text.matchAll(/^safekeeper_wal_sent_bytes_total\{source="(\w+)"\} (\S+)$/gm)) out[match[1]!] = Number(match[2]);
  return out;
}

/** `count` readers at once from the WAL's first record to its end; one row. */
async function readAll(node: NodeProcess, ids: Ids, wal: SyntheticWal, count: number, scenario: string, ingestMibPerSecond: number): Promise<ReplicationBenchRow> {
  const before = await sentBytesBySource(node);
  const startedMs = performance.now();
  const readers = Array.from({ length: count }, () => new RawReader(node.pgPort, ids, wal.firstRecordLsn, wal.endLsn));
  await Promise.all(readers.map((reader) => reader.done));
  const seconds = (performance.now() - startedMs) / 1000;
  return row(scenario, count, wal, seconds, sourcesText(before, await sentBytesBySource(node)), ingestMibPerSecond);
}

/** "ring 97%, segment 3%": where the bytes between two /metrics samples came from. */
function sourcesText(before: Record<string, number>, after: Record<string, number>): string {
  const deltas = Object.keys(after).map((source) => [source, (after[source] ?? 0) - (before[source] ?? 0)] as const);
  const total = deltas.reduce((sum, [, bytes]) => sum + bytes, 0);
  return deltas.filter(([, bytes]) => bytes * 100 >= total).map(([source, bytes]) => `${source} ${Math.round((100 * bytes) / Math.max(1, total))}%`).join(', ');
}

function row(scenario: string, readers: number, wal: SyntheticWal, seconds: number, sources: string, ingestMibPerSecond: number): ReplicationBenchRow {
  const mib = Number(wal.endLsn - wal.firstRecordLsn) / MIB;
  return {
    scenario,
    readers,
    mib: Math.round(mib * readers),
    seconds: Number(seconds.toFixed(2)),
    aggregateMibPerSecond: Math.round((mib * readers) / seconds),
    perReaderMibPerSecond: Math.round(mib / seconds),
    sources,
    ingestMibPerSecond: Math.round(ingestMibPerSecond),
  };
}

/** Checkpoints until the timeline's first segment has been backed up and removed locally. */
async function removeBackedUpWal(node: NodeProcess, dataDir: string, ids: Ids): Promise<void> {
  const deadlineMs = Date.now() + READ_TIMEOUT_MS;
  for (;;) {
    const response = await fetch(`${node.httpUrl}/v1/tenant/${ids.tenantId}/timeline/${ids.timelineId}/checkpoint`, { method: 'POST' });
    if (response.status !== 200) throw new Error(`checkpoint: HTTP ${response.status}`);
    if (!(await readdir(join(dataDir, ids.tenantId, ids.timelineId))).some((name) => name.startsWith('000000010000000000000001'))) return;
    if (Date.now() > deadlineMs) throw new Error('the first segment was never removed');
    await new Promise((resolve) => setTimeout(resolve, 200));
  }
}

export async function run(): Promise<ReplicationBenchRow[]> {
  const wal = syntheticWal({ startLsn: segmentStartLsn(1n, SEGMENT_BYTES), segmentSizeBytes: SEGMENT_BYTES, pgVersion: PG_VERSION, systemId: SYSTEM_ID, totalBytes: SYNTHETIC_WAL_BYTES, seed: 42 });
  const rows: ReplicationBenchRow[] = [];
  try {
    for (const [where, ring] of [['from segments', SMALL_RING], ['from the ring', LARGE_RING]] as const) {
      const dataDir = makeTempDir('sk-bench-repl-');
      const node = await spawnNode(testNodeArgs(dataDir, ['--no-sync', '--ring-size', ring, '--log-level', 'warn']), { built: true });
      const ids = newIds();
      const proposer = await electedProposer(node, ids, wal);
      const holder = new RawReader(node.pgPort, ids, wal.firstRecordLsn, wal.endLsn, true);
      await holder.started; // registered: WAL removal keeps everything it may still ask for
      const ingestMibPerSecond = await ingest(proposer, wal);
      for (const count of READER_COUNTS) rows.push(await readAll(node, ids, wal, count, `after ingest, ${where} (ring ${ring})`, ingestMibPerSecond));
      holder.socket.destroy();
      await holder.done.catch(() => undefined); // destroyed on purpose
      await proposer.close();
      if (ring === SMALL_RING) {
        await removeBackedUpWal(node, dataDir, ids);
        for (const count of READER_COUNTS) rows.push(await readAll(node, ids, wal, count, `after removal, from remote storage (file://)`, ingestMibPerSecond));
      } else {
        // Live: readers attached before the WAL arrives follow it from the ring while it is ingested.
        const live = newIds();
        const liveProposer = await electedProposer(node, live, wal);
        const before = await sentBytesBySource(node);
        const startedMs = performance.now();
        const readers = Array.from({ length: 16 }, () => new RawReader(node.pgPort, live, wal.firstRecordLsn, wal.endLsn));
        await Promise.all(readers.map((reader) => reader.started));
        const liveIngest = await ingest(liveProposer, wal);
        await Promise.all(readers.map((reader) => reader.done));
        const seconds = (performance.now() - startedMs) / 1000;
        rows.push(row(`live, following ingest (ring ${ring})`, 16, wal, seconds, sourcesText(before, await sentBytesBySource(node)), liveIngest));
        await liveProposer.close();
      }
      await node.stop();
    }
  } finally {
    await killAllNodes();
  }
  return rows;
}

if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href) {
  try {
    console.table(await run());
  } finally {
    await killAllNodes();
    await removeAllTempDirs();
  }
}
