/**
 * The proposer over fake acceptors: a real `Proposer` whose links do not connect (their `run` is stubbed)
 * while the test plays each safekeeper through the LinkHost calls a link makes (greeting, vote, the wait
 * for the election, AppendResponses), with a fake WAL source. Covers the window budget when the source
 * rewinds far below the term start, election rounds after a lost vote reply, duplicate safekeepers,
 * voters whose histories cannot be used, and the clean stop's wait for the final commit_lsn.
 */
import assert from 'node:assert/strict';
import { Writable } from 'node:stream';
import { describe, it } from 'node:test';
import type { AcceptorGreeting, AppendResponse, VoteResponse } from '../../src/acceptor/messages.js';
import type { TenantId, TermHistory, TimelineId } from '../../src/acceptor/state.js';
import { createLogger } from '../../src/log.js';
import type { AcceptorLink } from '../../src/proposer/acceptor_link.js';
import { proposeMain } from '../../src/proposer/cli.js';
import { DuplicateSafekeeperError, TermConflictError } from '../../src/proposer/errors.js';
import { APPEND_BYTES_MAX, STOP_DRAIN_MS_MAX, UNCOMMITTED_BYTES_MAX } from '../../src/proposer/limits.js';
import { Proposer } from '../../src/proposer/proposer.js';
import { duplicateSafekeeper } from '../../src/proposer/quorum.js';
import { drainFinalCommit, owingFinalCommit, type DrainedLink } from '../../src/proposer/stop_drain.js';
import { WalWindow } from '../../src/proposer/wal_window.js';
import { Watch } from '../../src/sync/watch.js';
import type { ServerIdentity, StreamArgs, WalSource } from '../../src/proposer/source.js';
import { owedFromLsn, sourceMayAppend, windowTrimLsn } from '../../src/proposer/window_budget.js';
import { AssertionError } from '../../src/sync/assert.js';
import type { Lsn } from '../../src/wal/lsn.js';

const MIB = 1024n * 1024n;
const TIMELINE_START_LSN = 0x100_0000n;
const TENANT = 'a'.repeat(32) as TenantId;
const TIMELINE = 'b'.repeat(32) as TimelineId;
const SAFEKEEPERS = [{ host: '127.0.0.1', port: 5451 }, { host: '127.0.0.1', port: 5452 }, { host: '127.0.0.1', port: 5453 }];

function capturingLogger(): { log: ReturnType<typeof createLogger>; lines: () => Record<string, unknown>[] } {
  const chunks: string[] = [];
  const stream = new Writable({ write: (chunk: Buffer, _encoding, done) => (chunks.push(chunk.toString('utf8')), done()) });
  const log = createLogger({ logLevel: 'info', logFormat: 'json' }, stream);
  return { log, lines: () => chunks.join('').split('\n').filter((line) => line !== '').map((line) => JSON.parse(line) as Record<string, unknown>) };
}

/** A primary-like source: streams zeros from where it is asked up to `endLsn`, then idles until aborted. */
class FakeSource implements WalSource {
  readonly description = 'fake';
  readonly identity: ServerIdentity = { systemId: 7n, pgVersion: 150008, walSegSizeBytes: 16 * 1024 * 1024 };
  readonly needsPrevRecordLsn = false;
  readonly committedLsns: Lsn[] = [];
  writtenLsn = 0n;
  done = false;

  constructor(readonly canRewind: boolean, readonly endLsn: Lsn) {}

  earliestLsn(): Lsn {
    return TIMELINE_START_LSN;
  }

  initialLsn(): Promise<Lsn> {
    return Promise.resolve(TIMELINE_START_LSN);
  }

  async stream(args: StreamArgs): Promise<void> {
    const piece = new Uint8Array(APPEND_BYTES_MAX);
    for (let lsn = args.startLsn; lsn < this.endLsn; lsn = this.writtenLsn) {
      const pieceBytes = Number(this.endLsn - lsn < BigInt(piece.length) ? this.endLsn - lsn : BigInt(piece.length));
      await args.write(lsn, piece.subarray(0, pieceBytes), args.signal);
      this.writtenLsn = lsn + BigInt(pieceBytes);
    }
    this.done = true;
    if (!args.signal.aborted) await new Promise((resolve) => args.signal.addEventListener('abort', resolve, { once: true }));
  }

  onCommit(commitLsn: Lsn): void {
    this.committedLsns.push(commitLsn);
  }

  onHotStandbyFeedback(): void {}

  close(): Promise<void> {
    return Promise.resolve();
  }
}

interface Harness {
  proposer: Proposer;
  source: FakeSource;
  links: AcceptorLink[];
  running: Promise<void>;
  stop: () => Promise<void>;
  lines: () => Record<string, unknown>[];
}

/** A running proposer whose links stay idle: the test speaks for the safekeepers. */
function startProposer(source: FakeSource, windowBytes: number): Harness {
  const { log, lines } = capturingLogger();
  const proposer = new Proposer({ safekeepers: SAFEKEEPERS, tenantId: TENANT, timelineId: TIMELINE, protocolVersion: 3, source, log, quorumTimeoutMs: 10_000, windowBytes });
  for (const link of proposer.links) link.run = () => Promise.resolve();
  const abort = new AbortController();
  const running = proposer.run(abort.signal);
  return { proposer, source, links: proposer.links, running, lines, stop: async () => (abort.abort(), await running) };
}

const signal = new AbortController().signal;
const greeting = (nodeId: number, term = 1): AcceptorGreeting => ({ tag: 'greeting', nodeId: BigInt(nodeId), term: BigInt(term), mconf: { generation: 0, members: [], newMembers: null } });
const voteFor = (term: bigint, flushLsn: Lsn, termHistory: TermHistory, voteGiven = true): VoteResponse => ({ tag: 'vote', generation: 0, term, voteGiven, flushLsn, truncateLsn: 0n, termHistory });
const appendResponse = (term: bigint, flushLsn: Lsn): AppendResponse => ({
  tag: 'append', generation: 0, term, flushLsn, commitLsn: 0n, hsFeedback: { timestampUs: 0n, xmin: 0n, catalogXmin: 0n }, pageserverFeedback: null,
});
const link = (harness: Harness, index: number): AcceptorLink => harness.links[index] as AcceptorLink;
/** What LinkStream does on an AppendResponse: the link's flush_lsn, then the proposer's commit arithmetic. */
function ack(harness: Harness, index: number, flushLsn: Lsn, term: bigint): void {
  const each = link(harness, index);
  if (flushLsn > each.flushLsn) each.flushLsn = flushLsn;
  harness.proposer.onAppendResponse(each, appendResponse(term, each.flushLsn));
}
const turn = (): Promise<void> => new Promise((resolve) => setImmediate(resolve));

describe('window budget', () => {
  const termStartLsn = TIMELINE_START_LSN + 40n * MIB;

  it('does not count WAL below the term start, and still pauses at UNCOMMITTED_BYTES_MAX above it', () => {
    const budget = BigInt(UNCOMMITTED_BYTES_MAX);
    const capacityBytes = 64 * 1024 * 1024;
    // 40 MiB below the term start and 1 MiB above: the donor has the 40 MiB, so the source goes on.
    assert.equal(sourceMayAppend({ startLsn: TIMELINE_START_LSN, endLsn: termStartLsn + MIB, capacityBytes: 128 * 1024 * 1024 }, 0n, termStartLsn), true);
    assert.equal(sourceMayAppend({ startLsn: termStartLsn, endLsn: termStartLsn + budget, capacityBytes }, 0n, termStartLsn), true);
    assert.equal(sourceMayAppend({ startLsn: termStartLsn, endLsn: termStartLsn + budget + 1n, capacityBytes }, 0n, termStartLsn), false, 'uncommitted WAL above the term start holds the source');
    assert.equal(sourceMayAppend({ startLsn: termStartLsn, endLsn: termStartLsn + budget + 1n, capacityBytes }, termStartLsn + 1n, termStartLsn), true, 'a commit frees it');
    assert.equal(sourceMayAppend({ startLsn: termStartLsn, endLsn: termStartLsn + MIB, capacityBytes: Number(MIB) }, 0n, termStartLsn), false, 'a full window holds it');
    assert.equal(owedFromLsn(0n, termStartLsn), termStartLsn);
    assert.equal(owedFromLsn(termStartLsn + 5n, termStartLsn), termStartLsn + 5n);
  });

  it('trims at most to max(commit, term start), and past the slowest flush only when nearly full', () => {
    const window = { startLsn: TIMELINE_START_LSN, endLsn: TIMELINE_START_LSN + 8n * MIB, capacityBytes: 64 * 1024 * 1024 };
    assert.equal(windowTrimLsn(window, [TIMELINE_START_LSN + MIB, termStartLsn, 0n], 0n, termStartLsn), 0n, 'an offline safekeeper keeps it all');
    assert.equal(windowTrimLsn(window, [TIMELINE_START_LSN + MIB, termStartLsn, termStartLsn], 0n, termStartLsn), TIMELINE_START_LSN + MIB);
    const full = { startLsn: TIMELINE_START_LSN, endLsn: TIMELINE_START_LSN + 64n * MIB, capacityBytes: 64 * 1024 * 1024 };
    assert.equal(windowTrimLsn(full, [0n, 0n, 0n], 0n, termStartLsn), TIMELINE_START_LSN + 32n * MIB, 'the older half, all below the term start');
    assert.equal(windowTrimLsn(full, [0n, 0n, 0n], 0n, TIMELINE_START_LSN + 10n * MIB), TIMELINE_START_LSN + 10n * MIB, 'never past the term start while nothing is committed');
    assert.equal(windowTrimLsn(full, [0n, 0n, 0n], TIMELINE_START_LSN + 20n * MIB, TIMELINE_START_LSN + 10n * MIB), TIMELINE_START_LSN + 20n * MIB, 'nor past commit');
  });

  it('a source rewound far below the term start for a lagging voter does not stall: commit reaches the term start once a quorum has it', async () => {
    // A is at the term start, B is empty (its start point is the timeline start, 40 MiB below), C is down.
    const endLsn = termStartLsn + 8n * MIB;
    const harness = startProposer(new FakeSource(true, endLsn), 4 * 1024 * 1024);
    const { proposer, source } = harness;
    proposer.onGreeting(link(harness, 0), greeting(1));
    proposer.onGreeting(link(harness, 1), greeting(2));
    const { term, round } = await proposer.campaign(signal);
    proposer.onVote(link(harness, 0), voteFor(term, termStartLsn, [{ term: 1n, lsn: TIMELINE_START_LSN }]), round);
    proposer.onVote(link(harness, 1), voteFor(term, 0n, []), round);
    const elected = await proposer.elected(round, signal);
    assert.equal(elected?.termStartLsn, termStartLsn);
    assert.equal(proposer.window.startLsn, TIMELINE_START_LSN, 'the source rewound to the lagging voter');
    // What LinkStream does after ProposerElected: each link starts at its start point.
    const [a, b] = [link(harness, 0), link(harness, 1)];
    a.state = 'streaming';
    a.flushLsn = termStartLsn;
    b.state = 'streaming';
    b.flushLsn = TIMELINE_START_LSN;
    let recoveries = 0;
    for (let step = 0; step < 10_000 && !(source.done && proposer.commit.value >= endLsn); step += 1) {
      await turn();
      const window = proposer.window;
      assert.ok(window.startLsn <= owedFromLsn(proposer.commit.value, termStartLsn), 'no WAL owed to the quorum leaves the window');
      if (b.flushLsn < window.startLsn) {
        // Below the window: B recovers from a donor, which must exist and have the WAL (A has all below the term start).
        assert.notEqual(proposer.recoveryDonor(b, b.flushLsn), null);
        assert.ok(window.startLsn <= a.flushLsn);
        recoveries += 1;
        ack(harness, 1, window.startLsn, term);
      } else {
        const nextLsn = b.flushLsn + MIB / 2n; // B reads slower than the source writes
        ack(harness, 1, nextLsn < window.endLsn ? nextLsn : window.endLsn, term);
      }
      ack(harness, 0, window.endLsn > a.flushLsn ? window.endLsn : a.flushLsn, term);
      const flushes = [a.flushLsn, b.flushLsn];
      if (proposer.commit.value > 0n) assert.ok(flushes.every((lsn) => lsn >= proposer.commit.value), 'commit is what a quorum flushed');
    }
    assert.equal(source.done, true, 'the source was not paused for good');
    assert.equal(proposer.commit.value, endLsn);
    assert.ok(recoveries > 0, 'the voter that lagged below the window recovered from the donor');
    assert.ok(source.committedLsns.every((lsn) => lsn >= termStartLsn), 'nothing below the term start is reported to the primary');
    await harness.stop();
  });

  it('still pauses a source whose WAL above the term start is not acknowledged', async () => {
    const termStart = TIMELINE_START_LSN;
    const harness = startProposer(new FakeSource(false, termStart + 64n * MIB), 64 * 1024 * 1024);
    const { proposer, source } = harness;
    proposer.onGreeting(link(harness, 0), greeting(1));
    proposer.onGreeting(link(harness, 1), greeting(2));
    const { term, round } = await proposer.campaign(signal);
    proposer.onVote(link(harness, 0), voteFor(term, 0n, []), round);
    proposer.onVote(link(harness, 1), voteFor(term, 0n, []), round);
    await proposer.elected(round, signal);
    for (let step = 0; step < 50; step += 1) {
      await turn();
      ack(harness, 0, termStart, term);
      ack(harness, 1, termStart, term);
    }
    const budget = BigInt(UNCOMMITTED_BYTES_MAX);
    assert.ok(source.writtenLsn >= termStart + budget && source.writtenLsn <= termStart + budget + BigInt(APPEND_BYTES_MAX), `paused at the budget (${source.writtenLsn - termStart} bytes)`);
    assert.equal(source.done, false);
    ack(harness, 0, source.writtenLsn, term);
    ack(harness, 1, source.writtenLsn, term);
    await turn();
    assert.ok(source.writtenLsn > termStart + budget + BigInt(APPEND_BYTES_MAX), 'acknowledged WAL frees the source');
    await harness.stop();
  });
});

describe('elections over fake acceptors', () => {
  it('a lost VoteResponse, then a refusal in our own term, leads to a new round with a higher term, not an exit', async () => {
    const harness = startProposer(new FakeSource(false, TIMELINE_START_LSN), 4 * 1024 * 1024);
    const { proposer } = harness;
    for (const index of [0, 1, 2]) proposer.onGreeting(link(harness, index), greeting(index + 1));
    const first = await proposer.campaign(signal);
    assert.deepEqual([first.term, first.round], [2n, 0]);
    // Safekeeper 0 persisted our vote but the reply was lost; it reconnected, and refuses the term it gave us.
    const waiting = proposer.elected(first.round, signal);
    proposer.onVote(link(harness, 0), voteFor(2n, 0n, [], false), first.round);
    assert.equal(await waiting, null, 'links waiting on the first round vote again');
    const second = await proposer.campaign(signal);
    assert.deepEqual([second.term, second.round], [3n, 1]);
    proposer.onVote(link(harness, 0), voteFor(3n, 0n, []), second.round);
    proposer.onVote(link(harness, 1), voteFor(3n, 0n, []), second.round);
    const elected = await proposer.elected(second.round, signal);
    assert.equal(elected?.term, 3n);
    assert.ok(harness.lines().some((line) => line['msg'] === 'a safekeeper refused our vote in our own term (its reply to our request was lost, or another proposer took the term): electing again with a higher term'));
    await harness.stop(); // resolves: the run did not fail
  });

  it('refuses a voter with an unusable history and is elected by the others', async () => {
    const harness = startProposer(new FakeSource(false, TIMELINE_START_LSN), 4 * 1024 * 1024);
    const { proposer } = harness;
    for (const index of [0, 1, 2]) proposer.onGreeting(link(harness, index), greeting(index + 1));
    const { term, round } = await proposer.campaign(signal);
    const goodHistory = [{ term: 1n, lsn: TIMELINE_START_LSN }];
    // Safekeeper 0: terms not ascending (chooseDonor used to throw, which stopped the proposer).
    proposer.onVote(link(harness, 0), voteFor(term, TIMELINE_START_LSN + 3000n, [{ term: 1n, lsn: TIMELINE_START_LSN }, { term: 1n, lsn: TIMELINE_START_LSN + 8n }]), round);
    proposer.onVote(link(harness, 1), voteFor(term, TIMELINE_START_LSN + 2000n, goodHistory), round);
    await turn();
    assert.equal(proposer.phase, 'campaign', 'one usable vote is not a majority: wait for more');
    proposer.onVote(link(harness, 2), voteFor(term, TIMELINE_START_LSN + 1000n, goodHistory), round);
    const elected = await proposer.elected(round, signal);
    assert.equal(elected?.termStartLsn, TIMELINE_START_LSN + 2000n, 'the donor is the best usable voter');
    const refusals = harness.lines().filter((line) => line['msg'] === 'refusing a safekeeper\'s vote: its term history cannot be used; electing without it');
    assert.deepEqual(refusals.map((line) => line['safekeeper']), ['127.0.0.1:5451']);
    assert.match(String(refusals[0]?.['problem']), /terms not ascending/);
    await harness.stop();
  });

  it('refuses a voter that disagrees with the donor, going on at once when a majority remains', async () => {
    const harness = startProposer(new FakeSource(false, TIMELINE_START_LSN), 4 * 1024 * 1024);
    const { proposer } = harness;
    for (const index of [0, 1, 2]) proposer.onGreeting(link(harness, index), greeting(index + 1, 2));
    const { term, round } = await proposer.campaign(signal);
    assert.equal(term, 3n);
    const history = (lsn: Lsn): TermHistory => [{ term: 1n, lsn: TIMELINE_START_LSN }, { term: 2n, lsn }];
    // The third vote arrives while electing; it is recorded, and all three are screened together.
    proposer.onVote(link(harness, 0), voteFor(term, TIMELINE_START_LSN + 5000n, history(TIMELINE_START_LSN + 4000n)), round);
    proposer.onVote(link(harness, 1), voteFor(term, TIMELINE_START_LSN + 4500n, history(TIMELINE_START_LSN + 4000n)), round);
    proposer.onVote(link(harness, 2), voteFor(term, TIMELINE_START_LSN + 4800n, history(TIMELINE_START_LSN + 4400n)), round);
    const elected = await proposer.elected(round, signal);
    assert.equal(elected?.termStartLsn, TIMELINE_START_LSN + 5000n);
    const refusals = harness.lines().filter((line) => line['msg'] === 'refusing a safekeeper\'s vote: its term history cannot be used; electing without it');
    assert.deepEqual(refusals.map((line) => line['safekeeper']), ['127.0.0.1:5453']);
    assert.match(String(refusals[0]?.['problem']), /term 2 starts at/);
    await harness.stop();
  });

  it('still stops on a higher term', async () => {
    const harness = startProposer(new FakeSource(false, TIMELINE_START_LSN), 4 * 1024 * 1024);
    const { proposer } = harness;
    proposer.onGreeting(link(harness, 0), greeting(1));
    proposer.onGreeting(link(harness, 1), greeting(2));
    const { round } = await proposer.campaign(signal);
    assert.throws(() => proposer.onVote(link(harness, 0), voteFor(9n, 0n, [], false), round), TermConflictError);
    await harness.stop();
  });
});

describe('duplicate safekeepers', () => {
  it('finds an address listed twice, host names compared case-insensitively', () => {
    assert.equal(duplicateSafekeeper(SAFEKEEPERS), null);
    assert.deepEqual(duplicateSafekeeper([{ host: 'SK1', port: 1 }, { host: 'sk2', port: 1 }, { host: 'sk1', port: 1 }]), ['SK1:1', 'sk1:1']);
    assert.equal(duplicateSafekeeper([{ host: 'sk1', port: 1 }, { host: 'sk1', port: 2 }]), null);
    assert.throws(() => new Proposer({ safekeepers: [SAFEKEEPERS[0]!, SAFEKEEPERS[0]!], tenantId: TENANT, timelineId: TIMELINE, protocolVersion: 3, source: new FakeSource(false, 0n), log: capturingLogger().log, quorumTimeoutMs: 1000, windowBytes: 1 << 20 }), AssertionError);
  });

  /** Runs `safekeeper propose` in process; its exit code and what it wrote to stderr. */
  async function propose(args: string[]): Promise<{ code: number; stderr: string }> {
    const written: string[] = [];
    const write = process.stderr.write.bind(process.stderr);
    process.stderr.write = ((chunk: string | Uint8Array): boolean => (written.push(String(chunk)), true)) as typeof process.stderr.write;
    try {
      return { code: await proposeMain(args), stderr: written.join('') };
    } finally {
      process.stderr.write = write;
    }
  }

  it('refuses duplicate addresses at startup with exit code 2 and a clear error', async () => {
    const { code, stderr } = await propose(['--safekeepers', '127.0.0.1:5451,127.0.0.1:5452,127.0.0.1:5451', '--tenant-id', TENANT, '--timeline-id', TIMELINE, '--synthetic']);
    assert.equal(code, 2);
    assert.match(stderr, /--safekeepers: 127\.0\.0\.1:5451 is listed twice/);
  });

  it('names a missing or bad id flag once, with exit code 2', async () => {
    const safekeepers = ['--safekeepers', '127.0.0.1:5451,127.0.0.1:5452,127.0.0.1:5453', '--synthetic'];
    const missing = await propose([...safekeepers, '--timeline-id', TIMELINE]);
    assert.equal(missing.code, 2);
    assert.match(missing.stderr, /^safekeeper propose: --tenant-id is required \(see safekeeper propose --help\)\n$/);
    const bad = await propose([...safekeepers, '--tenant-id', TENANT, '--timeline-id', 'zz']);
    assert.equal(bad.code, 2);
    assert.match(bad.stderr, /^safekeeper propose: --timeline-id: not a timeline id \(32 hex chars\): "zz"/);
  });

  it('refuses a synthetic record larger than PostgreSQL allows with exit code 2 (the WAL builder asserted on it)', async () => {
    const { code, stderr } = await propose(['--safekeepers', '127.0.0.1:5451,127.0.0.1:5452,127.0.0.1:5453', '--tenant-id', TENANT, '--timeline-id', TIMELINE, '--synthetic', '--record-bytes', '1020MiB']);
    assert.equal(code, 2);
    assert.match(stderr, /--record-bytes: at most 1069547456 bytes/);
  });

  it('refuses a second link to the same node id, before and after the election, and never counts it', async () => {
    const harness = startProposer(new FakeSource(false, TIMELINE_START_LSN + MIB), 4 * 1024 * 1024);
    const { proposer } = harness;
    proposer.onGreeting(link(harness, 0), greeting(7));
    assert.throws(() => proposer.onGreeting(link(harness, 1), greeting(7)), (error: unknown) => error instanceof DuplicateSafekeeperError && error.code === 'SK_DUPLICATE_SAFEKEEPER' && /127\.0\.0\.1:5452 is node 7, the same node as 127\.0\.0\.1:5451/.test(error.message));
    assert.equal(proposer.isFatal(new DuplicateSafekeeperError(7n, 'x', 'y')), false, 'only that link is dropped');
    assert.equal(proposer.phase, 'collecting', 'one node greeting twice is not a majority');
    assert.equal(link(harness, 1).nodeId, null);
    proposer.onGreeting(link(harness, 2), greeting(8));
    const { term, round } = await proposer.campaign(signal);
    proposer.onVote(link(harness, 0), voteFor(term, 0n, []), round);
    proposer.onVote(link(harness, 2), voteFor(term, 0n, []), round);
    const elected = await proposer.elected(round, signal);
    assert.notEqual(elected, null);
    assert.throws(() => proposer.onGreeting(link(harness, 1), greeting(7)), DuplicateSafekeeperError);
    // Node 7 alone past the term start is no quorum: the refused link has no flush_lsn to count.
    link(harness, 0).state = 'streaming';
    ack(harness, 0, TIMELINE_START_LSN + MIB, term);
    assert.equal(proposer.commit.value, 0n);
    await harness.stop();
  });

});

describe('clean stop: the final commit_lsn', () => {
  const END_LSN = TIMELINE_START_LSN + 4096n;
  const drainedLink = (name: string, state: DrainedLink['state'], flushLsn: Lsn, ackedCommitLsn: Lsn, streamingAtLsn = END_LSN): DrainedLink => ({ name, state, flushLsn, ackedCommitLsn, streamingAtLsn });
  const windowTo = (endLsn: Lsn): WalWindow => {
    const window = new WalWindow(4 * APPEND_BYTES_MAX);
    window.reset(TIMELINE_START_LSN);
    window.append(TIMELINE_START_LSN, new Uint8Array(Number(endLsn - TIMELINE_START_LSN)));
    return window;
  };

  it('owes the final commit_lsn to streaming safekeepers that lack WAL or the commit, and to nobody else', () => {
    const links = [
      drainedLink('done', 'streaming', END_LSN, END_LSN),
      drainedLink('lacks_commit', 'streaming', END_LSN, END_LSN - 8n),
      drainedLink('lacks_wal', 'streaming', END_LSN - 8n, END_LSN - 8n),
      drainedLink('down', 'offline', 0n, 0n),
      drainedLink('recovering', 'recovering', TIMELINE_START_LSN, 0n),
    ];
    assert.deepEqual(owingFinalCommit(links, END_LSN, END_LSN), ['lacks_commit', 'lacks_wal']);
    assert.deepEqual(owingFinalCommit(links, END_LSN, END_LSN - 8n), ['lacks_wal']);
  });

  it('once settled, takes a flush_lsn short of the window end for an incomplete last record, but not WAL still unsent or uncommitted', () => {
    const recordEndLsn = END_LSN - 100n; // the window ends 100 bytes into a record nobody can acknowledge yet
    const links = [drainedLink('a', 'streaming', recordEndLsn, recordEndLsn), drainedLink('b', 'streaming', recordEndLsn, recordEndLsn)];
    assert.deepEqual(owingFinalCommit(links, END_LSN, recordEndLsn), ['a', 'b'], 'WAL may be in flight');
    assert.deepEqual(owingFinalCommit(links, END_LSN, recordEndLsn, true), []);
    const unsent = [drainedLink('a', 'streaming', recordEndLsn, recordEndLsn, END_LSN - 8n)];
    assert.deepEqual(owingFinalCommit(unsent, END_LSN, recordEndLsn, true), ['a'], 'not all sent yet');
    const behindCommit = [drainedLink('a', 'streaming', recordEndLsn - 8n, recordEndLsn - 8n)];
    assert.deepEqual(owingFinalCommit(behindCommit, END_LSN, recordEndLsn, true), ['a'], 'the commit is not acknowledged');
  });

  it('waits for the acknowledgements, then logs that every connected safekeeper has it', async () => {
    const { log, lines } = capturingLogger();
    const links = [drainedLink('a', 'streaming', END_LSN - 8n, 0n), drainedLink('b', 'streaming', END_LSN, TIMELINE_START_LSN)];
    const commit = new Watch<Lsn>(END_LSN - 8n);
    const acks = new Watch(0);
    const drained = drainFinalCommit({ links, window: windowTo(END_LSN), commit, acks, log, signal: new AbortController().signal });
    const ack = (link: DrainedLink, flushLsn: Lsn, commitLsn: Lsn): void => {
      link.flushLsn = flushLsn;
      link.ackedCommitLsn = commitLsn;
      acks.set(acks.value + 1);
    };
    ack(links[0] as DrainedLink, END_LSN, END_LSN - 8n);
    commit.set(END_LSN); // the last in-flight WAL is acknowledged by a quorum
    ack(links[1] as DrainedLink, END_LSN, END_LSN);
    const startedMs = performance.now();
    setImmediate(() => ack(links[0] as DrainedLink, END_LSN, END_LSN));
    await drained;
    assert.ok(performance.now() - startedMs < STOP_DRAIN_MS_MAX / 2, 'ended with the last acknowledgement, not at the deadline');
    const done = lines().filter((line) => line['msg'] === 'stopping: every connected safekeeper has the final commit_lsn');
    assert.equal(done.length, 1);
    assert.equal(done[0]?.['commit_lsn'], '0/1001000');
  });

  it('gives up on a safekeeper that never acknowledges after STOP_DRAIN_MS_MAX, naming it', async () => {
    const { log, lines } = capturingLogger();
    const links = [drainedLink('silent', 'streaming', END_LSN, TIMELINE_START_LSN), drainedLink('fine', 'streaming', END_LSN, END_LSN)];
    const startedMs = performance.now();
    await drainFinalCommit({ links, window: windowTo(END_LSN), commit: new Watch<Lsn>(END_LSN), acks: new Watch(0), log, signal: new AbortController().signal });
    const waitedMs = performance.now() - startedMs;
    assert.ok(waitedMs >= STOP_DRAIN_MS_MAX - 5 && waitedMs < STOP_DRAIN_MS_MAX + 2000, `waited ${Math.round(waitedMs)} ms`);
    const warned = lines().filter((line) => line['msg'] === 'stopping without every connected safekeeper acknowledging the final commit_lsn');
    assert.deepEqual(warned.map((line) => line['safekeepers']), [['silent']]);
  });

  it('ends at once, without a log line, when a fatal error cancels the links', async () => {
    const { log, lines } = capturingLogger();
    const stop = new AbortController();
    const links = [drainedLink('silent', 'streaming', END_LSN, 0n)];
    const drained = drainFinalCommit({ links, window: windowTo(END_LSN), commit: new Watch<Lsn>(END_LSN), acks: new Watch(0), log, signal: stop.signal });
    const startedMs = performance.now();
    stop.abort(new Error('term conflict'));
    await drained;
    assert.ok(performance.now() - startedMs < STOP_DRAIN_MS_MAX / 2);
    assert.deepEqual(lines(), []);
  });
});
