import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { Acceptor } from '../../src/acceptor/acceptor.js';
import { MemoryControlStore, MemoryWalStore } from '../../src/acceptor/memory_storage.js';
import type { AppendRequest, ProposerElected, ProposerGreeting } from '../../src/acceptor/messages.js';
import { MEMBER_HOST_BYTES_MAX, MEMBERS_PER_SET_MAX, type MembershipConfiguration, type TermHistory, type TimelinePersistentState, newTimelineState, parseTenantId, parseTimelineId } from '../../src/acceptor/state.js';
import { TERM_HISTORY_ENTRIES_MAX } from '../../src/acceptor/term_history.js';
import { AcceptorRefusedError, ProtocolViolationError } from '../../src/errors.js';
import { encodeCheckedControlFile } from '../../src/storage/control_file.js';

const TENANT = parseTenantId('cf0480929707ee75372337efaa5ecf96');
const TIMELINE = parseTimelineId('112ded66422aa5e953e5440fa5427ac4');
const SEGMENT_BYTES = 16 << 20;
const NODE_ID = 1n;
const signal = new AbortController().signal;
const refused = (pattern: RegExp) => (error: unknown): boolean => error instanceof AcceptorRefusedError && error.code === 'SK_ACCEPTOR_REFUSED' && pattern.test(error.message);
const violation = (pattern: RegExp) => (error: unknown): boolean => error instanceof ProtocolViolationError && error.code === 'SK_PROTOCOL_VIOLATION' && pattern.test(error.message);
const history = (...entries: [number, number][]): TermHistory => entries.map(([term, lsn]) => ({ term: BigInt(term), lsn: BigInt(lsn) }));

function freshState(change: (state: TimelinePersistentState) => void = () => {}): TimelinePersistentState {
  const state = newTimelineState({ tenantId: TENANT, timelineId: TIMELINE, server: { pgVersion: 170004, systemId: 0n, walSegSizeBytes: SEGMENT_BYTES }, startLsn: 0n, commitLsn: 0n, nowMs: 0 });
  change(state);
  return state;
}

/**
 * The in-memory control store with the real control file's checks: every state persisted must encode (its
 * invariants and size bound) and read back, as `saveControlFile` requires. Without them, states the node
 * would crash on pass here.
 */
class CheckedControlStore extends MemoryControlStore {
  override async persist(next: TimelinePersistentState, signal: AbortSignal): Promise<void> {
    encodeCheckedControlFile(next);
    await super.persist(next, signal);
  }
}

function setup(state = freshState(), wal = new MemoryWalStore()): { acceptor: Acceptor; control: CheckedControlStore; wal: MemoryWalStore } {
  const control = new CheckedControlStore(state);
  return { acceptor: new Acceptor(NODE_ID, control, wal), control, wal };
}

const greeting = (change: Partial<ProposerGreeting> = {}): ProposerGreeting => ({
  tag: 'greeting',
  tenantId: TENANT,
  timelineId: TIMELINE,
  mconf: { generation: 0, members: [], newMembers: null },
  pgVersion: 170002,
  systemId: 0n,
  walSegSizeBytes: SEGMENT_BYTES,
  ...change,
});
const elected = (term: number, startLsn: number, termHistory: TermHistory, generation = 0): ProposerElected => ({ tag: 'elected', generation, term: BigInt(term), startStreamingAtLsn: BigInt(startLsn), termHistory });
const append = (term: number, beginLsn: number, endLsn: number, change: Partial<AppendRequest> = {}): AppendRequest => ({
  tag: 'append',
  generation: 0,
  term: BigInt(term),
  beginLsn: BigInt(beginLsn),
  endLsn: BigInt(endLsn),
  commitLsn: 0n,
  truncateLsn: 0n,
  wal: new Uint8Array(endLsn - beginLsn).fill(0xab),
  ...change,
});
const MEMBERS_WITH_ME: MembershipConfiguration = { generation: 3, members: [{ id: NODE_ID, host: 'me', pgPort: 5454 }, { id: 2n, host: 'b', pgPort: 5454 }], newMembers: null };

/**
 * Votes and elects `term` with a single-entry history starting at `startLsn` on a fresh timeline. Start LSNs in
 * these tests are record starts (8-byte aligned, past any page header), as ProposerElected requires.
 */
async function elect(acceptor: Acceptor, term: number, startLsn: number): Promise<void> {
  await acceptor.handle({ tag: 'vote', generation: 0, term: BigInt(term) }, signal);
  assert.equal(await acceptor.handle(elected(term, startLsn, history([term, startLsn])), signal), null);
}

describe('ProposerGreeting', () => {
  test('replies with node id, configuration and term without persisting', async () => {
    const { acceptor, control } = setup(freshState((state) => void (state.acceptorState.term = 4n)));
    const reply = await acceptor.handle(greeting(), signal);
    assert.deepEqual(reply, { tag: 'greeting', nodeId: NODE_ID, mconf: { generation: 0, members: [], newMembers: null }, term: 4n });
    assert.equal(control.persistCount, 0);
  });

  test('refuses another major version, pg_version 0, other ids and another segment size', async () => {
    const { acceptor } = setup();
    await assert.rejects(acceptor.handle(greeting({ pgVersion: 160003 }), signal), refused(/incompatible server version 160003/));
    await assert.rejects(acceptor.handle(greeting({ pgVersion: 0 }), signal), refused(/incompatible server version 0/));
    await assert.rejects(acceptor.handle(greeting({ tenantId: parseTenantId('00000000000000000000000000000001') }), signal), refused(/invalid tenant ID/));
    await assert.rejects(acceptor.handle(greeting({ timelineId: parseTimelineId('00000000000000000000000000000001') }), signal), refused(/invalid timeline ID/));
    await assert.rejects(acceptor.handle(greeting({ walSegSizeBytes: 1 << 20 }), signal), refused(/invalid wal_seg_size/));
  });

  test('persists a new system id (and pg_version) before replying; 0 is ignored', async () => {
    const { acceptor, control } = setup();
    await acceptor.handle(greeting({ systemId: 0n }), signal);
    assert.equal(control.persistCount, 0);
    await acceptor.handle(greeting({ systemId: 77n, pgVersion: 170009 }), signal);
    assert.equal(control.persistCount, 1);
    assert.equal(control.state.server.systemId, 77n);
    assert.equal(control.state.server.pgVersion, 170009);
  });

  test('switches into a higher generation it belongs to and persists it; ignores lower ones', async () => {
    const { acceptor, control } = setup();
    const reply = await acceptor.handle(greeting({ mconf: MEMBERS_WITH_ME }), signal);
    assert.equal(control.state.mconf.generation, 3);
    assert.deepEqual(reply?.tag === 'greeting' && reply.mconf, MEMBERS_WITH_ME);
    await acceptor.handle(greeting({ mconf: { ...MEMBERS_WITH_ME, generation: 2 } }), signal);
    assert.equal(control.state.mconf.generation, 3);
    assert.equal(control.persistCount, 1);
  });

  test('refuses to switch into a configuration that does not include it (members or new members)', async () => {
    const { acceptor, control } = setup();
    const stranger = { generation: 5, members: [{ id: 9n, host: 'x', pgPort: 1 }], newMembers: null };
    await assert.rejects(acceptor.handle(greeting({ mconf: stranger }), signal), refused(/refused to switch into generation 5/));
    assert.equal(control.persistCount, 0);
    await acceptor.handle(greeting({ mconf: { ...stranger, newMembers: [{ id: NODE_ID, host: 'me', pgPort: 1 }] } }), signal);
    assert.equal(control.state.mconf.generation, 5);
  });
});

describe('VoteRequest', () => {
  test('refuses a generation mismatch (Neon test_voting)', async () => {
    const { acceptor } = setup();
    await assert.rejects(acceptor.handle({ tag: 'vote', generation: 42, term: 1n }, signal), refused(/generation mismatch/));
  });

  test('persists the new term before the VoteResponse exists', async () => {
    const { acceptor, control } = setup();
    const events: string[] = [];
    control.beforePersist = async (next) => {
      events.push(`persist start term=${next.acceptorState.term}`);
      await new Promise((resolve) => setTimeout(resolve, 5));
      events.push('persist done');
    };
    const reply = await acceptor.handle({ tag: 'vote', generation: 0, term: 1n }, signal).then((value) => (events.push('reply'), value));
    assert.deepEqual(events, ['persist start term=1', 'persist done', 'reply']);
    assert.deepEqual(reply, { tag: 'vote', generation: 0, term: 1n, voteGiven: true, flushLsn: 0n, truncateLsn: 0n, termHistory: [] });
    assert.equal(control.state.acceptorState.term, 1n);
  });

  test('a failed persist means no vote', async () => {
    const { acceptor, control } = setup();
    control.beforePersist = async () => {
      throw new Error('fsync failed');
    };
    await assert.rejects(acceptor.handle({ tag: 'vote', generation: 0, term: 1n }, signal), /fsync failed/);
    assert.equal(acceptor.term, 0n);
  });

  test('refuses equal and lower terms with the current term, also after a restart', async () => {
    const { acceptor, control, wal } = setup();
    await acceptor.handle({ tag: 'vote', generation: 0, term: 5n }, signal);
    const restarted = new Acceptor(NODE_ID, new CheckedControlStore(control.state), wal);
    for (const term of [5n, 4n]) {
      const reply = await restarted.handle({ tag: 'vote', generation: 0, term }, signal);
      assert(reply?.tag === 'vote');
      assert.equal(reply.voteGiven, false);
      assert.equal(reply.term, 5n);
    }
  });

  test('flushes WAL first and reports history cut at flush_lsn and the in-memory peer horizon', async () => {
    const { acceptor, wal } = setup();
    await elect(acceptor, 1, 104);
    await acceptor.handle(append(1, 104, 150, { truncateLsn: 90n }), signal);
    assert.equal(wal.flushLsn, 104n);
    const reply = await acceptor.handle({ tag: 'vote', generation: 0, term: 2n }, signal);
    assert(reply?.tag === 'vote');
    assert.equal(reply.flushLsn, 150n);
    assert.equal(wal.flushLsn, 150n);
    assert.equal(reply.truncateLsn, 104n, 'max(peer horizon initialised to timeline start, 90)');
    assert.deepEqual(reply.termHistory, history([1, 104]));
  });
});

describe('ProposerElected', () => {
  test('a first election whose history cannot be persisted leaves the timeline empty: the next one writes the first segment again', async () => {
    const { acceptor, control, wal } = setup();
    await acceptor.handle({ tag: 'vote', generation: 0, term: 1n }, signal);
    control.beforePersist = async (next) => {
      if (next.acceptorState.termHistory.length > 0) throw new Error('ENOSPC: no space left on device');
    };
    await assert.rejects(acceptor.handle(elected(1, 0x2000028, history([1, 0x2000028])), signal), /ENOSPC/);
    control.beforePersist = null;
    assert.equal(wal.writeLsn, 0n, 'nothing of the failed election counts as WAL');
    assert.equal(wal.truncationPending, true, 'no append before a ProposerElected succeeds');
    await assert.rejects(acceptor.handle(append(1, 0x2000028, 0x2000100), signal), refused(/truncation pending/));
    // Another proposer, whose WAL starts a segment earlier.
    await elect(acceptor, 2, 0x1000028);
    assert.deepEqual(wal.initializedAtLsns, [0x2000028n, 0x1000028n], 'the segment headers of the real start are written');
    assert.equal(control.state.localStartLsn, 0x1000028n);
    assert.equal(acceptor.flushLsn, 0x1000028n);
  });

  test('an election whose history cannot be persisted keeps its cut and refuses appends until the next one', async () => {
    const wal = new MemoryWalStore({ startLsn: 80n });
    const { acceptor, control } = setup(freshState((state) => Object.assign(state, { timelineStartLsn: 80n, localStartLsn: 80n, commitLsn: 80n, acceptorState: { term: 1n, termHistory: history([1, 80]) } })), wal);
    await wal.append(80n, new Uint8Array(160).fill(7), signal);
    await wal.flush(signal);
    await acceptor.handle({ tag: 'vote', generation: 0, term: 2n }, signal);
    control.beforePersist = async () => {
      throw new Error('EIO: i/o error');
    };
    await assert.rejects(acceptor.handle(elected(2, 240, history([1, 80], [2, 240])), signal), /EIO/);
    control.beforePersist = null;
    assert.equal(wal.flushLsn, 240n);
    assert.equal(wal.truncationPending, true);
    await assert.rejects(acceptor.handle(append(2, 240, 300), signal), refused(/truncation pending/));
    await acceptor.handle({ tag: 'vote', generation: 0, term: 3n }, signal);
    await acceptor.handle(elected(3, 240, history([1, 80], [3, 240])), signal);
    assert.equal(wal.truncationPending, false);
    assert.deepEqual(wal.initializedAtLsns, [], 'not a fresh timeline');
    assert.deepEqual(control.state.acceptorState.termHistory, history([1, 80], [3, 240]));
  });

  test('first election of a compute-created timeline initialises the segment and the start LSNs', async () => {
    const { acceptor, control, wal } = setup();
    await elect(acceptor, 1, 0x1000028);
    assert.deepEqual(wal.initializedAtLsns, [0x1000028n]);
    assert.deepEqual(wal.truncatedAtLsns, [0x1000028n]);
    const state = control.state;
    assert.deepEqual([state.timelineStartLsn, state.localStartLsn, state.commitLsn, state.backupLsn, state.peerHorizonLsn, state.remoteConsistentLsn], Array(6).fill(0x1000028n));
    assert.deepEqual(state.acceptorState.termHistory, history([1, 0x1000028]));
    assert.equal(acceptor.termStartLsn, 0x1000028n);
    assert.equal(acceptor.flushLsn, 0x1000028n);
  });

  test('refuses a generation mismatch; a higher term is persisted; a lower term is ignored', async () => {
    const { acceptor, control } = setup();
    await assert.rejects(acceptor.handle(elected(2, 64, history([1, 64], [2, 128]), 42), signal), refused(/generation mismatch/));
    await acceptor.handle(elected(2, 64, history([1, 64], [2, 128])), signal);
    assert.equal(control.state.acceptorState.term, 2n);
    const persists = control.persistCount;
    assert.equal(await acceptor.handle(elected(1, 64, history([1, 64])), signal), null);
    assert.equal(control.persistCount, persists);
    assert.deepEqual(control.state.acceptorState.termHistory, history([1, 64], [2, 128]));
  });

  test('truncates a divergent uncommitted tail at the highest common point (test_wal_truncation)', async () => {
    const wal = new MemoryWalStore({ startLsn: 80n });
    const { acceptor, control } = setup(freshState((state) => Object.assign(state, { timelineStartLsn: 80n, localStartLsn: 80n, commitLsn: 200n, acceptorState: { term: 3n, termHistory: history([1, 80], [2, 160], [3, 240]) } })), wal);
    await wal.append(80n, new Uint8Array(240).fill(7), signal);
    await wal.flush(signal);
    // Neon test_find_highest_common_point_middle: the common term 2 ends at 240 locally.
    await assert.rejects(acceptor.handle(elected(4, 320, history([1, 80], [2, 160], [4, 320])), signal), refused(/unexpected truncation point/));
    await acceptor.handle(elected(4, 240, history([1, 80], [2, 160], [4, 320])), signal);
    assert.equal(wal.writeLsn, 240n);
    assert.equal(wal.flushLsn, 240n);
    assert.deepEqual(wal.initializedAtLsns, [], 'not a fresh timeline');
    assert.deepEqual(control.state.acceptorState.termHistory, history([1, 80], [2, 160], [4, 320]));
    assert.equal(acceptor.lastLogTerm, 2n);
    assert.equal(acceptor.termStartLsn, 320n);
  });

  test('streams from the proposer first entry when there is no common point', async () => {
    const wal = new MemoryWalStore({ startLsn: 64n });
    const { acceptor } = setup(freshState((state) => Object.assign(state, { timelineStartLsn: 64n, localStartLsn: 64n, commitLsn: 64n, acceptorState: { term: 2n, termHistory: history([1, 64], [2, 128]) } })), wal);
    await wal.append(64n, new Uint8Array(128), signal);
    await wal.flush(signal);
    await acceptor.handle(elected(3, 64, history([0, 64], [3, 192])), signal);
    assert.equal(wal.writeLsn, 64n);
  });

  test('refuses a start past the end of its WAL, which would leave a hole (Neon truncate_wal)', async () => {
    const wal = new MemoryWalStore({ startLsn: 64n });
    const { acceptor, control } = setup(freshState((state) => Object.assign(state, { timelineStartLsn: 64n, localStartLsn: 64n, commitLsn: 64n, acceptorState: { term: 2n, termHistory: history([1, 64], [2, 128]) } })), wal);
    await wal.append(64n, new Uint8Array(128), signal);
    // No common term, and the proposer's first entry lies past our WAL end (192), with bytes still unflushed.
    await assert.rejects(acceptor.handle(elected(3, 256, history([3, 256])), signal), refused(/past the end of our WAL \(0\/C0\), which would leave a hole/));
    assert.equal(wal.writeLsn, 192n);
    assert.equal(wal.flushLsn, 192n, 'flushed before the comparison');
    assert.deepEqual(wal.truncatedAtLsns, []);
    assert.deepEqual(control.state.acceptorState.termHistory, history([1, 64], [2, 128]), 'the history is kept');
    // At the end of our WAL exactly, there is no hole.
    await acceptor.handle(elected(3, 192, history([3, 192])), signal);
    assert.equal(wal.writeLsn, 192n);
  });

  test('refuses to truncate below the in-memory commit_lsn (Quirk fix: Neon panics)', async () => {
    const { acceptor } = setup();
    await elect(acceptor, 1, 104);
    await acceptor.handle(append(1, 104, 200, { commitLsn: 200n }), signal);
    await acceptor.flushAndRespond(signal);
    assert.equal(acceptor.commitLsn, 200n);
    // A history that claims term 1 ended at 152 while our term 1 WAL runs to 200 and is committed.
    await acceptor.handle({ tag: 'vote', generation: 0, term: 2n }, signal);
    await assert.rejects(acceptor.handle(elected(2, 152, history([1, 104], [2, 152])), signal), refused(/would truncate committed WAL/));
  });

  test('refuses empty and non-ascending proposer histories', async () => {
    const { acceptor } = setup();
    await assert.rejects(acceptor.handle(elected(1, 64, []), signal), violation(/empty proposer term history/));
    await assert.rejects(acceptor.handle(elected(3, 64, history([3, 64], [2, 128])), signal), violation(/terms not ascending/));
  });

  test('last_log_term switches only when flush reaches the term start (Neon test_last_log_term_switch)', async () => {
    const { acceptor } = setup();
    await acceptor.handle(elected(2, 64, history([1, 64], [2, 192])), signal);
    await acceptor.handle(append(2, 64, 128), signal);
    await acceptor.flushAndRespond(signal);
    assert.equal(acceptor.lastLogTerm, 1n);
    await acceptor.handle(append(2, 128, 192), signal);
    await acceptor.flushAndRespond(signal);
    assert.equal(acceptor.lastLogTerm, 2n);
  });
});

/** The WAL of a compute-created timeline starts just past its segment's long page header, as in PostgreSQL. */
const FIRST_RECORD_LSN = 0x1000028;
const U64_MAX = 0xffff_ffff_ffff_ffffn;

/** Asserts that `message` is refused as a protocol violation matching `pattern` and changed nothing: term, control file, WAL. */
async function assertRefusedBeforeAnyChange(parts: ReturnType<typeof setup>, message: ProposerElected, pattern: RegExp): Promise<void> {
  const { acceptor, control, wal } = parts;
  const observe = () => ({ term: acceptor.term, persists: control.persistCount, initialized: [...wal.initializedAtLsns], truncated: [...wal.truncatedAtLsns], writeLsn: wal.writeLsn });
  const before = observe();
  await assert.rejects(acceptor.handle(message, signal), violation(pattern));
  assert.deepEqual(observe(), before);
}

describe('ProposerElected that no walproposer sends is refused before anything changes', () => {
  test('refuses a history term above the message term, neither persisting the term nor truncating', async () => {
    const parts = setup();
    await parts.acceptor.handle({ tag: 'vote', generation: 0, term: 5n }, signal);
    await assertRefusedBeforeAnyChange(parts, elected(5, FIRST_RECORD_LSN, history([7, FIRST_RECORD_LSN])), /history has term 7, above the message's term 5/);
    await assertRefusedBeforeAnyChange(parts, elected(6, FIRST_RECORD_LSN, history([7, FIRST_RECORD_LSN])), /history has term 7, above the message's term 6/);
    // A last term below the message's is fine: Neon's peer recovery sends the donor's term with its history.
    await parts.acceptor.handle(elected(5, FIRST_RECORD_LSN, history([3, FIRST_RECORD_LSN])), signal);
    assert.deepEqual(parts.control.state.acceptorState.termHistory, history([3, FIRST_RECORD_LSN]));
  });

  test('refuses a history longer than TERM_HISTORY_ENTRIES_MAX; the longest one allowed, at the largest values, fits the control file', async () => {
    // Every term and LSN takes the most digits: 20 for the terms, 17 characters for the LSNs (X/Y with 8 hex digits each).
    const firstLsn = 0xffff_ffff_fe00_0028n; // 40 bytes into the last segment but one (the last is refused): just past the long page header
    const longest = (entries: number): TermHistory =>
      Array.from({ length: entries }, (_, index) => ({ term: U64_MAX - BigInt(entries - 1 - index), lsn: firstLsn + 8n * BigInt(index) }));
    const message = (termHistory: TermHistory): ProposerElected => ({ tag: 'elected', generation: 0, term: U64_MAX, startStreamingAtLsn: firstLsn, termHistory });
    const parts = setup();
    await assertRefusedBeforeAnyChange(parts, message(longest(TERM_HISTORY_ENTRIES_MAX + 1)), new RegExp(`${TERM_HISTORY_ENTRIES_MAX + 1} entries, more than the ${TERM_HISTORY_ENTRIES_MAX}`));
    await parts.acceptor.handle(message(longest(TERM_HISTORY_ENTRIES_MAX)), signal);
    assert.equal(parts.control.state.acceptorState.termHistory.length, TERM_HISTORY_ENTRIES_MAX, 'persisted through the checked encoder');
  });

  test('the longest history and two largest member sets, at their worst for JSON, fit one control file', () => {
    const firstLsn = 0xffff_ffff_ff00_0028n;
    const termHistory = Array.from({ length: TERM_HISTORY_ENTRIES_MAX }, (_, index) => ({ term: U64_MAX - BigInt(TERM_HISTORY_ENTRIES_MAX - 1 - index), lsn: firstLsn + 8n * BigInt(index) }));
    // Every host byte a quote, which JSON escapes to two.
    const members = (from: number) => Array.from({ length: MEMBERS_PER_SET_MAX }, (_, index) => ({ id: U64_MAX - BigInt(from + index), host: '"'.repeat(MEMBER_HOST_BYTES_MAX), pgPort: 65535 }));
    const state = freshState((next) => {
      next.acceptorState.term = U64_MAX;
      next.acceptorState.termHistory = termHistory;
      next.mconf = { generation: 0xffff_ffff, members: members(0), newMembers: members(MEMBERS_PER_SET_MAX) };
      next.localStartLsn = firstLsn;
    });
    encodeCheckedControlFile(state); // asserts the body bound, among its other checks
  });

  test('refuses start_streaming_at 0/0 and a history starting at 0/0; appends never skip the gap check', async () => {
    const parts = setup();
    const { acceptor, wal } = parts;
    await acceptor.handle({ tag: 'vote', generation: 0, term: 1n }, signal);
    await assertRefusedBeforeAnyChange(parts, elected(1, 0, history([1, 0])), /history starts at 0\/0/);
    await assertRefusedBeforeAnyChange(parts, elected(1, FIRST_RECORD_LSN, history([0, 0], [1, FIRST_RECORD_LSN])), /history starts at 0\/0/);
    await assertRefusedBeforeAnyChange(parts, elected(1, 0, history([1, FIRST_RECORD_LSN])), /start_streaming_at is 0\/0/);
    // write_lsn is still 0 and (in this store) no truncation is pending: an append anywhere else is a gap.
    await assert.rejects(acceptor.handle(append(1, FIRST_RECORD_LSN, FIRST_RECORD_LSN + 8), signal), refused(/creates gap in written WAL, write_lsn=0\/0/));
    assert.equal(wal.writeLsn, 0n);
    // The positive control: a well-formed ProposerElected still starts the timeline.
    await elect(acceptor, 2, FIRST_RECORD_LSN);
    await acceptor.handle(append(2, FIRST_RECORD_LSN, FIRST_RECORD_LSN + 8), signal);
    assert.equal(wal.writeLsn, BigInt(FIRST_RECORD_LSN + 8));
  });

  test('refuses a start_streaming_at that is not 8-byte aligned or lies inside a page header', async () => {
    const parts = setup();
    await parts.acceptor.handle({ tag: 'vote', generation: 0, term: 1n }, signal);
    const elect1 = (startLsn: number): ProposerElected => elected(1, startLsn, history([1, startLsn]));
    await assertRefusedBeforeAnyChange(parts, elect1(0x1000101), /start_streaming_at 0\/1000101 is not 8-byte aligned/);
    await assertRefusedBeforeAnyChange(parts, elect1(0x1000010), /start_streaming_at 0\/1000010 is inside a page header/); // the long one
    await assertRefusedBeforeAnyChange(parts, elect1(0x1002010), /start_streaming_at 0\/1002010 is inside a page header/); // a short one
    // Record starts just past either header, and page starts (the header comes first in the stream), are fine.
    for (const startLsn of [0x1000028, 0x1002018, 0x1002000, 0x2000000]) await setup().acceptor.handle(elect1(startLsn), signal);
  });

  test('refuses an unaligned divergence point on a timeline that already has WAL', async () => {
    const parts = setup();
    const { acceptor, wal } = parts;
    await elect(acceptor, 1, FIRST_RECORD_LSN);
    await acceptor.handle(append(1, FIRST_RECORD_LSN, FIRST_RECORD_LSN + 0x100), signal);
    await acceptor.handle({ tag: 'vote', generation: 0, term: 2n }, signal); // flushes: term 1 runs to 0/1000128
    // The proposer claims term 1 ended at 0/1000101, so the highest common point is exactly its start_streaming_at.
    await assertRefusedBeforeAnyChange(parts, elected(2, 0x1000101, history([1, FIRST_RECORD_LSN], [2, 0x1000101])), /start_streaming_at 0\/1000101 is not 8-byte aligned/);
    assert.equal(wal.flushLsn, BigInt(FIRST_RECORD_LSN + 0x100), 'the WAL is not cut');
  });
});

describe('AppendRequest', () => {
  test('refuses a commit_lsn where no record can start, and WAL reaching the last segment of the LSN space', async () => {
    // commit_lsn is persisted and recovery decodes from it: an unaligned one would fail every later start.
    const { acceptor } = setup();
    await elect(acceptor, 1, FIRST_RECORD_LSN);
    await acceptor.handle(append(1, FIRST_RECORD_LSN, FIRST_RECORD_LSN + 64), signal);
    await assert.rejects(acceptor.handle(append(1, FIRST_RECORD_LSN + 64, FIRST_RECORD_LSN + 128, { commitLsn: BigInt(FIRST_RECORD_LSN + 60) }), signal), violation(/commit_lsn 0\/1000064 is not 8-byte aligned/));
    await assert.rejects(acceptor.handle(append(1, FIRST_RECORD_LSN + 64, FIRST_RECORD_LSN + 64, { commitLsn: 0x1002008n }), signal), violation(/commit_lsn 0\/1002008 is inside a page header/));
    assert.equal(acceptor.commitLsn, BigInt(FIRST_RECORD_LSN), 'neither moved commit_lsn (the election set it to the timeline start)');
    assert.equal(await acceptor.handle(append(1, FIRST_RECORD_LSN + 64, FIRST_RECORD_LSN + 64, { commitLsn: BigInt(FIRST_RECORD_LSN + 64) }), signal), null);
    assert.equal((await acceptor.flushAndRespond(signal)).commitLsn, BigInt(FIRST_RECORD_LSN + 64), 'a record boundary is taken');

    // Near 2^64 a record end (or a switch's next segment) would be 2^64, which no u64 field carries.
    const top = setup();
    const lastSegmentLsn = 0x1_0000_0000_0000_0000n - BigInt(SEGMENT_BYTES);
    const startLsn = lastSegmentLsn - 64n;
    await top.acceptor.handle({ tag: 'vote', generation: 0, term: 1n }, signal);
    await top.acceptor.handle({ tag: 'elected', generation: 0, term: 1n, startStreamingAtLsn: startLsn, termHistory: [{ term: 1n, lsn: startLsn }] }, signal);
    const crossing: AppendRequest = { tag: 'append', generation: 0, term: 1n, beginLsn: startLsn, endLsn: lastSegmentLsn + 8n, commitLsn: 0n, truncateLsn: 0n, wal: new Uint8Array(72) };
    await assert.rejects(top.acceptor.handle(crossing, signal), violation(/reaches the last segment of the LSN space/));
    const parts = setup();
    await parts.acceptor.handle({ tag: 'vote', generation: 0, term: 1n }, signal);
    await assertRefusedBeforeAnyChange(parts, { tag: 'elected', generation: 0, term: 1n, startStreamingAtLsn: lastSegmentLsn + 40n, termHistory: [{ term: 1n, lsn: lastSegmentLsn + 40n }] }, /is in the last segment of the LSN space/);
  });

  test('refuses gaps, rewrites and generation mismatches (Neon test_non_consecutive_write)', async () => {
    const { acceptor } = setup();
    await acceptor.handle(elected(1, 64, history([1, 64])), signal);
    await assert.rejects(acceptor.handle(append(1, 64, 72, { generation: 42 }), signal), refused(/generation mismatch/));
    await acceptor.handle(append(1, 64, 72), signal);
    await assert.rejects(acceptor.handle(append(1, 80, 88), signal), refused(/creates gap/));
    await assert.rejects(acceptor.handle(append(1, 64, 72), signal), refused(/rewrites WAL/));
  });

  test('a higher term than ours means ProposerElected was skipped', async () => {
    const { acceptor } = setup();
    await elect(acceptor, 1, 64);
    await assert.rejects(acceptor.handle(append(2, 64, 72), signal), refused(/got AppendRequest before ProposerElected/));
  });

  test('a lower term gets a term-only refusal at once (test_concurrent_computes)', async () => {
    const { acceptor, wal } = setup();
    await elect(acceptor, 3, 64);
    const reply = await acceptor.handle(append(2, 64, 72, { commitLsn: 72n }), signal);
    assert.deepEqual(reply, { tag: 'append', generation: 0, term: 3n, flushLsn: 0n, commitLsn: 0n, hsFeedback: { timestampUs: 0n, xmin: 0n, catalogXmin: 0n }, pageserverFeedback: null });
    assert.equal(wal.writeLsn, 64n);
  });

  test('commit_lsn is capped by the durable flush_lsn and catches up when the flush lands', async () => {
    const { acceptor } = setup();
    await elect(acceptor, 1, 104);
    assert.equal(await acceptor.handle(append(1, 104, 300, { commitLsn: 248n, truncateLsn: 120n }), signal), null);
    assert.equal(acceptor.commitLsn, 104n, 'nothing new is durable yet');
    assert.equal(acceptor.appendResponse().commitLsn, 104n);
    const reply = await acceptor.flushAndRespond(signal);
    assert.equal(reply.flushLsn, 300n);
    assert.equal(reply.commitLsn, 248n);
    assert.equal(acceptor.peerHorizonLsn, 120n);
    await acceptor.handle(append(1, 300, 300, { commitLsn: 200n, truncateLsn: 110n }), signal);
    assert.equal(acceptor.commitLsn, 248n, 'commit never goes back');
    assert.equal(acceptor.peerHorizonLsn, 120n, 'peer horizon never goes back');
  });

  test('persists the control file before commit_lsn visibly crosses term_start_lsn', async () => {
    const { acceptor, control } = setup();
    await elect(acceptor, 1, 104);
    await acceptor.handle(append(1, 104, 200), signal);
    await acceptor.flushAndRespond(signal);
    await acceptor.handle({ tag: 'vote', generation: 0, term: 2n }, signal);
    await acceptor.handle(elected(2, 200, history([1, 104], [2, 200])), signal);
    await acceptor.handle(append(2, 200, 260, { commitLsn: 152n }), signal);
    assert.equal(acceptor.commitLsn, 152n, 'below term start: in memory only');
    assert.equal(control.state.commitLsn, 104n);

    let seenDuringPersist: bigint | null = null;
    control.beforePersist = async (next) => {
      seenDuringPersist = acceptor.appendResponse().commitLsn;
      assert.equal(next.commitLsn, 200n, 'capped by the durable flush_lsn, which is exactly term start');
    };
    await acceptor.handle(append(2, 260, 300, { commitLsn: 280n }), signal);
    assert.equal(seenDuringPersist, 152n, 'no reply shows the crossing commit before it is durable');
    assert.equal(control.state.commitLsn, 200n);
    assert.equal(acceptor.appendResponse().commitLsn, 200n);

    const persists = control.persistCount;
    assert.equal(await acceptor.onFlushAdvanced(signal), false, 'flush has not moved yet');
    const reply = await acceptor.flushAndRespond(signal);
    assert.equal(reply.commitLsn, 280n, 'the held candidate applies once the WAL is durable');
    assert.equal(control.persistCount, persists, 'already past term start: no further persist');
  });

  test('AppendResponse reports the in-memory commit_lsn (Quirk fix) and the hot standby feedback provider', async () => {
    const control = new CheckedControlStore(freshState());
    const acceptor = new Acceptor(NODE_ID, control, new MemoryWalStore(), { hotStandbyFeedback: () => ({ timestampUs: 5n, xmin: 6n, catalogXmin: 7n }) });
    await elect(acceptor, 1, 104);
    await acceptor.handle(append(1, 104, 200, { commitLsn: 200n }), signal);
    const reply = await acceptor.flushAndRespond(signal);
    assert.deepEqual(reply, { tag: 'append', generation: 0, term: 1n, flushLsn: 200n, commitLsn: 200n, hsFeedback: { timestampUs: 5n, xmin: 6n, catalogXmin: 7n }, pageserverFeedback: null });
  });

  test('after a restart appends are refused until a ProposerElected truncates', async () => {
    const { acceptor, control, wal } = setup();
    await elect(acceptor, 1, 104);
    await acceptor.handle(append(1, 104, 200), signal);
    await acceptor.flushAndRespond(signal);
    await acceptor.handle(append(1, 200, 250), signal); // not flushed: lost in the crash
    wal.restart();
    const restarted = new Acceptor(NODE_ID, new CheckedControlStore(control.state), wal);
    assert.equal(restarted.termStartLsn, 0n);
    assert.equal(restarted.flushLsn, 200n);
    await assert.rejects(restarted.handle(append(1, 200, 210), signal), refused(/truncation pending/));
    await restarted.handle(elected(1, 200, history([1, 104])), signal);
    assert.equal(wal.truncationPending, false);
    await restarted.handle(append(1, 200, 210), signal);
    assert.equal((await restarted.flushAndRespond(signal)).flushLsn, 210n);
    assert.deepEqual(wal.read(104n, 210n), new Uint8Array(106).fill(0xab));
  });

  test('heartbeats write nothing but still carry commit and horizon', async () => {
    const { acceptor, wal } = setup();
    await elect(acceptor, 1, 104);
    await acceptor.handle(append(1, 104, 104, { truncateLsn: 104n }), signal);
    assert.equal(wal.writeLsn, 104n);
    assert.equal(acceptor.peerHorizonLsn, 104n);
  });
});

describe('term and configuration changes from the HTTP API', () => {
  test('termBump raises to at least `to`, or by one; never lowers', async () => {
    const { acceptor } = setup();
    assert.deepEqual(await acceptor.termBump(5n, signal), { previousTerm: 0n, currentTerm: 5n });
    assert.deepEqual(await acceptor.termBump(null, signal), { previousTerm: 5n, currentTerm: 6n });
    assert.deepEqual(await acceptor.termBump(2n, signal), { previousTerm: 6n, currentTerm: 6n });
  });

  test('membershipSwitch adopts only higher generations', async () => {
    const { acceptor, control } = setup();
    await acceptor.membershipSwitch(MEMBERS_WITH_ME, signal);
    await acceptor.membershipSwitch({ ...MEMBERS_WITH_ME, generation: 1 }, signal);
    assert.equal(control.state.mconf.generation, 3);
  });

  test('persistInMemory writes the in-memory LSNs only when they changed', async () => {
    const { acceptor, control } = setup();
    await elect(acceptor, 1, 104);
    const persists = control.persistCount;
    assert.equal(await acceptor.persistInMemory(signal), false);
    acceptor.updateInMemory({ remoteConsistentLsn: 150n, backupLsn: 50n });
    assert.equal(await acceptor.persistInMemory(signal), true);
    assert.equal(control.persistCount, persists + 1);
    assert.equal(control.state.remoteConsistentLsn, 150n);
    assert.equal(control.state.backupLsn, 104n, 'max-merged, never lowered');
  });
});

describe('appendSync (the ingest hot path)', () => {
  test('applies the same rules as handle(append) without waiting', async () => {
    const { acceptor, wal } = setup();
    await acceptor.handle(greeting(), signal);
    await elect(acceptor, 1, 0x1000);
    assert.equal(acceptor.appendSync(append(1, 0x1000, 0x1100)), null);
    assert.equal(wal.writeLsn, 0x1100n);
    assert.throws(() => acceptor.appendSync(append(1, 0x1000, 0x1100)), refused(/rewrites/));
    assert.throws(() => acceptor.appendSync(append(1, 0x1200, 0x1300)), refused(/gap/));
    assert.throws(() => acceptor.appendSync(append(2, 0x1100, 0x1200)), refused(/before ProposerElected/));
  });

  test("answers 'slow' and changes nothing when the buffer is full", async () => {
    const { acceptor, wal } = setup();
    await acceptor.handle(greeting(), signal);
    await elect(acceptor, 1, 0x1000);
    wal.bufferBytesFree = 0;
    assert.equal(acceptor.appendSync(append(1, 0x1000, 0x1100, { truncateLsn: 0x1000n })), 'slow');
    assert.equal(wal.writeLsn, 0x1000n);
    wal.bufferBytesFree = Number.POSITIVE_INFINITY;
    assert.equal(await acceptor.handle(append(1, 0x1000, 0x1100), signal), null);
    assert.equal(wal.writeLsn, 0x1100n);
  });

  test("answers 'slow' when commit_lsn would cross term start before the control file has it", async () => {
    const { acceptor, wal, control } = setup();
    await acceptor.handle(greeting(), signal);
    await elect(acceptor, 1, 0x1000);
    assert.equal(acceptor.appendSync(append(1, 0x1000, 0x1100)), null);
    await wal.flush(signal);
    // Term 2 starts at 0x1100, above the persisted commit_lsn (0x1000).
    await acceptor.handle({ tag: 'vote', generation: 0, term: 2n }, signal);
    await acceptor.handle(elected(2, 0x1100, history([1, 0x1000], [2, 0x1100])), signal);
    assert.equal(acceptor.appendSync(append(2, 0x1100, 0x1200)), null);
    await wal.flush(signal);
    const persists = control.persistCount;
    assert.equal(acceptor.appendSync(append(2, 0x1200, 0x1300, { commitLsn: 0x1200n })), 'slow');
    assert.equal(wal.writeLsn, 0x1200n, 'nothing appended on a slow answer');
    assert.equal(await acceptor.handle(append(2, 0x1200, 0x1300, { commitLsn: 0x1200n }), signal), null);
    assert.equal(control.persistCount, persists + 1, 'the crossing commit was persisted first');
    assert.equal(control.state.commitLsn, 0x1200n);
    await wal.flush(signal);
    assert.equal(acceptor.appendSync(append(2, 0x1300, 0x1400, { commitLsn: 0x1300n })), null, 'later commits stay in memory');
    assert.equal(acceptor.commitLsn, 0x1300n);
  });
});
