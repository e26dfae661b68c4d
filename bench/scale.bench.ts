/**
 * The scale benchmark (issue 6): many timelines on one `safekeeper run` process, with their managers on the
 * coordinator thread.
 *
 *   1. Idle: IDLE_TIMELINES timelines created over HTTP (each with a control file, a state block, a
 *      TimelineWal, an acceptor and a manager that waits on nothing of its own: the coordinator keeps one
 *      Atomics.waitAsync per chunk of 256 state blocks); resident memory per
 *      timeline (RSS growth of the whole process, all threads, after a settle period, divided by the count)
 *      and the node's CPU use while they sit idle (utime + stime from /proc over IDLE_CPU_WINDOW_MS). Then the
 *      node is restarted and the same is measured with the timelines loaded from disk.
 *   2. Ingest: INGEST_TIMELINES timelines receiving WAL at once (one START_WAL_PUSH connection each, 8 KiB
 *      appends as fast as backpressure allows, bench/ingest_client.ts), against one timeline alone with the
 *      same appends; aggregate durable MiB/s in steady state (acknowledged flush_lsns summed after a warm-up
 *      and again INGEST_WINDOW_MS later). WAL backup runs as usual (complete segments uploaded).
 *
 * The data dir and the remote storage are on tmpfs (/dev/shm) with --no-sync: this measures the software
 * (event loop, writer pool, managers, backup), not the disk, which ingest.bench.ts measures. The client runs
 * in this process and shares the machine's cores with the node, so on a small machine it is part of what
 * limits the many-timeline run. Goals (issue 6): ≤ 20 KiB per idle timeline, ~0% CPU at idle, aggregate ≥ 0.7
 * × one timeline. Reported, never asserted. Counts can be lowered with SCALE_IDLE_TIMELINES /
 * SCALE_INGEST_TIMELINES (bench knobs, read here only). Run: `npm run build`, then `node --import tsx bench/scale.bench.ts`.
 */
import { randomBytes } from 'node:crypto';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { setTimeout as sleep } from 'node:timers/promises';
import { formatLsn } from '../src/wal/lsn.js';
import { spawnNode, testNodeArgs, type NodeProcess } from '../test/harness/node_process.js';
import { WalPushClient } from './ingest_client.js';
import { BENCH_SEGMENT_BYTES, buildBenchWal } from './ingest_wal.js';

const IDLE_TIMELINES = Number(process.env.SCALE_IDLE_TIMELINES ?? 10_000);
const INGEST_TIMELINES = Number(process.env.SCALE_INGEST_TIMELINES ?? 1_000);
const CREATE_CONCURRENCY = 32;
const CONNECT_CONCURRENCY = 50;
const SETTLE_MS = 5_000;
const IDLE_CPU_WINDOW_MS = 10_000;
const INGEST_WARMUP_MS = 2_000;
/** Each timeline streams this much before the window opens (at most INGEST_WARMUP_MS_MAX): past its ring's first fill. */
const INGEST_WARM_BYTES = 3 * 1024 * 1024;
const INGEST_WARMUP_MS_MAX = 60_000;
const INGEST_WINDOW_MS = 5_000;
const APPEND_BYTES = 8 * 1024;
const MIB = 1024 * 1024;
/**
 * Ingest uses 1 MiB segments: with 16 MiB ones, 1,000 new timelines zero-fill 2 × 16 GiB of initial and
 * prepared segments before their first steady-state write (more than the tmpfs holds). Timelines start
 * 64 KiB before segment 2, as in ingest.bench.ts.
 */
const INGEST_SEGMENT_BYTES = 1024 * 1024;
const START_LSN = 2 * INGEST_SEGMENT_BYTES - 64 * 1024;
/** Idle timelines are created with the default 16 MiB segments, at this LSN. */
const IDLE_START_LSN = 2 * BENCH_SEGMENT_BYTES - 64 * 1024;
/** WAL shared by all timelines; one timeline alone may use all of it. */
const WAL_BYTES = 1024 * MIB;
const CLOCK_TICKS_PER_SECOND = 100; // Linux USER_HZ

interface ProcessSample {
  rssBytes: number;
  cpuTicks: number;
}

function sample(pid: number): ProcessSample {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  const rssKib = Number(/VmRSS:\s+(\d+) kB/.exec(status)?.[1] ?? NaN);
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return { rssBytes: rssKib * 1024, cpuTicks: Number(fields[11]) + Number(fields[12]) }; // utime + stime
}

async function idleCpuPercent(pid: number): Promise<number> {
  const before = sample(pid);
  await sleep(IDLE_CPU_WINDOW_MS);
  const after = sample(pid);
  return ((after.cpuTicks - before.cpuTicks) / CLOCK_TICKS_PER_SECOND / (IDLE_CPU_WINDOW_MS / 1000)) * 100;
}

async function inBatches<T>(items: readonly T[], concurrency: number, work: (item: T) => Promise<void>): Promise<void> {
  let next = 0;
  await Promise.all(
    Array.from({ length: concurrency }, async () => {
      while (next < items.length) await work(items[next++] as T);
    }),
  );
}

async function createTimeline(node: NodeProcess): Promise<void> {
  const body = { tenant_id: randomBytes(16).toString('hex'), timeline_id: randomBytes(16).toString('hex'), pg_version: 150008, start_lsn: formatLsn(BigInt(IDLE_START_LSN)) };
  const response = await fetch(`${node.httpUrl}/v1/tenant/timeline`, { method: 'POST', body: JSON.stringify(body), headers: { 'content-type': 'application/json' } });
  if (!response.ok) throw new Error(`create timeline: ${response.status} ${await response.text()}`);
}

async function timelineCount(node: NodeProcess): Promise<number> {
  return ((await (await fetch(`${node.httpUrl}/v1/tenant/timeline`)).json()) as unknown[]).length;
}

async function metric(node: NodeProcess, name: string): Promise<number> {
  const text = await (await fetch(`${node.httpUrl}/metrics`)).text();
  return Number(text.split('\n').find((line) => line.startsWith(`${name} `))?.split(' ')[1] ?? NaN);
}

/** V8 heap in use on the main thread and on the coordinator thread (both from /metrics). */
async function heaps(node: NodeProcess): Promise<{ main: number; coordinator: number }> {
  return { main: await metric(node, 'nodejs_heap_size_used_bytes'), coordinator: await metric(node, 'safekeeper_coordinator_heap_used_bytes') };
}

function startArgs(dataDir: string, remoteDir: string): string[] {
  return testNodeArgs(dataDir, ['--no-sync', '--remote-storage', `file://${remoteDir}`, '--ring-size', '2MiB', '--log-level', 'warn', '--max-connections', '5000']);
}

async function idlePart(root: string): Promise<Record<string, unknown>[]> {
  const dataDir = join(root, 'idle-data');
  const remoteDir = join(root, 'idle-remote');
  let node = await spawnNode(startArgs(dataDir, remoteDir), { built: true });
  const rows: Record<string, unknown>[] = [];
  try {
    await sleep(SETTLE_MS);
    const empty = sample(node.process.pid!);
    const emptyHeap = await heaps(node);
    const emptyCpu = await idleCpuPercent(node.process.pid!);
    rows.push({ scenario: 'empty node (baseline)', 'RSS MiB': (empty.rssBytes / MIB).toFixed(1), 'idle CPU %': emptyCpu.toFixed(2) });
    const createStartMs = performance.now();
    await inBatches(Array.from({ length: IDLE_TIMELINES }, (_, index) => index), CREATE_CONCURRENCY, () => createTimeline(node));
    const createMs = performance.now() - createStartMs;
    await sleep(SETTLE_MS);
    const loaded = sample(node.process.pid!);
    const loadedHeap = await heaps(node);
    const iterationsBefore = await metric(node, 'safekeeper_manager_iterations_total');
    const cpu = await idleCpuPercent(node.process.pid!);
    const iterationsAfter = await metric(node, 'safekeeper_manager_iterations_total');
    rows.push({
      scenario: `${IDLE_TIMELINES} idle timelines, created over HTTP`,
      'create/s': Math.round(IDLE_TIMELINES / (createMs / 1000)),
      'RSS MiB': (loaded.rssBytes / MIB).toFixed(1),
      'RSS KiB/timeline': ((loaded.rssBytes - empty.rssBytes) / 1024 / IDLE_TIMELINES).toFixed(2),
      'main heap KiB/timeline': ((loadedHeap.main - emptyHeap.main) / 1024 / IDLE_TIMELINES).toFixed(2),
      'coordinator heap KiB/timeline': ((loadedHeap.coordinator - emptyHeap.coordinator) / 1024 / IDLE_TIMELINES).toFixed(2),
      'idle CPU %': cpu.toFixed(2),
      'manager passes at idle': iterationsAfter - iterationsBefore,
    });

    await node.stop();
    node = await spawnNode(startArgs(dataDir, remoteDir), { readyTimeoutMs: 300_000, built: true });
    await sleep(SETTLE_MS);
    const count = await timelineCount(node);
    const restarted = sample(node.process.pid!);
    const restartedHeap = await heaps(node);
    const restartedCpu = await idleCpuPercent(node.process.pid!);
    rows.push({
      scenario: `${count} idle timelines, loaded at start`,
      'RSS MiB': (restarted.rssBytes / MIB).toFixed(1),
      'RSS KiB/timeline': ((restarted.rssBytes - empty.rssBytes) / 1024 / count).toFixed(2),
      'main heap KiB/timeline': ((restartedHeap.main - emptyHeap.main) / 1024 / count).toFixed(2),
      'coordinator heap KiB/timeline': ((restartedHeap.coordinator - emptyHeap.coordinator) / 1024 / count).toFixed(2),
      'idle CPU %': restartedCpu.toFixed(2),
    });
  } finally {
    await node.stop();
  }
  return rows;
}

/**
 * Durable throughput in steady state: every timeline streams as fast as its socket allows (backpressure from
 * its ring), and the sum of acknowledged flush_lsns is sampled after INGEST_WARMUP_MS and again
 * INGEST_WINDOW_MS later. The streams are then cut (their unsent tail and durable wait do not count).
 */
async function ingest(node: NodeProcess, wal: ReturnType<typeof buildBenchWal>, timelines: number): Promise<{ mibPerSecond: number; bytes: number; elapsedMs: number; nodeCores: number; clientCores: number }> {
  const clients: WalPushClient[] = [];
  await inBatches(Array.from({ length: timelines }, (_, index) => index), CONNECT_CONCURRENCY, async () => {
    const tenantId = randomBytes(16).toString('hex');
    const timelineId = randomBytes(16).toString('hex');
    const client = await WalPushClient.connect(node.pgPort, tenantId, timelineId, wal);
    await client.elect(tenantId, timelineId);
    await client.heartbeat(0);
    clients.push(client);
  });
  const acked = (): number => clients.reduce((sum, client) => sum + client.flushLsn, 0);
  const streams = clients.map((client) => client.stream(0, APPEND_BYTES, Infinity, wal.bytes.length).catch(() => null));
  // Warm-up: every timeline past its first ring fill and its first prepared segment (a one-time cost), then a bit more.
  const warmLsn = wal.startLsn + INGEST_WARM_BYTES;
  const warmDeadlineMs = performance.now() + INGEST_WARMUP_MS_MAX;
  while (performance.now() < warmDeadlineMs && !clients.every((client) => client.flushLsn >= warmLsn)) await sleep(100);
  await sleep(INGEST_WARMUP_MS);
  const startBytes = acked();
  const startMs = performance.now();
  const nodeBefore = sample(node.process.pid!);
  const clientBefore = process.cpuUsage();
  await sleep(INGEST_WINDOW_MS);
  const bytes = acked() - startBytes;
  const elapsedMs = performance.now() - startMs;
  const nodeCores = (sample(node.process.pid!).cpuTicks - nodeBefore.cpuTicks) / CLOCK_TICKS_PER_SECOND / (elapsedMs / 1000);
  const clientCpu = process.cpuUsage(clientBefore);
  const clientCores = (clientCpu.user + clientCpu.system) / 1000 / elapsedMs;
  for (const client of clients) client.close();
  await Promise.all(streams);
  return { mibPerSecond: bytes / MIB / (elapsedMs / 1000), bytes, elapsedMs, nodeCores, clientCores };
}

async function ingestPart(root: string): Promise<Record<string, unknown>[]> {
  const wal = buildBenchWal(START_LSN, WAL_BYTES, INGEST_SEGMENT_BYTES);
  const rows: Record<string, unknown>[] = [];
  for (const timelines of [1, INGEST_TIMELINES]) {
    const dataDir = join(root, `ingest-${timelines}-data`);
    const remoteDir = join(root, `ingest-${timelines}-remote`);
    const node = await spawnNode(startArgs(dataDir, remoteDir), { built: true });
    try {
      const result = await ingest(node, wal, timelines);
      await sleep(2_000); // let backups of the last complete segments start
      rows.push({
        scenario: `${timelines} timeline(s) ingesting, ${APPEND_BYTES / 1024} KiB appends`,
        'MiB/s': result.mibPerSecond.toFixed(1),
        'MiB': (result.bytes / MIB).toFixed(0),
        's': (result.elapsedMs / 1000).toFixed(1),
        'node CPU cores': result.nodeCores.toFixed(2),
        'client CPU cores': result.clientCores.toFixed(2),
        'segments uploaded': await metric(node, 'safekeeper_backup_segments_uploaded_total'),
        'manager passes': await metric(node, 'safekeeper_manager_iterations_total'),
      });
    } finally {
      await node.stop();
      rmSync(dataDir, { recursive: true, force: true });
      rmSync(remoteDir, { recursive: true, force: true });
    }
  }
  const one = Number(rows[0]?.['MiB/s']);
  const many = Number(rows[1]?.['MiB/s']);
  rows.push({ scenario: `aggregate ${INGEST_TIMELINES} / one`, 'MiB/s': (many / one).toFixed(2) });
  return rows;
}

export async function run(): Promise<Record<string, unknown>[]> {
  const base = existsSync('/dev/shm') ? '/dev/shm' : tmpdir();
  const root = mkdtempSync(join(base, 'sk-scale-bench-'));
  try {
    const idle = IDLE_TIMELINES > 0 ? await idlePart(root) : [];
    console.table(idle); // printed at once: the ingest part takes minutes
    return [...idle, ...(await ingestPart(root))];
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) console.table(await run());
