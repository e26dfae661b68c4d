import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { ProtocolViolationError } from '../../src/errors.js';
import {
  type AcceptorMessage,
  type AppendRequest,
  type AppendResponse,
  type ProposerMessage,
  type ProtocolVersion,
  decodeAppendRequestHeader,
  encodeAppendRequestHeader,
  parseProtocolVersion,
} from '../../src/acceptor/messages.js';
import { decodeAcceptorMessage, decodeProposerMessage, encodeAcceptorMessage, encodeProposerMessage } from '../../src/acceptor/messages_codec.js';
import { decodePageserverFeedback, encodePageserverFeedback, type PageserverFeedback } from '../../src/acceptor/pageserver_feedback.js';
import { MEMBER_HOST_BYTES_MAX, MEMBERS_PER_SET_MAX, type MembershipConfiguration, parseTenantId, parseTimelineId } from '../../src/acceptor/state.js';

const TENANT = parseTenantId('cf0480929707ee75372337efaa5ecf96');
const TIMELINE = parseTimelineId('112ded66422aa5e953e5440fa5427ac4');
const VERSIONS: ProtocolVersion[] = [2, 3];
const fromHex = (hex: string): Uint8Array => new Uint8Array(Buffer.from(hex.replace(/[^0-9a-fA-F]/g, ''), 'hex'));
const toHex = (bytes: Uint8Array): string => Buffer.from(bytes).toString('hex');
const isViolation = (error: unknown): boolean => error instanceof ProtocolViolationError && error.code === 'SK_PROTOCOL_VIOLATION';

const JOINT_MCONF: MembershipConfiguration = {
  generation: 7,
  members: [
    { id: 1n, host: 'sk-1.local', pgPort: 5454 },
    { id: 2n, host: 'sk-2.local', pgPort: 5455 },
  ],
  newMembers: [{ id: 3n, host: 'sk-3.local', pgPort: 6000 }],
};
const EMPTY_MCONF: MembershipConfiguration = { generation: 0, members: [], newMembers: null };

const FEEDBACK: PageserverFeedback = {
  currentTimelineSizeBytes: 123_456_789n,
  lastReceivedLsn: 0x16b3768n,
  diskConsistentLsn: 0x16b3700n,
  remoteConsistentLsn: 0x16b0000n,
  replyTimeUs: 789_000_000_123n,
  shardNumber: 2,
  corruptionDetected: true,
};

function wal(lengthBytes: number): Uint8Array {
  return Uint8Array.from({ length: lengthBytes }, (_, index) => index & 0xff);
}

function proposerMessages(version: ProtocolVersion): ProposerMessage[] {
  const generation = version === 3 ? 7 : 0;
  const mconf = version === 3 ? JOINT_MCONF : EMPTY_MCONF;
  return [
    { tag: 'greeting', tenantId: TENANT, timelineId: TIMELINE, mconf, pgVersion: 170004, systemId: 0x1234567887654321n, walSegSizeBytes: 16 << 20 },
    { tag: 'vote', generation, term: 42n },
    { tag: 'elected', generation, term: 42n, startStreamingAtLsn: 0x1000028n, termHistory: [{ term: 1n, lsn: 0x1000028n }, { term: 42n, lsn: 0x2000000n }] },
    { tag: 'elected', generation, term: 1n, startStreamingAtLsn: 0n, termHistory: [] },
    { tag: 'append', generation, term: 42n, beginLsn: 0x2000000n, endLsn: 0x2000100n, commitLsn: 0x1ffff00n, truncateLsn: 0x1000028n, wal: wal(256) },
    { tag: 'append', generation, term: 42n, beginLsn: 0x2000100n, endLsn: 0x2000100n, commitLsn: 0n, truncateLsn: 0n, wal: new Uint8Array(0) },
  ];
}

function acceptorMessages(version: ProtocolVersion): AcceptorMessage[] {
  const generation = version === 3 ? 7 : 0;
  const hsFeedback = { timestampUs: -5n, xmin: (3n << 32n) | 900n, catalogXmin: 800n };
  return [
    { tag: 'greeting', nodeId: 5n, mconf: version === 3 ? JOINT_MCONF : EMPTY_MCONF, term: 9n },
    { tag: 'vote', generation, term: 10n, voteGiven: true, flushLsn: 0x16b3768n, truncateLsn: 0x16b3700n, termHistory: [{ term: 3n, lsn: 0x100n }, { term: 9n, lsn: 0x200n }] },
    { tag: 'vote', generation, term: 10n, voteGiven: false, flushLsn: 0n, truncateLsn: 0n, termHistory: [] },
    { tag: 'append', generation, term: 10n, flushLsn: 0x16b3768n, commitLsn: 0x16b3748n, hsFeedback, pageserverFeedback: null },
    { tag: 'append', generation, term: 10n, flushLsn: 0x16b3768n, commitLsn: 0x16b3748n, hsFeedback, pageserverFeedback: FEEDBACK },
  ];
}

describe('proposer messages', () => {
  for (const version of VERSIONS) {
    test(`v${version}: every proposer message round-trips`, () => {
      for (const message of proposerMessages(version)) {
        assert.deepEqual(decodeProposerMessage(encodeProposerMessage(message, version), version), message);
      }
    });

    test(`v${version}: every strict prefix of a proposer message is refused`, () => {
      for (const message of proposerMessages(version)) {
        const bytes = encodeProposerMessage(message, version);
        // v2 VoteRequest: walproposer sends a 16-byte uuid after the term, which Neon does not read.
        const minimumBytes = version === 2 && message.tag === 'vote' ? 16 : bytes.byteLength;
        for (let length = 0; length < minimumBytes; length += 1) {
          assert.throws(() => decodeProposerMessage(bytes.subarray(0, length), version), isViolation, `${message.tag} cut at ${length}`);
        }
      }
    });

    test(`v${version}: trailing bytes after a proposer message are ignored, as in Neon`, () => {
      for (const message of proposerMessages(version)) {
        const bytes = encodeProposerMessage(message, version);
        const padded = new Uint8Array(bytes.byteLength + 3);
        padded.set(bytes);
        padded.set([1, 2, 3], bytes.byteLength);
        assert.deepEqual(decodeProposerMessage(padded, version), message);
      }
    });

    test(`v${version}: an unknown tag is refused`, () => {
      assert.throws(() => decodeProposerMessage(new Uint8Array(80).fill(0x7a), version), /unknown proposer-acceptor message tag/);
      assert.throws(() => decodeProposerMessage(new Uint8Array(0), version), isViolation);
    });

    test(`v${version}: pg_version outside 0 and 140000..179999 is refused`, () => {
      const greeting = proposerMessages(version)[0];
      assert(greeting?.tag === 'greeting');
      for (const pgVersion of [139999, 180000, 90600, 1]) {
        assert.throws(() => decodeProposerMessage(encodeProposerMessage({ ...greeting, pgVersion }, version), version), /unsupported pg_version/);
      }
      for (const pgVersion of [0, 140000, 179999]) {
        const decoded = decodeProposerMessage(encodeProposerMessage({ ...greeting, pgVersion }, version), version);
        assert(decoded.tag === 'greeting');
        assert.equal(decoded.pgVersion, pgVersion);
      }
    });
  }

  test('v3 layouts are byte-exact', () => {
    assert.equal(toHex(encodeProposerMessage({ tag: 'vote', generation: 1, term: 5n }, 3)), '76' + '00000001' + '0000000000000005');
    const elected = encodeProposerMessage({ tag: 'elected', generation: 2, term: 3n, startStreamingAtLsn: 0x10n, termHistory: [{ term: 3n, lsn: 0x10n }] }, 3);
    assert.equal(toHex(elected), '65' + '00000002' + '0000000000000003' + '0000000000000010' + '00000001' + '0000000000000003' + '0000000000000010');
    const greeting = encodeProposerMessage(
      { tag: 'greeting', tenantId: TENANT, timelineId: TIMELINE, mconf: { generation: 1, members: [{ id: 1n, host: 'h', pgPort: 5454 }], newMembers: null }, pgVersion: 170004, systemId: 9n, walSegSizeBytes: 16 << 20 },
      3,
    );
    const expected =
      '67' + toHex(Buffer.from(`${TENANT}\0${TIMELINE}\0`)) + '00000001' + '00000001' + '0000000000000001' + '6800' + '154e' + '00000000' + '00029814' + '0000000000000009' + '01000000';
    assert.equal(toHex(greeting), expected);
  });

  test('v2 layouts are byte-exact C structs', () => {
    const [greeting, vote, elected, , append] = proposerMessages(2).map((message) => encodeProposerMessage(message, 2));
    assert(greeting !== undefined && vote !== undefined && elected !== undefined && append !== undefined);
    assert.equal(greeting.byteLength, 80);
    const view = new DataView(greeting.buffer, greeting.byteOffset);
    assert.equal(view.getBigUint64(0, true), 0x67n);
    assert.equal(view.getUint32(8, true), 2);
    assert.equal(view.getUint32(12, true), 170004);
    assert.equal(view.getBigUint64(32, true), 0x1234567887654321n);
    assert.equal(toHex(greeting.subarray(40, 56)), TIMELINE);
    assert.equal(toHex(greeting.subarray(56, 72)), TENANT);
    assert.equal(view.getUint32(76, true), 16 << 20);
    assert.equal(vote.byteLength, 32);
    assert.equal(elected.byteLength, 36 + 16 * 2);
    assert.equal(new DataView(elected.buffer, elected.byteOffset).getBigUint64(elected.byteLength - 8, true), 0x1000028n, 'timeline_start_lsn = first history LSN');
    assert.equal(append.byteLength, 72 + 256);
    const appendView = new DataView(append.buffer, append.byteOffset);
    assert.deepEqual([8, 16, 24, 32, 40, 48].map((offset) => appendView.getBigUint64(offset, true)), [42n, 0n, 0x2000000n, 0x2000100n, 0x1ffff00n, 0x1000028n]);
  });

  test('v2 tag is a LE u64 and only its low byte counts', () => {
    const vote = encodeProposerMessage({ tag: 'vote', generation: 0, term: 7n }, 2);
    vote[3] = 0xee;
    assert.deepEqual(decodeProposerMessage(vote, 2), { tag: 'vote', generation: 0, term: 7n });
  });

  test('mconf: empty member set in a valid generation is refused', () => {
    const bad: ProposerMessage = { tag: 'greeting', tenantId: TENANT, timelineId: TIMELINE, mconf: { generation: 1, members: [], newMembers: null }, pgVersion: 170004, systemId: 0n, walSegSizeBytes: 16 << 20 };
    assert.throws(() => decodeProposerMessage(encodeProposerMessage(bad, 3), 3), /empty member set/);
  });

  test('mconf: duplicate node ids within one set are refused, across sets allowed', () => {
    const member = { id: 4n, host: 'a', pgPort: 1 };
    const base = { tag: 'greeting', tenantId: TENANT, timelineId: TIMELINE, pgVersion: 170004, systemId: 0n, walSegSizeBytes: 16 << 20 } as const;
    assert.throws(() => decodeProposerMessage(encodeProposerMessage({ ...base, mconf: { generation: 2, members: [member, member], newMembers: null } }, 3), 3), /duplicate node id 4/);
    assert.throws(() => decodeProposerMessage(encodeProposerMessage({ ...base, mconf: { generation: 2, members: [member], newMembers: [member, member] } }, 3), 3), /duplicate node id 4/);
    const decoded = decodeProposerMessage(encodeProposerMessage({ ...base, mconf: { generation: 2, members: [member], newMembers: [member] } }, 3), 3);
    assert(decoded.tag === 'greeting');
    assert.equal(decoded.mconf.newMembers?.length, 1);
  });

  test('mconf: more than MEMBERS_PER_SET_MAX members, or a host too long or with a control character, is refused', () => {
    // A greeting's mconf is persisted in the control file, which must always fit (control_file.ts).
    const base = { tag: 'greeting', tenantId: TENANT, timelineId: TIMELINE, pgVersion: 170004, systemId: 0n, walSegSizeBytes: 16 << 20 } as const;
    const members = (count: number, host = 'h'.repeat(MEMBER_HOST_BYTES_MAX)) => Array.from({ length: count }, (_, index) => ({ id: BigInt(index + 1), host, pgPort: 5454 }));
    const roundTrip = (mconf: MembershipConfiguration) => decodeProposerMessage(encodeProposerMessage({ ...base, mconf }, 3), 3);
    const violation = (pattern: RegExp) => (error: unknown): boolean => error instanceof ProtocolViolationError && pattern.test(error.message);
    assert.throws(() => roundTrip({ generation: 2, members: members(MEMBERS_PER_SET_MAX + 1), newMembers: null }), violation(/33 members in member set, more than 32/));
    assert.throws(() => roundTrip({ generation: 2, members: members(1), newMembers: members(MEMBERS_PER_SET_MAX + 1) }), violation(/in new member set/));
    assert.throws(() => roundTrip({ generation: 2, members: members(1, 'h'.repeat(MEMBER_HOST_BYTES_MAX + 1)), newMembers: null }), violation(/host is longer than 255 bytes/));
    assert.throws(() => roundTrip({ generation: 2, members: members(1, 'sk-1\n'), newMembers: null }), violation(/host has a control character/));
    const largest = roundTrip({ generation: 2, members: members(MEMBERS_PER_SET_MAX), newMembers: members(MEMBERS_PER_SET_MAX) });
    assert(largest.tag === 'greeting');
    assert.equal(largest.mconf.newMembers?.length, MEMBERS_PER_SET_MAX);
  });

  test('tenant and timeline ids must be 32 hex chars', () => {
    const bytes = fromHex('67' + toHex(Buffer.from('abc\0')) + toHex(Buffer.from(`${TIMELINE}\0`)));
    assert.throws(() => decodeProposerMessage(bytes, 3), /tenant_id is not 32 hex chars/);
  });

  test('parseProtocolVersion accepts only 2 and 3', () => {
    assert.equal(parseProtocolVersion(2), 2);
    assert.equal(parseProtocolVersion(3), 3);
    assert.throws(() => parseProtocolVersion(4), /unsupported protocol version 4/);
  });
});

describe('AppendRequest hot path', () => {
  // §3.7: generation 1, term 5, begin 0/16B3748, end 0/16B3768, commit 0/16B3748, truncate 0/16B3700.
  const FRAME = fromHex(`
    64 00000051 61 00000001 0000000000000005
    00000000016B3748 00000000016B3768
    00000000016B3748 00000000016B3700
    000102030405060708090A0B0C0D0E0F101112131415161718191A1B1C1D1E1F`);
  const EXPECTED: AppendRequest = {
    tag: 'append',
    generation: 1,
    term: 5n,
    beginLsn: 0x16b3748n,
    endLsn: 0x16b3768n,
    commitLsn: 0x16b3748n,
    truncateLsn: 0x16b3700n,
    wal: wal(32),
  };

  test('decodes the worked example of protocol doc §3.7 byte for byte', () => {
    assert.equal(FRAME.byteLength, 1 + 81);
    const payload = FRAME.subarray(5);
    assert.deepEqual(decodeAppendRequestHeader(payload, 3), EXPECTED);
    assert.deepEqual(decodeProposerMessage(payload, 3), EXPECTED);
    assert.equal(toHex(encodeProposerMessage(EXPECTED, 3)), toHex(payload));
    assert.equal(toHex(encodeAppendRequestHeader(EXPECTED, 3)), toHex(payload.subarray(0, 45)));
  });

  test('the reply of §3.7 is a 53-byte AppendResponse (CopyData length 57)', () => {
    const reply: AppendResponse = { tag: 'append', generation: 1, term: 5n, flushLsn: 0x16b3768n, commitLsn: 0x16b3748n, hsFeedback: { timestampUs: 1n, xmin: 2n, catalogXmin: 3n }, pageserverFeedback: null };
    const bytes = encodeAcceptorMessage(reply, 3);
    assert.equal(bytes.byteLength + 4, 0x39);
    assert.equal(toHex(bytes), '61' + '00000001' + '0000000000000005' + '00000000016b3768' + '00000000016b3748' + '0000000000000001' + '0000000000000002' + '0000000000000003');
  });

  test('returns the WAL as a view of the payload, without copying', () => {
    const payload = FRAME.subarray(5);
    const decoded = decodeAppendRequestHeader(payload, 3);
    assert.equal(decoded.wal.buffer, FRAME.buffer);
    assert.equal(decoded.wal.byteOffset, FRAME.byteOffset + 5 + 45);
    assert.equal(decoded.wal.byteLength, 32);
  });

  for (const version of VERSIONS) {
    const header = (beginLsn: bigint, endLsn: bigint): Uint8Array =>
      encodeAppendRequestHeader({ ...EXPECTED, generation: version === 3 ? 1 : 0, beginLsn, endLsn, wal: new Uint8Array(Number(endLsn - beginLsn)) }, version);

    test(`v${version}: fewer WAL bytes than end_lsn - begin_lsn is refused`, () => {
      const bytes = header(100n, 132n);
      const payload = new Uint8Array(bytes.byteLength + 31);
      payload.set(bytes);
      assert.throws(() => decodeAppendRequestHeader(payload, version), /only 31 bytes left, wanted 32/);
    });

    test(`v${version}: more than MAX_SEND_SIZE (131072) of WAL is refused; exactly MAX is accepted`, () => {
      const max = 131072n;
      const bytes = header(1000n, 1000n + max);
      const payload = new Uint8Array(bytes.byteLength + Number(max));
      payload.set(bytes);
      assert.equal(decodeAppendRequestHeader(payload, version).wal.byteLength, 131072);
      const view = new DataView(payload.buffer);
      const endOffset = version === 3 ? 21 : 32;
      view.setBigUint64(endOffset, 1000n + max + 1n, version === 2);
      assert.throws(() => decodeAppendRequestHeader(payload, version), /longer than MAX_SEND_SIZE/);
    });

    test(`v${version}: end_lsn before begin_lsn is refused`, () => {
      const payload = header(100n, 100n);
      new DataView(payload.buffer).setBigUint64(version === 3 ? 21 : 32, 99n, version === 2);
      assert.throws(() => decodeAppendRequestHeader(payload, version), /begin_lsn > end_lsn/);
    });

    test(`v${version}: a header shorter than fixed size is refused`, () => {
      assert.throws(() => decodeAppendRequestHeader(header(1n, 1n).subarray(0, version === 3 ? 44 : 71), version), isViolation);
    });
  }

  test('the encoder refuses WAL whose length disagrees with the range', () => {
    assert.throws(() => encodeAppendRequestHeader({ ...EXPECTED, wal: wal(31) }, 3), /range says 32/);
  });
});

describe('acceptor messages', () => {
  for (const version of VERSIONS) {
    test(`v${version}: every acceptor message round-trips`, () => {
      for (const message of acceptorMessages(version)) {
        assert.deepEqual(decodeAcceptorMessage(encodeAcceptorMessage(message, version), version), message);
      }
    });

    test(`v${version}: trailing bytes and truncation are refused`, () => {
      for (const message of acceptorMessages(version)) {
        const bytes = encodeAcceptorMessage(message, version);
        const padded = new Uint8Array(bytes.byteLength + 1).fill(5);
        padded.set(bytes);
        // An AppendResponse without feedback reads the extra byte as a feedback key count, then fails.
        assert.throws(() => decodeAcceptorMessage(padded, version), isViolation, `${message.tag} padded`);
        for (let length = 0; length < bytes.byteLength; length += 1) {
          const cut = bytes.subarray(0, length);
          const isFixedAppendPart = message.tag === 'append' && length === (version === 3 ? 53 : 56);
          if (isFixedAppendPart) continue; // a response without feedback is valid
          assert.throws(() => decodeAcceptorMessage(cut, version), isViolation, `${message.tag} cut at ${length}`);
        }
      }
    });
  }

  test('v2 drops generation and mconf; greeting has term before node_id', () => {
    const greeting = encodeAcceptorMessage({ tag: 'greeting', nodeId: 5n, mconf: JOINT_MCONF, term: 9n }, 2);
    assert.equal(toHex(greeting), '6700000000000000' + '0900000000000000' + '0500000000000000');
    const vote = encodeAcceptorMessage({ tag: 'vote', generation: 7, term: 1n, voteGiven: true, flushLsn: 2n, truncateLsn: 3n, termHistory: [{ term: 1n, lsn: 2n }] }, 2);
    assert.equal(vote.byteLength, 52 + 16);
    const append = encodeAcceptorMessage({ tag: 'append', generation: 7, term: 1n, flushLsn: 2n, commitLsn: 3n, hsFeedback: { timestampUs: 0n, xmin: 0n, catalogXmin: 0n }, pageserverFeedback: null }, 2);
    assert.equal(append.byteLength, 56);
  });

  test('v3 AcceptorGreeting carries node id, mconf, term', () => {
    const bytes = encodeAcceptorMessage({ tag: 'greeting', nodeId: 5n, mconf: EMPTY_MCONF, term: 9n }, 3);
    assert.equal(toHex(bytes), '67' + '0000000000000005' + '00000000' + '00000000' + '00000000' + '0000000000000009');
  });

  test('AppendResponse feedback suffix is big-endian in v2 as well', () => {
    const response = acceptorMessages(2)[4];
    assert(response?.tag === 'append');
    const bytes = encodeAcceptorMessage(response, 2);
    assert.equal(toHex(bytes.subarray(56)), toHex(encodePageserverFeedback(FEEDBACK)));
  });
});

describe('PageserverFeedback', () => {
  test('writes the five fixed keys, then optional ones only when set', () => {
    const plain = encodePageserverFeedback({ ...FEEDBACK, shardNumber: 0, corruptionDetected: false });
    assert.equal(plain[0], 5);
    assert.equal(encodePageserverFeedback(FEEDBACK)[0], 7);
    assert.deepEqual(decodePageserverFeedback(encodePageserverFeedback(FEEDBACK)), FEEDBACK);
  });

  test('skips unknown keys and accepts the walproposer aliases', () => {
    const key = (name: string, valueHex: string): string => toHex(Buffer.from(`${name}\0`)) + (valueHex.length / 2).toString(16).padStart(8, '0') + valueHex;
    const bytes = fromHex('03' + key('new_field', 'aabbcc') + key('remote_consistent_lsn', '0000000000000100') + key('replytime', 'fffffffffffffffe'));
    const decoded = decodePageserverFeedback(bytes);
    assert.equal(decoded.remoteConsistentLsn, 0x100n);
    assert.equal(decoded.replyTimeUs, -2n);
  });

  test('a known key with the wrong length is refused', () => {
    const bytes = fromHex('01' + toHex(Buffer.from('ps_writelsn\0')) + '00000004' + '00000001');
    assert.throws(() => decodePageserverFeedback(bytes), /has length 4, expected 8/);
  });
});

describe('messages larger than the encoder starts with', () => {
  // Regression: the writer grew its buffer while a DataView call on the old buffer was being evaluated,
  // so any message past 256 bytes (a term history of 15+ entries) failed to encode.
  for (const protoVersion of [2, 3] as const) {
    test(`v${protoVersion}: a VoteResponse and a ProposerElected with 100 history entries round-trip`, () => {
      const termHistory = Array.from({ length: 100 }, (_, index) => ({ term: BigInt(index + 1), lsn: 0x100_0000n + BigInt(index) * 0x1000n }));
      const vote = { tag: 'vote' as const, generation: 0, term: 100n, voteGiven: true, flushLsn: 0x200_0000n, truncateLsn: 0x100_0000n, termHistory };
      assert.deepEqual(decodeAcceptorMessage(encodeAcceptorMessage(vote, protoVersion), protoVersion), vote);
      const elected = { tag: 'elected' as const, generation: 0, term: 101n, startStreamingAtLsn: 0x200_0000n, termHistory };
      const decoded = decodeProposerMessage(encodeProposerMessage(elected, protoVersion), protoVersion);
      assert.deepEqual(decoded.tag === 'elected' ? decoded.termHistory : null, termHistory);
    });
  }
});
