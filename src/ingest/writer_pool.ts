/**
 * The Piscina pool of WAL writer workers. Every option is spelled out (STYLE: threads). Tasks are small
 * messages (`writer_protocol.ts`); the pool is shared by all timelines, and each timeline keeps at most one
 * write task in flight, so the queue is bounded by the number of active timelines (plus one prepare each).
 * Main thread.
 */
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { Piscina } from 'piscina';
import { assert } from '../sync/assert.js';
import type { PrepareResult, PrepareTask, ScanResult, ScanTask, SimpleResult, WriteResult, WriteTask, WriterTask } from './writer_protocol.js';

/** Two tasks (a write and a segment preparation) per active timeline, for this many timelines. */
export const WRITER_QUEUE_TASKS_MAX = 2 * 100_000;

export interface WriterPool {
  write(task: WriteTask): Promise<WriteResult>;
  prepare(task: PrepareTask): Promise<PrepareResult>;
  run(task: Exclude<WriterTask, WriteTask | PrepareTask | ScanTask>): Promise<SimpleResult>;
  scan(task: ScanTask): Promise<ScanResult>;
  close(): Promise<void>;
}

/** The worker entry point: the compiled `.js` next to a build, the `.ts` source under tsx. */
export function workerFilename(name: string): string {
  const here = fileURLToPath(import.meta.url);
  const extension = here.endsWith('.ts') ? '.ts' : '.js';
  const path = fileURLToPath(new URL(`../../workers/${name}${extension}`, import.meta.url));
  assert(existsSync(path), 'worker entry point exists');
  return path;
}

export function createWriterPool(threads: number): WriterPool {
  assert(Number.isInteger(threads) && threads >= 1, 'writer pool needs at least one thread');
  const entry = workerFilename('wal_writer');
  const pool = new Piscina({
    // Under tsx, the `.dev.mjs` shim makes Piscina import() the writer as ESM (see that file for why).
    filename: entry.endsWith('.ts') ? entry.replace(/\.ts$/, '.dev.mjs') : entry,
    minThreads: threads,
    maxThreads: threads,
    maxQueue: WRITER_QUEUE_TASKS_MAX,
    // Writer threads stay up: spawning one costs milliseconds, far above a group-commit batch.
    idleTimeout: 2 ** 31 - 1,
    // Idle workers block in Atomics.wait, so a new task is picked up within microseconds.
    atomics: 'sync',
    concurrentTasksPerWorker: 1,
    // Piscina's own wait/run-time histograms: never read (the node keeps its own metrics), and recording them
    // is per-task work on the main thread.
    recordTiming: false,
  });
  return {
    write: (task) => pool.run(task) as Promise<WriteResult>,
    prepare: (task) => pool.run(task) as Promise<PrepareResult>,
    run: (task) => pool.run(task) as Promise<SimpleResult>,
    scan: (task) => pool.run(task) as Promise<ScanResult>,
    close: () => pool.destroy(),
  };
}
