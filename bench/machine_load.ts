/**
 * What the whole machine did while a benchmark ran: CPU busy (all processes, from /proc/stat) and bytes
 * written to the block device holding a directory (from /proc/diskstats). Benchmarks print it next to their
 * numbers, so a run disturbed by other work on the machine says so. Linux only: elsewhere `snapshot`
 * returns null and nothing is reported.
 */
import { readFileSync, statSync } from 'node:fs';
import { availableParallelism } from 'node:os';

/** /proc/stat counts in USER_HZ, which is 100 on every Linux architecture Node supports. */
const USER_HZ = 100;
const SECTOR_BYTES = 512;

export interface LoadSnapshot {
  atMs: number;
  busyTicks: number;
  sectorsWritten: number | null;
}

export interface MachineLoad {
  /** CPU cores busy on the whole machine, on average. */
  busyCores: number;
  cores: number;
  /** MiB/s written to the device (all processes), or null if the device was not found. */
  deviceWriteMibPerSecond: number | null;
}

function deviceOf(dir: string): { major: number; minor: number } {
  const dev = statSync(dir).dev;
  return { major: (dev >> 8) & 0xfff, minor: (dev & 0xff) | ((dev >> 12) & 0xfff00) };
}

/** A snapshot of the machine's counters; null where /proc is unavailable. */
export function snapshot(dir: string): LoadSnapshot | null {
  let stat: string;
  try {
    stat = readFileSync('/proc/stat', 'utf8');
  } catch {
    return null;
  }
  // cpu  user nice system idle iowait irq softirq steal ...
  const fields = stat.split('\n', 1)[0]!.trim().split(/\s+/).slice(1).map(Number);
  const idle = (fields[3] ?? 0) + (fields[4] ?? 0);
  const busyTicks = fields.slice(0, 8).reduce((sum, value) => sum + value, 0) - idle;
  let sectorsWritten: number | null = null;
  try {
    const { major, minor } = deviceOf(dir);
    for (const line of readFileSync('/proc/diskstats', 'utf8').split('\n')) {
      const parts = line.trim().split(/\s+/);
      if (Number(parts[0]) === major && Number(parts[1]) === minor) sectorsWritten = Number(parts[9]);
    }
  } catch {
    sectorsWritten = null;
  }
  return { atMs: performance.now(), busyTicks, sectorsWritten };
}

/** The load between two snapshots of `snapshot()`. */
export function loadBetween(before: LoadSnapshot | null, after: LoadSnapshot | null): MachineLoad | null {
  if (before === null || after === null || after.atMs <= before.atMs) return null;
  const seconds = (after.atMs - before.atMs) / 1000;
  const written = before.sectorsWritten === null || after.sectorsWritten === null ? null : after.sectorsWritten - before.sectorsWritten;
  return {
    busyCores: (after.busyTicks - before.busyTicks) / USER_HZ / seconds,
    cores: availableParallelism(),
    deviceWriteMibPerSecond: written === null ? null : (written * SECTOR_BYTES) / (1024 * 1024) / seconds,
  };
}

/** CPU seconds (user + system, all threads) process `pid` has used so far; null where /proc is unavailable. */
export function processCpuSeconds(pid: number): number | null {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // Fields after the parenthesised command name: state is the 3rd field; utime and stime the 14th and 15th.
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return (Number(fields[11]) + Number(fields[12])) / USER_HZ;
  } catch {
    return null;
  }
}
