/**
 * The proposer's operating errors, one class per way `safekeeper propose` can fail, each with a stable
 * `code` that tests and scripts match on. All but DuplicateSafekeeperError (which drops one safekeeper) are
 * fatal for the proposer process (exit code 1); transient trouble with one safekeeper is not an error here
 * but a reconnect with backoff (`acceptor_link.ts`).
 * Pure; main thread.
 */
import { SafekeeperError } from '../errors.js';

/** The PostgreSQL primary cannot be reached, refused us, or broke the replication stream. */
export class SourceError extends SafekeeperError {
  override readonly name = 'SourceError';
  readonly code = 'SK_SOURCE';
  readonly sqlState = '08006'; // connection_failure
}

/** The primary went away after streaming began and did not come back within `--primary-reconnect-timeout`. */
export class PrimaryLostError extends SafekeeperError {
  override readonly name = 'PrimaryLostError';
  readonly code = 'SK_PRIMARY_LOST';
  readonly sqlState = '08006'; // connection_failure
}

/** No majority of safekeepers greeted and voted within the quorum timeout. */
export class NoQuorumError extends SafekeeperError {
  override readonly name = 'NoQuorumError';
  readonly code = 'SK_NO_QUORUM';
  readonly sqlState = '08006';
}

/** Another proposer holds a higher term: a safekeeper refused our vote request or our appends. */
export class TermConflictError extends SafekeeperError {
  override readonly name = 'TermConflictError';
  readonly code = 'SK_TERM_CONFLICT';
  readonly sqlState = '40001'; // serialization_failure: someone else won
  constructor(readonly ourTerm: bigint, readonly theirTerm: bigint, detail: string) {
    super(`term conflict: ${detail} (our term ${ourTerm}, safekeeper's term ${theirTerm}); is another proposer running on this timeline?`);
  }
}

/** The timeline on a safekeeper belongs to another PostgreSQL cluster. */
export class SystemIdMismatchError extends SafekeeperError {
  override readonly name = 'SystemIdMismatchError';
  readonly code = 'SK_SYSTEM_ID_MISMATCH';
  readonly sqlState = '22023';
  constructor(readonly expectedSystemId: bigint, readonly foundSystemId: bigint, where: string) {
    super(`wrong system id: ${where} holds this timeline for system ${foundSystemId}, but the WAL source is system ${expectedSystemId}`);
  }
}

/**
 * The safekeepers' WAL cannot be continued from this source: the primary came back as another cluster
 * (system id) or on another PostgreSQL timeline, or it no longer has the WAL the quorum needs next.
 */
export class SourceMismatchError extends SafekeeperError {
  override readonly name = 'SourceMismatchError';
  readonly code = 'SK_SOURCE_MISMATCH';
  readonly sqlState = '22023';
}

/**
 * Two entries of --safekeepers reached the same safekeeper (its greeting carried a node id another entry
 * already greeted with: one node under two names). The later one is dropped, so the node counts once.
 */
export class DuplicateSafekeeperError extends SafekeeperError {
  override readonly name = 'DuplicateSafekeeperError';
  readonly code = 'SK_DUPLICATE_SAFEKEEPER';
  readonly sqlState = '22023'; // invalid_parameter_value: the list names one node twice
  constructor(readonly nodeId: bigint, safekeeper: string, sameAs: string) {
    super(`safekeeper ${safekeeper} is node ${nodeId}, the same node as ${sameAs}: it is ignored (list each safekeeper once in --safekeepers)`);
  }
}
