/**
 * The election bookkeeping of one proposer run (walproposer's WPS_* states), generic over how acceptors are
 * keyed so unit tests can drive it with fake acceptors:
 *   collecting: greetings arrive; a majority of them fixes our term = 1 + the highest greeting term;
 *   campaign:   VoteRequests go out; a majority of given votes moves on;
 *   electing:   the proposer picks the donor and term start (it may ask the WAL source, which is async), and
 *               may refuse voters whose histories it cannot use (`refuseVoter`), back to campaign if that
 *               leaves less than a majority;
 *   elected:    streaming. Later acceptors greet and vote only to learn their start point.
 * Rounds: a vote refused in our own term while campaigning, by an acceptor whose vote we did not record,
 * is either a vote for us whose reply was lost (the acceptor persisted our term, the connection dropped, and
 * now it refuses the same term) or a vote for another proposer that picked our term. The two look the same
 * on the wire, and both are settled as walproposer settles them (it exits and is restarted): a new round
 * with a higher term, after a jittered backoff so two proposers do not keep taking each other's terms. At
 * most ELECTION_ATTEMPTS_MAX rounds follow the first; then the refusal is a TermConflictError (fatal).
 * Votes are per round: a reply to an earlier round's request is ignored, and a new round starts with none.
 * Other refusals that mean another proposer is in the way are TermConflictErrors at once: a greeting or vote
 * with a higher term, or a greeting with a new membership generation after collecting. A refused vote from
 * an acceptor that did vote for us this round (its connection dropped and it reconnected) is expected and
 * ignored: given votes are kept, because a vote is durable on the acceptor and freezes its WAL until our
 * ProposerElected. Main thread.
 */
import type { AcceptorGreeting, VoteResponse } from '../acceptor/messages.js';
import { ProtocolViolationError } from '../errors.js';
import type { Logger } from '../log.js';
import { sleep, withDeadline } from '../sync/cancel.js';
import { Watch } from '../sync/watch.js';
import { NoQuorumError, TermConflictError } from './errors.js';
import { ELECTION_ATTEMPTS_MAX, ELECTION_RETRY_BACKOFF_MS_MAX, ELECTION_RETRY_BACKOFF_MS_MIN, jitteredBackoffMs } from './limits.js';

export type CampaignPhase = 'collecting' | 'campaign' | 'electing' | 'elected';

/** What to send a VoteRequest for; `round` goes back with the reply (`onVote`). */
export interface CampaignRound {
  term: bigint;
  generation: number;
  round: number;
}

/** The backoff before election round `restarts` + 1: doubling from MIN to MAX, times 1 ± RECONNECT_JITTER_RATIO. */
export function electionRetryDelayMs(restarts: number, random: () => number): number {
  return jitteredBackoffMs(restarts, ELECTION_RETRY_BACKOFF_MS_MIN, ELECTION_RETRY_BACKOFF_MS_MAX, random());
}

export class Campaign<Key> {
  phase: CampaignPhase = 'collecting';
  term = 0n;
  generation = 0;
  /** Election rounds after the first; each has a term above the last. */
  round = 0;
  /** Bumped on every phase or round change. */
  readonly changes = new Watch(0);
  readonly #greetings = new Map<Key, AcceptorGreeting>();
  readonly #votes = new Map<Key, VoteResponse>();
  /** Voters of this round whose votes we cannot use, with the reason; their later votes are ignored. */
  readonly #refused = new Map<Key, string>();
  /** performance.now() before which this round's VoteRequests wait (the backoff). */
  #roundStartMs = 0;

  constructor(readonly quorum: number, private readonly log: Logger, private readonly random: () => number = Math.random) {}

  get greetingCount(): number {
    return this.#greetings.size;
  }

  hasGreeted(key: Key): boolean {
    return this.#greetings.has(key);
  }

  hasVoted(key: Key): boolean {
    return this.#votes.has(key);
  }

  /** Why this round refused `key`'s vote, or null. */
  refusal(key: Key): string | null {
    return this.#refused.get(key) ?? null;
  }

  /** This round's usable votes, in arrival order. */
  votes(): [Key, VoteResponse][] {
    return [...this.#votes];
  }

  onGreeting(key: Key, name: string, greeting: AcceptorGreeting): void {
    if (greeting.mconf.generation !== this.generation) {
      if (this.phase !== 'collecting') throw new TermConflictError(this.term, greeting.term, `safekeeper ${name} switched to membership generation ${greeting.mconf.generation} during the election`);
      if (greeting.mconf.generation > this.generation) this.generation = greeting.mconf.generation;
    }
    this.#greetings.set(key, greeting);
    if (this.phase !== 'collecting') {
      if (greeting.term > this.term) throw new TermConflictError(this.term, greeting.term, `safekeeper ${name} greeted with a higher term`);
      return;
    }
    if (this.#greetings.size < this.quorum) return;
    this.term = nextTerm(this.#highestGreetingTerm(), name);
    this.log.info({ term: this.term, greetings: this.#greetings.size, quorum: this.quorum }, 'greetings from a majority: campaigning');
    this.#moveTo('campaign');
  }

  /** Resolves with what to request votes for, once greetings from a majority are in and the round's backoff is over. Abort-safe. */
  async campaign(signal: AbortSignal): Promise<CampaignRound> {
    await this.changes.waitFor(() => this.phase !== 'collecting', signal);
    for (let waitMs = this.#roundStartMs - performance.now(); waitMs > 0; waitMs = this.#roundStartMs - performance.now()) {
      await sleep(Math.ceil(waitMs), signal);
    }
    return { term: this.term, generation: this.generation, round: this.round };
  }

  /** Records `key`'s reply to the VoteRequest of `round`. Throws TermConflictError when another proposer is in the way. */
  onVote(key: Key, name: string, vote: VoteResponse, round: number): void {
    if (vote.term > this.term) throw new TermConflictError(this.term, vote.term, `safekeeper ${name} refused our vote request`);
    if (round !== this.round || this.#refused.has(key)) return;
    if (!vote.voteGiven) {
      if (!this.#votes.has(key) && this.phase === 'campaign') this.#restart(name, vote.term);
      return;
    }
    if (vote.term !== this.term) throw new ProtocolViolationError('VoteResponse', `vote for term ${vote.term}, requested ${this.term}`);
    if (this.phase !== 'campaign' && this.phase !== 'electing') return;
    this.#votes.set(key, vote);
    if (this.phase === 'campaign' && this.#votes.size >= this.quorum) this.#moveTo('electing');
  }

  /**
   * Drops `key`'s vote of this round for `problem` (logged), and ignores its votes until the next round.
   * Back to campaign if less than a majority of votes remains.
   */
  refuseVoter(key: Key, name: string, problem: string): void {
    this.#votes.delete(key);
    this.#refused.set(key, problem);
    this.log.error({ safekeeper: name, term: this.term, problem }, 'refusing a safekeeper\'s vote: its term history cannot be used; electing without it');
    if (this.phase === 'electing' && this.#votes.size < this.quorum) this.#moveTo('campaign');
  }

  markElected(): void {
    this.#moveTo('elected');
  }

  /** Waits for votes from a majority; NoQuorumError (with `describe()`) after `timeoutMs`. Abort-safe. */
  async waitForVotes(signal: AbortSignal, timeoutMs: number, describe: () => string): Promise<void> {
    await withDeadline(
      (deadline) => this.changes.waitFor(() => this.phase === 'electing' || this.phase === 'elected', deadline),
      timeoutMs, signal, () => new NoQuorumError(`no quorum: ${this.#votes.size} of ${describe()}`),
    );
  }

  /** A new round with a term above every term seen, after a backoff; TermConflictError once the rounds are used up. */
  #restart(name: string, refusedTerm: bigint): void {
    if (this.round >= ELECTION_ATTEMPTS_MAX) {
      throw new TermConflictError(this.term, refusedTerm, `safekeeper ${name} refused our vote in our own term, after ${this.round + 1} elections`);
    }
    const previousTerm = this.term;
    const highestTerm = this.#highestGreetingTerm();
    this.term = nextTerm(highestTerm > previousTerm ? highestTerm : previousTerm, name);
    this.round += 1;
    this.#votes.clear();
    this.#refused.clear();
    const delayMs = electionRetryDelayMs(this.round, this.random);
    this.#roundStartMs = performance.now() + delayMs;
    this.log.warn(
      { safekeeper: name, refused_term: previousTerm, term: this.term, round: this.round, delay_ms: delayMs },
      'a safekeeper refused our vote in our own term (its reply to our request was lost, or another proposer took the term): electing again with a higher term',
    );
    this.changes.set(this.changes.value + 1);
  }

  #highestGreetingTerm(): bigint {
    let highest = 0n;
    for (const each of this.#greetings.values()) if (each.term > highest) highest = each.term;
    return highest;
  }

  #moveTo(phase: CampaignPhase): void {
    this.phase = phase;
    this.changes.set(this.changes.value + 1);
  }
}

/** The term after `highest`; a safekeeper whose term is already the largest u64 leaves none to campaign in. */
function nextTerm(highest: bigint, name: string): bigint {
  if (highest >= TERM_MAX) throw new TermConflictError(highest, highest, `safekeeper ${name} is at the largest term, so no higher one exists`);
  return highest + 1n;
}

const TERM_MAX = 0xffff_ffff_ffff_ffffn;
