/**
 * The SafekeeperError tree: every operating error (bad input, a refused request, a disk or network failure)
 * is a subclass with a stable `code` (`SK_*`, which tests and alerts match on) and a `sqlState` (what a
 * Postgres client sees). `pg/sqlstate.ts` is the only place that maps them onto ErrorResponse, and the HTTP
 * layer maps `httpStatus`. Bugs are AssertionErrors (`sync/assert.ts`), never SafekeeperErrors.
 */
import type { Lsn } from './wal/lsn.js';

export abstract class SafekeeperError extends Error {
  abstract readonly code: `SK_${string}`;
  abstract readonly sqlState: string;
  /** HTTP status for the management API. */
  readonly httpStatus: number = 500;
}

export class ProtocolViolationError extends SafekeeperError {
  override readonly name = 'ProtocolViolationError';
  readonly code = 'SK_PROTOCOL_VIOLATION';
  readonly sqlState = '08P01'; // protocol_violation
  override readonly httpStatus = 400;
  constructor(readonly messageTag: string, detail: string, options?: ErrorOptions) {
    super(`bad ${messageTag} message: ${detail}`, options);
  }
}

/** A WAL record or page failed validation. `lsn` is where the bad record or page starts. */
export class WalCorruptionError extends SafekeeperError {
  override readonly name = 'WalCorruptionError';
  readonly code = 'SK_WAL_CORRUPTION';
  readonly sqlState = 'XX001'; // data_corrupted
  constructor(
    readonly kind:
      | 'bad_page_magic'
      | 'bad_page_address'
      | 'bad_page_header'
      | 'bad_record_length'
      | 'bad_record_prev'
      | 'crc_mismatch'
      | 'unexpected_contrecord'
      | 'missing_contrecord'
      | 'bad_contrecord_length',
    readonly lsn: Lsn,
    detail: string,
  ) {
    super(detail);
  }
}

export class InvalidArgumentError extends SafekeeperError {
  override readonly name = 'InvalidArgumentError';
  readonly code = 'SK_INVALID_ARGUMENT';
  readonly sqlState = '22023'; // invalid_parameter_value
  override readonly httpStatus = 400;
}

export class ConfigError extends SafekeeperError {
  override readonly name = 'ConfigError';
  readonly code = 'SK_CONFIG';
  readonly sqlState = '22023';
  /** `key` is the config key (snake_case) and `source` where the bad value came from (file path, flag, default). */
  constructor(readonly key: string, readonly source: string, detail: string) {
    super(`config key '${key}' (from ${source}): ${detail}`);
  }
}

export class NotFoundError extends SafekeeperError {
  override readonly name = 'NotFoundError';
  readonly code = 'SK_NOT_FOUND';
  readonly sqlState = '42704'; // undefined_object
  override readonly httpStatus = 404;
}

export class ConflictError extends SafekeeperError {
  override readonly name = 'ConflictError';
  readonly code = 'SK_CONFLICT';
  readonly sqlState = '55000'; // object_not_in_prerequisite_state
  override readonly httpStatus = 409;
}

/** The acceptor refused a proposer message (term, generation, contiguity, ordering). */
export class AcceptorRefusedError extends SafekeeperError {
  override readonly name = 'AcceptorRefusedError';
  readonly code = 'SK_ACCEPTOR_REFUSED';
  readonly sqlState = '08P01';
  override readonly httpStatus = 409;
}

export class TimelineBrokenError extends SafekeeperError {
  override readonly name = 'TimelineBrokenError';
  readonly code = 'SK_TIMELINE_BROKEN';
  readonly sqlState = 'XX001';
  override readonly httpStatus = 500;
}

export class DiskFullError extends SafekeeperError {
  override readonly name = 'DiskFullError';
  readonly code = 'SK_DISK_FULL';
  readonly sqlState = '53100'; // disk_full
}

export class StorageIoError extends SafekeeperError {
  override readonly name = 'StorageIoError';
  readonly code = 'SK_STORAGE_IO';
  readonly sqlState = '58030'; // io_error
}

export class ShutdownError extends SafekeeperError {
  override readonly name = 'ShutdownError';
  readonly code = 'SK_SHUTDOWN';
  readonly sqlState = '57P01'; // admin_shutdown
  override readonly httpStatus = 503;
  constructor(detail = 'safekeeper is shutting down') {
    super(detail);
  }
}

export class TooManyConnectionsError extends SafekeeperError {
  override readonly name = 'TooManyConnectionsError';
  readonly code = 'SK_TOO_MANY_CONNECTIONS';
  readonly sqlState = '53300'; // too_many_connections
  override readonly httpStatus = 503;
}

export class AuthError extends SafekeeperError {
  override readonly name = 'AuthError';
  readonly code = 'SK_AUTH';
  readonly sqlState = '28000'; // invalid_authorization_specification
  override readonly httpStatus = 403;
}

/** Another process holds the data directory. */
export class DataDirLockedError extends SafekeeperError {
  override readonly name = 'DataDirLockedError';
  readonly code = 'SK_DATA_DIR_LOCKED';
  readonly sqlState = '55006'; // object_in_use
}

/** An error thrown into an awaiting task when its AbortSignal fires without a reason of our own. */
export class CancelledError extends SafekeeperError {
  override readonly name = 'CancelledError';
  readonly code = 'SK_CANCELLED';
  readonly sqlState = '57014'; // query_canceled
  constructor(detail = 'cancelled') {
    super(detail);
  }
}
