/**
 * Query texts the safekeeper understands (reference §2), parsed into a discriminated union. Anything else is
 * `{ kind: 'unsupported' }`, which the handler answers with "unsupported command <text>".
 * Case: Neon matches command words case-sensitively (`cmd.starts_with("START_WAL_PUSH")`), while PostgreSQL's
 * replication grammar is case-insensitive. We accept command and option words case-insensitively, so every
 * text Neon accepts is accepted here, plus lower-case spellings Neon would refuse.
 * Trailing whitespace and semicolons are ignored. Malformed arguments of a known command are
 * InvalidArgumentErrors (22023); a text over COMMAND_TEXT_BYTES_MAX is a CommandTooLongError (54000).
 *
 * Cost: this runs synchronously on the main thread for client input, so it must stay linear in the text.
 * The length is checked before anything else, no pattern has two adjacent quantifiers that can match the
 * same characters (such patterns backtrack quadratically or worse on a long run of whitespace), and
 * trimming and option lists are done by index. Pure; any thread.
 */
import { InvalidArgumentError, SafekeeperError } from '../errors.js';
import { parseLsn, type Lsn } from '../wal/lsn.js';

export type Command =
  | { kind: 'start_wal_push'; protoVersion: number; allowTimelineCreation: boolean }
  | { kind: 'start_replication'; slotName: string | null; startLsn: Lsn; timeline: number | null; term: bigint | null }
  | { kind: 'identify_system' }
  | { kind: 'timeline_status' }
  | { kind: 'timeline_history'; timeline: number }
  | { kind: 'show'; name: string }
  | { kind: 'set_datestyle' }
  | { kind: 'unsupported'; text: string };

/** Neon's default when START_WAL_PUSH has no proto_version (older walproposers speak v2). */
export const WAL_PUSH_PROTO_VERSION_DEFAULT = 2;

/**
 * The longest command text accepted, in UTF-8 bytes. Replication commands are short: the longest form,
 * START_REPLICATION with a quoted slot name (at most 63 bytes in PostgreSQL), a timeline and a term, is
 * under 200 bytes. A few KiB leaves room for option lists we ignore while bounding both the parse and the
 * "unsupported command <text>" error that echoes the text back.
 */
export const COMMAND_TEXT_BYTES_MAX = 4096;

/** A command text over COMMAND_TEXT_BYTES_MAX; the connection stays usable. */
export class CommandTooLongError extends SafekeeperError {
  override readonly name = 'CommandTooLongError';
  readonly code = 'SK_COMMAND_TOO_LONG';
  readonly sqlState = '54000'; // program_limit_exceeded
}

export function parseCommand(text: string): Command {
  // First, so every step below sees at most COMMAND_TEXT_BYTES_MAX bytes; byteLength is one linear pass.
  const textBytes = Buffer.byteLength(text, 'utf8');
  if (textBytes > COMMAND_TEXT_BYTES_MAX) {
    throw new CommandTooLongError(`command text of ${textBytes} bytes is over the limit of ${COMMAND_TEXT_BYTES_MAX} bytes`);
  }
  const command = trimCommand(text);
  // psycopg2 sends this on connect; Neon answers SELECT 1 without running anything.
  if (/^set datestyle to /i.test(command)) return { kind: 'set_datestyle' };
  const word = /^[A-Za-z_]+/.exec(command)?.[0].toUpperCase() ?? '';
  const rest = command.slice(word.length);
  switch (word) {
    case 'START_WAL_PUSH':
      return parseStartWalPush(rest);
    case 'START_REPLICATION':
      return parseStartReplication(command, rest);
    case 'IDENTIFY_SYSTEM':
      return rest === '' ? { kind: 'identify_system' } : { kind: 'unsupported', text };
    case 'TIMELINE_STATUS':
      return rest === '' ? { kind: 'timeline_status' } : { kind: 'unsupported', text };
    case 'TIMELINE_HISTORY': {
      const match = /^\s+(\d{1,10})$/.exec(rest);
      if (match === null) throw new InvalidArgumentError(`bad TIMELINE_HISTORY command: ${JSON.stringify(text)}`);
      return { kind: 'timeline_history', timeline: Number(match[1]) };
    }
    case 'SHOW': {
      const match = /^\s+([A-Za-z_][A-Za-z0-9_.]*|"[^"]+")$/.exec(rest);
      if (match === null) return { kind: 'unsupported', text };
      const name = match[1] as string;
      return { kind: 'show', name: name.startsWith('"') ? name.slice(1, -1) : name.toLowerCase() };
    }
    default:
      return { kind: 'unsupported', text };
  }
}

/**
 * `text` without leading whitespace, or trailing whitespace and semicolons. By index, since `/[\s;]+$/` is
 * quadratic: it is tried at every position of a whitespace run that is not at the end. Each turn of the loop
 * removes at least one character, and trimEnd() scans only what it removes.
 */
function trimCommand(text: string): string {
  let command = text.trimStart(); // trimStart/trimEnd remove exactly what \s matches
  for (;;) {
    const trimmed = command.trimEnd();
    if (!trimmed.endsWith(';')) return trimmed;
    command = trimmed.slice(0, -1);
  }
}

/**
 * `START_WAL_PUSH [( key value [, ...] )]`, values optionally single-quoted. Like Neon the list is split
 * naively on commas and whitespace; unknown keys are ignored and a key without a value is an error.
 */
function parseStartWalPush(rest: string): Command {
  const result = { kind: 'start_wal_push' as const, protoVersion: WAL_PUSH_PROTO_VERSION_DEFAULT, allowTimelineCreation: true };
  if (rest === '') return result;
  const match = /^\s*\((.*)\)$/s.exec(rest);
  if (match === null) throw new InvalidArgumentError(`bad START_WAL_PUSH options: ${JSON.stringify(rest)}`);
  const list = (match[1] as string).trim();
  if (list === '') return result;
  for (const item of list.split(',')) {
    const [key, quoted] = item.trim().split(/\s+/);
    if (key === undefined || key === '' || quoted === undefined) {
      throw new InvalidArgumentError(`START_WAL_PUSH option without a value: ${JSON.stringify(item.trim())}`);
    }
    const value = /^'.*'$/s.test(quoted) ? quoted.slice(1, -1) : quoted;
    switch (key.toLowerCase()) {
      case 'proto_version':
        if (!/^\d{1,10}$/.test(value) || Number(value) > 0xffff_ffff) {
          throw new InvalidArgumentError(`proto_version must be a u32: ${JSON.stringify(value)}`);
        }
        result.protoVersion = Number(value); // values other than 2 and 3 fail at the first message, as in Neon
        break;
      case 'allow_timeline_creation':
        if (value !== 'true' && value !== 'false') {
          throw new InvalidArgumentError(`allow_timeline_creation must be true or false: ${JSON.stringify(value)}`);
        }
        result.allowTimelineCreation = value === 'true';
        break;
      default:
        break;
    }
  }
  return result;
}

const START_REPLICATION =
  /^\s+(?:SLOT\s+("(?:[^"]|"")+"|[^\s"(]+)\s+)?(?:(PHYSICAL|LOGICAL)\s+)?([0-9A-Fa-f]{1,8}\/[0-9A-Fa-f]{1,8})(?:\s+TIMELINE\s+(\d{1,10}))?(?:\s*\((.*)\))?$/is;

/** `START_REPLICATION [SLOT name] [PHYSICAL] X/Y [TIMELINE n] [(term='T')]`; LOGICAL is unsupported. */
function parseStartReplication(text: string, rest: string): Command {
  if (/^\s+SLOT\s+\S+\s+LOGICAL\b/i.test(rest) || /^\s+LOGICAL\b/i.test(rest)) return { kind: 'unsupported', text };
  const match = START_REPLICATION.exec(rest);
  if (match === null) throw new InvalidArgumentError(`failed to parse START_REPLICATION command: ${JSON.stringify(text)}`);
  const [, slot, mode, lsnText, timelineText, optionList] = match;
  if (mode !== undefined && mode.toUpperCase() === 'LOGICAL') return { kind: 'unsupported', text };
  let term: bigint | null = null;
  if (optionList !== undefined && optionList.trim() !== '') {
    for (const item of optionList.split(',')) {
      const option = parseReplicationOption(item);
      if (option === null) throw new InvalidArgumentError(`bad START_REPLICATION option: ${JSON.stringify(item.trim())}`);
      if (option.key.toLowerCase() !== 'term') continue;
      const value = option.value;
      if (!/^\d{1,20}$/.test(value) || BigInt(value) > 0xffff_ffff_ffff_ffffn) {
        throw new InvalidArgumentError(`term must be a u64: ${JSON.stringify(value)}`);
      }
      term = BigInt(value);
    }
  }
  return {
    kind: 'start_replication',
    slotName: slot === undefined ? null : slot.startsWith('"') ? slot.slice(1, -1).replaceAll('""', '"') : slot.toLowerCase(),
    startLsn: parseLsn(lsnText as string),
    timeline: timelineText === undefined ? null : Number(timelineText),
    term,
  };
}

/**
 * One item of a START_REPLICATION option list: a key (optionally double-quoted), then `=`, whitespace or
 * nothing, then a value that is single-quoted or bare (no whitespace or quote; possibly empty). Null when the
 * item has another shape. Tokenised by index: the equivalent single pattern has three optional whitespace
 * quantifiers side by side, which backtrack cubically in a run of spaces.
 */
function parseReplicationOption(item: string): { key: string; value: string } | null {
  const trimmed = item.trim();
  const keyMatch = /^"?([A-Za-z_]+)"?/.exec(trimmed);
  if (keyMatch === null) return null;
  const key = keyMatch[1] as string;
  let rest = trimmed.slice(keyMatch[0].length).trimStart();
  if (rest.startsWith('=')) rest = rest.slice(1).trimStart();
  if (rest.startsWith("'")) return rest.indexOf("'", 1) === rest.length - 1 ? { key, value: rest.slice(1, -1) } : null;
  return /^[^\s']*$/.test(rest) ? { key, value: rest } : null;
}
