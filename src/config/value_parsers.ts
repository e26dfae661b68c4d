/**
 * The parsers and formatters of configuration values written as text: durations ("300s"), byte sizes
 * ("16MiB"), HOST:PORT addresses, remote storage URLs and the broker. Each returns a `Parsed` result whose
 * failure message says what was expected, and never throws on bad input.
 * Why separate from `schema.ts`: they are plain functions with no schema library, shared by the key table
 * (which wraps them as zod schemas) and by the `safekeeper propose` flags; `schema.ts` stays the list of
 * keys. The value formats are documented in its header.
 * Pure; any thread.
 */
import { isIPv6 } from 'node:net';
import { resolve } from 'node:path';

export type HostPort = Readonly<{ host: string; port: number }>;
export type RemoteStorageConfig =
  | Readonly<{ kind: 'file'; url: string; path: string }>
  | Readonly<{ kind: 's3'; url: string; bucket: string; prefix: string; endpoint: string | null; region: string | null }>;
export type BrokerConfig = Readonly<{ kind: 'embedded' }> | Readonly<{ kind: 'etcd'; endpoints: readonly HostPort[] }>;

/** A parser's result: the value, or a message saying what was expected. */
export type Parsed<T> = { ok: true; value: T } | { ok: false; message: string };
export const ok = <T>(value: T): Parsed<T> => ({ ok: true, value });
const fail = (message: string): Parsed<never> => ({ ok: false, message });

/** "300s", "500ms", "2h30m" → milliseconds. */
export function parseDurationMs(text: string): Parsed<number> {
  if (/^\d+$/.test(text)) return fail(`a duration needs a unit: write "${text}s" or "${text}ms" (units: ms, s, m, h)`);
  if (!/^(\d+(ms|s|m|h))+$/.test(text)) return fail(`not a duration: ${JSON.stringify(text)} (expected e.g. "500ms", "300s", "15m", "2h30m")`);
  const unitMs = { ms: 1, s: 1000, m: 60_000, h: 3_600_000 } as const;
  let totalMs = 0;
  for (const part of text.matchAll(/(\d+)(ms|s|m|h)/g)) totalMs += Number(part[1]) * unitMs[part[2] as keyof typeof unitMs];
  if (!Number.isSafeInteger(totalMs)) return fail(`duration too long: ${text}`);
  return ok(totalMs);
}

const BYTE_UNITS = { B: 1, KiB: 1024, MiB: 1024 ** 2, GiB: 1024 ** 3 } as const;

/** 4096, "4096", "512KiB", "16MiB", "1GiB" → bytes. Decimal units (MB, M, k) are refused. */
export function parseBytes(value: string | number): Parsed<number> {
  if (typeof value === 'number') return Number.isSafeInteger(value) && value >= 0 ? ok(value) : fail('expected a whole number of bytes');
  const match = /^(\d+)\s*([A-Za-z]*)$/.exec(value);
  if (match === null) return fail(`not a byte size: ${JSON.stringify(value)} (expected e.g. "4096", "512KiB", "16MiB")`);
  const unit = match[2] === '' ? 'B' : (match[2] as string);
  if (!(unit in BYTE_UNITS)) return fail(`unknown byte unit "${unit}": use B, KiB, MiB or GiB (powers of 1024; decimal units such as MB are ambiguous)`);
  const bytes = Number(match[1]) * BYTE_UNITS[unit as keyof typeof BYTE_UNITS];
  return Number.isSafeInteger(bytes) ? ok(bytes) : fail(`byte size too large: ${value}`);
}

/** Prints bytes the way a user would write them ("16MiB" when exact, else the plain number). */
export function formatBytes(bytes: number): string {
  for (const unit of ['GiB', 'MiB', 'KiB'] as const) {
    if (bytes >= BYTE_UNITS[unit] && bytes % BYTE_UNITS[unit] === 0) return `${bytes / BYTE_UNITS[unit]}${unit}`;
  }
  return String(bytes);
}

/** "host:port" or "[v6]:port" → { host, port }. The host is kept without brackets. */
export function parseHostPort(text: string, portMin: 0 | 1): Parsed<HostPort> {
  const match = /^(?:\[([0-9A-Fa-f:.]+)\]|([A-Za-z0-9.-]+)):(\d{1,5})$/.exec(text);
  const example = 'expected HOST:PORT, e.g. "127.0.0.1:5454" or "[::1]:5454"';
  if (match === null) return fail(`not an address: ${JSON.stringify(text)} (${example})`);
  const host = match[1] ?? match[2] ?? '';
  if (match[1] !== undefined && !isIPv6(host)) return fail(`not an IPv6 address: ${JSON.stringify(host)}`);
  const port = Number(match[3]);
  if (port < portMin || port > 65535) return fail(`port ${port} is out of range ${portMin}..65535`);
  return ok({ host, port });
}

export const formatHostPort = (address: HostPort): string =>
  isIPv6(address.host) ? `[${address.host}]:${address.port}` : `${address.host}:${address.port}`;

/** `file:///abs/path` or `s3://bucket/prefix?endpoint=URL&region=R`. `{data_dir}` must already be replaced. */
export function parseRemoteStorage(url: string): Parsed<RemoteStorageConfig> {
  if (url.startsWith('file://')) {
    const path = url.slice('file://'.length);
    if (!path.startsWith('/')) return fail(`file:// needs an absolute path, e.g. "file:///var/lib/safekeeper/remote" or "file://{data_dir}/remote"`);
    return ok({ kind: 'file', url, path: resolve(path) });
  }
  if (!url.startsWith('s3://')) return fail(`unsupported remote storage ${JSON.stringify(url)}: use file:///PATH or s3://BUCKET/PREFIX`);
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch {
    return fail(`not a URL: ${JSON.stringify(url)}`);
  }
  if (!/^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$/.test(parsed.hostname)) return fail(`not an S3 bucket name: ${JSON.stringify(parsed.hostname)}`);
  for (const name of parsed.searchParams.keys()) {
    if (name !== 'endpoint' && name !== 'region') return fail(`unknown S3 option "${name}" (allowed: endpoint, region)`);
  }
  const prefix = decodePrefix(parsed.pathname);
  if (prefix === null) return fail(`bad percent-encoding in the S3 prefix: ${JSON.stringify(parsed.pathname)} (write a literal % as %25)`);
  const endpoint = parsed.searchParams.get('endpoint');
  if (endpoint !== null && !isHttpUrl(endpoint)) return fail(`S3 endpoint is not an http:// or https:// URL: ${JSON.stringify(endpoint)}`);
  const region = parsed.searchParams.get('region');
  if (region === '') return fail('S3 region is empty: give region=NAME or leave the option out');
  return ok({ kind: 's3', url, bucket: parsed.hostname, prefix, endpoint, region });
}

/** An absolute http(s) URL with a host, as the S3 client needs for an endpoint. */
function isHttpUrl(text: string): boolean {
  try {
    const url = new URL(text);
    return (url.protocol === 'http:' || url.protocol === 'https:') && url.hostname !== '';
  } catch {
    return false;
  }
}

/**
 * The URL path without its leading and trailing slashes, percent-decoded; null for a malformed escape such
 * as a lone `%` (decodeURIComponent throws URIError). Slashes are trimmed by index: `/\/+$/` is quadratic
 * in a long run of slashes that is not at the end.
 */
function decodePrefix(pathname: string): string | null {
  let decoded: string;
  try {
    decoded = decodeURIComponent(pathname);
  } catch (error) {
    if (error instanceof URIError) return null;
    throw error;
  }
  let start = 0;
  let end = decoded.length;
  while (start < end && decoded[start] === '/') start += 1;
  while (end > start && decoded[end - 1] === '/') end -= 1;
  return decoded.slice(start, end);
}

export function parseBroker(text: string): Parsed<BrokerConfig> {
  if (text === 'embedded') return ok({ kind: 'embedded' });
  if (!text.startsWith('etcd://')) return fail(`expected "embedded" or "etcd://HOST:PORT[,HOST:PORT...]", got ${JSON.stringify(text)}`);
  const endpoints: HostPort[] = [];
  for (const part of text.slice('etcd://'.length).split(',')) {
    const endpoint = parseHostPort(part, 1);
    if (!endpoint.ok) return endpoint;
    endpoints.push(endpoint.value);
  }
  return ok({ kind: 'etcd', endpoints });
}
