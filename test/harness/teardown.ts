/**
 * The teardown an integration test file with `safekeeper run` nodes and test proposers registers once, at
 * its top level: `tearDownAfterAll(proposers)` adds one node:test `after()` hook to the file's root, and
 * `trackedProposers()` does the same on a new set, returning a `track()` to wrap each connect in.
 *
 * Design: the order matters and is the same everywhere. Proposers close first (each waits for its reader
 * loop, so no socket callback runs after the file ends); then every node this process spawned is killed;
 * then any other servers the file started (S3, proxies) stop; temp dirs go last, once nothing writes to
 * them. `proposers` is read when the hook runs, so tests keep adding to the array or set they passed in.
 */
import { after } from 'node:test';
import { killAllNodes } from './node_process.js';
import type { TestProposer } from './test_proposer.js';
import { removeAllTempDirs } from './tmp.js';

export interface TeardownHooks {
  /** Runs first, before the proposers close (e.g. destroying reader connections). */
  beforeProposers?: () => void;
  /** Runs after the nodes are killed and before the temp dirs are removed (e.g. stopping S3 and proxies). */
  beforeTempDirs?: () => Promise<void>;
}

/** Registers the file's after() hook: close `proposers`, kill every node, run `hooks`, remove every temp dir. */
export function tearDownAfterAll(proposers: Iterable<TestProposer>, hooks: TeardownHooks = {}): void {
  after(async () => {
    hooks.beforeProposers?.();
    for (const proposer of proposers) await proposer.close();
    await killAllNodes();
    await hooks.beforeTempDirs?.();
    await removeAllTempDirs();
  });
}

/** A file's test proposers, and `track`, which adds one to them and returns it (so a connect call can be wrapped). */
export interface TrackedProposers {
  proposers: Set<TestProposer>;
  track<T extends TestProposer>(proposer: T): T;
}

/** A new set of proposers with tearDownAfterAll registered on it, for files that wrap each connect in `track(...)`. */
export function trackedProposers(hooks: TeardownHooks = {}): TrackedProposers {
  const proposers = new Set<TestProposer>();
  tearDownAfterAll(proposers, hooks);
  return {
    proposers,
    track: (proposer) => {
      proposers.add(proposer);
      return proposer;
    },
  };
}
