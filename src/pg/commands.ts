/**
 * Query texts the safekeeper understands (reference §2), parsed into a discriminated union. Anything else is
 * `{ kind: 'unsupported' }`, which the handler answers with "unsupported command <text>".
 * Case: Neon matches command words case-sensitively (`cmd.starts_with("START_WAL_PUSH")`), while PostgreSQL's
 * replication grammar is case-insensitive. We accept command and option words case-insensitively, so every
 * text Neon accepts is accepted here, plus lower-case spellings Neon would refuse.
 * Trailing whitespace and semicolons are ignored. Malformed arguments of a known command are
 * InvalidArgumentErrors (22023). Pure; any thread.
 */
import { InvalidArgumentError } from '../errors.js';
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

export function parseCommand(text: string): Command {
  const command = text.replace(/[\s;]+$/, '').replace(/^\s+/, '');
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
      const option = /^\s*"?([A-Za-z_]+)"?\s*(?:=\s*|\s+)?('[^']*'|[^\s']*)\s*$/.exec(item);
      if (option === null) throw new InvalidArgumentError(`bad START_REPLICATION option: ${JSON.stringify(item.trim())}`);
      if ((option[1] as string).toLowerCase() !== 'term') continue;
      const value = (option[2] as string).replace(/^'(.*)'$/, '$1');
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
