/**
 * The usual one-shot test proposer session, and a status probe: `electAndStream()` does greeting →
 * vote(term = greeting term + 1) → elected (history = the vote response's history + (own term, donor
 * flush_lsn)) → stream the rest of a source, as walproposer does with one safekeeper (§4.7);
 * `timelineStatus()` asks a node for a timeline's flush and commit LSNs over a fresh connection.
 *
 * Design: built only on TestProposer's public steps, so a test that needs to deviate (a refused vote, a
 * wrong history) takes the same steps by hand. On failure the session's proposer is closed before the
 * error is rethrown; on success the caller owns it and closes it.
 */
import assert from 'node:assert/strict';
import type { AcceptorGreeting, VoteResponse } from '../../src/acceptor/messages.js';
import type { Lsn } from '../../src/wal/lsn.js';
import { PgTestClient } from './pg_client.js';
import { TestProposer, type StreamOptions, type TestProposerOptions } from './test_proposer.js';
import { walRange, type WalSource } from './wal_source.js';

export interface ElectAndStreamOptions extends TestProposerOptions, StreamOptions {
  source: WalSource;
  /** Where this proposer's WAL starts on a timeline that has none (the compute's start LSN). */
  timelineStartLsn: Lsn;
  /** Defaults to greeting term + 1. */
  term?: bigint;
  /** Stream up to here (default source.endLsn). */
  toLsn?: Lsn;
  /** Wait until flush_lsn acknowledges the end (default true). */
  waitForEnd?: boolean;
}

export interface Session {
  proposer: TestProposer;
  greeting: AcceptorGreeting;
  vote: VoteResponse;
  term: bigint;
  /** Where streaming started (the acceptor's flush_lsn, or the timeline start on an empty timeline). */
  startLsn: Lsn;
  endLsn: Lsn;
}

/**
 * greeting → vote(term = greeting.term + 1) → elected with history = vote history + (term, donor flush_lsn)
 * (§4.7; a timeline without WAL starts at `timelineStartLsn`) → stream the source from there. The caller
 * closes `proposer`.
 */
export async function electAndStream(options: ElectAndStreamOptions): Promise<Session> {
  const proposer = await TestProposer.connect(options);
  try {
    const greeting = await proposer.greet();
    const term = options.term ?? greeting.term + 1n;
    const vote = await proposer.vote(term);
    assert.equal(vote.voteGiven, true, `vote for term ${term} refused (acceptor term ${vote.term})`);
    const donorFlushLsn = vote.flushLsn === 0n ? options.timelineStartLsn : vote.flushLsn;
    const termHistory = [...vote.termHistory, { term, lsn: donorFlushLsn }];
    await proposer.elect({ term, startStreamingAtLsn: donorFlushLsn, termHistory });
    const toLsn = options.toLsn ?? options.source.endLsn;
    const endLsn = await proposer.streamWal(walRange(options.source, donorFlushLsn, toLsn), donorFlushLsn, options);
    if (donorFlushLsn === toLsn) await proposer.heartbeat(toLsn);
    if (options.waitForEnd ?? true) await proposer.waitForFlush(toLsn);
    return { proposer, greeting, vote, term, startLsn: donorFlushLsn, endLsn };
  } catch (error) {
    await proposer.close();
    throw error;
  }
}

/** TIMELINE_STATUS over a fresh connection: { flushLsn, commitLsn }, or null when the timeline is unknown. */
export async function timelineStatus(port: number, tenantId: string, timelineId: string): Promise<{ flushLsn: string; commitLsn: string } | null> {
  const client = await PgTestClient.connect({ port, options: `-c timeline_id=${timelineId} tenant_id=${tenantId}` });
  try {
    const result = await client.simpleQuery('TIMELINE_STATUS');
    const row = result.rows[0];
    if (row === undefined) return null;
    return { flushLsn: row[0] ?? '', commitLsn: row[1] ?? '' };
  } finally {
    await client.terminate();
  }
}
