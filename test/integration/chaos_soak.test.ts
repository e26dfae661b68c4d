/**
 * Chaos soak of the durability invariants, against one real `safekeeper run` process (fsync on, default
 * `file://{data_dir}/remote` storage, short control-file, partial-backup and ring timers, so backup, WAL
 * removal and recycling run all the time). Several timelines are fed by test proposers with synthetic WAL
 * while, at random (a seeded generator; the seed is printed, SK_CHAOS_SEED replays it):
 *   - the node is killed with SIGKILL (sometimes stopped with SIGTERM) and restarted on the same data dir;
 *   - new elections with higher terms take over, sometimes while the previous proposer still streams, and
 *     sometimes with a history that diverges below the acceptor's end, so it truncates (never below
 *     what may be committed);
 *   - START_REPLICATION readers read committed WAL, from local segments or remote storage;
 *   - a spare timeline is created, written, deleted and created again through HTTP;
 *   - checkpoints run the managers at once.
 * The test keeps a model: every branch of WAL a term streamed (its own seed, continuing at its start) and
 * every acknowledgement. The node's own term history (HTTP status) says which branch covers which range, so
 * the expected bytes are derived from it, and the model checks that history against the elections it sent.
 * Invariants, checked at every vote, after every restart and at the end:
 *   (a) flush_lsn ≥ every flush_lsn acknowledged in the surviving history (an ack of term t counts up to the
 *       truncation point of each later election), and the WAL on disk over [start, flush_lsn) is the model's;
 *   (b) acknowledged flush_lsns are monotonic per connection and are record ends of that term's branch;
 *   (c) term and votes never go backwards across restarts; commit_lsn ≤ flush_lsn and ≤ what was sent;
 *   (d) every byte a replication reader received is the final history's;
 *   (e) every complete segment in remote storage (digest-checked) is the history's segment, and every
 *       partial object matches the history up to the commit_lsn in its name;
 *   (f) the node never exits by itself, SIGTERM exits 0, and it logs no error.
 * `npm test` runs a short version (8 rounds of 4 timelines, ~20-30 s; SK_CHAOS_ROUNDS=N runs N rounds of 6 timelines, and `npm run soak` runs many).
 */
import assert from 'node:assert/strict';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { formatLsn, parseLsn, parseSegmentFileName, segmentFileName, segmentNumber, segmentStartLsn, type Lsn } from '../../src/wal/lsn.js';
import { StreamClosedError } from '../harness/acceptor_replies.js';
import { controlFile, http, localRemote, newIds, type Ids } from '../harness/background.js';
import { spawnNode, testNodeArgs, type NodeProcess } from '../harness/node_process.js';
import { PgTestClient } from '../harness/pg_client.js';
import { electAndStream } from '../harness/proposer_session.js';
import { tearDownAfterAll } from '../harness/teardown.js';
import { TestProposer, type CommitMode } from '../harness/test_proposer.js';
import { assertAcksAreRecordEnds, assertSameWal, readTimelineWal, timelineDirOf } from '../harness/timeline_wal.js';
import { makeTempDir } from '../harness/tmp.js';
import { waitFor } from '../harness/wait.js';
import { seededRandom, syntheticWal, walRange, type SyntheticWal } from '../harness/wal_source.js';

const SEGMENT_BYTES = 1 << 20;
const PG_VERSION = 150008;
const SYSTEM_ID = 7_350_000_000_000_000_333n;
const START_LSN = segmentStartLsn(1n, SEGMENT_BYTES) + 0x128n;
const ROUNDS = Number(process.env['SK_CHAOS_ROUNDS'] ?? 8);
const LONG = process.env['SK_CHAOS_ROUNDS'] !== undefined;
const TIMELINES = Number(process.env['SK_CHAOS_TIMELINES'] ?? (LONG ? 6 : 4));
/** WAL sent by all proposers in one round before the kill, at most (the kill lands somewhere below). */
const ROUND_BYTES_MAX = (LONG ? 6 : 3) * SEGMENT_BYTES;
const IN_FLIGHT_BYTES_MAX = 384 * 1024;
const TIMEOUT_MS = 120_000 + ROUNDS * 40_000;
const NODE_ARGS = [
  '--control-file-save-interval', '300ms',
  '--partial-backup-timeout', '400ms',
  '--wal-recycle-segments', '1',
  '--ring-size', '2MiB',
  '--ring-release-delay', '500ms',
  '--log-level', 'info',
  // Idle timelines are evicted (local WAL then only in remote storage, the last segment kept) and unevicted by
  // the next proposer or reader.
  '--enable-offload',
  '--eviction-min-resident', '300ms',
];
/** Error log lines that are expected (none so far). */
const EXPECTED_ERROR_LOGS: RegExp[] = [];

const server = { pgVersion: PG_VERSION, systemId: SYSTEM_ID, walSegSizeBytes: SEGMENT_BYTES };
const proposers = new Set<TestProposer>();
const readerClients = new Set<PgTestClient>();
tearDownAfterAll(proposers, { beforeProposers: () => readerClients.forEach((client) => client.destroy()) });

interface Branch {
  term: bigint;
  startLsn: Lsn;
  wal: SyntheticWal;
}
interface SessionRecord {
  term: bigint;
  mode: CommitMode;
  proposer: TestProposer;
}
interface HistoryEntry {
  term: bigint;
  lsn: Lsn;
}
interface Timeline {
  index: number;
  ids: Ids;
  branches: Map<bigint, Branch>;
  /** Elections sent (term, start_streaming_at): each one may have truncated there. */
  truncations: HistoryEntry[];
  sessions: SessionRecord[];
  /** Acks of sessions collapsed at a restart (every later election has a higher term): all, and of 'acked' ones. */
  base: { all: Lsn; acked: Lsn };
  /** The highest term whose vote we were given. */
  maxVotedTerm: bigint;
  /** The highest term the node reported. */
  maxSeenTerm: bigint;
  /** Below this, WAL was verified and committed (bytes below it are checked only at the end). */
  verifiedCommitLsn: Lsn;
  elections: number;
  truncatingElections: number;
}
interface ReaderRecord {
  tl: Timeline;
  fromLsn: Lsn;
  chunks: Buffer[];
  bytes: number;
}
interface NodeStatus {
  term: bigint;
  history: HistoryEntry[];
  flushLsn: Lsn;
  commitLsn: Lsn;
  backupLsn: Lsn;
}
interface Round {
  index: number;
  node: NodeProcess;
  /** The node is being killed or stopped: failures of connections are expected from now on. */
  ending: boolean;
  sentBytes: number;
  /** This round ends at a chosen kind of moment (an election, a delete, a checkpoint) rather than a byte count. */
  killAtMoment: 'elect' | 'delete' | 'checkpoint' | null;
  killRequested: boolean;
  tasks: Promise<void>[];
  failures: string[];
}

const max = (a: Lsn, b: Lsn): Lsn => (a > b ? a : b);
const min = (a: Lsn, b: Lsn): Lsn => (a < b ? a : b);

test('chaos soak: kill -9, elections, truncations, readers, deletes and background work never break the durability invariants', { timeout: TIMEOUT_MS }, async (t) => {
  const seed = process.env['SK_CHAOS_SEED'] !== undefined ? Number(process.env['SK_CHAOS_SEED']) : Math.floor(Math.random() * 0x7fff_ffff);
  const replay = `SK_CHAOS_SEED=${seed}${LONG ? ` SK_CHAOS_ROUNDS=${ROUNDS}` : ''}${process.env['SK_CHAOS_TIMELINES'] !== undefined ? ` SK_CHAOS_TIMELINES=${TIMELINES}` : ''}`;
  t.diagnostic(`seed ${seed} (${replay} replays its choices; where kills land also depends on timing), ${ROUNDS} rounds, ${TIMELINES} timelines`);
  const random = seededRandom(seed);
  const rnd = (lo: number, hi: number): number => lo + Math.floor(random() * (hi - lo + 1));
  const log = (text: string): void => t.diagnostic(text);
  const dataDir = makeTempDir('sk-chaos-');
  const remoteRoot = join(dataDir, 'remote');
  const timelines: Timeline[] = [];
  for (let index = 0; index < TIMELINES; index += 1) {
    timelines.push({ index, ids: newIds(), branches: new Map(), truncations: [], sessions: [], base: { all: 0n, acked: 0n }, maxVotedTerm: 0n, maxSeenTerm: 0n, verifiedCommitLsn: START_LSN, elections: 0, truncatingElections: 0 });
  }
  const spare = { ids: newIds(), state: 'absent' as 'absent' | 'present' | 'unknown', remoteMaybeDirty: false, incarnations: 0, tombstoned: false, tombstoneRefusals: 0 };
  /** Spare timelines deleted for good (their delete acknowledged, a new id used since): they stay gone. */
  const deletedForGood: Ids[] = [];
  const readers: ReaderRecord[] = [];
  const errorLogs: string[] = [];
  /** Warning messages and how often, for the summary. */
  const warnings = new Map<string, number>();
  const stats = { startupKills: 0, offloadedReads: 0, evictions: 0, restores: 0, idleWaits: 0, evictionWaitsTimedOut: 0, kills: 0, stops: 0, readerBytes: 0, remoteSegmentsChecked: 0, partialsChecked: 0, spareDeletes: 0 };

  // ---- the model -------------------------------------------------------------------------------------------

  /** The highest ack that survives every later election's truncation point. */
  function ackFloor(tl: Timeline, onlyMode?: CommitMode): Lsn {
    let floor = onlyMode === 'acked' ? tl.base.acked : tl.base.all;
    for (const cut of tl.truncations) if (cut.lsn < floor) floor = cut.lsn;
    for (const session of tl.sessions) {
      if (onlyMode !== undefined && session.mode !== onlyMode) continue;
      let effective = session.proposer.flushLsn;
      for (const cut of tl.truncations) if (cut.term > session.term && cut.lsn < effective) effective = cut.lsn;
      floor = max(floor, effective);
    }
    return floor;
  }

  interface Piece {
    from: Lsn;
    to: Lsn;
    branch: Branch;
  }
  /** Which branch covers which range, per the node's history and flush_lsn; asserts the history is one we made. */
  function pieces(tl: Timeline, history: readonly HistoryEntry[], flushLsn: Lsn, what: string): Piece[] {
    const out: Piece[] = [];
    if (flushLsn === 0n) return out;
    assert.ok(history.length > 0, `${what}: flush_lsn ${formatLsn(flushLsn)} with an empty term history`);
    assert.equal(history[0]!.lsn, START_LSN, `${what}: the history starts at the timeline start`);
    for (const [i, entry] of history.entries()) {
      const next = history[i + 1];
      if (next !== undefined) {
        assert.ok(next.term > entry.term, `${what}: history terms increase (${entry.term} then ${next.term})`);
        assert.ok(next.lsn >= entry.lsn, `${what}: history LSNs do not decrease`);
      }
      const branch = tl.branches.get(entry.term);
      assert.ok(branch !== undefined, `${what}: the node's history has term ${entry.term}, which no proposer of ours was elected in`);
      assert.equal(formatLsn(entry.lsn), formatLsn(branch.startLsn), `${what}: term ${entry.term} starts where its election said`);
      const to = min(next?.lsn ?? flushLsn, flushLsn);
      if (entry.lsn >= to) continue;
      assert.ok(to <= branch.wal.endLsn, `${what}: the node has WAL of term ${entry.term} up to ${formatLsn(to)}, past all that term ever sent (${formatLsn(branch.wal.endLsn)})`);
      out.push({ from: entry.lsn, to, branch });
    }
    assert.ok(out.length > 0 ? out[out.length - 1]!.to === flushLsn : flushLsn === START_LSN, `${what}: the history covers up to flush_lsn ${formatLsn(flushLsn)}`);
    return out;
  }

  function expectedBytes(parts: readonly Piece[], from: Lsn, to: Lsn, what: string): Uint8Array {
    const out = new Uint8Array(Number(to - from));
    let covered = from;
    for (const piece of parts) {
      const a = max(from, piece.from);
      const b = min(to, piece.to);
      if (a >= b) continue;
      assert.equal(a, covered, `${what}: history covers ${formatLsn(a)}`);
      out.set(walRange(piece.branch.wal, a, b), Number(a - from));
      covered = b;
    }
    assert.equal(formatLsn(covered), formatLsn(to), `${what}: history covers up to ${formatLsn(to)}`);
    return out;
  }

  /** Record ends of the history (and the timeline start), with each record's start. */
  function recordEnds(parts: readonly Piece[]): Map<Lsn, Lsn | undefined> {
    const ends = new Map<Lsn, Lsn | undefined>([[START_LSN, undefined]]);
    for (const piece of parts) {
      for (const record of piece.branch.wal.records) if (record.startLsn >= piece.from && record.endLsn <= piece.to) ends.set(record.endLsn, record.startLsn);
    }
    return ends;
  }

  async function nodeStatus(node: NodeProcess, ids: Ids): Promise<NodeStatus | null> {
    const { status, json } = await http(node, 'GET', `/v1/tenant/${ids.tenantId}/timeline/${ids.timelineId}`);
    if (status === 404) return null;
    assert.equal(status, 200, JSON.stringify(json));
    const raw = json as { status: string; flush_lsn: string; commit_lsn: string; backup_lsn: string; acceptor_state: { term: unknown; term_history: { term: unknown; lsn: string }[] } };
    // 'offloaded' while evicted (newer nodes say so; older ones said 'active'); never 'broken'.
    assert.ok(raw.status === 'active' || raw.status === 'offloaded', `timeline status: ${JSON.stringify(json)}`);
    return {
      term: BigInt(String(raw.acceptor_state.term)),
      history: raw.acceptor_state.term_history.map((entry) => ({ term: BigInt(String(entry.term)), lsn: parseLsn(entry.lsn) })),
      flushLsn: parseLsn(raw.flush_lsn),
      commitLsn: parseLsn(raw.commit_lsn),
      backupLsn: parseLsn(raw.backup_lsn),
    };
  }

  // ---- the node --------------------------------------------------------------------------------------------

  /** Half the node's lives also delete an evicted timeline's last segment (it is downloaded again on demand). */
  async function startNode(round: number): Promise<NodeProcess> {
    const deleteOffloaded = random() < 0.5;
    const node = await spawnNode(testNodeArgs(dataDir, [...NODE_ARGS, ...(deleteOffloaded ? ['--delete-offloaded-wal'] : [])]));
    let seen = 0;
    node.process.stderr?.on('data', () => {
      const text = node.stderr();
      const end = text.lastIndexOf('\n');
      if (end < seen) return;
      for (const line of text.slice(seen, end).split('\n')) {
        if (!line.startsWith('{')) continue;
        try {
          const entry = JSON.parse(line) as { level?: string | number; msg?: string };
          const level = entry.level;
          const isError = level === 'error' || level === 'fatal' || (typeof level === 'number' && level >= 50);
          if (isError && !EXPECTED_ERROR_LOGS.some((pattern) => pattern.test(line))) errorLogs.push(`round ${round}: ${line.slice(0, 2000)}`);
          if (level === 'warn' || level === 40) warnings.set(entry.msg ?? '', (warnings.get(entry.msg ?? '') ?? 0) + 1);
          if (entry.msg === 'timeline evicted') stats.evictions += 1;
          if (entry.msg === 'timeline restored from remote storage') stats.restores += 1;
        } catch {
          // a partial line: not a log entry
        }
      }
      seen = end + 1;
    });
    return node;
  }

  // ---- checks ----------------------------------------------------------------------------------------------

  /** Invariants (a), (c) and the bytes on disk, for one main timeline on a node with no proposer connected. */
  async function checkTimeline(node: NodeProcess, tl: Timeline, what: string, full: boolean): Promise<NodeStatus | null> {
    const status = await nodeStatus(node, tl.ids);
    const floor = ackFloor(tl);
    if (status === null) {
      assert.equal(floor, 0n, `${what}: timeline ${tl.index} is gone after acknowledging ${formatLsn(floor)}`);
      assert.equal(tl.maxVotedTerm, 0n, `${what}: timeline ${tl.index} is gone after voting`);
      return null;
    }
    assert.ok(status.term >= tl.maxVotedTerm, `${what}: timeline ${tl.index} term ${status.term} is below a vote it gave (${tl.maxVotedTerm})`);
    assert.ok(status.term >= tl.maxSeenTerm, `${what}: timeline ${tl.index} term ${status.term} went below ${tl.maxSeenTerm}`);
    tl.maxSeenTerm = status.term;
    const last = status.history[status.history.length - 1];
    if (last !== undefined) assert.ok(last.term <= status.term, `${what}: history term ${last.term} above the term ${status.term}`);
    assert.ok(status.flushLsn >= floor, `${what}: timeline ${tl.index} flush_lsn ${formatLsn(status.flushLsn)} is below the acknowledged ${formatLsn(floor)}`);
    assert.ok(status.commitLsn <= max(status.flushLsn, START_LSN), `${what}: commit_lsn ${formatLsn(status.commitLsn)} above flush_lsn ${formatLsn(status.flushLsn)}`);
    assert.ok(status.commitLsn <= max(ackFloor(tl, 'acked'), START_LSN), `${what}: commit_lsn ${formatLsn(status.commitLsn)} above anything sent as commit (${formatLsn(ackFloor(tl, 'acked'))})`);
    const parts = pieces(tl, status.history, status.flushLsn, `${what} timeline ${tl.index}`);
    if (status.flushLsn > START_LSN) {
      assert.ok(recordEnds(parts).has(status.flushLsn), `${what}: timeline ${tl.index} flush_lsn ${formatLsn(status.flushLsn)} is not a record end`);
      const from = full ? START_LSN : max(START_LSN, segmentStartLsn(segmentNumber(tl.verifiedCommitLsn, SEGMENT_BYTES), SEGMENT_BYTES));
      const dir = timelineDirOf(dataDir, tl.ids.tenantId, tl.ids.timelineId);
      assertSameWal(await readWal(tl, dir, from, status.flushLsn), expectedBytes(parts, from, status.flushLsn, what), from, `${what}: timeline ${tl.index} WAL on disk`);
    }
    await checkReaders(tl, parts, status.flushLsn, what);
    await checkRemote(tl, parts, status.flushLsn, what);
    // backup_lsn moves only after an upload is confirmed: every complete segment below it is in remote storage.
    assert.ok(status.backupLsn <= max(status.flushLsn, START_LSN), `${what}: backup_lsn ${formatLsn(status.backupLsn)} above flush_lsn ${formatLsn(status.flushLsn)}`);
    const remote = localRemote(remoteRoot);
    const prefix = `${tl.ids.tenantId}/${tl.ids.timelineId}/`;
    for (let segno = segmentNumber(START_LSN, SEGMENT_BYTES); segmentStartLsn(segno + 1n, SEGMENT_BYTES) <= status.backupLsn; segno += 1n) {
      const key = prefix + segmentFileName(segno, SEGMENT_BYTES);
      // (a restarted node may be uploading it again, which replaces the object)
      await waitFor(async () => (await remote.list(prefix, new AbortController().signal)).some((entry) => entry.key === key), { timeoutMs: 20_000, what: `${what}: ${key} in remote storage, below backup_lsn ${formatLsn(status.backupLsn)}` });
    }
    // Branches no longer in the history can go (every connection of this node is gone).
    const live = new Set(status.history.map((entry) => entry.term));
    for (const term of [...tl.branches.keys()]) if (!live.has(term)) tl.branches.delete(term);
    // Collapse the sessions (all closed now): every later election has a higher term than any of them.
    tl.base = { all: ackFloor(tl), acked: ackFloor(tl, 'acked') };
    tl.sessions = [];
    tl.truncations = [];
    tl.verifiedCommitLsn = max(tl.verifiedCommitLsn, status.commitLsn);
    return status;
  }

  /**
   * The timeline's WAL over [from, to) as files hold it: local segments (or complete ones in remote storage,
   * see readTimelineWal); when the node has evicted the timeline and deleted its last local segment, that one
   * comes from the uploaded partial object that covers `to` (what an un-eviction downloads).
   */
  async function readWal(tl: Timeline, dir: string, from: Lsn, to: Lsn): Promise<Uint8Array> {
    // The partial object is named after flush_lsn's segment (as the node names it).
    const lastSegno = segmentNumber(to, SEGMENT_BYTES);
    const lastName = segmentFileName(lastSegno, SEGMENT_BYTES);
    const remoteDir = join(remoteRoot, tl.ids.tenantId, tl.ids.timelineId);
    // The node may evict the (idle) timeline while this reads, deleting the last local segment under it.
    const state = await readTimelineWal(dir, from, to, SEGMENT_BYTES).catch(async (error: unknown) => {
      const control = await controlFile(dataDir, tl.ids).catch((e: unknown) => String(e));
      if (typeof control !== 'string' && control.evictionState.kind === 'Offloaded') return control.evictionState;
      const show = (value: unknown): string => JSON.stringify(value, (_k, v: unknown) => (typeof v === 'bigint' ? formatLsn(v) : v));
      throw new Error(`timeline ${tl.index} (${tl.ids.tenantId}/${tl.ids.timelineId}) reading [${formatLsn(from)}, ${formatLsn(to)}): ${(error as Error).message}\nlocal: ${readdirSync(dir).sort().join(' ')}\nremote: ${existsSync(remoteDir) ? readdirSync(remoteDir).sort().join(' ') : '(none)'}\ncontrol file: ${show(control)}`, { cause: error });
    });
    if (state instanceof Uint8Array) return state;
    assert.equal(formatLsn(state.flushLsn), formatLsn(to), 'offloaded at flush_lsn');
    const partials = readdirSync(remoteDir).filter((name) => name.startsWith(`${lastName}_`) && name.endsWith('.partial'));
    const covering = partials.find((name) => BigInt(`0x${name.split('_')[2]}`) === to);
    assert.ok(covering !== undefined, `offloaded at ${formatLsn(to)}: a remote partial object of ${lastName} with that flush_lsn (have ${partials.join(', ')})`);
    const segStart = segmentStartLsn(lastSegno, SEGMENT_BYTES);
    const body = readFileSync(join(remoteDir, covering));
    const out = new Uint8Array(Number(to - from));
    if (from < segStart) out.set(await readTimelineWal(dir, from, segStart, SEGMENT_BYTES));
    const a = from > segStart ? from : segStart;
    out.set(body.subarray(Number(a - segStart), Number(to - segStart)), Number(a - from));
    stats.offloadedReads += 1;
    return out;
  }

  /** (d): what readers received is the history. */
  async function checkReaders(tl: Timeline, parts: readonly Piece[], flushLsn: Lsn, what: string): Promise<void> {
    for (const reader of readers.filter((r) => r.tl === tl)) {
      if (reader.bytes === 0) continue;
      const end = reader.fromLsn + BigInt(reader.bytes);
      assert.ok(end <= flushLsn, `${what}: a reader of timeline ${tl.index} received WAL up to ${formatLsn(end)}, past flush_lsn ${formatLsn(flushLsn)}`);
      assertSameWal(Buffer.concat(reader.chunks), expectedBytes(parts, reader.fromLsn, end, what), reader.fromLsn, `${what}: replication reader of timeline ${tl.index} from ${formatLsn(reader.fromLsn)}`);
      stats.readerBytes += reader.bytes;
    }
    for (let i = readers.length - 1; i >= 0; i -= 1) if (readers[i]!.tl === tl) readers.splice(i, 1);
  }

  /** (e): remote objects against the history. */
  async function checkRemote(tl: Timeline, parts: readonly Piece[], flushLsn: Lsn, what: string): Promise<void> {
    const remote = localRemote(remoteRoot);
    const prefix = `${tl.ids.tenantId}/${tl.ids.timelineId}/`;
    const signal = new AbortController().signal;
    for (const entry of await remote.list(prefix, signal)) {
      const name = entry.key.slice(prefix.length);
      const complete = /^[0-9A-F]{24}$/.exec(name);
      const partial = /^([0-9A-F]{24})_(\d+)_([0-9A-F]{16})_([0-9A-F]{16})_sk\d+\.partial$/.exec(name);
      assert.ok(complete !== null || partial !== null, `${what}: unexpected remote object ${entry.key}`);
      // An object can be replaced between the listing and the read (a partial by a newer one; a segment
      // uploaded again after a restart, which unlinks the old .meta first): read it again once it is back.
      const body = await waitFor(async () => {
        try {
          return await remote.get(entry.key, signal);
        } catch (error) {
          if ((error as { code?: string }).code !== 'SK_NOT_FOUND') throw error;
          return (await remote.list(prefix, signal)).some((again) => again.key === entry.key) ? null : 'gone';
        }
      }, { timeoutMs: 20_000, what: `remote object ${entry.key} readable` });
      if (body === 'gone') continue;
      const segName = name.slice(0, 24);
      const parsed = parseSegmentFileName(segName, SEGMENT_BYTES);
      assert.ok(parsed !== null, `${what}: remote object ${name} names a segment`);
      const segStart = segmentStartLsn(parsed.segno, SEGMENT_BYTES);
      if (complete !== null) {
        const segEnd = segStart + BigInt(SEGMENT_BYTES);
        assert.equal(body.length, SEGMENT_BYTES, `${what}: remote segment ${name} size`);
        assert.ok(segEnd <= flushLsn, `${what}: remote segment ${name} of timeline ${tl.index} is complete but flush_lsn is ${formatLsn(flushLsn)}`);
        const from = max(segStart, START_LSN);
        assertSameWal(body.subarray(Number(from - segStart)), expectedBytes(parts, from, segEnd, what), from, `${what}: remote segment ${name} of timeline ${tl.index}`);
        stats.remoteSegmentsChecked += 1;
      } else {
        const commitLsn = BigInt(`0x${partial![4]}`);
        const upTo = min(commitLsn, segStart + BigInt(body.length));
        const from = max(segStart, START_LSN);
        if (upTo > from) {
          assert.ok(upTo <= flushLsn, `${what}: partial object ${name} names commit_lsn past flush_lsn ${formatLsn(flushLsn)}`);
          assertSameWal(body.subarray(Number(from - segStart), Number(upTo - segStart)), expectedBytes(parts, from, upTo, what), from, `${what}: remote partial ${name} of timeline ${tl.index}, up to its commit_lsn`);
          stats.partialsChecked += 1;
        }
      }
    }
  }

  async function checkSpare(node: NodeProcess, what: string): Promise<void> {
    const { status } = await http(node, 'GET', `/v1/tenant/${spare.ids.tenantId}/timeline/${spare.ids.timelineId}`);
    if (spare.state === 'present') assert.equal(status, 200, `${what}: the spare timeline was created and not deleted`);
    if (spare.state === 'absent') {
      assert.equal(status, 404, `${what}: the spare timeline was deleted`);
      assert.ok(!existsSync(timelineDirOf(dataDir, spare.ids.tenantId, spare.ids.timelineId)), `${what}: the deleted spare timeline's directory is gone`);
    }
    spare.state = status === 200 ? 'present' : 'absent';
    for (const ids of deletedForGood) {
      assert.equal((await http(node, 'GET', `/v1/tenant/${ids.tenantId}/timeline/${ids.timelineId}`)).status, 404, `${what}: a deleted spare timeline stays deleted`);
      assert.ok(!existsSync(timelineDirOf(dataDir, ids.tenantId, ids.timelineId)), `${what}: a deleted spare timeline's directory stays gone`);
    }
  }

  // ---- chaos actors ----------------------------------------------------------------------------------------

  /** At a moment of the round's kind, past a third of its bytes: the kill happens now, with the request in flight. */
  function killHere(round: Round, moment: 'elect' | 'delete' | 'checkpoint'): void {
    if (round.killAtMoment === moment && round.sentBytes >= ROUND_BYTES_MAX / 3 && !round.killRequested) {
      round.killRequested = true;
      round.ending = true;
      round.node.process.kill('SIGKILL');
    }
  }

  const superseded = (p: TestProposer): boolean => p.appendResponses.some((reply) => reply.term > p.term);

  /** One proposer session on `tl`: greet, vote, elect (maybe truncating), stream a new branch. */
  async function session(round: Round, tl: Timeline, onPreempt: () => void, midStream: { preempted: boolean }): Promise<void> {
    const node = round.node;
    const proposer = await TestProposer.connect({ port: node.pgPort, ...tl.ids, protoVersion: random() < 0.8 ? 3 : 2, ...server });
    proposers.add(proposer);
    try {
      const greeting = await proposer.greet();
      tl.maxSeenTerm = max(tl.maxSeenTerm, greeting.term);
      const term = max(greeting.term, tl.maxVotedTerm) + 1n + (random() < 0.2 ? BigInt(rnd(1, 3)) : 0n);
      const floorBefore = ackFloor(tl);
      const vote = await proposer.vote(term);
      assert.ok(vote.voteGiven, `round ${round.index} timeline ${tl.index}: vote for term ${term} refused (node term ${vote.term})`);
      tl.maxVotedTerm = max(tl.maxVotedTerm, term);
      const what = `round ${round.index} timeline ${tl.index} vote for term ${term}`;
      assert.ok(vote.flushLsn >= floorBefore, `${what}: flush_lsn ${formatLsn(vote.flushLsn)} is below the acknowledged ${formatLsn(floorBefore)}`);
      const parts = pieces(tl, vote.termHistory, vote.flushLsn, what);
      const donorFlush = vote.flushLsn === 0n ? START_LSN : vote.flushLsn;
      const ends = recordEnds(parts);
      assert.ok(ends.has(donorFlush), `${what}: flush_lsn ${formatLsn(donorFlush)} is not a record end`);
      // A diverging history: cut at a record end not below anything that may be committed.
      let startLsn = donorFlush;
      let history: HistoryEntry[] = vote.flushLsn === 0n ? [] : vote.termHistory.map((entry) => ({ term: entry.term, lsn: entry.lsn }));
      const lower = max(ackFloor(tl, 'acked'), START_LSN);
      if (vote.flushLsn !== 0n && random() < 0.45) {
        const candidates = [...ends.keys()].filter((lsn) => lsn >= lower && lsn < donorFlush).sort((a, b) => (a < b ? -1 : 1));
        if (candidates.length > 0) {
          startLsn = candidates[Math.floor(random() * candidates.length)]!;
          history = history.filter((entry) => entry.lsn < startLsn);
          tl.truncatingElections += 1;
        }
      }
      history.push({ term, lsn: startLsn });
      const prevLsn = ends.get(startLsn);
      const wal = syntheticWal({
        startLsn,
        segmentSizeBytes: SEGMENT_BYTES,
        pgVersion: PG_VERSION,
        systemId: SYSTEM_ID,
        totalBytes: rnd(32, 700) * 1024,
        seed: rnd(1, 0x7fff_fffe),
        ...(prevLsn !== undefined ? { prevLsn } : {}),
        ...(random() < 0.15 ? { switchAtFraction: random() } : {}),
      });
      const branch: Branch = { term, startLsn, wal };
      tl.branches.set(term, branch);
      tl.truncations.push({ term, lsn: startLsn });
      const mode: CommitMode = random() < 0.6 ? 'acked' : 'none';
      const record: SessionRecord = { term, mode, proposer };
      tl.sessions.push(record);
      tl.elections += 1;
      await proposer.elect({ term, startStreamingAtLsn: startLsn, termHistory: history });
      killHere(round, 'elect');
      await proposer.heartbeat(startLsn, proposer.commitLsnFor(mode));

      const preemptAt = random() < 0.25 ? startLsn + BigInt(Math.floor(random() * wal.bytes.length)) : null;
      let preempted = false;
      let sentEnd = startLsn;
      const chunkBytes = rnd(1, 16) * 8 * 1024;
      try {
        await proposer.streamWal(wal.bytes, startLsn, {
          chunkBytes,
          commit: mode,
          onSent: async (sentLsn) => {
            sentEnd = sentLsn;
            round.sentBytes += chunkBytes;
            if (round.ending || superseded(proposer)) throw new StreamClosedError(null);
            if (!preempted && preemptAt !== null && sentLsn >= preemptAt) {
              preempted = true;
              midStream.preempted = true;
              onPreempt(); // the next election starts now, while this proposer goes on streaming
            }
            if (sentLsn - proposer.flushLsn > BigInt(IN_FLIGHT_BYTES_MAX)) {
              const target = sentLsn - BigInt(IN_FLIGHT_BYTES_MAX);
              await waitFor(() => proposer.flushLsn >= target || superseded(proposer) || proposer.closed || round.ending, { timeoutMs: 30_000, intervalMs: 5, what: `round ${round.index} timeline ${tl.index} term ${term}: flush_lsn ≥ ${formatLsn(target)} (acknowledged ${formatLsn(proposer.flushLsn)})` });
            }
          },
        });
        if (!superseded(proposer)) {
          await waitFor(() => proposer.flushLsn >= wal.endLsn || superseded(proposer) || proposer.closed || round.ending, { timeoutMs: 30_000, intervalMs: 5, what: `round ${round.index} timeline ${tl.index} term ${term}: flush_lsn ≥ ${formatLsn(wal.endLsn)}` });
          if (!superseded(proposer) && !proposer.closed && !round.ending) await proposer.heartbeat(wal.endLsn, proposer.commitLsnFor(mode));
        }
      } catch (error) {
        if (!(error instanceof StreamClosedError) && !round.ending) throw error;
        if (!round.ending && !superseded(proposer)) throw new Error(`round ${round.index} timeline ${tl.index} term ${term}: the node ended the stream: ${proposer.serverError?.message ?? 'closed'}`, { cause: error });
      }
      if (!preempted) onPreempt();
      // (b): acknowledgements of this connection are monotonic record ends of its branch.
      assertAcksAreRecordEnds(proposer.acknowledgedFlushLsns, new Set([startLsn, ...wal.records.map((r) => r.endLsn)]));
      // Nothing is acknowledged past what was sent, except the end of an XLOG_SWITCH whose record arrived
      // (the padding up to the next segment start need not).
      const acked = proposer.flushLsn;
      if (acked > sentEnd) {
        const record = wal.records.find((r) => r.endLsn === acked);
        assert.ok(record !== undefined && acked % BigInt(SEGMENT_BYTES) === 0n && record.startLsn + 24n <= sentEnd, `round ${round.index} timeline ${tl.index} term ${term}: acknowledged ${formatLsn(acked)} past the sent ${formatLsn(sentEnd)}`);
      }
    } finally {
      if (!round.ending && random() < 0.5 && !proposer.closed) {
        // sometimes linger, so the next election finds a connected proposer to supersede
      } else {
        await proposer.close();
      }
    }
  }

  async function timelineDriver(round: Round, tl: Timeline): Promise<void> {
    const pending: Promise<void>[] = [];
    while (!round.ending) {
      let preempt!: () => void;
      const preempted = new Promise<void>((resolve) => (preempt = resolve));
      const midStream = { preempted: false };
      const done = session(round, tl, preempt, midStream).catch((error: unknown) => {
        if (!round.ending) round.failures.push(`timeline ${tl.index}: ${(error as Error).stack ?? String(error)}`);
      });
      pending.push(done);
      await Promise.race([done, preempted]);
      if (round.failures.length > 0) break;
      if (!midStream.preempted && !round.ending && random() < 0.25) {
        await done;
        // Go idle until the node evicts the timeline; the next session (or a reader) unevicts it.
        for (const session of tl.sessions) await session.proposer.close();
        const evicted = await waitFor(async () => round.ending || (await controlFile(dataDir, tl.ids).catch(() => null))?.evictionState.kind === 'Offloaded', { timeoutMs: 15_000, intervalMs: 50 }).catch(() => false);
        stats.idleWaits += 1;
        if (evicted === false) stats.evictionWaitsTimedOut += 1;
      }
    }
    await Promise.all(pending);
    // Lingering proposers of a finished round are superseded by the next one or die with the node.
  }

  async function readerDriver(round: Round): Promise<void> {
    while (!round.ending) {
      const tl = timelines[rnd(0, timelines.length - 1)]!;
      const status = await nodeStatus(round.node, tl.ids).catch(() => null);
      if (status === null || status.commitLsn <= START_LSN) {
        // Nothing committed there yet: wait until something is, anywhere.
        await waitFor(async () => round.ending || ((await nodeStatus(round.node, tl.ids).catch(() => null))?.commitLsn ?? 0n) > START_LSN, { timeoutMs: 60_000, intervalMs: 100, what: `round ${round.index}: commit_lsn of timeline ${tl.index} to move` });
        continue;
      }
      const fromLsn = START_LSN + BigInt(Math.floor(random() * Number(status.commitLsn - START_LSN)));
      const record: ReaderRecord = { tl, fromLsn, chunks: [], bytes: 0 };
      readers.push(record);
      const limit = rnd(64, 3000) * 1024;
      let client: PgTestClient;
      try {
        client = await PgTestClient.connect({ port: round.node.pgPort, options: `-c tenant_id=${tl.ids.tenantId} timeline_id=${tl.ids.timelineId}`, applicationName: 'chaos-reader', waitMs: 30_000 });
      } catch (error) {
        if (round.ending) return;
        throw error;
      }
      readerClients.add(client);
      try {
        await client.startCopyBoth(`START_REPLICATION PHYSICAL ${formatLsn(fromLsn)}`);
        let lsn = fromLsn;
        while (!round.ending && record.bytes < limit) {
          const message = await client.nextCopyData(30_000);
          if (message[0] !== 0x77) continue; // keepalive
          const start = message.readBigUInt64BE(1);
          const walEnd = message.readBigUInt64BE(9);
          const data = message.subarray(25);
          assert.equal(formatLsn(start), formatLsn(lsn), 'XLogData is contiguous');
          assert.ok(walEnd >= start + BigInt(data.length), 'XLogData is below wal_end');
          record.chunks.push(Buffer.from(data));
          record.bytes += data.length;
          lsn += BigInt(data.length);
        }
      } catch (error) {
        if (!round.ending) throw new Error(`reader of timeline ${tl.index} from ${formatLsn(fromLsn)}: ${(error as Error).message}`, { cause: error });
      } finally {
        client.destroy();
        readerClients.delete(client);
      }
    }
  }

  const spareCreateBody = (): object => ({ tenant_id: spare.ids.tenantId, timeline_id: spare.ids.timelineId, pg_version: PG_VERSION, system_id: SYSTEM_ID.toString(), wal_seg_size: SEGMENT_BYTES, start_lsn: formatLsn(START_LSN) });

  /**
   * DELETEs the spare (with `killPoint`, a kill may land while it runs). True when it is gone; false when the
   * round ended or the node went away first, and then its remote objects may be left.
   */
  async function deleteSpare(round: Round, path: string, killPoint: boolean): Promise<boolean> {
    spare.state = 'unknown';
    const deleting = http(round.node, 'DELETE', path).catch(() => null);
    if (killPoint) {
      await new Promise((resolve) => setImmediate(resolve));
      killHere(round, 'delete');
    }
    const deleted = await deleting;
    if (deleted === null || round.ending) {
      spare.remoteMaybeDirty = true;
      return false;
    }
    assert.equal(deleted.status, 200, `delete the spare: ${JSON.stringify(deleted.json)}`);
    spare.state = 'absent';
    spare.tombstoned = true;
    stats.spareDeletes += 1;
    return true;
  }

  async function spareDriver(round: Round): Promise<void> {
    const node = round.node;
    const remote = localRemote(remoteRoot);
    const signal = new AbortController().signal;
    while (!round.ending) {
      const path = `/v1/tenant/${spare.ids.tenantId}/timeline/${spare.ids.timelineId}`;
      // Also run the managers of a main timeline now.
      const tl = timelines[rnd(0, timelines.length - 1)]!;
      const checkpointing = http(node, 'POST', `/v1/tenant/${tl.ids.tenantId}/timeline/${tl.ids.timelineId}/checkpoint`, {}).catch(() => null);
      killHere(round, 'checkpoint');
      const checkpoint = await checkpointing;
      if (checkpoint !== null && checkpoint.status !== 200 && checkpoint.status !== 404 && !round.ending) throw new Error(`checkpoint: ${checkpoint.status} ${JSON.stringify(checkpoint.json)}`);
      if (round.ending) return;
      // Left over from the last round (and maybe written to): delete it first.
      if (spare.state === 'present' && !(await deleteSpare(round, path, false))) return;
      if (spare.tombstoned) {
        // Deleted in this node's lifetime: re-creating it is refused (an in-memory tombstone, as in Neon);
        // the next incarnation is a new timeline. After a restart the same id is created again.
        const refused = await http(node, 'POST', '/v1/tenant/timeline', spareCreateBody()).catch(() => null);
        if (refused === null || round.ending) return;
        assert.equal(refused.status, 409, `re-creating a deleted timeline is refused: ${JSON.stringify(refused.json)}`);
        assert.equal((await http(node, 'GET', path)).status, 404, 'a refused re-create creates nothing');
        spare.tombstoneRefusals += 1;
        deletedForGood.push(spare.ids);
        spare.ids = newIds();
        spare.remoteMaybeDirty = false;
        spare.tombstoned = false;
        continue;
      }
      {
        spare.state = 'unknown';
        const created = await http(node, 'POST', '/v1/tenant/timeline', spareCreateBody()).catch(() => null);
        if (created === null || round.ending) return;
        assert.equal(created.status, 200, `create the spare: ${JSON.stringify(created.json)}`);
        spare.state = 'present';
        spare.incarnations += 1;
        const status = await nodeStatus(node, spare.ids);
        assert.ok(status !== null);
        assert.equal(formatLsn(status.flushLsn), formatLsn(START_LSN), 'a re-created spare starts empty');
        assert.equal(status.term, 0n, 'a re-created spare starts at term 0');
        if (!spare.remoteMaybeDirty) assert.deepEqual((await remote.list(`${spare.ids.tenantId}/${spare.ids.timelineId}/`, signal)).map((e) => e.key), [], 'a re-created spare has nothing in remote storage');
      }
      // Write some WAL into it.
      const wal = syntheticWal({ startLsn: START_LSN, segmentSizeBytes: SEGMENT_BYTES, pgVersion: PG_VERSION, systemId: SYSTEM_ID, totalBytes: rnd(16, 1300) * 1024, seed: rnd(1, 1000) });
      try {
        const written = await electAndStream({ port: node.pgPort, ...spare.ids, protoVersion: 3, ...server, source: wal, timelineStartLsn: START_LSN, chunkBytes: 32 * 1024 });
        proposers.add(written.proposer);
        assert.equal(written.vote.flushLsn, START_LSN, 'the spare has no WAL from an earlier incarnation');
        await written.proposer.heartbeat(wal.endLsn);
        if (random() < 0.5) await waitFor(async () => round.ending || ((await nodeStatus(node, spare.ids))?.commitLsn ?? 0n) >= wal.endLsn, { timeoutMs: 10_000 });
        if (random() < 0.5) await written.proposer.close(); // else the delete finds a proposer connected
      } catch (error) {
        if (round.ending) return;
        throw error;
      }
      if (round.ending) return;
      if (!(await deleteSpare(round, path, true))) return;
      assert.equal((await http(node, 'GET', path)).status, 404, 'a deleted timeline is gone');
      assert.ok(!existsSync(timelineDirOf(dataDir, spare.ids.tenantId, spare.ids.timelineId)), 'a deleted timeline has no directory');
      assert.deepEqual((await remote.list(`${spare.ids.tenantId}/${spare.ids.timelineId}/`, signal)).map((e) => e.key), [], 'a deleted timeline has nothing in remote storage');
      spare.remoteMaybeDirty = false;
    }
  }

  // ---- rounds ----------------------------------------------------------------------------------------------

  const started = Date.now();
  for (let index = 0; index < ROUNDS; index += 1) {
    if (index > 0 && random() < 0.2) {
      // A kill while the node starts (loading timelines, recovering WAL ends): its deadline is the kill.
      const deadlineMs = rnd(300, 3000);
      const early = await spawnNode(testNodeArgs(dataDir, NODE_ARGS), { readyTimeoutMs: deadlineMs }).catch((error: Error) => error);
      if (early instanceof Error) {
        assert.match(early.message, /not ready after/, `the node died by itself while starting:\n${early.message.slice(-6000)}`);
        stats.startupKills += 1;
      } else {
        await early.kill9();
      }
    }
    const node = await startNode(index);
    let unexpectedExit: string | null = null;
    const moments = ['elect', 'delete', 'checkpoint'] as const;
    const round: Round = { index, node, ending: false, sentBytes: 0, killAtMoment: random() < 0.3 ? moments[rnd(0, 2)]! : null, killRequested: false, tasks: [], failures: [] };
    node.process.once('exit', (code, signal) => {
      if (!round.ending) unexpectedExit = `the node exited by itself in round ${index} (code ${code}, signal ${signal}):\n${node.stderr().slice(-6000)}`;
    });
    if (index > 0) {
      for (const tl of timelines) await checkTimeline(node, tl, `after restart ${index}`, false);
      await checkSpare(node, `after restart ${index}`);
    }
    spare.tombstoned = false; // tombstones live in memory
    // Some rounds die almost at once (right after the restart checks, while the node still recovers).
    const killAt = random() < 0.15 ? rnd(0, 64 * 1024) : Math.floor(ROUND_BYTES_MAX * (0.25 + 0.75 * random()));
    for (const tl of timelines) round.tasks.push(timelineDriver(round, tl));
    const fail = (what: string) => (error: unknown): void => {
      if (!round.ending) round.failures.push(`${what}: ${(error as Error).stack ?? String(error)}`);
    };
    round.tasks.push(readerDriver(round).catch(fail('reader')), readerDriver(round).catch(fail('reader')), spareDriver(round).catch(fail('spare timeline')));
    try {
      await waitFor(() => (round.sentBytes >= killAt && (round.killAtMoment === null || round.sentBytes >= 2 * ROUND_BYTES_MAX)) || round.killRequested || round.failures.length > 0 || unexpectedExit !== null, { timeoutMs: 90_000, intervalMs: 10, what: `round ${index}: ${killAt} bytes sent (sent ${round.sentBytes})` });
      assert.equal(unexpectedExit, null, unexpectedExit ?? '');
      assert.deepEqual(round.failures, [], `round ${index} (seed ${seed})`);
    } catch (error) {
      round.ending = true;
      await node.kill9();
      await Promise.all(round.tasks);
      throw error;
    }
    round.ending = true;
    const graceful = random() < 0.15 && !round.killRequested;
    if (graceful) {
      for (const client of readerClients) client.destroy();
      const exit = await node.stop();
      assert.equal(exit.code, 0, `SIGTERM exits 0 (round ${index}):\n${node.stderr().slice(-4000)}`);
      stats.stops += 1;
    } else {
      await node.kill9();
      stats.kills += 1;
    }
    await Promise.all(round.tasks);
    for (const proposer of proposers) await proposer.close();
    proposers.clear();
    const summary = timelines.map((tl) => `tl${tl.index}: ${tl.elections} elections (${tl.truncatingElections} truncating), acked ${formatLsn(ackFloor(tl))}`).join('; ');
    log(`round ${index}: ${graceful ? 'SIGTERM' : round.killRequested ? `SIGKILL at a ${round.killAtMoment}` : 'SIGKILL'} after ${(round.sentBytes / 1048576).toFixed(1)} MiB sent; ${summary}`);
  }

  // The end: a last restart, every check over the whole WAL, then a clean stop.
  const node = await startNode(ROUNDS);
  let lastExit: string | null = null;
  let stopping = false;
  node.process.once('exit', (code, signal) => {
    if (!stopping) lastExit = `the node exited by itself at the end (code ${code}, signal ${signal})`;
  });
  for (const tl of timelines) {
    const status = await checkTimeline(node, tl, 'at the end', true);
    assert.ok(tl.elections === 0 || status !== null, `timeline ${tl.index} exists at the end`);
  }
  await checkSpare(node, 'at the end');
  assert.equal(lastExit, null, lastExit ?? '');
  stopping = true;
  assert.equal((await node.stop()).code, 0, 'the last SIGTERM exits 0');
  log(`done in ${((Date.now() - started) / 1000).toFixed(1)} s: ${stats.kills} kills, ${stats.startupKills} kills while starting, ${stats.stops} stops, ${timelines.reduce((n, tl) => n + tl.elections, 0)} elections (${timelines.reduce((n, tl) => n + tl.truncatingElections, 0)} truncating), ${spare.tombstoneRefusals} tombstone refusals, reader bytes checked ${stats.readerBytes}, evictions ${stats.evictions}, restores ${stats.restores}, offloaded timelines read from their remote partial ${stats.offloadedReads} (${stats.idleWaits} idle waits, ${stats.evictionWaitsTimedOut} timed out), remote segments checked ${stats.remoteSegmentsChecked}, partial objects checked ${stats.partialsChecked}, spare deletes ${stats.spareDeletes} (${spare.incarnations} incarnations)`);
  log(`warnings: ${[...warnings].map(([msg, count]) => `${count}× ${msg.slice(0, 160)}`).join(' | ') || 'none'}`);
  assert.deepEqual(errorLogs, [], 'the node logged no error');
});
