import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { serialize } from 'pg-protocol';
import { InvalidArgumentError, ProtocolViolationError } from '../../src/errors.js';
import { isRecoveryClient, optionSettings, parseStartupPacket, parseStartupParameters, splitOptions } from '../../src/pg/startup.js';

const TENANT = '0123456789abcdef0123456789abcdef';
const TIMELINE = 'fedcba9876543210fedcba9876543210';

/** The packet body the decoder delivers: the bytes after the length. */
const body = (packet: Buffer): Buffer => packet.subarray(4);
const params = (entries: Record<string, string>) => parseStartupParameters(new Map(Object.entries(entries)));

describe('splitOptions (pg_split_opts)', () => {
  it('splits on unescaped whitespace of any kind', () => {
    assert.deepEqual(splitOptions('  -c a=1\tb=2\n\r c=3  '), ['-c', 'a=1', 'b=2', 'c=3']);
    assert.deepEqual(splitOptions(''), []);
    assert.deepEqual(splitOptions('   '), []);
  });

  it('treats a backslash as escaping the next character', () => {
    assert.deepEqual(splitOptions('a=x\\ y b'), ['a=x y', 'b']);
    assert.deepEqual(splitOptions('a=\\\\ b'), ['a=\\', 'b']);
    assert.deepEqual(splitOptions('\\a\\=b'), ['a=b']);
    assert.deepEqual(splitOptions('x\\'), ['x']); // a trailing lone backslash is dropped
    assert.deepEqual(splitOptions('\\ '), [' ']);
  });
});

describe('optionSettings', () => {
  it('takes key=value tokens bare, after -c, as -ckey=value and --key=value, and skips the rest', () => {
    assert.deepEqual(optionSettings(['-c', 'a=1', 'b=2', '-cc=3', '--d=4', '-x', 'plain', '=5']), [
      ['a', '1'],
      ['b', '2'],
      ['c', '3'],
      ['d', '4'],
    ]);
    assert.deepEqual(optionSettings(['k=v=w']), [['k', 'v=w']]);
  });
});

describe('StartupMessage parameters', () => {
  it('reads the walproposer form -c timeline_id=<tl> tenant_id=<t>', () => {
    const packet = parseStartupPacket(body(serialize.startup({ user: 'cloud_admin', database: 'replication', application_name: 'walproposer', options: `-c timeline_id=${TIMELINE} tenant_id=${TENANT}` })));
    assert.equal(packet.kind, 'startup');
    assert.ok(packet.kind === 'startup');
    const startup = packet.params;
    assert.equal(startup.tenantId, TENANT);
    assert.equal(startup.timelineId, TIMELINE);
    assert.equal(startup.user, 'cloud_admin');
    assert.equal(startup.database, 'replication');
    assert.equal(startup.applicationName, 'walproposer');
    assert.deepEqual(startup.protocol, { type: 'vanilla' });
    assert.equal(startup.shard, null);
    assert.equal(startup.protocolMinorVersion, 0);
  });

  it('accepts the legacy names ztenantid and ztimelineid, and -ckey=value', () => {
    const startup = params({ options: `-cztenantid=${TENANT} -c ztimelineid=${TIMELINE}` });
    assert.equal(startup.tenantId, TENANT);
    assert.equal(startup.timelineId, TIMELINE);
  });

  it('allows missing ids at startup', () => {
    const startup = params({ user: 'u' });
    assert.equal(startup.tenantId, null);
    assert.equal(startup.timelineId, null);
    assert.equal(startup.options, null);
  });

  it('refuses bad ids with SQLSTATE 22023', () => {
    for (const options of [`tenant_id=${TENANT.slice(1)}g`, 'tenant_id=12', `timeline_id=${TIMELINE}0`, 'timeline_id=']) {
      assert.throws(() => params({ options }), (error: unknown) => error instanceof InvalidArgumentError && error.sqlState === '22023', options);
    }
  });

  it('takes ids in upper case, as Neon does, and keeps them in lower case', () => {
    const startup = params({ options: `-c tenant_id=${TENANT.toUpperCase()} timeline_id=${TIMELINE.toUpperCase()}` });
    assert.equal(startup.tenantId, TENANT);
    assert.equal(startup.timelineId, TIMELINE);
  });

  it('reads the pageserver form with protocol, shard parameters and availability zone', () => {
    const protocol = '{"type":"interpreted","args":{"format":"protobuf","compression":{"zstd":{"level":1}}}}';
    const startup = params({
      application_name: 'pageserver-1',
      options: `-c timeline_id=${TIMELINE} tenant_id=${TENANT} protocol=${protocol} shard_count=4 shard_number=2 shard_stripe_size=32768 availability_zone=az-1`,
    });
    assert.deepEqual(startup.protocol, { type: 'interpreted', format: 'protobuf', compression: { zstdLevel: 1 } });
    assert.deepEqual(startup.shard, { count: 4, number: 2, stripeSize: 32768 });
    assert.equal(startup.availabilityZone, 'az-1');
    assert.equal(isRecoveryClient(startup), false);
  });

  it('requires shard parameters with the interpreted protocol and refuses them with vanilla', () => {
    const interpreted = 'protocol={"type":"interpreted","args":{"format":"bincode","compression":null}}';
    assert.throws(() => params({ options: interpreted }), InvalidArgumentError);
    assert.throws(() => params({ options: 'shard_count=1' }), InvalidArgumentError);
    assert.throws(() => params({ options: `${interpreted} shard_count=256 shard_number=0 shard_stripe_size=1` }), InvalidArgumentError);
    assert.throws(() => params({ options: 'protocol={"type":"other"}' }), InvalidArgumentError);
    assert.throws(() => params({ options: 'protocol=nonsense' }), InvalidArgumentError);
    assert.deepEqual(params({ options: `${interpreted} shard_count=0 shard_number=0 shard_stripe_size=1` }).shard, { count: 0, number: 0, stripeSize: 1 });
  });

  it('recognises recovery clients by application_name', () => {
    assert.ok(isRecoveryClient(params({ application_name: 'wal_proposer_recovery' })));
    assert.ok(isRecoveryClient(params({ application_name: 'safekeeper_3' })));
    assert.ok(!isRecoveryClient(params({ application_name: 'pageserver-1' })));
    assert.ok(!isRecoveryClient(params({})));
  });
});

describe('startup packets', () => {
  it('classifies SSLRequest, GSSENCRequest and CancelRequest', () => {
    assert.deepEqual(parseStartupPacket(body(serialize.requestSsl())), { kind: 'ssl_request' });
    const gss = Buffer.alloc(8);
    gss.writeInt32BE(8, 0);
    gss.writeInt32BE(80877104, 4);
    assert.deepEqual(parseStartupPacket(body(gss)), { kind: 'gss_enc_request' });
    assert.deepEqual(parseStartupPacket(body(serialize.cancel(7, 9))), { kind: 'cancel_request', processId: 7, secretKey: 9 });
  });

  it('refuses other protocol versions and malformed parameter lists', () => {
    const v2 = Buffer.from([0, 0, 0, 8, 0, 2, 0, 0]);
    assert.throws(() => parseStartupPacket(body(v2)), ProtocolViolationError);
    const unterminated = Buffer.from([0, 3, 0, 0, 0x75, 0, 0x76]); // "u" "v" without the final NUL
    assert.throws(() => parseStartupPacket(unterminated), ProtocolViolationError);
    const trailing = Buffer.from([0, 3, 0, 0, 0, 0x41]);
    assert.throws(() => parseStartupPacket(trailing), ProtocolViolationError);
  });

  it('notes a newer minor version and _pq_ options for negotiation', () => {
    const packet = Buffer.from([0, 3, 0, 2, ...Buffer.from('_pq_.x\0y\0user\0u\0\0')]);
    const parsed = parseStartupPacket(packet);
    assert.ok(parsed.kind === 'startup');
    assert.equal(parsed.params.protocolMinorVersion, 2);
    assert.deepEqual(parsed.params.unrecognisedProtocolOptions, ['_pq_.x']);
  });
});
