/** Config loading: defaults < file < flags, unit conversion, and errors that name the key and its source. */
import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { parse as parseToml } from 'smol-toml';
import { loadConfig, renderDefaultConfig } from '../../src/config/load.js';
import { CONFIG_KEY_NAMES } from '../../src/config/schema.js';
import { parseBroker, parseBytes, parseDurationMs, parseHostPort } from '../../src/config/value_parsers.js';
import { ConfigError } from '../../src/errors.js';
import * as limits from '../../src/limits.js';

let directory = '';
before(async () => {
  directory = await mkdtemp(join(tmpdir(), 'sk-config-'));
});
after(async () => {
  await rm(directory, { recursive: true, force: true });
});

const cwd = '/srv/sk';
let fileCount = 0;
async function configFile(text: string): Promise<string> {
  const path = join(directory, `config-${++fileCount}.toml`);
  await writeFile(path, text);
  return path;
}

/** Asserts that `load` throws a ConfigError for `key` from `source`, with a detail matching `detail`. */
function assertConfigError(load: () => unknown, key: string, source: string, detail: RegExp): void {
  assert.throws(load, (error: unknown) => {
    assert.ok(error instanceof ConfigError, `expected a ConfigError, got ${String(error)}`);
    assert.equal(error.code, 'SK_CONFIG');
    assert.equal(error.key, key);
    assert.equal(error.source, source);
    assert.ok(error.message.startsWith(`config key '${key}' (from ${source}): `), error.message);
    assert.match(error.message, detail);
    return true;
  });
}

describe('loadConfig defaults', () => {
  test('match the documented defaults, with units converted', () => {
    const config = loadConfig({ flags: {}, cwd });
    assert.equal(config.nodeId, 1n);
    assert.equal(config.dataDir, '/srv/sk/.safekeeper');
    assert.deepEqual(config.listenPg, { host: '127.0.0.1', port: 5454 });
    assert.deepEqual(config.listenHttp, { host: '127.0.0.1', port: 7676 });
    assert.equal(config.advertisePg, null);
    assert.deepEqual(config.remoteStorage, { kind: 'file', url: 'file:///srv/sk/.safekeeper/remote', path: '/srv/sk/.safekeeper/remote' });
    assert.deepEqual(config.broker, { kind: 'embedded' });
    assert.equal(config.enableOffload, false);
    assert.equal(config.deleteOffloadedWal, false);
    assert.equal(config.controlFileSaveIntervalMs, 300_000);
    assert.equal(config.partialBackupTimeoutMs, 15 * 60_000);
    assert.equal(config.evictionMinResidentMs, 15 * 60_000);
    assert.equal(config.heartbeatTimeoutMs, 5000);
    assert.equal(config.walBackupParallelJobs, 5);
    assert.equal(config.noSync, false);
    assert.equal(config.authPublicKeyPath, null);
    assert.equal(config.walWriterThreads, 2);
    assert.equal(config.ringSizeBytes, 16 * 1024 * 1024);
    assert.equal(config.maxMessageBytes, limits.FRAME_BYTES_DEFAULT);
    assert.equal(config.defaultPgVersion, 150000);
    assert.equal(config.maxConnections, limits.CONNECTIONS_MAX);
    assert.equal(config.logLevel, 'info');
    assert.equal(config.logFormat, 'auto');
    for (const key of CONFIG_KEY_NAMES) assert.equal(config.sources[key], 'default');
  });

  test('are frozen, nested objects included', () => {
    const config = loadConfig({ flags: {}, cwd });
    assert.ok(Object.isFrozen(config));
    assert.ok(Object.isFrozen(config.listenPg));
    assert.ok(Object.isFrozen(config.sources));
  });
});

describe('loadConfig precedence', () => {
  test('file overrides defaults and flags override the file', async () => {
    const file = await configFile(['id = 3', 'ring_size = "32MiB"', 'heartbeat_timeout = "2s"', 'enable_offload = true', 'data_dir = "data"'].join('\n'));
    const config = loadConfig({ file, flags: { id: '9', 'heartbeat-timeout': '1500ms', 'no-sync': true }, cwd });
    assert.equal(config.nodeId, 9n);
    assert.equal(config.ringSizeBytes, 32 * 1024 * 1024);
    assert.equal(config.heartbeatTimeoutMs, 1500);
    assert.equal(config.enableOffload, true);
    assert.equal(config.noSync, true);
    assert.equal(config.dataDir, '/srv/sk/data');
    assert.equal(config.remoteStorage.url, 'file:///srv/sk/data/remote');
    assert.equal(config.sources.id, 'flag --id');
    assert.equal(config.sources.ring_size, file);
    assert.equal(config.sources.log_level, 'default');
  });

  test('a relative config file path is resolved against cwd', async () => {
    const file = await configFile('wal_writer_threads = 4\n');
    const config = loadConfig({ file: file.slice(directory.length + 1), flags: {}, cwd: directory });
    assert.equal(config.walWriterThreads, 4);
  });

  test('converts every unit form', () => {
    const config = loadConfig({
      flags: { 'control-file-save-interval': '2h30m', 'ring-size': '4194304', 'max-message-size': '512KiB', 'listen-pg': '[::1]:0', 'advertise-pg': 'sk-1.example:5454', 'remote-storage': 's3://bucket-1/wal/prefix?endpoint=http://127.0.0.1:9000&region=eu-1' },
      cwd,
    });
    assert.equal(config.controlFileSaveIntervalMs, (2 * 60 + 30) * 60_000);
    assert.equal(config.ringSizeBytes, 4 * 1024 * 1024);
    assert.equal(config.maxMessageBytes, 512 * 1024);
    assert.deepEqual(config.listenPg, { host: '::1', port: 0 });
    assert.deepEqual(config.advertisePg, { host: 'sk-1.example', port: 5454 });
    assert.deepEqual(parseBroker('etcd://10.0.0.1:2379,10.0.0.2:2379'), { ok: true, value: { kind: 'etcd', endpoints: [{ host: '10.0.0.1', port: 2379 }, { host: '10.0.0.2', port: 2379 }] } });
    assert.deepEqual(config.remoteStorage, { kind: 's3', url: 's3://bucket-1/wal/prefix?endpoint=http://127.0.0.1:9000&region=eu-1', bucket: 'bucket-1', prefix: 'wal/prefix', endpoint: 'http://127.0.0.1:9000', region: 'eu-1' });
  });

  test('node id takes the full u64 range', () => {
    assert.equal(loadConfig({ flags: { id: '18446744073709551615' }, cwd }).nodeId, 0xffff_ffff_ffff_ffffn);
  });
});

describe('loadConfig errors name the key and its source', () => {
  test('unknown key in the file, with a suggestion', async () => {
    const file = await configFile('ring_sise = "16MiB"\n');
    assertConfigError(() => loadConfig({ file, flags: {}, cwd }), 'ring_sise', file, /unknown key \(did you mean 'ring_size'\?\)/);
  });

  test('a TOML table is an unknown key', async () => {
    const file = await configFile('[remote]\npath = "/x"\n');
    assertConfigError(() => loadConfig({ file, flags: {}, cwd }), 'remote', file, /unknown key/);
  });

  test('unknown flag, and a flag spelled snake_case', () => {
    assertConfigError(() => loadConfig({ flags: { 'no-such-flag': '1' }, cwd }), 'no_such_flag', 'flag --no-such-flag', /unknown flag/);
    assertConfigError(() => loadConfig({ flags: { ring_size: '4MiB' }, cwd }), 'ring_size', 'flag --ring_size', /unknown flag/);
  });

  test('wrong types in the file', async () => {
    const cases: [string, string, RegExp][] = [
      ['enable_offload = "yes"', 'enable_offload', /expected true or false/],
      ['wal_writer_threads = "two"', 'wal_writer_threads', /expected an integer/],
      ['wal_writer_threads = 1.5', 'wal_writer_threads', /expected an integer/],
      ['listen_pg = 5454', 'listen_pg', /expected a string/],
      ['log_level = "loud"', 'log_level', /expected one of trace, debug, info, warn, error/],
      ['ring_size = true', 'ring_size', /expected a byte size/],
    ];
    for (const [text, key, detail] of cases) {
      const file = await configFile(`${text}\n`);
      assertConfigError(() => loadConfig({ file, flags: {}, cwd }), key, file, detail);
    }
  });

  test('wrong types in flags', () => {
    assertConfigError(() => loadConfig({ flags: { 'wal-writer-threads': 'many' }, cwd }), 'wal_writer_threads', 'flag --wal-writer-threads', /expected an integer/);
    assertConfigError(() => loadConfig({ flags: { 'enable-offload': 'maybe' }, cwd }), 'enable_offload', 'flag --enable-offload', /expected true or false/);
  });

  test('durations without a unit or with a bad one', async () => {
    const file = await configFile('control_file_save_interval = 300\n');
    assertConfigError(() => loadConfig({ file, flags: {}, cwd }), 'control_file_save_interval', file, /needs a unit/);
    assertConfigError(() => loadConfig({ flags: { 'heartbeat-timeout': '5' }, cwd }), 'heartbeat_timeout', 'flag --heartbeat-timeout', /needs a unit: write "5s" or "5ms"/);
    assertConfigError(() => loadConfig({ flags: { 'heartbeat-timeout': '5 sec' }, cwd }), 'heartbeat_timeout', 'flag --heartbeat-timeout', /not a duration/);
    assertConfigError(() => loadConfig({ flags: { 'heartbeat-timeout': '0s' }, cwd }), 'heartbeat_timeout', 'flag --heartbeat-timeout', /at least 1ms/);
    assertConfigError(() => loadConfig({ flags: { 'heartbeat-timeout': '1000h' }, cwd }), 'heartbeat_timeout', 'flag --heartbeat-timeout', /at most/);
  });

  test('byte sizes with decimal units or unknown units', () => {
    assertConfigError(() => loadConfig({ flags: { 'ring-size': '16MB' }, cwd }), 'ring_size', 'flag --ring-size', /unknown byte unit "MB".*powers of 1024/);
    assertConfigError(() => loadConfig({ flags: { 'ring-size': '16M' }, cwd }), 'ring_size', 'flag --ring-size', /unknown byte unit "M"/);
    assertConfigError(() => loadConfig({ flags: { 'ring-size': '-1' }, cwd }), 'ring_size', 'flag --ring-size', /not a byte size/);
  });

  test('out-of-range values', () => {
    assertConfigError(() => loadConfig({ flags: { 'ring-size': '1MiB' }, cwd }), 'ring_size', 'flag --ring-size', /at least 2MiB/);
    assertConfigError(() => loadConfig({ flags: { 'ring-size': `${limits.RING_SIZE_BYTES_MIN + 4}` }, cwd }), 'ring_size', 'flag --ring-size', /multiple of 8/);
    assertConfigError(() => loadConfig({ flags: { 'max-message-size': '2MiB' }, cwd }), 'max_message_size', 'flag --max-message-size', /at most 1MiB/);
    assertConfigError(() => loadConfig({ flags: { 'wal-writer-threads': '0' }, cwd }), 'wal_writer_threads', 'flag --wal-writer-threads', /at least 1/);
    assertConfigError(() => loadConfig({ flags: { 'wal-writer-threads': '65' }, cwd }), 'wal_writer_threads', 'flag --wal-writer-threads', /at most 64/);
    assertConfigError(() => loadConfig({ flags: { 'max-connections': `${limits.CONNECTIONS_MAX + 1}` }, cwd }), 'max_connections', 'flag --max-connections', /at most/);
    assertConfigError(() => loadConfig({ flags: { id: '18446744073709551616' }, cwd }), 'id', 'flag --id', /64 bits/);
    assertConfigError(() => loadConfig({ flags: { id: '-1' }, cwd }), 'id', 'flag --id', /at least 0/);
  });

  test('bad listen and advertise addresses', () => {
    assertConfigError(() => loadConfig({ flags: { 'listen-pg': 'localhost' }, cwd }), 'listen_pg', 'flag --listen-pg', /not an address.*HOST:PORT/);
    assertConfigError(() => loadConfig({ flags: { 'listen-http': '127.0.0.1:70000' }, cwd }), 'listen_http', 'flag --listen-http', /port 70000 is out of range/);
    assertConfigError(() => loadConfig({ flags: { 'listen-pg': '[zz::1]:5454' }, cwd }), 'listen_pg', 'flag --listen-pg', /not an address/);
    assertConfigError(() => loadConfig({ flags: { 'advertise-pg': 'sk:0' }, cwd }), 'advertise_pg', 'flag --advertise-pg', /out of range 1\.\.65535/);
  });

  test('percent-decodes the S3 prefix and trims its slashes', () => {
    const config = loadConfig({ flags: { 'remote-storage': 's3://bucket-1//wal%20x/100%25//' }, cwd });
    assert.ok(config.remoteStorage?.kind === 's3');
    assert.equal(config.remoteStorage.prefix, 'wal x/100%');
    const slashes = loadConfig({ flags: { 'remote-storage': `s3://bucket-1/a${'/'.repeat(100_000)}b` }, cwd });
    assert.ok(slashes.remoteStorage?.kind === 's3');
    assert.equal(slashes.remoteStorage.prefix.length, 100_002);
  });

  test('bad remote storage and broker', () => {
    assertConfigError(() => loadConfig({ flags: { 'remote-storage': 'gs://bucket' }, cwd }), 'remote_storage', 'flag --remote-storage', /unsupported remote storage/);
    assertConfigError(() => loadConfig({ flags: { 'remote-storage': 'file://relative/dir' }, cwd }), 'remote_storage', 'flag --remote-storage', /absolute path/);
    assertConfigError(() => loadConfig({ flags: { 'remote-storage': 's3://b/p?acl=x' }, cwd }), 'remote_storage', 'flag --remote-storage', /bucket name|unknown S3 option/);
    for (const url of ['s3://bucket/%', 's3://bucket/wal/%E0%A4%A', 's3://bucket/%zz/prefix']) {
      assertConfigError(() => loadConfig({ flags: { 'remote-storage': url }, cwd }), 'remote_storage', 'flag --remote-storage', /bad percent-encoding in the S3 prefix/);
    }
    // A bad endpoint or an empty region was accepted, and only failed (retried with backoff) at the first upload.
    for (const url of ['s3://bucket/p?endpoint=notaurl', 's3://bucket/p?endpoint=ftp://x:21', 's3://bucket/p?endpoint=']) {
      assertConfigError(() => loadConfig({ flags: { 'remote-storage': url }, cwd }), 'remote_storage', 'flag --remote-storage', /S3 endpoint is not an http:\/\/ or https:\/\/ URL/);
    }
    assertConfigError(() => loadConfig({ flags: { 'remote-storage': 's3://bucket/p?region=' }, cwd }), 'remote_storage', 'flag --remote-storage', /S3 region is empty/);
    assertConfigError(() => loadConfig({ flags: { broker: 'etcd://' }, cwd }), 'broker', 'flag --broker', /not an address/);
    assertConfigError(() => loadConfig({ flags: { broker: 'zookeeper://x:1' }, cwd }), 'broker', 'flag --broker', /expected "embedded"/);
  });

  test('features not implemented yet are refused, not ignored', async () => {
    assertConfigError(() => loadConfig({ flags: { broker: 'etcd://10.0.0.1:2379' }, cwd }), 'broker', 'flag --broker', /etcd broker .* not implemented yet/);
    const file = await configFile('auth_public_key = "auth_key.pem"\n');
    assertConfigError(() => loadConfig({ file, flags: {}, cwd }), 'auth_public_key', file, /JWT authentication is not implemented yet/);
  });

  test('invalid TOML and a missing file', async () => {
    const file = await configFile('ring_size = \n');
    assertConfigError(() => loadConfig({ file, flags: {}, cwd }), 'config', file, /not valid TOML \(line 1\)/);
    const missing = join(directory, 'missing.toml');
    assertConfigError(() => loadConfig({ file: missing, flags: {}, cwd }), 'config', 'flag --config', /cannot read .*missing\.toml: ENOENT/);
  });
});

describe('renderDefaultConfig', () => {
  test('documents every key, commented out', () => {
    const text = renderDefaultConfig();
    assert.equal(Object.keys(parseToml(text)).length, 0);
    for (const key of CONFIG_KEY_NAMES) assert.match(text, new RegExp(`^# [^\\n]+\\n(# [^\\n]+\\n)*# ${key} = `, 'm'), key);
  });

  test('uncommented, parses back to exactly the defaults', async () => {
    const uncommented = renderDefaultConfig().replace(/^# ([a-z_]+ = )/gm, '$1');
    assert.equal(Object.keys(parseToml(uncommented)).length, CONFIG_KEY_NAMES.length);
    const file = await configFile(uncommented);
    const fromFile = loadConfig({ file, flags: {}, cwd });
    const defaults = loadConfig({ flags: {}, cwd });
    const { sources: fileSources, ...fileValues } = fromFile;
    const { sources: _defaultSources, ...defaultValues } = defaults;
    assert.deepEqual(fileValues, defaultValues);
    for (const key of CONFIG_KEY_NAMES) assert.equal(fileSources[key], file);
  });
});

describe('unit parsers', () => {
  test('parseDurationMs', () => {
    assert.deepEqual(parseDurationMs('500ms'), { ok: true, value: 500 });
    assert.deepEqual(parseDurationMs('1h'), { ok: true, value: 3_600_000 });
    assert.deepEqual(parseDurationMs('1m30s'), { ok: true, value: 90_000 });
    assert.equal(parseDurationMs('300').ok, false);
    assert.equal(parseDurationMs('').ok, false);
    assert.equal(parseDurationMs('1.5s').ok, false);
  });

  test('parseBytes', () => {
    assert.deepEqual(parseBytes(4096), { ok: true, value: 4096 });
    assert.deepEqual(parseBytes('4096'), { ok: true, value: 4096 });
    assert.deepEqual(parseBytes('1GiB'), { ok: true, value: 1024 ** 3 });
    assert.deepEqual(parseBytes('7B'), { ok: true, value: 7 });
    assert.equal(parseBytes(1.5).ok, false);
    assert.equal(parseBytes('1 TB').ok, false);
  });

  test('parseHostPort', () => {
    assert.deepEqual(parseHostPort('0.0.0.0:0', 0), { ok: true, value: { host: '0.0.0.0', port: 0 } });
    assert.deepEqual(parseHostPort('[::]:5454', 1), { ok: true, value: { host: '::', port: 5454 } });
    assert.equal(parseHostPort(':5454', 0).ok, false);
    assert.equal(parseHostPort('host:0', 1).ok, false);
  });
});
