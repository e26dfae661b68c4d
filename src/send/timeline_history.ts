/**
 * TIMELINE_HISTORY n, as PostgreSQL's walsender answers it for a timeline without a history file. Every
 * safekeeper timeline is PostgreSQL timeline 1, which never has one (standbys and pg_receivewal do not ask
 * for timeline 1; they ask only after a timeline switch). PostgreSQL's `SendTimeLineHistory` fails to open
 * `pg_wal/0000000N.history` and reports errcode_for_file_access(ENOENT) = 58P01 with that message; we send
 * the same ErrorResponse (PostgreSQL has already sent the RowDescription by then, which libpq discards with
 * the failed result, so we leave it out). Timeline 0 is the grammar's "invalid timeline 0". Pure; main thread.
 */
import { InvalidArgumentError, SafekeeperError } from '../errors.js';

/** A timeline history file that does not exist (every one, here). */
export class TimelineHistoryNotFoundError extends SafekeeperError {
  override readonly name = 'TimelineHistoryNotFoundError';
  readonly code = 'SK_TIMELINE_HISTORY_NOT_FOUND';
  readonly sqlState = '58P01'; // undefined_file
  override readonly httpStatus = 404;
}

/** The name PostgreSQL gives timeline `timeline`'s history file (TLHistoryFileName). */
export function timelineHistoryFileName(timeline: number): string {
  return `${timeline.toString(16).toUpperCase().padStart(8, '0')}.history`;
}

/** Always throws: the reply to `TIMELINE_HISTORY timeline`. */
export function timelineHistory(timeline: number): never {
  if (timeline <= 0) throw new InvalidArgumentError(`invalid timeline ${timeline}`);
  throw new TimelineHistoryNotFoundError(`could not open file "pg_wal/${timelineHistoryFileName(timeline)}": No such file or directory`);
}
