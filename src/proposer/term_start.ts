/**
 * The proposer's electing step (phase `electing` in `campaign.ts`): from the votes of a majority to where our
 * term starts. `collectVoters` waits for a majority whose histories we can elect with and refuses the others;
 * `planTermStart` picks the donor and fixes the term start, our history and the first truncate_lsn;
 * `sourceStartLsnFor` is where the WAL source starts streaming; `prevRecordLsnBefore` reads the record before
 * the term start back from the donor, for a source that generates WAL and needs its xl_prev.
 * Why separate: the rules are pure and live in `election.ts`; this is the part of the election that waits on
 * the campaign, the WAL source and the donor. `proposer.ts` calls these in order, owns the state their
 * results go into (the elected term, truncate_lsn, the window) and does the streaming that follows.
 * Abort-safe: every wait takes the run's signal. Main thread.
 */
import type { TenantId, TermHistory, TimelineId } from '../acceptor/state.js';
import type { Logger } from '../log.js';
import { assert } from '../sync/assert.js';
import type { Lsn } from '../wal/lsn.js';
import type { AcceptorLink } from './acceptor_link.js';
import type { Campaign } from './campaign.js';
import { findPrevRecordLsn } from './donor_reader.js';
import { chooseDonor, proposerHistory, screenVoters, startStreamingLsn, type DonorChoice, type Voter } from './election.js';
import type { ServerIdentity, WalSource } from './source.js';

/** What the electing step reads from the proposer (built once by `Proposer`). */
export interface ElectingContext {
  readonly tenantId: TenantId;
  readonly timelineId: TimelineId;
  readonly identity: ServerIdentity;
  readonly log: Logger;
  readonly links: readonly AcceptorLink[];
  readonly quorum: number;
  readonly campaign: Campaign<AcceptorLink>;
  readonly source: WalSource;
  /** How long greetings and votes from a majority may take. */
  readonly quorumTimeoutMs: number;
  isFatal(error: unknown): boolean;
}

export interface TermStart {
  /** Ours: the campaign's term when a majority of usable votes came in. */
  term: bigint;
  donor: DonorChoice;
  /** Our history: the donor's plus (our term, term start). */
  history: TermHistory;
  termStartLsn: Lsn;
  /** The highest voter truncate_lsn, or the term start when no voter has one. */
  truncateLsn: Lsn;
}

/**
 * Waits for votes from a majority whose histories we can elect with (`screenVoters`); the votes of the
 * others are refused (logged), and if that leaves less than a majority, the campaign waits for more.
 * Each pass refuses a voter or returns, so this ends; the quorum timeout bounds the whole wait.
 */
export async function collectVoters(context: ElectingContext, signal: AbortSignal): Promise<Voter[]> {
  const campaign = context.campaign;
  const deadlineMs = performance.now() + context.quorumTimeoutMs;
  for (;;) {
    await campaign.waitForVotes(signal, Math.max(0, Math.ceil(deadlineMs - performance.now())), () => noQuorumDetails(context));
    const screened = screenVoters(campaign.votes().map(([link, vote]) => ({ index: link.index, vote })));
    for (const { index, problem } of screened.refused) {
      const link = context.links[index];
      assert(link !== undefined, 'a voter is one of our safekeepers');
      campaign.refuseVoter(link, link.name, problem);
    }
    if (screened.voters.length >= context.quorum) return screened.voters;
  }
}

/** The donor, our history, the term start (asked of the source when every voter is empty) and the first truncate_lsn. */
export async function planTermStart(context: ElectingContext, voters: readonly Voter[], term: bigint, signal: AbortSignal): Promise<TermStart> {
  const donor = chooseDonor(voters);
  let termStartLsn = donor.flushLsn;
  if (termStartLsn === 0n) {
    termStartLsn = await context.source.initialLsn(signal);
    context.log.info({ start_lsn: termStartLsn }, 'every voter is empty: starting the timeline');
  }
  const history = proposerHistory(donor.history, term, termStartLsn);
  const truncateLsn = donor.truncateLsn === 0n ? termStartLsn : donor.truncateLsn;
  return { term, donor, history, termStartLsn, truncateLsn };
}

/**
 * Where the source starts streaming: the term start, or, when the source can rewind, the lowest voter's
 * start point (no lower than the source's earliest LSN), so voters that lag are fed from the window.
 */
export function sourceStartLsnFor(context: ElectingContext, voters: readonly Voter[], start: TermStart): Lsn {
  const { source } = context;
  const { history, term, termStartLsn } = start;
  let sourceStartLsn = termStartLsn;
  if (source.canRewind) {
    let lowestLsn = termStartLsn;
    for (const { vote } of voters) {
      const startLsn = startStreamingLsn(history, term, vote.termHistory, vote.flushLsn);
      if (startLsn < lowestLsn) lowestLsn = startLsn;
    }
    const earliestLsn = source.earliestLsn();
    sourceStartLsn = lowestLsn > earliestLsn ? lowestLsn : earliestLsn < termStartLsn ? earliestLsn : termStartLsn;
  }
  return sourceStartLsn;
}

/**
 * The start of the last record before the term start, read back from the donor, when the source needs it
 * (it generates WAL and must fill in xl_prev) and the donor has WAL; else null. Also null when there is no
 * record before the term start on this timeline, or when the read fails (logged: the first record then gets
 * xl_prev 0). Fatal errors and an abort are rethrown.
 */
export async function prevRecordLsnBefore(context: ElectingContext, donorLink: AcceptorLink, start: TermStart, signal: AbortSignal): Promise<Lsn | null> {
  const { term, history, termStartLsn } = start;
  if (!context.source.needsPrevRecordLsn || start.donor.flushLsn === 0n) return null;
  const timelineStartLsn = history[0]?.lsn ?? termStartLsn;
  try {
    const prevRecordLsn = await findPrevRecordLsn({
      donor: donorLink.address, tenantId: context.tenantId, timelineId: context.timelineId, term, identity: context.identity, timelineStartLsn, termStartLsn, signal,
    });
    context.log.info({ prev_record_lsn: prevRecordLsn, term_start_lsn: termStartLsn }, 'found the last record before the term start');
    return prevRecordLsn;
  } catch (error) {
    if (signal.aborted || context.isFatal(error)) throw error;
    context.log.warn({ err: error instanceof Error ? error.message : String(error), donor: donorLink.name }, 'could not read the WAL before the term start back from the donor; the first record gets xl_prev 0');
    return null;
  }
}

/** "N safekeepers voted within T ms, Q needed (h:p: last error or state; ...)" for NoQuorumError. */
function noQuorumDetails(context: ElectingContext): string {
  const { campaign, links } = context;
  const details = links.map((link) => {
    const refusal = campaign.refusal(link);
    const state = campaign.hasVoted(link) ? 'voted' : refusal !== null ? `vote refused: ${refusal}` : campaign.hasGreeted(link) ? 'greeted' : link.state;
    const error = link.lastError?.replace(`${link.name}: `, '');
    return `${link.name}: ${error ?? state}`;
  });
  return `${links.length} safekeepers voted within ${context.quorumTimeoutMs} ms, ${context.quorum} needed (${details.join('; ')})`;
}
