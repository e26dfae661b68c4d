import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm, writeFile, readdir } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { crc32c } from '@node-rs/crc32';
import {
  MEMBER_HOST_BYTES_MAX,
  MEMBERS_PER_SET_MAX,
  newTimelineState,
  parseTenantId,
  parseTimelineId,
  type SafekeeperMember,
  type TimelinePersistentState,
} from '../../src/acceptor/state.js';
import { TERM_HISTORY_ENTRIES_MAX } from '../../src/acceptor/term_history.js';
import { NotFoundError } from '../../src/errors.js';
import {
  CONTROL_FILE_BODY_BYTES_MAX,
  CONTROL_FILE_MAGIC,
  ControlFileCorruptError,
  decodeControlFile,
  encodeCheckedControlFile,
  encodeControlFile,
  loadControlFile,
  saveControlFile,
} from '../../src/storage/control_file.js';
import { toControlFileJson } from '../../src/storage/control_file_json.js';
import { CONTROL_FILE_NAME, CONTROL_FILE_PARTIAL_NAME } from '../../src/storage/layout.js';
import { AssertionError } from '../../src/sync/assert.js';

const TENANT = parseTenantId('0123456789abcdef0123456789abcdef');
const TIMELINE = parseTimelineId('fedcba9876543210fedcba9876543210');

/** A state with every field set to something other than its default. */
function fullState(): TimelinePersistentState {
  return {
    tenantId: TENANT,
    timelineId: TIMELINE,
    mconf: {
      generation: 7,
      members: [
        { id: 1n, host: 'sk-1.local', pgPort: 5454 },
        { id: 18_446_744_073_709_551_615n, host: 'sk-2.local', pgPort: 65_535 },
      ],
      newMembers: [{ id: 3n, host: 'sk-3.local', pgPort: 6000 }],
    },
    acceptorState: {
      term: 12n,
      termHistory: [
        { term: 2n, lsn: 0x1_6b3_7f8n },
        { term: 5n, lsn: 0x2_0000_0000n },
        { term: 12n, lsn: 0x2_0000_0100n },
      ],
    },
    server: { pgVersion: 150_008, systemId: 7_300_000_000_000_000_123n, walSegSizeBytes: 16 * 1024 * 1024 },
    timelineStartLsn: 0x1_6b3_7f8n,
    localStartLsn: 0x1_6b3_7f8n,
    commitLsn: 0x2_0000_0080n,
    backupLsn: 0x2_0000_0000n,
    peerHorizonLsn: 0x1_ff00_0000n,
    remoteConsistentLsn: 0x1_8000_0000n,
    partialBackup: {
      segments: [
        { status: 'Uploaded', name: '000000010000000200000000_5_0000000200000000_0000000200000080_sk1.partial', commitLsn: 0x2_0000_0000n, flushLsn: 0x2_0000_0080n, term: 5n },
        { status: 'InProgress', name: 'seg-b', commitLsn: 0x2_0000_0080n, flushLsn: 0x2_0000_0100n, term: 12n },
        { status: 'Deleting', name: 'seg-c', commitLsn: 1n, flushLsn: 1n, term: 1n },
      ],
    },
    evictionState: { kind: 'Offloaded', flushLsn: 0x2_0000_0080n }, // where the Uploaded partial segment ends
    creationTimeMs: 1_774_000_000_123,
  };
}

const U64_MAX = 0xffff_ffff_ffff_ffffn;

/** `count` members with distinct ids and `host` (repeated to MEMBER_HOST_BYTES_MAX when one character). */
function members(count: number, host: string, fromId = 0): SafekeeperMember[] {
  const name = host.length === 1 ? host.repeat(MEMBER_HOST_BYTES_MAX) : host;
  return Array.from({ length: count }, (_, index) => ({ id: U64_MAX - BigInt(fromId + index), host: name, pgPort: 65_535 }));
}

/** A valid history of `entries` entries whose every term and LSN takes the most JSON characters. */
function longHistory(entries: number): TimelinePersistentState['acceptorState']['termHistory'] {
  return Array.from({ length: entries }, (_, index) => ({ term: U64_MAX - BigInt(entries - 1 - index), lsn: 0xffff_ffff_ff00_0028n + 8n * BigInt(index) }));
}

/** Re-frames a JSON body as a control file with a valid header and checksum. */
function frame(body: unknown): Uint8Array {
  const json = Buffer.from(typeof body === 'string' ? body : JSON.stringify(body));
  const bytes = Buffer.alloc(12 + json.length + 4);
  bytes.writeUInt32LE(CONTROL_FILE_MAGIC, 0);
  bytes.writeUInt32LE(1, 4);
  bytes.writeUInt32LE(json.length, 8);
  json.copy(bytes, 12);
  bytes.writeUInt32LE(crc32c(bytes.subarray(0, 12 + json.length)) >>> 0, 12 + json.length);
  return new Uint8Array(bytes);
}

const bodyOf = (bytes: Uint8Array): Record<string, unknown> =>
  JSON.parse(Buffer.from(bytes.subarray(12, bytes.length - 4)).toString('utf8')) as Record<string, unknown>;

function assertCorrupt(bytes: Uint8Array, reason: string): void {
  assert.throws(
    () => decodeControlFile(bytes),
    (error: unknown) => error instanceof ControlFileCorruptError && error.reason === reason && error.code === 'SK_CONTROL_FILE_CORRUPT' && error.sqlState === 'XX001',
  );
}

describe('tenant and timeline ids', () => {
  test('take 32 hex digits of either case and return them in lower case; refuse anything else', () => {
    assert.equal(parseTenantId('0123456789ABCDEF0123456789abcdef'), '0123456789abcdef0123456789abcdef');
    assert.equal(parseTimelineId('FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF'), 'ffffffffffffffffffffffffffffffff');
    for (const bad of ['', '0123', '0123456789abcdef0123456789abcdeg', '0123456789abcdef0123456789abcdef0', ' 0123456789abcdef0123456789abcdef']) {
      assert.throws(() => parseTenantId(bad), /not a tenant id \(32 hex chars\)/);
      assert.throws(() => parseTimelineId(bad), /not a timeline id \(32 hex chars\)/);
    }
  });
});

describe('control file codec', () => {
  test('round-trips every field, including Offloaded eviction and partial segments', () => {
    const state = fullState();
    assert.deepEqual(decodeControlFile(encodeControlFile(state)), state);
  });

  test('round-trips a fresh timeline state (Present, empty lists, null new_members)', () => {
    const state = newTimelineState({
      tenantId: TENANT,
      timelineId: TIMELINE,
      server: { pgVersion: 160_002, systemId: 0n, walSegSizeBytes: 1024 * 1024 },
      startLsn: 0n,
      commitLsn: 0n,
      nowMs: 0,
    });
    assert.deepEqual(decodeControlFile(encodeControlFile(state)), state);
  });

  test('writes readable JSON with Neon dump names, decimal u64s and X/Y LSNs', () => {
    const body = bodyOf(encodeControlFile(fullState()));
    assert.equal(body['commit_lsn'], '2/80');
    assert.equal(body['timeline_start_lsn'], '0/16B37F8');
    assert.deepEqual(body['eviction_state'], { Offloaded: '2/80' });
    assert.deepEqual((body['acceptor_state'] as { term: unknown }).term, '12');
    assert.deepEqual((body['server'] as Record<string, unknown>)['system_id'], '7300000000000000123');
    assert.deepEqual((body['mconf'] as { members: unknown[] }).members[1], { id: '18446744073709551615', host: 'sk-2.local', pg_port: 65535 });
    assert.equal(body['creation_ts'], new Date(1_774_000_000_123).toISOString());
    const present = bodyOf(encodeControlFile({ ...fullState(), evictionState: { kind: 'Present' } }));
    assert.equal(present['eviction_state'], 'Present');
  });

  test('a flipped bit anywhere makes the file corrupt', () => {
    const good = encodeControlFile(fullState());
    for (let index = 0; index < good.length; index++) {
      const bad = good.slice();
      bad[index] = bad[index]! ^ 0x10;
      assert.throws(() => decodeControlFile(bad), ControlFileCorruptError, `byte ${index}`);
    }
  });

  test('rejects bad magic, unknown version, length mismatch and a short file', () => {
    const good = encodeControlFile(fullState());
    const view = (bytes: Uint8Array): DataView => new DataView(bytes.buffer);
    const badMagic = good.slice();
    view(badMagic).setUint32(0, 0xcafeceef, true);
    assertCorrupt(badMagic, 'bad_magic');
    const badVersion = good.slice();
    view(badVersion).setUint32(4, 2, true);
    assertCorrupt(badVersion, 'unsupported_version');
    const badLength = good.slice();
    view(badLength).setUint32(8, good.length, true);
    assertCorrupt(badLength, 'length_mismatch');
    assertCorrupt(good.subarray(0, good.length - 1), 'length_mismatch');
    assertCorrupt(new Uint8Array([...good, 0]), 'length_mismatch');
    assertCorrupt(good.subarray(0, 10), 'too_short');
    const badCrc = good.slice();
    badCrc[good.length - 1] = badCrc[good.length - 1]! ^ 1;
    assertCorrupt(badCrc, 'checksum_mismatch');
  });

  test('rejects a body that is not JSON', () => {
    assertCorrupt(frame('{"tenant_id":'), 'bad_json');
    assertCorrupt(frame(Buffer.from([0xff, 0xfe]).toString('latin1')), 'bad_json');
  });

  test('rejects schema violations with a checksum that matches', () => {
    const base = bodyOf(encodeControlFile(fullState()));
    const cases: Array<[string, (body: Record<string, unknown>) => void]> = [
      ['missing field', (b) => delete b['commit_lsn']],
      ['unknown field', (b) => (b['proposer_uuid'] = 'x')],
      ['LSN as a number', (b) => (b['commit_lsn'] = 123)],
      ['LSN without slash', (b) => (b['commit_lsn'] = '123')],
      ['term as a number', (b) => ((b['acceptor_state'] as Record<string, unknown>)['term'] = 12)],
      ['negative term', (b) => ((b['acceptor_state'] as Record<string, unknown>)['term'] = '-1')],
      ['u64 overflow', (b) => ((b['server'] as Record<string, unknown>)['system_id'] = '18446744073709551616')],
      ['leading zero u64', (b) => ((b['server'] as Record<string, unknown>)['system_id'] = '0123')],
      ['bad tenant id', (b) => (b['tenant_id'] = 'ABCDEF')],
      ['bad eviction state', (b) => (b['eviction_state'] = 'Evicted')],
      ['bad partial status', (b) => (((b['partial_backup'] as { segments: Array<Record<string, unknown>> }).segments[0]!)['status'] = 'Done')],
      ['port out of range', (b) => (((b['mconf'] as { members: Array<Record<string, unknown>> }).members[0]!)['pg_port'] = 70_000)],
      ['fractional generation', (b) => ((b['mconf'] as Record<string, unknown>)['generation'] = 1.5)],
      ['bad timestamp', (b) => (b['creation_ts'] = 'yesterday')],
      ['body is an array', (b) => Object.keys(b).forEach((key) => delete b[key])],
    ];
    for (const [name, mutate] of cases) {
      const body = structuredClone(base);
      mutate(body);
      assert.throws(() => decodeControlFile(frame(name === 'body is an array' ? [] : body)), (e: unknown) => e instanceof ControlFileCorruptError && e.reason === 'schema', name);
    }
  });

  test('rejects broken invariants on read, and refuses to encode them', () => {
    const broken: Array<[string, (s: TimelinePersistentState) => void]> = [
      ['terms not ascending', (s) => (s.acceptorState.termHistory[1]!.term = 2n)],
      ['LSNs decreasing', (s) => (s.acceptorState.termHistory[1]!.lsn = 0n)],
      ['history term above current term', (s) => (s.acceptorState.term = 11n)],
      ['timeline start above local start', (s) => (s.localStartLsn = 0n)],
      ['timeline start above commit', (s) => (s.commitLsn = 0n)],
      ['segment size not a power of two', (s) => (s.server.walSegSizeBytes = 3 * 1024 * 1024)],
      ['pg_version 0', (s) => (s.server.pgVersion = 0)],
      ['partial commit above flush', (s) => (s.partialBackup.segments[0]!.commitLsn = 0x3_0000_0000n)],
      ['duplicate member', (s) => (s.mconf.members[1]!.id = 1n)],
      // The bounds the wire and the HTTP API apply, and the facts later code asserts.
      ['NUL in a member host', (s) => (s.mconf.members[0]!.host = 'x\u0000y')],
      ['control character in a new member host', (s) => (s.mconf.newMembers![0]!.host = 'x\ny')],
      ['member host too long', (s) => (s.mconf.members[0]!.host = 'h'.repeat(MEMBER_HOST_BYTES_MAX + 1))],
      ['too many members', (s) => (s.mconf.members = members(MEMBERS_PER_SET_MAX + 1, 'h'))],
      ['too many new members', (s) => (s.mconf.newMembers = members(MEMBERS_PER_SET_MAX + 1, 'h'))],
      ['history too long', (s) => ((s.acceptorState.termHistory = longHistory(TERM_HISTORY_ENTRIES_MAX + 1)), (s.acceptorState.term = U64_MAX))],
      ['partial name with a space', (s) => (s.partialBackup.segments[2]!.name = 'a b')],
      ['partial name leaving the timeline', (s) => (s.partialBackup.segments[2]!.name = '../x')],
      ['partial name with an empty part', (s) => (s.partialBackup.segments[2]!.name = 'x//y')],
      ['two Uploaded partial segments', (s) => (s.partialBackup.segments[1]!.status = 'Uploaded')],
      ['Offloaded past the Uploaded partial segment', (s) => (s.evictionState = { kind: 'Offloaded', flushLsn: 0x2_0000_0100n })],
      ['Offloaded with no Uploaded partial segment', (s) => (s.partialBackup.segments[0]!.status = 'Deleting')],
    ];
    for (const [name, breakIt] of broken) {
      const state = fullState();
      breakIt(state);
      assert.throws(() => encodeControlFile(state), AssertionError, name);
      assert.throws(() => decodeControlFile(encodeUnchecked(state)), (e: unknown) => e instanceof ControlFileCorruptError && e.reason === 'invariant', name);
    }
  });
});

describe('control files that load but break what later code asserts', () => {
  // Each body has a valid checksum, as a hand edit or another tool would leave it, and is compact JSON.
  type Body = Record<string, any>; // JSON poked at by path: typing each path would hide what the case changes
  const compact = (mutate: (body: Body) => void): Uint8Array => {
    const body = bodyOf(encodeControlFile(fullState())) as Body;
    mutate(body);
    return frame(JSON.stringify(body));
  };
  const assertInvariant = (bytes: Uint8Array, detail: RegExp): void => {
    assert.throws(() => decodeControlFile(bytes), (e: unknown) => e instanceof ControlFileCorruptError && e.reason === 'invariant' && detail.test(e.message), String(detail));
  };

  test('a NUL in a member host (the greeting encoder asserts there is none)', () => {
    assertInvariant(compact((b) => (b['mconf'].members[0].host = 'x\u0000y')), /mconf\.members: the host of member 1 has a control character/);
    assertInvariant(compact((b) => (b['mconf'].new_members[0].host = 'x\u0000y')), /mconf\.new_members: the host of member 3/);
  });

  test('12,000 term history entries in compact JSON (they fit on disk, but not once written back indented)', () => {
    const bytes = compact((b) => {
      b['acceptor_state'] = { term: U64_MAX.toString(), term_history: longHistory(12_000).map((e) => ({ term: e.term.toString(), lsn: 'FFFFFFFF/FFFFFFFF' })) };
    });
    assert.ok(bytes.length < CONTROL_FILE_BODY_BYTES_MAX && bytes.length > 600_000, `${bytes.length} bytes`);
    assertInvariant(bytes, /term_history has 12000 entries, more than 10000/);
  });

  test('a partial segment name that is not a remote key (RemoteStorage asserts on it)', () => {
    for (const name of ['a b', '../x', 'x/..', '/abs', 'x\u0000']) {
      assertInvariant(compact((b) => (b['partial_backup'].segments[2].name = name)), /partial segment 2 has a name that is not a remote key/);
    }
  });

  test('Offloaded with no Uploaded partial segment at its flush_lsn (eviction asserts on it)', () => {
    assertInvariant(compact((b) => (b['eviction_state'] = { Offloaded: '2/100' })), /Offloaded without an Uploaded partial segment/);
    assertInvariant(compact((b) => b['partial_backup'].segments.splice(0, 1)), /Offloaded without an Uploaded partial segment/);
    assertInvariant(compact((b) => (b['partial_backup'].segments = [])), /Offloaded without an Uploaded partial segment/);
    // The same file with the timeline Present loads.
    assert.equal(decodeControlFile(compact((b) => ((b['eviction_state'] = 'Present'), (b['partial_backup'].segments = [])))).evictionState.kind, 'Present');
  });

  test('a compact body that fits but would not once written back indented', () => {
    const bytes = compact((b) => {
      const deleting = { status: 'Deleting', name: '000000010000000200000000_5_0000000200000000_0000000200000080_sk1.partial', commit_lsn: '2/0', flush_lsn: '2/80', term: '5' };
      b['partial_backup'].segments.push(...Array.from({ length: 6_500 }, () => deleting));
    });
    assert.ok(bytes.length - 16 <= CONTROL_FILE_BODY_BYTES_MAX, `${bytes.length} bytes`);
    assertInvariant(bytes, /bytes as we write it, more than the 1048576/);
  });

  test('on disk, each loads as ControlFileCorruptError naming the path (the registry marks the timeline broken)', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'sk-control-bad-'));
    try {
      await writeFile(join(dir, CONTROL_FILE_NAME), compact((b) => (b['partial_backup'].segments[2].name = '../x')));
      await assert.rejects(loadControlFile(dir), (e: unknown) => e instanceof ControlFileCorruptError && e.reason === 'invariant' && e.message.includes(dir));
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  test('the largest valid state (longest history, two full member sets of 255-byte hosts) round-trips, also from compact JSON', async () => {
    const state = fullState();
    state.acceptorState = { term: U64_MAX, termHistory: longHistory(TERM_HISTORY_ENTRIES_MAX) };
    // Every host byte a quote, which JSON escapes to two.
    state.mconf = { generation: 0xffff_ffff, members: members(MEMBERS_PER_SET_MAX, '"'), newMembers: members(MEMBERS_PER_SET_MAX, '"', MEMBERS_PER_SET_MAX) };
    const bytes = encodeCheckedControlFile(state);
    assert.ok(bytes.length <= CONTROL_FILE_BODY_BYTES_MAX + 16);
    assert.deepEqual(decodeControlFile(bytes), state);
    assert.deepEqual(decodeControlFile(frame(JSON.stringify(toControlFileJson(state)))), state);
    const dir = await mkdtemp(join(tmpdir(), 'sk-control-max-'));
    try {
      await saveControlFile(dir, state, { noSync: true });
      assert.deepEqual(await loadControlFile(dir), state);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});

/** Encodes without the invariant check: the body as the encoder would write it, framed with a valid checksum. */
function encodeUnchecked(state: TimelinePersistentState): Uint8Array {
  return frame(JSON.stringify(toControlFileJson(state), null, 2) + '\n');
}

describe('control file on disk', () => {
  let dir = '';
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'sk-control-'));
  });
  after(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  test('save then load returns the state; no temp file is left', async () => {
    const state = fullState();
    await saveControlFile(dir, state, { noSync: false });
    assert.deepEqual(await loadControlFile(dir), state);
    assert.deepEqual(await readdir(dir), [CONTROL_FILE_NAME]);
  });

  test('a save replaces the previous file', async () => {
    const first = fullState();
    await saveControlFile(dir, first, { noSync: true });
    const second = { ...fullState(), commitLsn: 0x2_0000_00f0n };
    await saveControlFile(dir, second, { noSync: true });
    assert.deepEqual(await loadControlFile(dir), second);
    const third = { ...fullState(), backupLsn: 0x2_0000_00f0n };
    await saveControlFile(dir, third, { noSync: false });
    assert.deepEqual(await loadControlFile(dir), third);
  });

  test('a crash before the rename leaves the old file loadable', async () => {
    const old = fullState();
    await saveControlFile(dir, old, { noSync: false });
    // A crash mid-save: the new image, whole or torn, exists only under the temp name.
    const next = encodeControlFile({ ...fullState(), commitLsn: 0x2_0000_00f8n });
    await writeFile(join(dir, CONTROL_FILE_PARTIAL_NAME), next.subarray(0, 40));
    assert.deepEqual(await loadControlFile(dir), old);
    await writeFile(join(dir, CONTROL_FILE_PARTIAL_NAME), next);
    assert.deepEqual(await loadControlFile(dir), old);
    // The next save overwrites the leftover temp file.
    await saveControlFile(dir, fullState(), { noSync: true });
    assert.deepEqual(await readdir(dir), [CONTROL_FILE_NAME]);
  });

  test('load reports a corrupt file as ControlFileCorruptError naming the path', async () => {
    await saveControlFile(dir, fullState(), { noSync: true });
    const path = join(dir, CONTROL_FILE_NAME);
    const bytes = await readFile(path);
    bytes[20] = bytes[20]! ^ 0xff;
    await writeFile(path, bytes);
    await assert.rejects(loadControlFile(dir), (e: unknown) => e instanceof ControlFileCorruptError && e.message.includes(path));
  });

  test('a missing control file is NotFoundError', async () => {
    const empty = await mkdtemp(join(tmpdir(), 'sk-control-empty-'));
    await assert.rejects(loadControlFile(empty), NotFoundError);
    await rm(empty, { recursive: true });
  });
});
