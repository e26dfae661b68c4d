/**
 * Startup-phase packets: which kind a packet is, and the StartupMessage parameters the safekeeper reads.
 * Only `options` and `application_name` matter to the safekeeper (reference §1.2); the rest are kept as
 * given. `options` is split the way PostgreSQL's pg_split_opts does (unescaped whitespace separates tokens,
 * a backslash makes the next character literal), then every `key=value` token is inspected, with or without
 * a preceding `-c`; `-ckey=value` and `--key=value` are accepted as PostgreSQL accepts them (Neon itself only
 * inspects bare `key=value` tokens, so its `-ckey=value` would be skipped). Unknown keys are ignored.
 * Bad ids or shard parameters are InvalidArgumentErrors (22023); missing ids are allowed here and fail later,
 * when a command needs them. Pure; any thread.
 */
import { parseTenantId, parseTimelineId, type TenantId, type TimelineId } from '../acceptor/state.js';
import { InvalidArgumentError, ProtocolViolationError } from '../errors.js';
import { StartupCode } from './frame_decoder.js';

/** The replication-out protocol a reader asks for with `protocol=<json>` (reference §1.2, §5.5). */
export type ReplicationProtocol =
  | { type: 'vanilla' }
  | { type: 'interpreted'; format: 'protobuf' | 'bincode'; compression: { zstdLevel: number } | null };

export interface ShardParams {
  count: number;
  number: number;
  stripeSize: number;
}

export interface StartupParams {
  /** Minor protocol version the client asked for; we speak 3.0 and negotiate down. */
  protocolMinorVersion: number;
  /** Every parameter as sent, including the ones below. */
  parameters: ReadonlyMap<string, string>;
  user: string | null;
  database: string | null;
  applicationName: string | null;
  replication: string | null;
  options: string | null;
  tenantId: TenantId | null;
  timelineId: TimelineId | null;
  protocol: ReplicationProtocol;
  /** Required with the interpreted protocol, refused with vanilla. */
  shard: ShardParams | null;
  availabilityZone: string | null;
  /** `_pq_.*` protocol options we do not know (all of them); NegotiateProtocolVersion lists them. */
  unrecognisedProtocolOptions: readonly string[];
}

export type StartupPacket =
  | { kind: 'startup'; params: StartupParams }
  | { kind: 'ssl_request' }
  | { kind: 'gss_enc_request' }
  | { kind: 'cancel_request'; processId: number; secretKey: number };

/** Classifies a startup-phase packet (`body` = everything after the length: the int32 code, then the rest). */
export function parseStartupPacket(body: Buffer): StartupPacket {
  const code = body.readInt32BE(0);
  switch (code) {
    case StartupCode.SslRequest:
      expectLength(body, 4, 'SSLRequest');
      return { kind: 'ssl_request' };
    case StartupCode.GssEncRequest:
      expectLength(body, 4, 'GSSENCRequest');
      return { kind: 'gss_enc_request' };
    case StartupCode.CancelRequest:
      expectLength(body, 12, 'CancelRequest');
      return { kind: 'cancel_request', processId: body.readInt32BE(4), secretKey: body.readInt32BE(8) };
    default:
      break;
  }
  const majorVersion = code >>> 16;
  if (majorVersion !== 3) throw new ProtocolViolationError('startup', `unsupported frontend protocol ${majorVersion}.${code & 0xffff}`);
  return { kind: 'startup', params: parseStartupParameters(readParameterPairs(body.subarray(4)), code & 0xffff) };
}

function expectLength(body: Buffer, bodyBytes: number, name: string): void {
  if (body.length !== bodyBytes) throw new ProtocolViolationError(name, `length ${body.length + 4}, expected ${bodyBytes + 4}`);
}

/** Name/value C-string pairs ended by an empty name. */
function readParameterPairs(pairs: Buffer): Map<string, string> {
  const parameters = new Map<string, string>();
  let offset = 0;
  for (;;) {
    const nameEnd = pairs.indexOf(0, offset);
    if (nameEnd < 0) throw new ProtocolViolationError('startup', 'parameter list is not terminated');
    if (nameEnd === offset) break;
    const valueEnd = pairs.indexOf(0, nameEnd + 1);
    if (valueEnd < 0) throw new ProtocolViolationError('startup', 'parameter value is not terminated');
    parameters.set(pairs.toString('utf8', offset, nameEnd), pairs.toString('utf8', nameEnd + 1, valueEnd));
    offset = valueEnd + 1;
  }
  if (offset + 1 !== pairs.length) throw new ProtocolViolationError('startup', 'bytes after the parameter list');
  return parameters;
}

/** PostgreSQL's pg_split_opts: split on unescaped ASCII whitespace; a backslash makes the next character literal. */
export function splitOptions(options: string): string[] {
  const tokens: string[] = [];
  let token = '';
  let inToken = false;
  let escaped = false;
  for (const character of options) {
    if (escaped) {
      token += character;
      escaped = false;
    } else if (character === '\\') {
      escaped = true;
      inToken = true;
    } else if (/^[ \t\n\v\f\r]$/.test(character)) {
      if (inToken) tokens.push(token);
      token = '';
      inToken = false;
    } else {
      token += character;
      inToken = true;
    }
  }
  if (inToken) tokens.push(token);
  return tokens;
}

/** The `key=value` settings in split options: bare, after `-c`, as `-ckey=value` or as `--key=value`. */
export function optionSettings(tokens: readonly string[]): [key: string, value: string][] {
  const settings: [string, string][] = [];
  for (const token of tokens) {
    const setting = token.startsWith('--') ? token.slice(2) : token.startsWith('-c') ? token.slice(2) : token;
    const equals = setting.indexOf('=');
    if (equals <= 0) continue; // `-c`, flags and other words are skipped, as Neon does
    settings.push([setting.slice(0, equals), setting.slice(equals + 1)]);
  }
  return settings;
}

export function parseStartupParameters(parameters: ReadonlyMap<string, string>, protocolMinorVersion = 0): StartupParams {
  const options = parameters.get('options') ?? null;
  const params: StartupParams = {
    protocolMinorVersion,
    parameters,
    user: parameters.get('user') ?? null,
    database: parameters.get('database') ?? null,
    applicationName: parameters.get('application_name') ?? null,
    replication: parameters.get('replication') ?? null,
    options,
    tenantId: null,
    timelineId: null,
    protocol: { type: 'vanilla' },
    shard: null,
    availabilityZone: null,
    unrecognisedProtocolOptions: [...parameters.keys()].filter((name) => name.startsWith('_pq_.')),
  };
  let shardCount: number | null = null;
  let shardNumber: number | null = null;
  let shardStripeSize: number | null = null;
  for (const [key, value] of optionSettings(options === null ? [] : splitOptions(options))) {
    switch (key) {
      case 'tenant_id':
      case 'ztenantid': // legacy alias, still accepted by Neon
        params.tenantId = parseTenantId(value);
        break;
      case 'timeline_id':
      case 'ztimelineid':
        params.timelineId = parseTimelineId(value);
        break;
      case 'protocol':
        params.protocol = parseReplicationProtocol(value);
        break;
      case 'shard_count':
        shardCount = parseUnsigned(key, value, 0xff);
        break;
      case 'shard_number':
        shardNumber = parseUnsigned(key, value, 0xff);
        break;
      case 'shard_stripe_size':
        shardStripeSize = parseUnsigned(key, value, 0xffff_ffff);
        break;
      case 'availability_zone':
        params.availabilityZone = value;
        break;
      default:
        break; // other settings (e.g. statement_timeout) do not concern a safekeeper
    }
  }
  const anyShard = shardCount !== null || shardNumber !== null || shardStripeSize !== null;
  if (params.protocol.type === 'vanilla') {
    if (anyShard) throw new InvalidArgumentError('shard parameters given with the vanilla protocol');
  } else {
    if (shardCount === null || shardNumber === null || shardStripeSize === null) {
      throw new InvalidArgumentError('the interpreted protocol needs shard_count, shard_number and shard_stripe_size');
    }
    if (shardCount > 0 && shardNumber >= shardCount) throw new InvalidArgumentError(`shard_number ${shardNumber} not below shard_count ${shardCount}`);
    params.shard = { count: shardCount, number: shardNumber, stripeSize: shardStripeSize };
  }
  return params;
}

function parseUnsigned(key: string, value: string, max: number): number {
  const parsed = /^\d{1,10}$/.test(value) ? Number(value) : Number.NaN;
  if (!(parsed <= max)) throw new InvalidArgumentError(`${key} must be an integer in [0, ${max}]: ${JSON.stringify(value)}`);
  return parsed;
}

/** `{"type":"vanilla"}` or `{"type":"interpreted","args":{"format":F,"compression":C}}` (libs/utils/src/postgres_client.rs). */
export function parseReplicationProtocol(text: string): ReplicationProtocol {
  const bad = (why: string): InvalidArgumentError => new InvalidArgumentError(`bad protocol ${JSON.stringify(text)}: ${why}`);
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (error) {
    if (error instanceof SyntaxError) throw bad('not JSON');
    throw error;
  }
  if (!isRecord(value)) throw bad('not an object');
  if (value['type'] === 'vanilla') return { type: 'vanilla' };
  if (value['type'] !== 'interpreted') throw bad('type must be "vanilla" or "interpreted"');
  const args = value['args'];
  if (!isRecord(args)) throw bad('interpreted needs args');
  const format = args['format'];
  if (format !== 'protobuf' && format !== 'bincode') throw bad('format must be "protobuf" or "bincode"');
  const compression = args['compression'] ?? null;
  if (compression === null) return { type: 'interpreted', format, compression: null };
  const zstd = isRecord(compression) ? compression['zstd'] : undefined;
  const level = isRecord(zstd) ? zstd['level'] : undefined;
  if (typeof level !== 'number' || !Number.isInteger(level)) throw bad('compression must be null or {"zstd":{"level":N}}');
  return { type: 'interpreted', format, compression: { zstdLevel: level } };
}

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

/** walproposer recovery and peer safekeepers get flush_lsn from IDENTIFY_SYSTEM (reference §1.2, §2.3). */
export function isRecoveryClient(params: StartupParams): boolean {
  const name = params.applicationName;
  return name !== null && (name === 'wal_proposer_recovery' || name.startsWith('safekeeper'));
}
