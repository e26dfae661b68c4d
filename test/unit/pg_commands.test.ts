import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { InvalidArgumentError } from '../../src/errors.js';
import { parseCommand } from '../../src/pg/commands.js';
import { parseLsn } from '../../src/wal/lsn.js';

describe('parseCommand', () => {
  it('parses the exact walproposer START_WAL_PUSH texts', () => {
    assert.deepEqual(parseCommand("START_WAL_PUSH (proto_version '3', allow_timeline_creation 'false')"), {
      kind: 'start_wal_push',
      protoVersion: 3,
      allowTimelineCreation: false,
    });
    assert.deepEqual(parseCommand("START_WAL_PUSH (proto_version '3', allow_timeline_creation 'true')"), {
      kind: 'start_wal_push',
      protoVersion: 3,
      allowTimelineCreation: true,
    });
  });

  it('defaults START_WAL_PUSH to proto_version 2 and timeline creation allowed', () => {
    assert.deepEqual(parseCommand('START_WAL_PUSH'), { kind: 'start_wal_push', protoVersion: 2, allowTimelineCreation: true });
    assert.deepEqual(parseCommand('START_WAL_PUSH ()'), { kind: 'start_wal_push', protoVersion: 2, allowTimelineCreation: true });
    assert.deepEqual(parseCommand('START_WAL_PUSH;  \n'), { kind: 'start_wal_push', protoVersion: 2, allowTimelineCreation: true });
  });

  it('takes unquoted values, ignores unknown keys and refuses a key without a value', () => {
    assert.deepEqual(parseCommand('start_wal_push (PROTO_VERSION 3, something_new 7)'), { kind: 'start_wal_push', protoVersion: 3, allowTimelineCreation: true });
    assert.throws(() => parseCommand('START_WAL_PUSH (proto_version)'), InvalidArgumentError);
    assert.throws(() => parseCommand("START_WAL_PUSH (proto_version 'x')"), InvalidArgumentError);
    assert.throws(() => parseCommand("START_WAL_PUSH (allow_timeline_creation 'maybe')"), InvalidArgumentError);
    assert.throws(() => parseCommand('START_WAL_PUSH proto_version 3'), InvalidArgumentError);
  });

  it('parses every START_REPLICATION form the reference lists', () => {
    assert.deepEqual(parseCommand('START_REPLICATION PHYSICAL 0/16B3748'), {
      kind: 'start_replication',
      slotName: null,
      startLsn: parseLsn('0/16B3748'),
      timeline: null,
      term: null,
    });
    assert.deepEqual(parseCommand("START_REPLICATION PHYSICAL 1/A0000000 (term='42')"), {
      kind: 'start_replication',
      slotName: null,
      startLsn: parseLsn('1/A0000000'),
      timeline: null,
      term: 42n,
    });
    assert.deepEqual(parseCommand('START_REPLICATION SLOT my_slot PHYSICAL 0/0 TIMELINE 1'), {
      kind: 'start_replication',
      slotName: 'my_slot',
      startLsn: 0n,
      timeline: 1,
      term: null,
    });
    assert.deepEqual(parseCommand('START_REPLICATION 0/1000'), { kind: 'start_replication', slotName: null, startLsn: 0x1000n, timeline: null, term: null });
    const lower = parseCommand("start_replication physical 0/16b3748 (term = '7');");
    assert.ok(lower.kind === 'start_replication');
    assert.equal(lower.term, 7n);
    assert.equal(lower.startLsn, parseLsn('0/16B3748'));
  });

  it('reports logical replication as unsupported and malformed START_REPLICATION as an error', () => {
    const logical = 'START_REPLICATION SLOT s LOGICAL 0/0 ("proto_version" \'1\', "publication_names" \'p\')';
    assert.deepEqual(parseCommand(logical), { kind: 'unsupported', text: logical });
    assert.throws(() => parseCommand('START_REPLICATION PHYSICAL'), InvalidArgumentError);
    assert.throws(() => parseCommand('START_REPLICATION PHYSICAL 0/XYZ'), InvalidArgumentError);
    assert.throws(() => parseCommand("START_REPLICATION PHYSICAL 0/0 (term='x')"), InvalidArgumentError);
  });

  it('parses IDENTIFY_SYSTEM, TIMELINE_STATUS, TIMELINE_HISTORY and SHOW', () => {
    assert.deepEqual(parseCommand('IDENTIFY_SYSTEM'), { kind: 'identify_system' });
    assert.deepEqual(parseCommand('identify_system;'), { kind: 'identify_system' });
    assert.deepEqual(parseCommand('TIMELINE_STATUS'), { kind: 'timeline_status' });
    assert.deepEqual(parseCommand('TIMELINE_HISTORY 2'), { kind: 'timeline_history', timeline: 2 });
    assert.throws(() => parseCommand('TIMELINE_HISTORY'), InvalidArgumentError);
    assert.deepEqual(parseCommand('SHOW wal_segment_size'), { kind: 'show', name: 'wal_segment_size' });
    assert.deepEqual(parseCommand('show SERVER_VERSION;'), { kind: 'show', name: 'server_version' });
  });

  it('recognises the psycopg2 datestyle command', () => {
    assert.deepEqual(parseCommand("SET DateStyle TO 'ISO'"), { kind: 'set_datestyle' });
    assert.deepEqual(parseCommand("set datestyle to 'ISO, MDY'"), { kind: 'set_datestyle' });
  });

  it('returns everything else as unsupported with the original text', () => {
    for (const text of ['SELECT 1', 'BASE_BACKUP', 'CREATE_REPLICATION_SLOT x PHYSICAL', 'IDENTIFY_SYSTEM extra', '', 'START_WAL_PUSHX']) {
      assert.deepEqual(parseCommand(text), { kind: 'unsupported', text });
    }
  });
});
