/**
 * Entry point of the coordinator worker thread (DESIGN § Threads): one per node, started by the main
 * thread's CoordinatorClient with the resolved options as workerData. Everything lives in
 * `src/timeline/coordinator.ts`; this file only connects it to `parentPort`. No top-level await: under tsx
 * the worker loads this file through require (see CoordinatorClient).
 */
import { parentPort, workerData } from 'node:worker_threads';
import { runCoordinator } from '../src/timeline/coordinator.js';
import type { CoordinatorOptions } from '../src/timeline/coordinator_protocol.js';
import { assert } from '../src/sync/assert.js';

assert(parentPort !== null, 'the coordinator runs in a worker thread');
runCoordinator(parentPort, workerData as CoordinatorOptions);
