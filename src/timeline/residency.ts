/**
 * The residency guard contract: what a WAL reader or a proposer holds while it uses a timeline's local WAL,
 * so that the timeline's manager does not evict it (and unevicts it first when it is offloaded). `Residency`
 * hands out guards; CoordinatorClient (coordinator_client.ts) implements it over the coordinator link, and
 * tests fake it. A guard the manager does not grant within GUARD_TIMEOUT_MS fails with GuardTimeoutError.
 * Separate from coordinator_client.ts so that ingest and send depend on this contract, not on the worker
 * thread behind it. Main thread.
 */
import { SafekeeperError } from '../errors.js';
import type { Timeline } from './timeline.js';

export interface ResidencyGuard {
  /** Idempotent. The manager may evict again once every guard is released. */
  release(): void;
}

/** What WAL readers and proposers need from the coordinator (so tests can fake it). */
export interface Residency {
  acquireGuard(timeline: Timeline, signal: AbortSignal): Promise<ResidencyGuard>;
}

/** The manager did not grant a residency guard in time (a slow unevict download, a stuck coordinator). */
export class GuardTimeoutError extends SafekeeperError {
  override readonly name = 'GuardTimeoutError';
  readonly code = 'SK_GUARD_TIMEOUT';
  readonly sqlState = '57014'; // query_canceled, as for a statement timeout
  override readonly httpStatus = 503;
}
