/**
 * The proposer's pure rules over fake acceptors: quorum commit arithmetic, donor choice, term history, each
 * acceptor's start point (walproposer's SendProposerElected), and the bounded WAL window.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type { AcceptorGreeting, VoteResponse } from '../../src/acceptor/messages.js';
import { createLogger } from '../../src/log.js';
import { Campaign, electionRetryDelayMs } from '../../src/proposer/campaign.js';
import { NoQuorumError, TermConflictError } from '../../src/proposer/errors.js';
import type { TermHistory } from '../../src/acceptor/state.js';
import { chooseDonor, proposerHistory, screenVoters, startStreamingLsn, voteProblem } from '../../src/proposer/election.js';
import { APPEND_BYTES_MAX, ELECTION_ATTEMPTS_MAX, ELECTION_RETRY_BACKOFF_MS_MIN } from '../../src/proposer/limits.js';
import { quorumCommitLsn, quorumSize, truncateLsnCandidate } from '../../src/proposer/quorum.js';
import { WalWindow } from '../../src/proposer/wal_window.js';

const vote = (flushLsn: bigint, termHistory: TermHistory, truncateLsn = 0n): VoteResponse => ({
  tag: 'vote', generation: 0, term: 9n, voteGiven: true, flushLsn, truncateLsn, termHistory,
});
const history = (...entries: [number, number][]): TermHistory => entries.map(([term, lsn]) => ({ term: BigInt(term), lsn: BigInt(lsn) }));

describe('quorum arithmetic', () => {
  it('needs a strict majority', () => {
    assert.deepEqual([1, 2, 3, 4, 5].map(quorumSize), [1, 2, 2, 3, 3]);
  });

  it('commits the quorum-th highest flush', () => {
    assert.equal(quorumCommitLsn([300n, 100n, 200n], 0n), 200n);
    assert.equal(quorumCommitLsn([300n, 100n, 200n, 250n, 50n], 0n), 200n);
  });

  it('ignores flushes below the term start, like Raft never commits older terms by counting', () => {
    assert.equal(quorumCommitLsn([300n, 100n, 200n], 250n), 0n);
    assert.equal(quorumCommitLsn([300n, 260n, 200n], 250n), 260n);
  });

  it('keeps committing with one of three down (flush 0)', () => {
    assert.equal(quorumCommitLsn([0n, 500n, 400n], 100n), 400n);
  });

  it('caps truncate_lsn at commit and takes the lowest flush over everyone', () => {
    assert.equal(truncateLsnCandidate([300n, 100n, 200n], 200n), 100n);
    assert.equal(truncateLsnCandidate([300n, 300n, 300n], 200n), 200n);
    assert.equal(truncateLsnCandidate([0n, 300n, 300n], 300n), 0n);
  });
});

describe('election', () => {
  it('picks the donor by last log term, then flush', () => {
    const donor = chooseDonor([
      { index: 0, vote: vote(900n, history([1, 100]), 50n) },
      { index: 1, vote: vote(500n, history([1, 100], [3, 400]), 70n) },
      { index: 2, vote: vote(450n, history([1, 100], [3, 400]), 60n) },
    ]);
    assert.equal(donor.index, 1);
    assert.equal(donor.flushLsn, 500n);
    assert.equal(donor.lastLogTerm, 3n);
    assert.equal(donor.truncateLsn, 70n);
  });

  it('takes the earliest voter on a tie and flush 0 when everyone is empty', () => {
    const donor = chooseDonor([{ index: 2, vote: vote(0n, []) }, { index: 0, vote: vote(0n, []) }]);
    assert.equal(donor.index, 2);
    assert.equal(donor.flushLsn, 0n);
  });

  it('builds our history as the donor history plus our term', () => {
    assert.deepEqual(proposerHistory(history([1, 100], [3, 400]), 5n, 500n), history([1, 100], [3, 400], [5, 500]));
    assert.throws(() => proposerHistory(history([6, 100]), 5n, 500n));
  });

  it('starts each acceptor at the end of the last shared term', () => {
    const ours = history([1, 100], [3, 400], [5, 500]);
    // Same history as the donor: its flush.
    assert.equal(startStreamingLsn(ours, 5n, history([1, 100], [3, 400]), 480n), 480n);
    // Diverged in term 2 after term 1: term 1 ends where our term 3 starts, or where its term 2 starts.
    assert.equal(startStreamingLsn(ours, 5n, history([1, 100], [2, 350]), 600n), 350n);
    assert.equal(startStreamingLsn(ours, 5n, history([1, 100], [2, 450]), 600n), 400n);
    // Only term 1 and a long flush: term 1 ended at 400 for us.
    assert.equal(startStreamingLsn(ours, 5n, history([1, 100]), 900n), 400n);
    // Already in our term (a reconnect): its flush.
    assert.equal(startStreamingLsn(ours, 5n, ours, 700n), 700n);
    // Empty or nothing shared: our first entry.
    assert.equal(startStreamingLsn(ours, 5n, [], 0n), 100n);
    assert.equal(startStreamingLsn(ours, 5n, history([2, 100]), 300n), 100n);
  });

  it('refuses an acceptor whose shared term starts elsewhere, or whose history is malformed', () => {
    assert.throws(() => startStreamingLsn(history([1, 100], [5, 500]), 5n, history([1, 120]), 300n), /term 1 starts at/);
    assert.throws(() => startStreamingLsn(history([1, 100], [5, 500]), 5n, history([3, 100], [2, 200]), 300n), /terms not ascending/);
  });

  it('finds what makes a given vote unusable', () => {
    assert.equal(voteProblem(vote(500n, history([1, 100], [3, 400]))), null);
    assert.equal(voteProblem(vote(0n, [])), null);
    assert.match(voteProblem(vote(500n, history([3, 100], [1, 400]))) ?? '', /terms not ascending/);
    assert.match(voteProblem(vote(500n, history([1, 100], [9, 400]))) ?? '', /reaches term 9, not below the vote's term 9/);
    assert.match(voteProblem(vote(300n, history([1, 100], [3, 400]))) ?? '', /past its flush_lsn/);
  });

  it('screens out a malformed voter and one that disagrees with the donor, keeping the rest', () => {
    const screened = screenVoters([
      { index: 0, vote: vote(900n, history([3, 100], [2, 200])) }, // malformed: would have thrown in chooseDonor
      { index: 1, vote: vote(500n, history([1, 100], [3, 400])) }, // the donor
      { index: 2, vote: vote(450n, history([1, 100], [3, 420])) }, // term 3 starts elsewhere than on the donor
      { index: 3, vote: vote(300n, history([1, 100])) },
    ]);
    assert.deepEqual(screened.voters.map((voter) => voter.index), [1, 3]);
    assert.deepEqual(screened.refused.map((refusal) => refusal.index), [0, 2]);
    assert.match(screened.refused[0]?.problem ?? '', /terms not ascending/);
    assert.match(screened.refused[1]?.problem ?? '', /term 3 starts at 0\/190 in our history but at 0\/1A4 on the safekeeper/);
    assert.equal(chooseDonor(screened.voters).index, 1, 'the donor of the kept voters is the same');
    // Every kept voter has a start point against a history built on the donor's.
    const ours = proposerHistory(history([1, 100], [3, 400]), 9n, 500n);
    for (const { vote: each } of screened.voters) assert.ok(startStreamingLsn(ours, 9n, each.termHistory, each.flushLsn) > 0n);
  });
});

describe('WAL window', () => {
  it('serves reads that never cross a 128 KiB block and trims whole chunks', () => {
    const window = new WalWindow(4 * APPEND_BYTES_MAX);
    const start = BigInt(APPEND_BYTES_MAX) - 100n;
    window.reset(start);
    const bytes = new Uint8Array(300).map((_, index) => index & 0xff);
    window.append(start, bytes);
    assert.equal(window.endLsn, start + 300n);
    const first = window.read(start, APPEND_BYTES_MAX);
    assert.equal(first.length, 100, 'stops at the block boundary');
    assert.deepEqual([...first.subarray(0, 3)], [0, 1, 2]);
    const second = window.read(start + 100n, APPEND_BYTES_MAX);
    assert.equal(second.length, 200);
    assert.equal(second[0], 100);
    window.trim(start + 250n);
    assert.equal(window.startLsn, BigInt(APPEND_BYTES_MAX), 'the first (full) chunk is gone');
    window.trim(window.endLsn);
    assert.equal(window.startLsn, BigInt(APPEND_BYTES_MAX), 'a partly filled chunk stays');
  });

  it('makes the source wait while full, and trimming frees it', async () => {
    const window = new WalWindow(2 * APPEND_BYTES_MAX);
    window.reset(0n);
    window.append(0n, new Uint8Array(2 * APPEND_BYTES_MAX));
    let released = false;
    const waiting = window.waitForRoom(new AbortController().signal).then(() => (released = true));
    await Promise.resolve();
    assert.equal(released, false);
    window.trim(BigInt(APPEND_BYTES_MAX));
    await waiting;
    assert.equal(released, true);
    assert.equal(window.bytes, APPEND_BYTES_MAX);
  });
});

describe('campaign over fake acceptors', () => {
  const quiet = createLogger({ logLevel: 'error', logFormat: 'json' });
  const greeting = (term: number, generation = 0): AcceptorGreeting => ({ tag: 'greeting', nodeId: 1n, term: BigInt(term), mconf: { generation, members: [], newMembers: null } });
  const given = (term: bigint): VoteResponse => ({ ...vote(0n, []), term, voteGiven: true });
  const refused = (term: bigint): VoteResponse => ({ ...vote(0n, []), term, voteGiven: false });
  const signal = new AbortController().signal;

  it('a safekeeper at the largest u64 term leaves no term to campaign in: a term conflict, not a crash', () => {
    const campaign = new Campaign<string>(2, quiet);
    campaign.onGreeting('a', 'a', greeting(4));
    assert.throws(() => campaign.onGreeting('b', 'b', { ...greeting(0), term: 0xffff_ffff_ffff_ffffn }), (error: unknown) => error instanceof TermConflictError && /safekeeper b is at the largest term/.test(error.message));
  });

  it('campaigns with 1 + the highest term of the first majority and is elected by a majority of votes', async () => {
    const campaign = new Campaign<string>(2, quiet);
    campaign.onGreeting('a', 'a', greeting(4));
    assert.equal(campaign.phase, 'collecting');
    campaign.onGreeting('b', 'b', greeting(7));
    assert.equal(campaign.phase, 'campaign');
    assert.deepEqual(await campaign.campaign(signal), { term: 8n, generation: 0, round: 0 });
    campaign.onGreeting('c', 'c', greeting(7)); // a late greeter below our term is fine
    campaign.onVote('a', 'a', given(8n), 0);
    assert.equal(campaign.phase, 'campaign');
    campaign.onVote('c', 'c', given(8n), 0);
    assert.equal(campaign.phase, 'electing');
    await campaign.waitForVotes(signal, 1000, () => '');
    assert.deepEqual(campaign.votes().map(([key]) => key), ['a', 'c']);
  });

  it('stops on a higher term', () => {
    const campaign = new Campaign<string>(2, quiet);
    campaign.onGreeting('a', 'a', greeting(1));
    campaign.onGreeting('b', 'b', greeting(1));
    assert.throws(() => campaign.onGreeting('c', 'c', greeting(3)), TermConflictError);
    assert.throws(() => campaign.onVote('a', 'a', refused(5n), 0), TermConflictError);
  });

  it('campaigns again with a higher term, after a backoff, when a vote reply was lost and our own term is refused', async () => {
    const campaign = new Campaign<string>(2, quiet, () => 0.5);
    campaign.onGreeting('a', 'a', greeting(1));
    campaign.onGreeting('b', 'b', greeting(1));
    campaign.onGreeting('c', 'c', greeting(1));
    assert.deepEqual(await campaign.campaign(signal), { term: 2n, generation: 0, round: 0 });
    campaign.onVote('b', 'b', given(2n), 0);
    // a persisted our vote but its reply was lost; it reconnected and refuses the term it gave us.
    // The backoff runs from this refusal, so that is where its wait is measured from.
    const startedMs = performance.now();
    campaign.onVote('a', 'a', refused(2n), 0);
    assert.equal(campaign.phase, 'campaign');
    assert.equal(campaign.round, 1);
    assert.equal(campaign.term, 3n);
    assert.deepEqual(campaign.votes(), [], 'a new round starts with no votes');
    campaign.onVote('c', 'c', given(2n), 0); // a reply to the first round's request
    assert.equal(campaign.phase, 'campaign', 'earlier rounds do not count');
    assert.deepEqual(await campaign.campaign(signal), { term: 3n, generation: 0, round: 1 });
    assert.ok(performance.now() - startedMs >= ELECTION_RETRY_BACKOFF_MS_MIN - 5, 'the round waits out its backoff');
    campaign.onVote('a', 'a', given(3n), 1);
    campaign.onVote('c', 'c', given(3n), 1);
    assert.equal(campaign.phase, 'electing');
    assert.deepEqual(campaign.votes().map(([key]) => key), ['a', 'c']);
  });

  it('gives up with TermConflictError once ELECTION_ATTEMPTS_MAX new rounds were refused too', () => {
    const campaign = new Campaign<string>(2, quiet, () => 0.5);
    campaign.onGreeting('a', 'a', greeting(1));
    campaign.onGreeting('b', 'b', greeting(1));
    for (let round = 0; round < ELECTION_ATTEMPTS_MAX; round += 1) campaign.onVote('a', 'a', refused(campaign.term), round);
    assert.equal(campaign.round, ELECTION_ATTEMPTS_MAX);
    assert.throws(() => campaign.onVote('a', 'a', refused(campaign.term), ELECTION_ATTEMPTS_MAX), (error: unknown) => error instanceof TermConflictError && /refused our vote in our own term, after 4 elections/.test(error.message));
  });

  it('backs off doubling with jitter between rounds', () => {
    assert.deepEqual([1, 2, 3, 4, 5].map((restarts) => electionRetryDelayMs(restarts, () => 0.5)), [100, 200, 400, 800, 1000]);
    assert.equal(electionRetryDelayMs(1, () => 0), 80);
  });

  it('refuses a voter, back to campaign below a majority, and ignores its later votes this round', () => {
    const campaign = new Campaign<string>(2, quiet);
    campaign.onGreeting('a', 'a', greeting(1));
    campaign.onGreeting('b', 'b', greeting(1));
    campaign.onVote('a', 'a', given(2n), 0);
    campaign.onVote('b', 'b', given(2n), 0);
    assert.equal(campaign.phase, 'electing');
    campaign.refuseVoter('a', 'a', 'a bad history');
    assert.equal(campaign.phase, 'campaign');
    assert.equal(campaign.refusal('a'), 'a bad history');
    campaign.onVote('a', 'a', refused(2n), 0); // it reconnected: no new round for a voter we refused
    assert.equal(campaign.round, 0);
    campaign.onVote('a', 'a', given(2n), 0);
    assert.equal(campaign.phase, 'campaign');
    campaign.onVote('c', 'c', given(2n), 0);
    assert.equal(campaign.phase, 'electing');
  });

  it('keeps a vote when its voter reconnects and is refused in our term', () => {
    const campaign = new Campaign<string>(2, quiet);
    campaign.onGreeting('a', 'a', greeting(1));
    campaign.onGreeting('b', 'b', greeting(1));
    campaign.onVote('a', 'a', given(2n), 0);
    campaign.onVote('a', 'a', refused(2n), 0); // the same acceptor after a reconnect
    campaign.onVote('b', 'b', given(2n), 0);
    assert.equal(campaign.phase, 'electing');
    assert.equal(campaign.round, 0, 'no new round for a vote we recorded');
  });

  it('gives up with NoQuorumError after the timeout', async () => {
    const campaign = new Campaign<string>(2, quiet);
    campaign.onGreeting('a', 'a', greeting(1));
    await assert.rejects(campaign.waitForVotes(signal, 20, () => '3 safekeepers voted'), (error: unknown) => error instanceof NoQuorumError && /no quorum: 0 of 3/.test(error.message));
  });
});
