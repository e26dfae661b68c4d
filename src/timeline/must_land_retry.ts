/**
 * Retrying a main → coordinator request that must not be dropped: an unregister, since leaving a timeline's
 * gate before its manager stopped would let a delete go on under a live manager. An operating error (most
 * often a refusal because the request budget is full) is reported and the request is sent again after a
 * capped, jittered backoff, until it lands or the coordinator is going away. Main thread. Separate from
 * coordinator_client.ts because it is a policy that holds no state of the link, so it is tested on its own.
 * Never aborts: its caller waits for the outcome.
 */
import { SafekeeperError, ShutdownError } from '../errors.js';
import { sleep } from '../sync/cancel.js';

/**
 * Backoff between attempts of a request that must not be dropped (unregister). A refusal means requests
 * are in flight, which end within milliseconds to seconds: start short, double, and cap so a long
 * saturation costs one attempt a second. Half of each delay is jitter.
 */
export const MUST_LAND_BACKOFF_MS_MIN = 10;
export const MUST_LAND_BACKOFF_MS_MAX = 1_000;

/**
 * Runs `attempt` until it resolves ('done'), or until the coordinator is going away ('stopped': `stopping()`
 * is true, or the link is closed, a ShutdownError). Every other operating error is reported to `onFailure`
 * and the attempt repeats after a backoff, so `attempt` must be idempotent. A non-SafekeeperError is a bug:
 * it propagates. Never aborts: its caller waits for the outcome.
 */
export async function retryUntilLanded(
  attempt: () => Promise<void>,
  options: { stopping: () => boolean; onFailure: (error: SafekeeperError, attempts: number) => void; random?: () => number },
): Promise<'done' | 'stopped'> {
  const never = new AbortController().signal;
  for (let attempts = 1; ; attempts += 1) {
    try {
      await attempt();
      return 'done';
    } catch (error) {
      if (!(error instanceof SafekeeperError)) throw error;
      if (error instanceof ShutdownError || options.stopping()) return 'stopped';
      options.onFailure(error, attempts);
    }
    const ceilingMs = Math.min(MUST_LAND_BACKOFF_MS_MAX, MUST_LAND_BACKOFF_MS_MIN * 2 ** Math.min(attempts - 1, 20));
    await sleep(ceilingMs / 2 + (options.random ?? Math.random)() * (ceilingMs / 2), never);
  }
}
