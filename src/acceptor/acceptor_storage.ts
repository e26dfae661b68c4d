/**
 * The storage interfaces the acceptor (`acceptor.ts`) is generic over, like Neon's
 * `control_file::Storage` and `wal_storage::Storage`. The node implements them with the control file
 * and the WAL writer; tests with `memory_storage.ts`. Types only.
 */
import type { Lsn } from '../wal/lsn.js';
import type { TimelinePersistentState } from './state.js';

/** The control file. `persist` resolves only once `next` is durable (written, fsynced, renamed). */
export interface AcceptorControlStore {
  readonly state: Readonly<TimelinePersistentState>;
  persist(next: TimelinePersistentState, signal: AbortSignal): Promise<void>;
}

/** WAL storage as the acceptor sees it. Positions: flushLsn <= writeLsn. */
export interface AcceptorWalStore {
  /** End of all WAL bytes accepted for writing (maybe not durable yet); 0 = nothing ever written. */
  readonly writeLsn: Lsn;
  /** End of the last complete, CRC-verified, durable record: the protocol's flush_lsn. */
  readonly flushLsn: Lsn;
  /** Set after every load and after a failed truncation; a ProposerElected must truncate before any write. */
  readonly truncationPending: boolean;
  /** The hot path of `append`: takes the bytes if there is buffer space now; false (nothing taken) if not. */
  tryAppend(beginLsn: Lsn, wal: Uint8Array): boolean;
  /** Takes (copies) the bytes at `beginLsn` == writeLsn; may wait for buffer space; not durable yet. */
  append(beginLsn: Lsn, wal: Uint8Array, signal: AbortSignal): Promise<void>;
  /** Resolves when everything appended so far is durable (flushLsn updated). */
  flush(signal: AbortSignal): Promise<void>;
  /** Storage doc §2.4: afterwards writeLsn == flushLsn == lsn and no truncation is pending. */
  truncate(lsn: Lsn, signal: AbortSignal): Promise<void>;
  /** §4.5 step 6: the initial segment image for a timeline whose WAL starts at `lsn`. */
  initializeFirstSegment(lsn: Lsn, signal: AbortSignal): Promise<void>;
  /**
   * A ProposerElected that cut the WAL failed before its term history was durable (a disk error): the cut
   * stays, but nothing may be appended until another one succeeds (a truncation is pending again). After a
   * timeline's first election (`first`) every position goes back to 0: the control file still says "no WAL",
   * so the next election must write the first segment's headers at its own start, as after a restart.
   */
  electionNotRecorded(first: boolean): void;
}
