/**
 * The control file: a timeline's persistent state (`TimelinePersistentState`), versioned, checksummed and
 * replaced atomically, after Neon's `control_file.rs` but with our own body format:
 *
 *   0  u32 LE magic   CONTROL_FILE_MAGIC
 *   4  u32 LE version CONTROL_FILE_VERSION
 *   8  u32 LE body length N
 *  12  N bytes        UTF-8 JSON, snake_case names as in Neon's JSON dump; u64s are decimal strings,
 *                     LSNs "X/Y" strings, creation_ts an ISO 8601 string (control_file_json.ts)
 *  12+N u32 LE CRC-32C of bytes [0, 12+N)
 *
 * JSON rather than bincode so an operator can read the state with `tail -c +13`, and so fields can be
 * added later under a new version without a hand-written binary upgrade path.
 *
 * Invariants: the state is checked before it is written and after it is read (schema and the relations
 * in `controlFileProblem`), with the same function both ways, so every state we write reads back and every
 * state we read can be written again. `controlFileProblem` includes the bounds the wire and the HTTP API
 * apply (member sets, hosts, history length), the remote-key shape of partial segment names and the
 * eviction state's link to its uploaded partial segment: a file edited by hand or written by another tool
 * that breaks one is refused at load (the timeline is broken), instead of tripping an assertion later. A
 * body read must also fit once re-encoded in our own (indented) form, or the first save would not fit.
 * A save writes `safekeeper.control.partial`, fsyncs it, renames it over
 * `safekeeper.control` and fsyncs the directory, so after a crash at any instant the old or the new file
 * loads, never a mix. A bad file on load is a ControlFileCorruptError (XX001), never a partial state.
 * Threads: the async functions (fs/promises) are for the main and coordinator threads, which must not
 * block; the `*Sync` ones for worker threads. Abort: a save, once started, finishes its write first.
 */
import { crc32c } from '@node-rs/crc32';
import { open, rename } from 'node:fs/promises';
import { isDeepStrictEqual } from 'node:util';
import { MEMBER_HOST_BYTES_MAX, MEMBERS_PER_SET_MAX, memberHostProblem, type TimelinePersistentState } from '../acceptor/state.js';
import { TERM_HISTORY_ENTRIES_MAX } from '../acceptor/term_history.js';
import { SafekeeperError } from '../errors.js';
// The one predicate RemoteStorage asserts on. remote/ already imports storage/ (layout, file_read, segment_read)
// but remote_storage.ts imports nothing from storage/, so this adds no module cycle, and main loads it anyway
// (coordinator_client → rpc_port). Checking with the same function is what keeps load and use in agreement.
import { isValidKey, objectKey } from '../remote/remote_storage.js';
import { AssertionError, assert } from '../sync/assert.js';
import { isValidSegmentSize } from '../wal/lsn.js';
import { controlFileJsonSchema, fromControlFileJson, toControlFileJson } from './control_file_json.js';
import { controlFilePartialPath, controlFilePath, fsyncDirectory, storageError } from './layout.js';

/** "SAFE CODE": distinct from Neon's 0xCAFECEEF, so neither implementation misreads the other's file. */
export const CONTROL_FILE_MAGIC = 0x5afe_c0de;
export const CONTROL_FILE_VERSION = 1;
const HEADER_BYTES = 12;
const CHECKSUM_BYTES = 4;
/**
 * A timeline's JSON is a few KiB (a handful of members and partial-segment entries). 1 MiB is far above
 * any legitimate body, and bounds what a corrupt length field or a stray large file can make us read.
 */
export const CONTROL_FILE_BODY_BYTES_MAX = 1 << 20;
/**
 * The most body bytes one term_history entry takes: the largest u64 term (20 digits) and LSN
 * ("FFFFFFFF/FFFFFFFF"), at the entry's indent, with its braces and comma.
 */
export const TERM_HISTORY_ENTRY_BODY_BYTES_MAX = 92;
/**
 * The most body bytes one mconf member takes: the largest id and port, the JSON around them, and a host of
 * the largest size with every byte escaped (`\"` or `\\`: hosts have no control characters, state.ts).
 */
const MEMBER_BODY_BYTES_MAX = 2 * MEMBER_HOST_BYTES_MAX + 120;
// The acceptor and the HTTP API refuse longer histories and larger member sets before they change anything, so
// a persist never meets a body too big.
assert(
  TERM_HISTORY_ENTRIES_MAX * TERM_HISTORY_ENTRY_BODY_BYTES_MAX + 2 * MEMBERS_PER_SET_MAX * MEMBER_BODY_BYTES_MAX <= CONTROL_FILE_BODY_BYTES_MAX - 64 * 1024,
  'a full term history and two full member sets leave 64 KiB of the control file body for the other fields',
);

export type ControlFileCorruptReason =
  | 'too_short'
  | 'too_long'
  | 'bad_magic'
  | 'unsupported_version'
  | 'length_mismatch'
  | 'checksum_mismatch'
  | 'bad_json'
  | 'schema'
  | 'invariant';

/** A control file that cannot be trusted. The timeline does not load until an operator repairs it. */
export class ControlFileCorruptError extends SafekeeperError {
  override readonly name = 'ControlFileCorruptError';
  readonly code = 'SK_CONTROL_FILE_CORRUPT';
  readonly sqlState = 'XX001'; // data_corrupted
  constructor(readonly reason: ControlFileCorruptReason, detail: string, options?: ErrorOptions) {
    super(`corrupt control file (${reason}): ${detail}`, options);
  }
}

export interface SaveOptions {
  /** Skip fsyncs (tests and benchmarks only): a crash may then lose or tear the file. */
  noSync: boolean;
}

const checksum = (bytes: Uint8Array, length: number): number =>
  crc32c(Buffer.from(bytes.buffer, bytes.byteOffset, length)) >>> 0;

/**
 * The first broken invariant of `state`, or null. These relations and bounds hold for every state the
 * acceptor and the timeline manager produce (see acceptor/state.ts and the protocol reference §4.5), so a
 * violation means a bug (on write) or a damaged or foreign file (on read). Later code asserts each of them.
 */
export function controlFileProblem(state: TimelinePersistentState): string | null {
  return historyProblem(state) ?? lsnProblem(state) ?? membershipProblem(state) ?? partialBackupProblem(state);
}

function historyProblem(state: TimelinePersistentState): string | null {
  const history = state.acceptorState.termHistory;
  // The acceptor refuses a longer history from a proposer (acceptor_election.ts); the body bound assumes it.
  if (history.length > TERM_HISTORY_ENTRIES_MAX) return `term_history has ${history.length} entries, more than ${TERM_HISTORY_ENTRIES_MAX}`;
  for (let index = 1; index < history.length; index++) {
    const previous = history[index - 1]!;
    const entry = history[index]!;
    if (entry.term <= previous.term) return `term_history terms not ascending at entry ${index}`;
    if (entry.lsn < previous.lsn) return `term_history LSNs decrease at entry ${index}`;
  }
  const last = history[history.length - 1];
  if (last !== undefined && last.term > state.acceptorState.term) return 'term_history has a term above acceptor_state.term';
  return null;
}

function lsnProblem(state: TimelinePersistentState): string | null {
  if (state.timelineStartLsn > state.localStartLsn) return 'timeline_start_lsn above local_start_lsn';
  if (state.timelineStartLsn > state.commitLsn) return 'timeline_start_lsn above commit_lsn';
  if (!isValidSegmentSize(state.server.walSegSizeBytes)) return 'wal_seg_size is not a power of two in [1 MiB, 1 GiB]';
  if (state.server.pgVersion <= 0) return 'pg_version is 0';
  return null;
}

/** The bounds the wire (messages_v3.ts) and the HTTP API apply: the greeting encoder asserts on a bad host. */
function membershipProblem(state: TimelinePersistentState): string | null {
  for (const [setName, members] of [['members', state.mconf.members], ['new_members', state.mconf.newMembers ?? []]] as const) {
    if (members.length > MEMBERS_PER_SET_MAX) return `mconf.${setName} has ${members.length} members, more than ${MEMBERS_PER_SET_MAX}`;
    if (new Set(members.map((member) => member.id)).size !== members.length) return 'duplicate member id in mconf';
    for (const member of members) {
      const hostProblem = memberHostProblem(member.host);
      if (hostProblem !== null) return `mconf.${setName}: the host of member ${member.id} ${hostProblem}`;
    }
  }
  return null;
}

/**
 * Partial segment names become remote keys (RemoteStorage asserts their shape), at most one record is
 * Uploaded (partial_backup.ts marks every other one Deleting as it marks one Uploaded), and an offloaded
 * timeline's uploaded partial segment ends at the flush_lsn it was offloaded at (eviction.ts asserts it).
 */
function partialBackupProblem(state: TimelinePersistentState): string | null {
  let uploaded: TimelinePersistentState['partialBackup']['segments'][number] | null = null;
  for (const [index, segment] of state.partialBackup.segments.entries()) {
    // The name may be anything a file held: quote a bounded prefix of it.
    if (!isValidKey(objectKey(state.tenantId, state.timelineId, segment.name))) return `partial segment ${index} has a name that is not a remote key: ${JSON.stringify(segment.name.slice(0, 80))}`;
    if (segment.commitLsn > segment.flushLsn) return `partial segment ${segment.name} has commit_lsn above flush_lsn`;
    if (segment.status !== 'Uploaded') continue;
    if (uploaded !== null) return 'more than one partial segment is Uploaded';
    uploaded = segment;
  }
  if (state.evictionState.kind === 'Offloaded' && (uploaded === null || uploaded.flushLsn !== state.evictionState.flushLsn)) {
    return 'eviction_state is Offloaded without an Uploaded partial segment at its flush_lsn';
  }
  return null;
}

/** The JSON body we write: indented for an operator's eyes, so larger than a compact body of the same state. */
const encodeBody = (state: TimelinePersistentState): Buffer => Buffer.from(JSON.stringify(toControlFileJson(state), null, 2) + '\n', 'utf8');

/** Encodes `state` into a control-file image. A state that breaks an invariant is a bug: AssertionError. */
export function encodeControlFile(state: TimelinePersistentState): Uint8Array {
  const problem = controlFileProblem(state);
  if (problem !== null) throw new AssertionError(`refusing to encode a bad control file: ${problem}`);
  const body = encodeBody(state);
  assert(body.length <= CONTROL_FILE_BODY_BYTES_MAX, 'control file body within its bound');
  const bytes = new Uint8Array(HEADER_BYTES + body.length + CHECKSUM_BYTES);
  const view = new DataView(bytes.buffer);
  view.setUint32(0, CONTROL_FILE_MAGIC, true);
  view.setUint32(4, CONTROL_FILE_VERSION, true);
  view.setUint32(8, body.length, true);
  bytes.set(body, HEADER_BYTES);
  view.setUint32(HEADER_BYTES + body.length, checksum(bytes, HEADER_BYTES + body.length), true);
  return bytes;
}

const corruptError = (source: string, reason: ControlFileCorruptReason, detail: string, cause?: unknown): ControlFileCorruptError =>
  new ControlFileCorruptError(reason, `${source}: ${detail}`, cause === undefined ? undefined : { cause });

/**
 * Decodes and validates a control-file image. `source` (a path) goes into error messages. Besides the
 * framing, the schema and `controlFileProblem`, the state must fit the body bound once re-encoded as we
 * write it: a compact body (another tool's, or edited by hand) of up to the bound can grow past it when
 * indented, and the first persist would then assert.
 */
export function decodeControlFile(bytes: Uint8Array, source = 'control file'): TimelinePersistentState {
  const state = decodeImage(bytes, source);
  const reencodedBytes = encodeBody(state).length;
  if (reencodedBytes > CONTROL_FILE_BODY_BYTES_MAX) {
    throw corruptError(source, 'invariant', `the state takes ${reencodedBytes} bytes as we write it, more than the ${CONTROL_FILE_BODY_BYTES_MAX} a control file holds`);
  }
  return state;
}

/** `decodeControlFile` without the re-encoded size check (for an image `encodeControlFile` just made). */
function decodeImage(bytes: Uint8Array, source: string): TimelinePersistentState {
  const corrupt = (reason: ControlFileCorruptReason, detail: string, cause?: unknown): ControlFileCorruptError => corruptError(source, reason, detail, cause);
  if (bytes.length < HEADER_BYTES + CHECKSUM_BYTES) throw corrupt('too_short', `${bytes.length} bytes`);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const magic = view.getUint32(0, true);
  if (magic !== CONTROL_FILE_MAGIC) throw corrupt('bad_magic', `magic 0x${magic.toString(16)}`);
  const version = view.getUint32(4, true);
  if (version !== CONTROL_FILE_VERSION) throw corrupt('unsupported_version', `version ${version}`);
  const bodyLength = view.getUint32(8, true);
  if (bodyLength > CONTROL_FILE_BODY_BYTES_MAX || bytes.length !== HEADER_BYTES + bodyLength + CHECKSUM_BYTES) {
    throw corrupt('length_mismatch', `body length ${bodyLength} in a file of ${bytes.length} bytes`);
  }
  const expected = view.getUint32(HEADER_BYTES + bodyLength, true);
  const actual = checksum(bytes, HEADER_BYTES + bodyLength);
  if (expected !== actual) throw corrupt('checksum_mismatch', `stored 0x${expected.toString(16)}, computed 0x${actual.toString(16)}`);
  let json: unknown;
  try {
    json = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(bytes.subarray(HEADER_BYTES, HEADER_BYTES + bodyLength)));
  } catch (error) {
    throw corrupt('bad_json', 'body is not UTF-8 JSON', error);
  }
  const parsed = controlFileJsonSchema.safeParse(json);
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    throw corrupt('schema', issue === undefined ? 'invalid' : `${issue.path.join('.') || '(root)'}: ${issue.message}`);
  }
  const state = fromControlFileJson(parsed.data);
  const problem = controlFileProblem(state);
  if (problem !== null) throw corrupt('invariant', problem);
  return state;
}

/**
 * Encodes `state` and proves the image reads back as the same state, before anything touches the disk
 * ("check the control file before writing it"). A mismatch is a codec bug.
 */
export function encodeCheckedControlFile(state: TimelinePersistentState): Uint8Array {
  const bytes = encodeControlFile(state);
  let decoded: TimelinePersistentState;
  try {
    // Its body is the re-encoded form whose size encodeControlFile asserted: no need to encode it again.
    decoded = decodeImage(bytes, 'control file being written');
  } catch (error) {
    throw new AssertionError(`control file does not read back: ${(error as Error).message}`);
  }
  assert(isDeepStrictEqual(decoded, state), 'control file reads back as the state that was encoded');
  return bytes;
}

/** Durably replaces `<dir>/safekeeper.control` with `state`. Async: never blocks the calling thread. */
export async function saveControlFile(dir: string, state: TimelinePersistentState, options: SaveOptions): Promise<void> {
  const bytes = encodeCheckedControlFile(state);
  const tempPath = controlFilePartialPath(dir);
  const path = controlFilePath(dir);
  let operation = 'open';
  try {
    const handle = await open(tempPath, 'w'); // truncates a .partial left by a crash
    try {
      operation = 'write';
      await handle.writeFile(bytes);
      operation = 'fsync';
      if (!options.noSync) await handle.sync();
    } finally {
      await handle.close();
    }
  } catch (error) {
    throw storageError(error, operation, tempPath);
  }
  try {
    await rename(tempPath, path);
  } catch (error) {
    throw storageError(error, 'rename', tempPath);
  }
  if (!options.noSync) await fsyncDirectory(dir);
}

/** Reads and validates `<dir>/safekeeper.control`. NotFoundError if absent; a leftover `.partial` is ignored. */
export async function loadControlFile(dir: string): Promise<TimelinePersistentState> {
  const path = controlFilePath(dir);
  let bytes: Uint8Array;
  try {
    const handle = await open(path, 'r');
    try {
      const { size } = await handle.stat();
      if (size > HEADER_BYTES + CONTROL_FILE_BODY_BYTES_MAX + CHECKSUM_BYTES) throw new ControlFileCorruptError('too_long', `${path}: ${size} bytes`);
      bytes = new Uint8Array(size);
      const { bytesRead } = await handle.read(bytes, 0, size, 0);
      if (bytesRead !== size) throw new ControlFileCorruptError('too_short', `${path}: read ${bytesRead} of ${size} bytes`);
    } finally {
      await handle.close();
    }
  } catch (error) {
    throw storageError(error, 'read', path);
  }
  return decodeControlFile(bytes, path);
}
