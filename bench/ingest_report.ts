/**
 * The ingest benchmark's measurements (types) and the one table it prints: disk ceilings, the runtime floor,
 * durable throughput with its ratio to the ceiling, ack latency next to fdatasync latency, and the issue's
 * goals, each with what the runtime floor reached on the same measure.
 * Every row carries how busy the machine was (bench/machine_load.ts); when other work used more than
 * OTHER_CORES_TOLERATED cores during any measurement, the goal rows say their verdict is unreliable.
 * Pure functions over finished measurements.
 */
import { availableParallelism } from 'node:os';
import { assert } from '../src/sync/assert.js';
import type { DiskCeiling } from './disk_ceiling.js';
import type { MachineLoad } from './machine_load.js';
import type { FloorThroughput } from './runtime_floor.js';

const KIB = 1024;
const MIB = 1024 * 1024;
const GOAL_CEILING_RATIO = 0.8;
const GOAL_SMALL_APPENDS_PER_SECOND = 300_000;
const GOAL_LATENCY_MARGIN_MS = 0.5;
/** Other work on the machine above this many cores makes a verdict unreliable. */
const OTHER_CORES_TOLERATED = 0.3;

export interface IngestBenchRow {
  section: 'disk ceiling' | 'runtime floor' | 'durable throughput' | 'ack latency' | 'goal';
  case: string;
  'MiB/s': number | string;
  'appends/s': number | string;
  'batch KiB': number | string;
  /** Against the ceiling at the append size (one pwrite + fdatasync per append), where it was measured. */
  '÷ ceiling@append': string;
  /** Against the ceiling at the group-commit batch the node actually wrote (the stricter one; the goal's). */
  '÷ ceiling@batch': string;
  '÷ ceiling@1MiB': string;
  'p50 ms': number | string;
  'p99 ms': number | string;
  note: string;
}

export interface MeasuredCeiling extends DiskCeiling {
  label: string;
  load: MachineLoad | null;
  /** CPU the benchmark's own processes used meanwhile, in cores. */
  ownCores: number;
}

/** One scenario, summed over its iterations. Counters from the node's /metrics are deltas. */
export interface ThroughputStats {
  timelines: number;
  appendBytes: number;
  iterations: number;
  bytes: number;
  appends: number;
  /** First send to durable, summed over iterations. */
  seconds: number;
  /** Write tasks (group-commit batches) and the WAL bytes they wrote. */
  batches: number;
  batchWalBytes: number;
  fsyncSeconds: number;
  fsyncs: number;
  writeSeconds: number;
  /** Segments prepared ahead of the writer: zeros over recycled files, recycled files marked unwritten, new zero-filled files, new sparse ones. */
  preparedRecycled: number;
  preparedUnwritten: number;
  preparedZeroed: number;
  preparedSparse: number;
  cpuSeconds: number;
  clientCpuSeconds: number;
  machineBusyCoreSeconds: number;
  deviceWriteMib: number;
  /** The disk ceiling at this scenario's average batch, measured right after it. */
  ceiling: MeasuredCeiling | null;
  /** For the goal's append size: the same into new zero-filled segments (disk_ceiling.ts), right after that. */
  zeroFilledCeiling: MeasuredCeiling | null;
  /** The same into recycled segments (zeros over a removed segment's blocks), right after that. */
  recycledCeiling: MeasuredCeiling | null;
}

export interface LatencyResult {
  appendBytes: number;
  samplesMs: number[];
  appendBytesMean: number;
  load: MachineLoad | null;
  /** CPU of the node and the client during the samples, in cores. */
  ownCores: number;
  /** pwrite + fdatasync of appendBytes right before and right after the samples. */
  fsyncBefore: MeasuredCeiling;
  fsyncAfter: MeasuredCeiling;
}

/** The runtime floor (bench/runtime_floor.ts): its best throughput run, and lone-append latencies. */
export interface FloorResult {
  throughput: FloorThroughput & { load: MachineLoad | null };
  rounds: number;
  latencyAppendBytes: number;
  latencyMs: number[];
  /** The best throughput run of the floor that verifies records of `recordBytes`, one CRC each, as the node does. */
  verified: { throughput: FloorThroughput & { load: MachineLoad | null }; recordBytes: number };
}

export const emptyStats = (timelines: number, appendBytes: number): ThroughputStats => ({
  timelines, appendBytes, iterations: 0, bytes: 0, appends: 0, seconds: 0, batches: 0, batchWalBytes: 0, fsyncSeconds: 0, fsyncs: 0, writeSeconds: 0, preparedRecycled: 0,
  preparedUnwritten: 0, preparedZeroed: 0, preparedSparse: 0, cpuSeconds: 0, clientCpuSeconds: 0, machineBusyCoreSeconds: 0, deviceWriteMib: 0, ceiling: null, zeroFilledCeiling: null, recycledCeiling: null,
});

export const round = (value: number, digits = 0): number => Number(value.toFixed(digits));

export function sizeName(bytes: number): string {
  const [value, unit] = bytes >= MIB ? [bytes / MIB, 'MiB'] : bytes >= KIB ? [bytes / KIB, 'KiB'] : [bytes, 'B'];
  return `${Number.isInteger(value) ? value : value.toFixed(1)} ${unit}`;
}

/** Nearest-rank percentile of an ascending array. */
export function percentile(sorted: readonly number[], q: number): number {
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1))] ?? NaN;
}

/** The average group-commit batch of a scenario, rounded to 4 KiB (at least 4 KiB). */
export const observedBatchBytes = (stats: ThroughputStats): number => Math.max(4 * KIB, Math.round(stats.batchWalBytes / Math.max(1, stats.batches) / (4 * KIB)) * 4 * KIB);

const otherCores = (load: MachineLoad | null, ownCores: number): number => (load === null ? 0 : Math.max(0, load.busyCores - ownCores));

/** "machine 1.9/2 cores busy (others 0.4), device 812 MiB/s written": what the whole machine did meanwhile. */
function loadNote(load: MachineLoad | null, ownCores: number): string {
  if (load === null) return '';
  const device = load.deviceWriteMibPerSecond === null ? '' : `, device ${Math.round(load.deviceWriteMibPerSecond)} MiB/s written`;
  return `machine ${load.busyCores.toFixed(1)}/${load.cores} cores busy (others ${otherCores(load, ownCores).toFixed(1)})${device}`;
}

function statsLoad(stats: ThroughputStats): { load: MachineLoad; ownCores: number } {
  const load = { busyCores: stats.machineBusyCoreSeconds / stats.seconds, cores: availableParallelism(), deviceWriteMibPerSecond: stats.deviceWriteMib / stats.seconds };
  return { load, ownCores: (stats.cpuSeconds + stats.clientCpuSeconds) / stats.seconds };
}

function blankRow(section: IngestBenchRow['section'], name: string): IngestBenchRow {
  return { section, case: name, 'MiB/s': '', 'appends/s': '', 'batch KiB': '', '÷ ceiling@append': '', '÷ ceiling@batch': '', '÷ ceiling@1MiB': '', 'p50 ms': '', 'p99 ms': '', note: '' };
}

function ceilingRow(ceiling: MeasuredCeiling): IngestBenchRow {
  return {
    ...blankRow('disk ceiling', ceiling.label),
    'MiB/s': round(ceiling.mibPerSecond),
    'batch KiB': round(ceiling.batchBytes / KIB, 1),
    'p50 ms': round(ceiling.fdatasyncLatencyMsP50, 3),
    'p99 ms': round(ceiling.fdatasyncLatencyMsP99, 3),
    note: `${round(ceiling.batchesPerSecond)} batches/s; ${loadNote(ceiling.load, ceiling.ownCores)}`,
  };
}

function floorThroughputRow(name: string, throughput: FloorResult['throughput'], ceilings: readonly DiskCeiling[], what: string): IngestBenchRow {
  const ceiling = ceilings.find((candidate) => candidate.batchBytes === throughput.appendBytes);
  const cores = throughput.serverCores === null ? '' : `CPU server ${throughput.serverCores.toFixed(2)} + client ${throughput.clientCores.toFixed(2)} cores, `;
  return {
    ...blankRow('runtime floor', name),
    'MiB/s': round(throughput.mibPerSecond, 1),
    'appends/s': round(throughput.bytes / throughput.appendBytes / throughput.seconds),
    '÷ ceiling@append': ceiling === undefined ? '' : `${(throughput.mibPerSecond / ceiling.mibPerSecond).toFixed(2)} of ${round(ceiling.mibPerSecond)}`,
    note: `${what}; ${cores}${loadNote(throughput.load, (throughput.serverCores ?? 0) + throughput.clientCores)}`,
  };
}

function floorRows(floor: FloorResult, ceilings: readonly DiskCeiling[]): IngestBenchRow[] {
  const { throughput, verified } = floor;
  const sorted = [...floor.latencyMs].sort((a, b) => a - b);
  return [
    floorThroughputRow(
      `TCP → ring → Piscina checksum+pwrite+fdatasync, ${sizeName(throughput.appendBytes)} appends, best of ${floor.rounds}`,
      throughput,
      ceilings,
      'no protocol, record decoding, segment preparation or backup',
    ),
    floorThroughputRow(
      `the same verifying ${verified.recordBytes} B records, ${sizeName(verified.throughput.appendBytes)} appends, best of ${floor.rounds}`,
      verified.throughput,
      ceilings,
      "one record CRC at a time (the node's portable path; its native record walk costs less) and a large batch verified while it syncs, as the node's writer; no decoding otherwise",
    ),
    {
      ...blankRow('runtime floor', `lone ${sizeName(floor.latencyAppendBytes)} append through the same, 1 in flight`),
      'p50 ms': round(percentile(sorted, 0.5), 3),
      'p99 ms': round(percentile(sorted, 0.99), 3),
      note: `${sorted.length} samples after the node's warm-up count, p90 ${percentile(sorted, 0.9).toFixed(3)}, max ${(sorted.at(-1) ?? NaN).toFixed(3)} ms`,
    },
  ];
}

/** The ceiling a scenario is compared with: the one measured right after it, at its batch size. */
function ceilingOf(stats: ThroughputStats): MeasuredCeiling {
  assert(stats.ceiling !== null, 'every scenario measures its ceiling');
  return stats.ceiling;
}

const mibPerSecondOf = (stats: ThroughputStats): number => stats.bytes / MIB / stats.seconds;

/** "0.29 of 840": MiB/s against the ceiling measured at the append size, or '' where none was. */
function appendCeilingRatio(stats: ThroughputStats, ceilings: readonly DiskCeiling[]): string {
  const ceiling = ceilings.find((candidate) => candidate.batchBytes === stats.appendBytes);
  return ceiling === undefined ? '' : `${(mibPerSecondOf(stats) / ceiling.mibPerSecond).toFixed(2)} of ${round(ceiling.mibPerSecond)}`;
}

function throughputRow(stats: ThroughputStats, ceiling1MiB: DiskCeiling, ceilings: readonly DiskCeiling[]): IngestBenchRow {
  const mibPerSecond = mibPerSecondOf(stats);
  const ceiling = ceilingOf(stats);
  const fsyncMs = stats.fsyncs > 0 ? (stats.fsyncSeconds / stats.fsyncs) * 1000 : 0;
  const { load, ownCores } = statsLoad(stats);
  return {
    ...blankRow('durable throughput', `${stats.timelines} timeline${stats.timelines > 1 ? 's' : ''}, ${sizeName(stats.appendBytes)} appends`),
    'MiB/s': round(mibPerSecond, 1),
    'appends/s': round(stats.appends / stats.seconds),
    'batch KiB': round(stats.batchWalBytes / Math.max(1, stats.batches) / KIB, 1),
    '÷ ceiling@append': appendCeilingRatio(stats, ceilings),
    '÷ ceiling@batch': `${(mibPerSecond / ceiling.mibPerSecond).toFixed(2)} of ${round(ceiling.mibPerSecond)}`,
    '÷ ceiling@1MiB': (mibPerSecond / ceiling1MiB.mibPerSecond).toFixed(2),
    note:
      `${stats.iterations}×${(stats.seconds / stats.iterations).toFixed(1)} s, ${round(stats.batches / stats.seconds)} batches/s, node fdatasync ${fsyncMs.toFixed(2)} ms avg, ` +
      `segments prepared ${stats.preparedRecycled} recycled + ${stats.preparedUnwritten} recycled unwritten + ${stats.preparedZeroed} zero-filled + ${stats.preparedSparse} sparse; ` +
      `CPU node ${(stats.cpuSeconds / stats.seconds).toFixed(2)} + client ${(stats.clientCpuSeconds / stats.seconds).toFixed(2)} cores, ${loadNote(load, ownCores)}`,
  };
}

interface LatencySummary {
  rows: IngestBenchRow[];
  p99Ms: number;
  fsyncP99Ms: number;
}

function latencyRows(latency: LatencyResult): LatencySummary {
  const sorted = [...latency.samplesMs].sort((a, b) => a - b);
  const p50Ms = percentile(sorted, 0.5);
  const p99Ms = percentile(sorted, 0.99);
  // Both rounds last equally long, so averaging their percentiles approximates the pooled ones.
  const { fsyncBefore: before, fsyncAfter: after } = latency;
  const fsyncP50Ms = (before.fdatasyncLatencyMsP50 + after.fdatasyncLatencyMsP50) / 2;
  const fsyncP99Ms = (before.fdatasyncLatencyMsP99 + after.fdatasyncLatencyMsP99) / 2;
  const size = sizeName(latency.appendBytes);
  const rows: IngestBenchRow[] = [
    {
      ...blankRow('ack latency', `lone ${size} append (${round(latency.appendBytesMean)} B avg), 1 in flight`),
      'p50 ms': round(p50Ms, 3),
      'p99 ms': round(p99Ms, 3),
      note: `${sorted.length} samples, p90 ${percentile(sorted, 0.9).toFixed(3)}, max ${sorted.at(-1)!.toFixed(3)} ms; ${loadNote(latency.load, latency.ownCores)}`,
    },
    {
      ...blankRow('ack latency', `pwrite+fdatasync of ${size}, just before and after`),
      'p50 ms': round(fsyncP50Ms, 3),
      'p99 ms': round(fsyncP99Ms, 3),
      note: `before ${before.fdatasyncLatencyMsP50.toFixed(3)}/${before.fdatasyncLatencyMsP99.toFixed(3)}, after ${after.fdatasyncLatencyMsP50.toFixed(3)}/${after.fdatasyncLatencyMsP99.toFixed(3)} ms (p50/p99)`,
    },
    {
      ...blankRow('ack latency', 'ack − fdatasync'),
      'p50 ms': round(p50Ms - fsyncP50Ms, 3),
      'p99 ms': round(p99Ms - fsyncP99Ms, 3),
      note: "the node's own share: parse, ring copy, task dispatch, decode, open+pwrite, result, reply, loopback TCP",
    },
  ];
  return { rows, p99Ms, fsyncP99Ms };
}

function goalRows(throughput: readonly ThroughputStats[], ceiling1MiB: DiskCeiling, ceilings: readonly DiskCeiling[], latency: LatencySummary, floor: FloorResult, otherCoresMax: number): IngestBenchRow[] {
  const rows: IngestBenchRow[] = [];
  const floorCeiling = ceilings.find((candidate) => candidate.batchBytes === floor.throughput.appendBytes);
  const floorRatio =
    floorCeiling === undefined
      ? ''
      : `; the runtime floor reached ${(floor.throughput.mibPerSecond / floorCeiling.mibPerSecond).toFixed(2)} of ceiling@append, ${(floor.verified.throughput.mibPerSecond / floorCeiling.mibPerSecond).toFixed(2)} verifying records`;
  for (const stats of throughput.filter((candidate) => candidate.appendBytes === 128 * KIB)) {
    const ratio = mibPerSecondOf(stats) / ceilingOf(stats).mibPerSecond;
    const zeroFilled = stats.zeroFilledCeiling;
    const zeroFilledRatio =
      zeroFilled === null
        ? ''
        : `; ${(mibPerSecondOf(stats) / zeroFilled.mibPerSecond).toFixed(2)} of the zero-filled-segment ceiling (${round(zeroFilled.mibPerSecond)} MiB/s: new segment files zero-filled ahead, as the node does for small batches; itself ${(zeroFilled.mibPerSecond / ceilingOf(stats).mibPerSecond).toFixed(2)} of the batch ceiling)`;
    const recycled = stats.recycledCeiling;
    const recycledRatio =
      recycled === null
        ? ''
        : `; ${(mibPerSecondOf(stats) / recycled.mibPerSecond).toFixed(2)} of the recycled-segment ceiling (${round(recycled.mibPerSecond)} MiB/s: the zeros written over removed segments, the node's steady state)`;
    rows.push({
      ...blankRow('goal', `128 KiB appends, ${stats.timelines} tl ≥ ${GOAL_CEILING_RATIO} × ceiling`),
      '÷ ceiling@append': appendCeilingRatio(stats, ceilings),
      '÷ ceiling@batch': ratio.toFixed(2),
      '÷ ceiling@1MiB': (mibPerSecondOf(stats) / ceiling1MiB.mibPerSecond).toFixed(2),
      note: `${ratio >= GOAL_CEILING_RATIO ? 'MET' : 'MISSED'} (judged at the batch ceiling, the stricter)${zeroFilledRatio}${recycledRatio}${floorRatio}`,
    });
  }
  const small = throughput.find((stats) => stats.appendBytes === 128 && stats.timelines === 1);
  if (small !== undefined) {
    const rate = small.appends / small.seconds;
    rows.push({ ...blankRow('goal', `≥ ${GOAL_SMALL_APPENDS_PER_SECOND} 128 B appends/s, 1 tl`), 'appends/s': round(rate), note: rate >= GOAL_SMALL_APPENDS_PER_SECOND ? 'MET' : 'MISSED' });
  }
  const limitMs = latency.fsyncP99Ms + GOAL_LATENCY_MARGIN_MS;
  rows.push({
    ...blankRow('goal', `lone 8 KiB p99 ≤ fdatasync p99 + ${GOAL_LATENCY_MARGIN_MS} ms`),
    'p99 ms': round(latency.p99Ms, 3),
    note: `${latency.p99Ms <= limitMs ? 'MET' : 'MISSED'} (limit ${limitMs.toFixed(3)} ms); the runtime floor's p99: ${percentile([...floor.latencyMs].sort((a, b) => a - b), 0.99).toFixed(3)} ms`,
  });
  if (otherCoresMax > OTHER_CORES_TOLERATED) {
    for (const row of rows) row.note += ` — UNRELIABLE: other work used up to ${otherCoresMax.toFixed(1)} cores during this run`;
  }
  return rows;
}

/** The whole table: ceilings (standard, then one per scenario), the runtime floor, throughput, latency, goals. */
export function reportRows(ceilings: readonly MeasuredCeiling[], floor: FloorResult, throughput: readonly ThroughputStats[], latency: LatencyResult): IngestBenchRow[] {
  const ceiling1MiB = ceilings.find((ceiling) => ceiling.batchBytes === MIB);
  assert(ceiling1MiB !== undefined, 'the 1 MiB ceiling is measured');
  const adjacent = throughput.flatMap((stats) => [ceilingOf(stats), ...[stats.zeroFilledCeiling, stats.recycledCeiling].filter((extra) => extra !== null)]);
  const latencySummary = latencyRows(latency);
  const others = [
    ...[...ceilings, ...adjacent, latency.fsyncBefore, latency.fsyncAfter].map((ceiling) => otherCores(ceiling.load, ceiling.ownCores)),
    ...throughput.map((stats) => {
      const { load, ownCores } = statsLoad(stats);
      return otherCores(load, ownCores);
    }),
    otherCores(latency.load, latency.ownCores),
    otherCores(floor.throughput.load, (floor.throughput.serverCores ?? 0) + floor.throughput.clientCores),
  ];
  return [
    ...ceilings.map(ceilingRow),
    ...adjacent.map(ceilingRow),
    ...floorRows(floor, ceilings),
    ...throughput.map((stats) => throughputRow(stats, ceiling1MiB, ceilings)),
    ...latencySummary.rows,
    ...goalRows(throughput, ceiling1MiB, ceilings, latencySummary, floor, Math.max(...others)),
  ];
}
