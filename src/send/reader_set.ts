/**
 * ReaderSet: the replication readers (walsenders) of one timeline, after Neon's `WalSenders`. Each
 * START_REPLICATION connection registers a slot for its lifetime; the slot keeps what the reader last told
 * us: pageserver feedback (`z`; every slot starts in that state, as in Neon, which matters for the
 * pageserver termination rule of §5.3) or standby feedback (`r` and `h`, which turn it into a standby).
 *
 * Aggregates, recomputed on each change (readers are few and feedback is rare, about once per second):
 *   - hot standby feedback for AppendResponses (§3.5): min of non-zero xmin and of non-zero catalog_xmin,
 *     max ts over the standbys that contributed a non-zero value; all zero when none did;
 *   - the reader horizon published in the state block for WAL removal: the minimum over readers of the
 *     position each still needs (its reported flush position, else the position it started from), with
 *     `readerCount`. With no reader the horizon is 0 and only `readerCount = 0` says there is none.
 * The set installs itself as its timeline's hot standby feedback source on creation (`readersOf`).
 * Main thread; the state block slots `readerCount` and `readerHorizonLsn` are written only here.
 */
import { emptyHotStandbyFeedback, type HotStandbyFeedback } from '../acceptor/messages.js';
import { emptyPageserverFeedback, type PageserverFeedback } from '../acceptor/pageserver_feedback.js';
import type { StateBlock } from '../ingest/state_block.js';
import { assert, unreachable } from '../sync/assert.js';
import type { Timeline } from '../timeline/timeline.js';
import { type Lsn, formatLsn } from '../wal/lsn.js';
import type { StandbyReply } from '../pg/replication_messages.js';
import { RecentChunks } from './wal_reader.js';

export type ReaderFeedback =
  | { kind: 'pageserver'; feedback: PageserverFeedback }
  | { kind: 'standby'; reply: StandbyReply | null; hotStandby: HotStandbyFeedback };

export interface ReaderInfo {
  connId: number;
  remoteAddress: string;
  applicationName: string | null;
  startLsn: Lsn;
  /** Requested term (term mode, §5.1), or null for committed WAL only. */
  term: bigint | null;
}

/** One registered reader. `sentLsn` is advanced by its sender; the set reads it for status only. */
export class ReaderSlot {
  feedback: ReaderFeedback = { kind: 'pageserver', feedback: emptyPageserverFeedback() };
  sentLsn: Lsn;
  constructor(readonly id: number, readonly info: ReaderInfo) {
    this.sentLsn = info.startLsn;
  }

  /** The oldest position this reader may still ask for again (after a reconnect). */
  get neededLsn(): Lsn {
    const feedback = this.feedback;
    if (feedback.kind === 'standby' && feedback.reply !== null && feedback.reply.flushLsn !== 0n) return feedback.reply.flushLsn;
    if (feedback.kind === 'pageserver' && feedback.feedback.diskConsistentLsn !== 0n) return feedback.feedback.diskConsistentLsn;
    return this.info.startLsn;
  }
}

export class ReaderSet {
  /** Ring copies shared by this timeline's readers (wal_reader.ts). */
  readonly recentChunks = new RecentChunks();
  readonly #slots = new Map<number, ReaderSlot>();
  #nextId = 1;
  #hotStandby: HotStandbyFeedback = emptyHotStandbyFeedback();
  /** The last pageserver feedback any reader sent, and how many there were (status and debugging). */
  lastPageserverFeedback: PageserverFeedback = emptyPageserverFeedback();
  pageserverFeedbackCount = 0;

  constructor(private readonly state: StateBlock) {}

  get count(): number {
    return this.#slots.size;
  }

  /** The aggregate of §3.5 that AppendResponses carry. */
  get hotStandbyFeedback(): HotStandbyFeedback {
    return this.#hotStandby;
  }

  slots(): ReaderSlot[] {
    return [...this.#slots.values()];
  }

  register(info: ReaderInfo): ReaderSlot {
    const slot = new ReaderSlot(this.#nextId++, info);
    this.#slots.set(slot.id, slot);
    this.#publish();
    return slot;
  }

  /** Idempotent. */
  unregister(slot: ReaderSlot): void {
    if (!this.#slots.delete(slot.id)) return;
    this.#hotStandby = aggregateHotStandbyFeedback(this.slots());
    this.#publish();
  }

  recordStandbyReply(slot: ReaderSlot, reply: StandbyReply): void {
    this.#checkRegistered(slot);
    slot.feedback = slot.feedback.kind === 'standby' ? { ...slot.feedback, reply } : { kind: 'standby', reply, hotStandby: emptyHotStandbyFeedback() };
    this.#publish();
  }

  recordHotStandbyFeedback(slot: ReaderSlot, hotStandby: HotStandbyFeedback): void {
    this.#checkRegistered(slot);
    slot.feedback = slot.feedback.kind === 'standby' ? { ...slot.feedback, hotStandby } : { kind: 'standby', reply: null, hotStandby };
    this.#hotStandby = aggregateHotStandbyFeedback(this.slots());
  }

  recordPageserverFeedback(slot: ReaderSlot, feedback: PageserverFeedback): void {
    this.#checkRegistered(slot);
    slot.feedback = { kind: 'pageserver', feedback };
    this.lastPageserverFeedback = feedback;
    this.pageserverFeedbackCount += 1;
    this.#publish();
  }

  /** The reader horizon (see the header); 0 with no readers. */
  horizonLsn(): Lsn {
    let horizon: Lsn | null = null;
    for (const slot of this.#slots.values()) {
      const needed = slot.neededLsn;
      if (horizon === null || needed < horizon) horizon = needed;
    }
    return horizon ?? 0n;
  }

  #checkRegistered(slot: ReaderSlot): void {
    assert(this.#slots.get(slot.id) === slot, 'feedback only from a registered reader');
  }

  #publish(): void {
    this.state.setMany({ readerCount: BigInt(this.#slots.size), readerHorizonLsn: this.horizonLsn() });
  }
}

/** Neon's `update_hs_feedback`, with ts = max over contributors (reference §3.5). Pure; exported for tests. */
export function aggregateHotStandbyFeedback(slots: readonly ReaderSlot[]): HotStandbyFeedback {
  const aggregate = emptyHotStandbyFeedback();
  for (const slot of slots) {
    if (slot.feedback.kind !== 'standby') continue;
    const { xmin, catalogXmin, timestampUs } = slot.feedback.hotStandby;
    if (xmin !== 0n) aggregate.xmin = aggregate.xmin === 0n || xmin < aggregate.xmin ? xmin : aggregate.xmin;
    if (catalogXmin !== 0n) aggregate.catalogXmin = aggregate.catalogXmin === 0n || catalogXmin < aggregate.catalogXmin ? catalogXmin : aggregate.catalogXmin;
    if ((xmin !== 0n || catalogXmin !== 0n) && timestampUs > aggregate.timestampUs) aggregate.timestampUs = timestampUs;
  }
  return aggregate;
}

const readerSets = new WeakMap<Timeline, ReaderSet>();

/** The timeline's reader set, created on first use (which also makes it the timeline's hot standby feedback source). */
export function readersOf(timeline: Timeline): ReaderSet {
  let set = readerSets.get(timeline);
  if (set === undefined) {
    const created = new ReaderSet(timeline.state);
    timeline.setHotStandbyFeedbackSource(() => created.hotStandbyFeedback);
    readerSets.set(timeline, created);
    set = created;
  }
  return set;
}

/** Neon's `walsenders` list of the timeline status document (HTTP); empty when no reader ever connected. */
export function walSendersJson(timeline: Timeline): object[] {
  const set = readerSets.get(timeline);
  if (set === undefined) return [];
  return set.slots().map((slot) => ({
    ttid: timeline.ttid,
    addr: slot.info.remoteAddress,
    conn_id: slot.info.connId,
    appname: slot.info.applicationName,
    start_lsn: formatLsn(slot.info.startLsn),
    sent_lsn: formatLsn(slot.sentLsn),
    term: slot.info.term,
    feedback: feedbackJson(slot.feedback),
  }));
}

function feedbackJson(feedback: ReaderFeedback): object {
  switch (feedback.kind) {
    case 'pageserver': {
      const ps = feedback.feedback;
      return {
        Pageserver: {
          current_timeline_size: ps.currentTimelineSizeBytes,
          last_received_lsn: formatLsn(ps.lastReceivedLsn),
          disk_consistent_lsn: formatLsn(ps.diskConsistentLsn),
          remote_consistent_lsn: formatLsn(ps.remoteConsistentLsn),
          replytime: ps.replyTimeUs,
          shard_number: ps.shardNumber,
        },
      };
    }
    case 'standby': {
      const reply = feedback.reply;
      return {
        Standby: {
          reply:
            reply === null
              ? null
              : { write_lsn: formatLsn(reply.writeLsn), flush_lsn: formatLsn(reply.flushLsn), apply_lsn: formatLsn(reply.applyLsn), reply_ts: reply.replyTimeUs, reply_requested: reply.replyRequested },
          hs_feedback: { ts: feedback.hotStandby.timestampUs, xmin: feedback.hotStandby.xmin, catalog_xmin: feedback.hotStandby.catalogXmin },
        },
      };
    }
    default:
      return unreachable(feedback);
  }
}
