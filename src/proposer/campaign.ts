/**
 * The election bookkeeping of one proposer run (walproposer's WPS_* states), generic over how acceptors are
 * keyed so unit tests can drive it with fake acceptors:
 *   collecting: greetings arrive; a majority of them fixes our term = 1 + the highest greeting term;
 *   campaign:   VoteRequests go out; a majority of given votes moves on;
 *   electing:   the proposer picks the donor and term start (it may ask the WAL source, which is async);
 *   elected:    streaming. Later acceptors greet and vote only to learn their start point.
 * Refusals that mean another proposer is in the way are TermConflictErrors (fatal): a greeting or vote
 * with a higher term, a greeting with a new membership generation after collecting, or a vote refused in
 * our own term while campaigning by an acceptor whose earlier vote we did not record. A refused vote from
 * an acceptor that did vote for us (its connection dropped and it reconnected) is expected and ignored:
 * given votes are kept, because a vote is durable on the acceptor and freezes its WAL until our
 * ProposerElected. Main thread.
 */
import type { AcceptorGreeting, VoteResponse } from '../acceptor/messages.js';
import { ProtocolViolationError } from '../errors.js';
import type { Logger } from '../log.js';
import { CancelToken } from '../sync/cancel.js';
import { Watch } from '../sync/watch.js';
import { NoQuorumError, TermConflictError } from './errors.js';

export type CampaignPhase = 'collecting' | 'campaign' | 'electing' | 'elected';

export class Campaign<Key> {
  phase: CampaignPhase = 'collecting';
  term = 0n;
  generation = 0;
  /** Bumped on every phase change. */
  readonly changes = new Watch(0);
  readonly #greetings = new Map<Key, AcceptorGreeting>();
  readonly #votes = new Map<Key, VoteResponse>();

  constructor(readonly quorum: number, private readonly log: Logger) {}

  get greetingCount(): number {
    return this.#greetings.size;
  }

  hasGreeted(key: Key): boolean {
    return this.#greetings.has(key);
  }

  hasVoted(key: Key): boolean {
    return this.#votes.has(key);
  }

  /** The votes that elected us, in arrival order. */
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
    let highest = 0n;
    for (const each of this.#greetings.values()) if (each.term > highest) highest = each.term;
    this.term = highest + 1n;
    this.log.info({ term: this.term, greetings: this.#greetings.size, quorum: this.quorum }, 'greetings from a majority: campaigning');
    this.#moveTo('campaign');
  }

  /** Resolves with the term to request votes for, once greetings from a majority are in. Abort-safe. */
  async campaign(signal: AbortSignal): Promise<{ term: bigint; generation: number }> {
    await this.changes.waitFor(() => this.phase !== 'collecting', signal);
    return { term: this.term, generation: this.generation };
  }

  onVote(key: Key, name: string, vote: VoteResponse): void {
    if (vote.term > this.term) throw new TermConflictError(this.term, vote.term, `safekeeper ${name} refused our vote request`);
    if (!vote.voteGiven) {
      if (!this.#votes.has(key) && this.phase === 'campaign') throw new TermConflictError(this.term, vote.term, `safekeeper ${name} already voted in our term for someone else`);
      return;
    }
    if (vote.term !== this.term) throw new ProtocolViolationError('VoteResponse', `vote for term ${vote.term}, requested ${this.term}`);
    if (this.phase !== 'campaign') return;
    this.#votes.set(key, vote);
    if (this.#votes.size >= this.quorum) this.#moveTo('electing');
  }

  markElected(): void {
    this.#moveTo('elected');
  }

  /** Waits for votes from a majority; NoQuorumError (with `describe()`) after `timeoutMs`. Abort-safe. */
  async waitForVotes(signal: AbortSignal, timeoutMs: number, describe: () => string): Promise<void> {
    const timeout = new CancelToken();
    const onAbort = (): void => timeout.cancel(signal.reason);
    signal.addEventListener('abort', onAbort, { once: true });
    const timer = setTimeout(() => timeout.cancel(new NoQuorumError(`no quorum: ${this.#votes.size} of ${describe()}`)), timeoutMs);
    try {
      await this.changes.waitFor(() => this.phase === 'electing' || this.phase === 'elected', timeout.signal);
    } finally {
      clearTimeout(timer);
      signal.removeEventListener('abort', onAbort);
      timeout.release();
    }
  }

  #moveTo(phase: CampaignPhase): void {
    this.phase = phase;
    this.changes.set(this.changes.value + 1);
  }
}
