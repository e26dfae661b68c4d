/**
 * Where the proposer's WAL comes from: a stock PostgreSQL primary over physical replication
 * (`postgres_source.ts`) or a synthetic generator (`synthetic_source.ts`). The proposer greets safekeepers
 * with the source's identity, asks it where a brand-new timeline starts, streams from the elected term
 * start (or lower, when the source can rewind and a lagging safekeeper needs it), and tells it when the
 * quorum's commit_lsn moves and what hot standby feedback the safekeepers report.
 * Types only.
 */
import type { Lsn } from '../wal/lsn.js';

/** What the greeting carries: the timeline is created with these, and they never change. */
export interface ServerIdentity {
  systemId: bigint;
  /** server_version_num, e.g. 150008. */
  pgVersion: number;
  walSegSizeBytes: number;
}

export interface StreamArgs {
  /** Where WAL continues: a record start (or a page or segment start). */
  startLsn: Lsn;
  /** Start of the record before startLsn if known (a generator needs it for xl_prev); null if unknown. */
  prevRecordLsn: Lsn | null;
  /** Appends WAL that starts exactly where the previous write ended; waits while the window is full. */
  write(lsn: Lsn, bytes: Uint8Array, signal: AbortSignal): Promise<void>;
  signal: AbortSignal;
}

export interface WalSource {
  /** For logs: `postgres 127.0.0.1:5432` or `synthetic`. */
  readonly description: string;
  readonly identity: ServerIdentity;
  /** Whether `stream` may start below the term start (true for a primary that still has the WAL). */
  readonly canRewind: boolean;
  /** Whether `stream` needs `prevRecordLsn` to produce valid WAL. */
  readonly needsPrevRecordLsn: boolean;
  /** The lowest LSN `stream` can start at. */
  earliestLsn(): Lsn;
  /** Where a timeline with no WAL yet begins: a record start. */
  initialLsn(signal: AbortSignal): Promise<Lsn>;
  /**
   * Produces WAL until the signal fires (rejects with its reason) or the source is done (resolves). A source
   * may pause on its own (the primary source reconnecting); it rejects only when it cannot go on.
   */
  stream(args: StreamArgs): Promise<void>;
  /** The quorum's commit_lsn moved forward. Called synchronously on every advance; must be cheap. */
  onCommit(commitLsn: Lsn): void;
  /** Aggregated hot standby feedback of the safekeepers' readers (FullTransactionIds; 0 = none). */
  onHotStandbyFeedback(xmin: bigint, catalogXmin: bigint): void;
  /** Releases connections and timers. */
  close(): Promise<void>;
}
