/**
 * Helpers for tests of the coordinator's background work (backup, removal, partial backup, eviction,
 * failpoints) against a real `safekeeper run` process: HTTP calls (timeline status, checkpoint,
 * failpoints, metrics), synthetic WAL streamed by the test proposer, and what is on local disk and in
 * remote storage. Synthetic WAL uses 1 MiB segments so a few MiB cross several segment boundaries.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { readdir } from 'node:fs/promises';
import { join } from 'node:path';
import type { TimelinePersistentState } from '../../src/acceptor/state.js';
import { LocalFsBackend } from '../../src/remote/local_fs.js';
import { RemoteStorage } from '../../src/remote/remote_storage.js';
import { S3Backend } from '../../src/remote/s3.js';
import { loadControlFile } from '../../src/storage/control_file.js';
import { parseLsn, segmentFileName, segmentNumber, segmentStartLsn, type Lsn } from '../../src/wal/lsn.js';
import { spawnNode, testNodeArgs, type NodeProcess } from './node_process.js';
import { electAndStream, type Session } from './proposer_session.js';
import { S3RVER_CREDENTIALS } from './s3.js';
import { syntheticWal, walRange, type SyntheticWal } from './wal_source.js';

export const SEGMENT_BYTES = 1 << 20;
export const PG_VERSION = 150008;
export const SYSTEM_ID = 7_350_000_000_000_000_777n;
export const BASE_LSN = segmentStartLsn(1n, SEGMENT_BYTES);
/**
 * Flags for offload tests: eviction and deletion of offloaded WAL on, and timers short enough that a timeline
 * is evicted, its partial segment uploaded and its control file saved within a test's deadline.
 */
export const OFFLOAD_ARGS: readonly string[] = ['--enable-offload', '--delete-offloaded-wal', '--eviction-min-resident', '100ms', '--partial-backup-timeout', '200ms', '--control-file-save-interval', '200ms'];

export interface Ids {
  tenantId: string;
  timelineId: string;
}

export const newIds = (): Ids => ({ tenantId: randomBytes(16).toString('hex'), timelineId: randomBytes(16).toString('hex') });

export const s3Env = (): NodeJS.ProcessEnv => ({
  ...process.env,
  AWS_ACCESS_KEY_ID: S3RVER_CREDENTIALS.accessKeyId,
  AWS_SECRET_ACCESS_KEY: S3RVER_CREDENTIALS.secretAccessKey,
  AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED: 'true',
});

/** A node with a remote storage URL, fast control-file saves and failpoints on. */
export async function startNode(dataDir: string, remoteUrl: string, extra: readonly string[] = [], env?: NodeJS.ProcessEnv): Promise<NodeProcess> {
  return spawnNode(
    testNodeArgs(dataDir, ['--remote-storage', remoteUrl, '--testing-failpoints', '--no-sync', '--log-level', 'info', ...extra]),
    env !== undefined ? { env } : {},
  );
}

export async function http(node: NodeProcess, method: string, path: string, body?: unknown): Promise<{ status: number; json: unknown; bytes: Uint8Array }> {
  const response = await fetch(`${node.httpUrl}${path}`, {
    method,
    ...(body !== undefined ? { body: JSON.stringify(body), headers: { 'content-type': 'application/json' } } : {}),
  });
  const bytes = new Uint8Array(await response.arrayBuffer());
  const text = new TextDecoder().decode(bytes);
  let json: unknown = null;
  try {
    json = JSON.parse(text);
  } catch {
    json = text;
  }
  return { status: response.status, json, bytes };
}

export interface TimelineLsns {
  flushLsn: Lsn;
  commitLsn: Lsn;
  backupLsn: Lsn;
  raw: Record<string, unknown>;
}

export async function timelineLsns(node: NodeProcess, ids: Ids): Promise<TimelineLsns> {
  const { status, json } = await http(node, 'GET', `/v1/tenant/${ids.tenantId}/timeline/${ids.timelineId}`);
  assert.equal(status, 200, JSON.stringify(json));
  const raw = json as Record<string, string>;
  return { flushLsn: parseLsn(raw.flush_lsn ?? ''), commitLsn: parseLsn(raw.commit_lsn ?? ''), backupLsn: parseLsn(raw.backup_lsn ?? ''), raw };
}

export async function checkpoint(node: NodeProcess, ids: Ids): Promise<void> {
  const { status, json } = await http(node, 'POST', `/v1/tenant/${ids.tenantId}/timeline/${ids.timelineId}/checkpoint`, {});
  assert.equal(status, 200, JSON.stringify(json));
}

export async function setFailpoint(node: NodeProcess, name: string, actions: string): Promise<void> {
  const { status, json } = await http(node, 'PUT', '/v1/failpoints', [{ name, actions }]);
  assert.equal(status, 200, JSON.stringify(json));
}

export async function failpointHits(node: NodeProcess, name: string): Promise<number> {
  const { json } = await http(node, 'GET', '/v1/failpoints');
  return (json as { name: string; hits: number }[]).find((entry) => entry.name === name)?.hits ?? 0;
}

export async function metricValue(node: NodeProcess, name: string, labels = ''): Promise<number> {
  const text = new TextDecoder().decode((await http(node, 'GET', '/metrics')).bytes);
  const line = text.split('\n').find((candidate) => candidate.startsWith(`${name}${labels} `) || (labels === '' && candidate.startsWith(`${name} `)));
  return line === undefined ? NaN : Number(line.split(' ').at(-1));
}

/** Synthetic WAL of `totalBytes` from segment 1's start (the long page header first). */
export function makeWal(totalBytes: number, seed: number): SyntheticWal {
  return syntheticWal({ startLsn: BASE_LSN, segmentSizeBytes: SEGMENT_BYTES, pgVersion: PG_VERSION, systemId: SYSTEM_ID, totalBytes, seed });
}

/** The end of the first record of `wal` that ends at or after `lsn` (a valid place to stop streaming). */
export function recordEndAtOrAfter(wal: SyntheticWal, lsn: Lsn): Lsn {
  const record = wal.records.find((candidate) => candidate.endLsn >= lsn);
  assert.ok(record !== undefined, 'a record ends there');
  return record.endLsn;
}

/** Elects a proposer on `ids` and streams `wal`; then a heartbeat so commit_lsn reaches the end. */
export async function stream(node: NodeProcess, ids: Ids, wal: SyntheticWal, toLsn: Lsn = wal.endLsn): Promise<Session> {
  const session = await electAndStream({
    port: node.pgPort,
    ...ids,
    protoVersion: 3,
    pgVersion: PG_VERSION,
    systemId: SYSTEM_ID,
    walSegSizeBytes: SEGMENT_BYTES,
    source: wal,
    timelineStartLsn: wal.firstRecordLsn,
    toLsn,
  });
  await session.proposer.heartbeat(toLsn);
  return session;
}

/** Streams `wal` further on an elected session, from its current end to `toLsn`, then a heartbeat. */
export async function streamMore(session: Session, wal: SyntheticWal, fromLsn: Lsn, toLsn: Lsn): Promise<void> {
  await session.proposer.streamWal(walRange(wal, fromLsn, toLsn), fromLsn);
  await session.proposer.waitForFlush(toLsn);
  await session.proposer.heartbeat(toLsn);
}

export const timelineDir = (dataDir: string, ids: Ids): string => join(dataDir, ids.tenantId, ids.timelineId);

/** The timeline's control file as it is on disk now. */
export async function controlFile(dataDir: string, ids: Ids): Promise<TimelinePersistentState> {
  return loadControlFile(timelineDir(dataDir, ids));
}

/** Segment file names in the timeline dir, sorted. */
export async function localSegmentNames(dataDir: string, ids: Ids): Promise<string[]> {
  const names = await readdir(timelineDir(dataDir, ids)).catch(() => [] as string[]);
  return names.filter((name) => /^[0-9A-F]{24}(\.partial)?$/.test(name)).sort();
}

export const segmentName = (segno: bigint): string => segmentFileName(segno, SEGMENT_BYTES);
export const segnoOf = (lsn: Lsn): bigint => segmentNumber(lsn, SEGMENT_BYTES);

/** The bytes a whole segment of `wal` must hold. */
export function segmentBytes(wal: SyntheticWal, segno: bigint): Uint8Array {
  const start = Number(segmentStartLsn(segno, SEGMENT_BYTES) - wal.baseLsn);
  return wal.bytes.subarray(start, start + SEGMENT_BYTES);
}

export function localRemote(root: string): RemoteStorage {
  return new RemoteStorage(new LocalFsBackend(root));
}

export function s3Remote(endpoint: string, bucket: string, prefix: string): RemoteStorage {
  return new RemoteStorage(new S3Backend({ bucket, prefix, endpoint, region: 'us-east-1', credentials: { ...S3RVER_CREDENTIALS } }));
}

/** Object names (after `<tenant>/<timeline>/`) in remote storage. */
export async function remoteNames(remote: RemoteStorage, ids: Ids): Promise<string[]> {
  const prefix = `${ids.tenantId}/${ids.timelineId}/`;
  return (await remote.list(prefix, new AbortController().signal)).map((entry) => entry.key.slice(prefix.length));
}
