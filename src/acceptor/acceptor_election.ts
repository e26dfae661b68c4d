/**
 * The acceptor's election rules (protocol doc §4.3–§4.6): ProposerGreeting, VoteRequest and
 * ProposerElected, the messages a proposer sends before it streams WAL. Functions over `AcceptorCore`,
 * called by `Acceptor.handle`; appends stay in acceptor.ts.
 *
 * Durability (§4.8): a greeting that changes system_id or raises the generation persists before the
 * AcceptorGreeting; a vote flushes WAL, and a granted vote persists the term, before the VoteResponse;
 * ProposerElected persists term, history and start LSNs before it resolves (it has no reply).
 *
 * Main thread, serial per timeline (see acceptor.ts). Abort: every wait takes `signal`; an abort between
 * two persists leaves a valid state (e.g. the new term without the new history), as a crash would.
 */
import { AcceptorRefusedError, ProtocolViolationError } from '../errors.js';
import { assert } from '../sync/assert.js';
import { formatLsn, lsnMax } from '../wal/lsn.js';
import type { AcceptorCore } from './acceptor_core.js';
import type { AcceptorGreeting, ProposerElected, ProposerGreeting, VoteRequest, VoteResponse } from './messages.js';
import type { MembershipConfiguration } from './state.js';
import { findHighestCommonPoint, historyProblem, termStartLsn, truncateHistory } from './term_history.js';

const majorVersion = (pgVersion: number): number => Math.floor(pgVersion / 10000);

const isMember = (nodeId: bigint, mconf: MembershipConfiguration): boolean =>
  mconf.members.some((member) => member.id === nodeId) || (mconf.newMembers ?? []).some((member) => member.id === nodeId);

/** ProposerGreeting: checks the timeline's identity, adopts a new system_id or a higher generation, and greets back. */
export async function handleGreeting(core: AcceptorCore, nodeId: bigint, message: ProposerGreeting, signal: AbortSignal): Promise<AcceptorGreeting> {
  const stored = core.control.state;
  if (message.pgVersion === 0 || majorVersion(message.pgVersion) !== majorVersion(stored.server.pgVersion)) {
    throw new AcceptorRefusedError(`incompatible server version ${message.pgVersion}, expected ${stored.server.pgVersion}`);
  }
  if (message.tenantId !== stored.tenantId) throw new AcceptorRefusedError(`invalid tenant ID, got ${message.tenantId}, expected ${stored.tenantId}`);
  if (message.timelineId !== stored.timelineId) throw new AcceptorRefusedError(`invalid timeline ID, got ${message.timelineId}, expected ${stored.timelineId}`);
  if (message.walSegSizeBytes !== stored.server.walSegSizeBytes) {
    throw new AcceptorRefusedError(`invalid wal_seg_size, got ${message.walSegSizeBytes}, expected ${stored.server.walSegSizeBytes}`);
  }
  // sync-safekeepers does not know the system id and sends 0: ignore that.
  if (message.systemId !== 0n && message.systemId !== stored.server.systemId) {
    await core.persist((next) => {
      next.server.systemId = message.systemId;
      next.server.pgVersion = message.pgVersion; // non-zero: checked above
    }, signal);
  }
  if (message.mconf.generation > core.mconf.generation) {
    if (!isMember(nodeId, message.mconf)) {
      throw new AcceptorRefusedError(`refused to switch into generation ${message.mconf.generation}: node ${nodeId} is not a member`);
    }
    await core.persist((next) => void (next.mconf = structuredClone(message.mconf)), signal);
  }
  return { tag: 'greeting', nodeId, mconf: structuredClone(core.mconf) as MembershipConfiguration, term: core.term };
}

/** VoteRequest: flushes WAL, then grants the vote (durably) when the proposer's term is higher than ours. */
export async function handleVote(core: AcceptorCore, message: VoteRequest, signal: AbortSignal): Promise<VoteResponse> {
  core.checkGeneration('VoteRequest', message.generation);
  // Flush everything received so the new proposer starts streaming at the end of our WAL.
  await core.wal.flush(signal);
  await core.advanceCommit(0n, signal); // what Acceptor.onFlushAdvanced does
  const flushLsn = core.flushLsn;
  const response: VoteResponse = {
    tag: 'vote',
    generation: core.mconf.generation,
    term: core.term,
    voteGiven: false,
    flushLsn,
    truncateLsn: core.inMemory.peerHorizonLsn,
    termHistory: truncateHistory(core.control.state.acceptorState.termHistory, flushLsn),
  };
  if (message.term > core.term) {
    await core.persist((next) => void (next.acceptorState.term = message.term), signal); // the vote is durable before it is sent
    response.term = core.term;
    response.voteGiven = true;
  }
  return response;
}

/**
 * ProposerElected: adopts the proposer's term and history, truncates our WAL at the point where the two
 * histories diverge (after writing the first segment's headers on an empty timeline), and persists the
 * start LSNs. Refuses a truncation point other than the proposer's start, and one below commit_lsn.
 */
export async function handleElected(core: AcceptorCore, message: ProposerElected, signal: AbortSignal): Promise<void> {
  core.checkGeneration('ProposerElected', message.generation);
  if (message.term > core.term) await core.persist((next) => void (next.acceptorState.term = message.term), signal);
  // Our term is higher: ignore; the next AppendResponse tells the proposer.
  if (message.term < core.term) return;

  const history = message.termHistory;
  if (history.length === 0) throw new ProtocolViolationError('ProposerElected', 'empty proposer term history');
  const problem = historyProblem(history);
  if (problem !== null) throw new ProtocolViolationError('ProposerElected', `proposer term history: ${problem}`);

  const flushLsn = core.flushLsn;
  const localHistory = truncateHistory(core.control.state.acceptorState.termHistory, flushLsn);
  const commonPoint = findHighestCommonPoint(history, localHistory, flushLsn) ?? history[0];
  assert(commonPoint !== undefined);
  const startLsn = message.startStreamingAtLsn;
  // A late ProposerElected racing another connection of the same proposer: transient, it reconnects.
  if (commonPoint.lsn !== startLsn) {
    throw new AcceptorRefusedError(
      `refusing ProposerElected with unexpected truncation point: lcp=(${commonPoint.term}, ${formatLsn(commonPoint.lsn)}) ` +
        `start_streaming_at=${formatLsn(startLsn)} term=${core.term} flush_lsn=${formatLsn(flushLsn)}`,
    );
  }
  // **Quirk fix**: Neon panics here (the whole node goes down); we refuse the message instead.
  if (startLsn < core.inMemory.commitLsn) {
    throw new AcceptorRefusedError(`refusing ProposerElected: start_streaming_at=${formatLsn(startLsn)} would truncate committed WAL (commit_lsn=${formatLsn(core.inMemory.commitLsn)})`);
  }

  // The compute's stream carries no segment or page headers for the first segment: write them.
  if (core.wal.writeLsn === 0n) await core.wal.initializeFirstSegment(startLsn, signal);
  await core.wal.truncate(startLsn, signal);
  assert(core.wal.writeLsn === startLsn && core.wal.flushLsn === startLsn, 'truncate must set both positions');
  assert(!core.wal.truncationPending, 'truncate must clear the pending flag');

  await core.persist((next) => {
    if (next.timelineStartLsn === 0n) next.timelineStartLsn = history[0]?.lsn ?? 0n;
    if (next.peerHorizonLsn === 0n) next.peerHorizonLsn = next.timelineStartLsn;
    if (next.localStartLsn === 0n) next.localStartLsn = startLsn;
    next.commitLsn = lsnMax(next.commitLsn, next.timelineStartLsn);
    next.backupLsn = lsnMax(next.backupLsn, next.timelineStartLsn);
    next.remoteConsistentLsn = lsnMax(next.remoteConsistentLsn, next.timelineStartLsn);
    next.acceptorState.termHistory = history.map((entry) => ({ term: entry.term, lsn: entry.lsn }));
  }, signal);
  core.termStartLsn = termStartLsn(history);
  core.commitCandidateLsn = 0n; // candidates from an earlier session are not re-applied
}
