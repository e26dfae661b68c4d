/**
 * Starts the coordinator worker thread (`workers/coordinator.ts`) for CoordinatorClient and makes its failure
 * fatal: a coordinator that throws or exits unexpectedly has a bug, so the node crashes, as for any assertion
 * (the error is logged, then rethrown on the main thread). An exit once the client is stopping is expected.
 * Separate from coordinator_client.ts, which owns the link over the thread: this is only how the thread is
 * loaded (built, or under tsx) and watched. Main thread.
 */
import { fileURLToPath } from 'node:url';
import { Worker } from 'node:worker_threads';
import { workerFilename } from '../ingest/writer_pool.js';
import type { Logger } from '../log.js';
import type { CoordinatorOptions } from './coordinator_protocol.js';

/**
 * Starts the coordinator worker and crashes the node when it fails or exits while `stopping()` is false.
 * Built (`.js`, ESM): the entry itself. Under tsx (`.ts`): through `workers/ts_bootstrap.cjs`, which
 * `require`s the entry, since only tsx's CommonJS hook is active in worker threads on Node 20 (Piscina loads
 * the writer workers the same way).
 */
export function startCoordinatorThread(options: CoordinatorOptions, log: Logger, stopping: () => boolean): Worker {
  const worker = startWorker(options);
  worker.on('error', (error) => {
    log.error({ err: error }, 'coordinator thread failed');
    setImmediate(() => {
      throw error;
    });
  });
  worker.on('exit', (code) => {
    if (stopping()) return;
    const error = new Error(`coordinator thread exited unexpectedly (code ${code})`);
    log.error({ exit_code: code }, 'coordinator thread exited');
    setImmediate(() => {
      throw error;
    });
  });
  return worker;
}

function startWorker(options: CoordinatorOptions): Worker {
  const entry = workerFilename('coordinator');
  if (!entry.endsWith('.ts')) return new Worker(entry, { workerData: options, name: 'coordinator' });
  const bootstrap = fileURLToPath(new URL('../../workers/ts_bootstrap.cjs', import.meta.url));
  return new Worker(bootstrap, { workerData: { ...options, entry }, name: 'coordinator' });
}
