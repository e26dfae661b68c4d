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
 * two persists leaves a valid state (e.g. the new term without the new history), as a crash would. The one
 * exception: a ProposerElected that passed its checks is applied whole, under the timeline's lifetime.
 */
import { AcceptorRefusedError, ProtocolViolationError } from '../errors.js';
import { assert } from '../sync/assert.js';
import { formatLsn, lsnMax, walEndLsnMax } from '../wal/lsn.js';
import { decoderStartProblem } from '../wal/record_decoder.js';
import type { AcceptorCore } from './acceptor_core.js';
import type { AcceptorGreeting, ProposerElected, ProposerGreeting, VoteRequest, VoteResponse } from './messages.js';
import type { MembershipConfiguration } from './state.js';
import { TERM_HISTORY_ENTRIES_MAX, findHighestCommonPoint, historyProblem, termStartLsn, truncateHistory } from './term_history.js';

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
 * Why `message` cannot come from a correct proposer, or null. The control-file encoder and the WAL pipeline
 * assert these facts later (a crash, after the WAL was cut), and remote input must never reach an assertion,
 * so `handleElected` checks them before it changes anything. Neon's walproposer always satisfies them: its
 * history is the donor's (terms below its own) plus (its term, its term start); its LSNs are record
 * boundaries (flush_lsns, or the basebackup's redo LSN), never 0/0 (sync-safekeepers exits rather than elect
 * at 0/0: `ProcessPropStartPos`); and it adds one entry per election.
 */
function electedProblem(message: ProposerElected, segmentSizeBytes: number): string | null {
  const history = message.termHistory;
  const first = history[0];
  const last = history[history.length - 1];
  if (first === undefined || last === undefined) return 'empty proposer term history';
  if (history.length > TERM_HISTORY_ENTRIES_MAX) {
    return `proposer term history has ${history.length} entries, more than the ${TERM_HISTORY_ENTRIES_MAX} a control file holds`;
  }
  const problem = historyProblem(history);
  if (problem !== null) return `proposer term history: ${problem}`;
  // Terms ascend, so the last is the highest. It may be below the message's term: Neon's peer recovery
  // (recovery.rs) sends the donor's term with the donor's history, whose last term can be lower.
  if (last.term > message.term) return `proposer term history has term ${last.term}, above the message's term ${message.term}`;
  // LSNs never decrease, so the first is the lowest.
  if (first.lsn === 0n) return `proposer term history starts at ${formatLsn(first.lsn)}`;
  const startLsn = message.startStreamingAtLsn;
  // WAL at 0/0 would leave write_lsn 0, which reads as "no WAL yet" everywhere.
  if (startLsn === 0n) return `start_streaming_at is ${formatLsn(startLsn)}`;
  // Our WAL is decoded from start_streaming_at on, so it must be where a decoder can start.
  const startProblem = decoderStartProblem(startLsn, segmentSizeBytes);
  if (startProblem !== null) return `start_streaming_at ${formatLsn(startLsn)} ${startProblem}`;
  if (startLsn >= walEndLsnMax(segmentSizeBytes)) return `start_streaming_at ${formatLsn(startLsn)} is in the last segment of the LSN space`;
  return null;
}

/**
 * ProposerElected: adopts the proposer's term and history, truncates our WAL at the point where the two
 * histories diverge (after writing the first segment's headers on an empty timeline), and persists the
 * start LSNs. Refuses a malformed message before it changes anything (see `electedProblem`), and a
 * truncation point other than the proposer's start, or one below commit_lsn.
 */
export async function handleElected(core: AcceptorCore, message: ProposerElected, signal: AbortSignal): Promise<void> {
  core.checkGeneration('ProposerElected', message.generation);
  const problem = electedProblem(message, core.control.state.server.walSegSizeBytes);
  if (problem !== null) throw new ProtocolViolationError('ProposerElected', problem);
  if (message.term > core.term) await core.persist((next) => void (next.acceptorState.term = message.term), signal);
  // Our term is higher: ignore; the next AppendResponse tells the proposer.
  if (message.term < core.term) return;

  // Our end, compared below, is what is on disk: the vote flushed, but more may have arrived since (or a failed
  // write cut it back to its last good record).
  await core.wal.flush(signal);
  const history = message.termHistory;
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
  // With no common term the start is the proposer's first history entry, which can lie past our WAL: moving
  // the WAL end there would count the hole as WAL (zeros, acknowledged, backed up as complete segments) and
  // lose whatever is written after it at the next restart, whose scan stops at the hole. As Neon's
  // truncate_wal ("streaming must not create a hole"); such an acceptor catches up by recovery instead.
  // Our end is flush_lsn, the end of our last record (Neon's write_record_lsn), not the bytes written: after an
  // XLOG_SWITCH it is the next segment start, past the padding received so far, and there a walproposer starts us.
  const empty = core.wal.writeLsn === 0n;
  if (!empty && startLsn > flushLsn) {
    throw new AcceptorRefusedError(`refusing ProposerElected: start_streaming_at=${formatLsn(startLsn)} is past the end of our WAL (${formatLsn(flushLsn)}), which would leave a hole`);
  }

  // Checked: from here on the election is applied whole. The caller's signal (its connection) no longer
  // stops it, or a proposer that disconnects right after sending it would leave the WAL cut with the old
  // history (and, on a new timeline, positions that say "WAL exists" under a state that says "none yet", so
  // the next election would skip the first segment's headers). Only the timeline's shutdown stops it, as a
  // crash would, and then nothing in memory outlives it.
  const applying = core.lifetime;
  try {
    // The compute's stream carries no segment or page headers for the first segment: write them.
    if (empty) await core.wal.initializeFirstSegment(startLsn, applying);
    await core.wal.truncate(startLsn, applying);
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
    }, applying);
  } catch (error) {
    // A disk error part-way: the files may be cut while the control file keeps the old history (and, on a new
    // timeline, says "no WAL"). The WAL store is left as a restart would find it, so a later election applies
    // in full: a first one writes the first segment's headers again at its own start, which may differ.
    core.wal.electionNotRecorded(empty);
    throw error;
  }
  core.termStartLsn = termStartLsn(history);
  core.commitCandidateLsn = 0n; // candidates from an earlier session are not re-applied
}
