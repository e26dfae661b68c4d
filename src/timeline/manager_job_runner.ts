/**
 * What every background job of a timeline manager shares: the manager it runs for (`JobsOwner`), the delay
 * before a failed job is tried again (`JOB_RETRY_MS`), and the runner (`runJob`). Nothing restarts the
 * manager's loop, so the runner logs a job's failure and turns it into a retry time, never a throw; an abort
 * (the manager stopping) is silent, and only an AssertionError (a bug) propagates.
 * Separate from `manager_jobs.ts` so that the modules running jobs for a manager (`manager_jobs.ts`,
 * `manager_eviction.ts`, `manager_backup.ts`) build on it without importing one another. Coordinator thread.
 */
import { AssertionError } from '../sync/assert.js';
import type { TimelineManager } from './manager.js';
import type { ManagerShared } from './manager_shared.js';

/** A failed save, removal or partial upload is retried after this long; a failed eviction after at least this long. */
export const JOB_RETRY_MS = 2_000;

/** What the jobs and the backup queue use of their manager: identity, cancellation, wakeup, state block and log. */
export type JobsOwner = Pick<TimelineManager, 'ttid' | 'tenantId' | 'timelineId' | 'dir' | 'segmentSizeBytes' | 'stopping' | 'signal' | 'kick' | 'snapshot' | 'log'>;

/** A job slot: the running job of one kind, or null (at most one job of each kind at a time). */
export type Job = Promise<void> | null;

/**
 * Runs a job: its failure is logged and turned into a retry time (`setRetryAtMs`), never thrown; an abort
 * (the manager stopping) is silent. The returned promise is the job's slot, cleared when it ends, and the
 * loop is kicked then.
 */
export function runJob(owner: JobsOwner, shared: ManagerShared, name: string, work: () => Promise<void>, setRetryAtMs: (atMs: number) => void): Promise<void> {
  return (async () => {
    try {
      await work();
    } catch (error) {
      if (error instanceof AssertionError) throw error;
      if (!owner.stopping) {
        setRetryAtMs(shared.nowMs() + JOB_RETRY_MS);
        owner.log('warn', `${name} failed; will retry`, { err: describeError(error) });
      }
    }
  })();
}

/** An error as a log field: its name and message. */
export function describeError(error: unknown): string {
  return error instanceof Error ? `${error.name}: ${error.message}` : String(error);
}
