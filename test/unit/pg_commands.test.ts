import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { InvalidArgumentError } from '../../src/errors.js';
import { COMMAND_TEXT_BYTES_MAX, CommandTooLongError, parseCommand } from '../../src/pg/commands.js';
import { FRAME_BYTES_DEFAULT } from '../../src/limits.js';
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

  it('reads START_REPLICATION options as key, optional = or space, then a quoted or bare value', () => {
    const termOf = (options: string): bigint | null => {
      const command = parseCommand(`START_REPLICATION 0/0 (${options})`);
      assert.ok(command.kind === 'start_replication');
      return command.term;
    };
    assert.equal(termOf("term '5'"), 5n);
    assert.equal(termOf(' "term"  =  \'6\' '), 6n);
    assert.equal(termOf('term=7'), 7n);
    assert.equal(termOf("TERM\t'8'"), 8n);
    assert.equal(termOf("something 'x', term '9'"), 9n);
    assert.equal(termOf('flag'), null); // an unknown key without a value is ignored
    for (const options of ['term', "term ''", "term 'a'b", "term '5", 'term = = 5', "= '5'", "term '1 2'"]) {
      assert.throws(() => parseCommand(`START_REPLICATION 0/0 (${options})`), InvalidArgumentError, options);
    }
  });

  it('refuses a command text over COMMAND_TEXT_BYTES_MAX with 54000, without echoing it', () => {
    const padded = `START_WAL_PUSH${' '.repeat(COMMAND_TEXT_BYTES_MAX - 'START_WAL_PUSH'.length)}`;
    assert.equal(Buffer.byteLength(padded), COMMAND_TEXT_BYTES_MAX);
    assert.equal(parseCommand(padded).kind, 'start_wal_push');
    for (const text of [`${padded};`, `SELECT '${'é'.repeat(COMMAND_TEXT_BYTES_MAX / 2)}'`]) {
      assert.throws(
        () => parseCommand(text),
        (error: unknown) => error instanceof CommandTooLongError && error.sqlState === '54000' && error.message.length < 100,
      );
    }
  });

  it('parses or refuses adversarial texts in linear time, up to the frame limit', () => {
    // Each text is built to make a backtracking pattern try every position of a long whitespace run.
    // The quadratic trim took about 30 ms per parse at 4 KiB and the cubic option pattern minutes.
    const families: Record<string, (bytes: number) => string> = {
      trailing: (bytes) => `IDENTIFY_SYSTEM${' '.repeat(bytes - 16)}x`,
      semicolons: (bytes) => `IDENTIFY_SYSTEM${'; '.repeat((bytes - 16) / 2)}x`,
      option: (bytes) => `START_REPLICATION 0/0 (term${' '.repeat(bytes - 30)}x')`,
      options: (bytes) => `START_REPLICATION 0/0 (${'term ,'.repeat((bytes - 24) / 6)})`,
      prefix: (bytes) => `START_REPLICATION${' '.repeat(bytes - 18)}x`,
      slot: (bytes) => `START_REPLICATION SLOT${' '.repeat(bytes - 23)}x`,
      logical: (bytes) => `START_REPLICATION SLOT s${' '.repeat(bytes - 26)}x`,
      timeline: (bytes) => `START_REPLICATION 0/0${' '.repeat(bytes - 22)}x`,
      walPush: (bytes) => `START_WAL_PUSH (${'a '.repeat((bytes - 18) / 2)}x`,
      show: (bytes) => `SHOW${' '.repeat(bytes - 6)}"x`,
      history: (bytes) => `TIMELINE_HISTORY${' '.repeat(bytes - 18)}x`,
    };
    const runs = 50;
    for (const [name, build] of Object.entries(families)) {
      for (const bytes of [COMMAND_TEXT_BYTES_MAX, FRAME_BYTES_DEFAULT]) {
        const text = build(bytes);
        assert.ok(Math.abs(Buffer.byteLength(text) - bytes) < 8, `${name} is about ${bytes} bytes`);
        const parseMs: number[] = [];
        for (let run = 0; run < runs; run += 1) {
          const startMs = performance.now();
          try {
            parseCommand(text);
          } catch (error) {
            if (!(error instanceof InvalidArgumentError || error instanceof CommandTooLongError)) throw error;
          }
          parseMs.push(performance.now() - startMs);
        }
        // Linear parses take well under 1 ms each (about 0.04 ms here); the bound is generous for slow CI machines.
        // The median, not the total: on a loaded machine a few parses lose their CPU or meet a GC pause (50 runs
        // once took 268 ms in all), while a superlinear parse is slow every time (30 ms for the quadratic trim).
        const medianMs = parseMs.sort((a, b) => a - b)[Math.floor(runs / 2)]!;
        assert.ok(medianMs < 4, `parses of ${name} at ${bytes} bytes took ${medianMs.toFixed(3)} ms (median of ${runs}), ${parseMs.reduce((sum, ms) => sum + ms, 0).toFixed(1)} ms in all`);
      }
    }
  });

  it('returns everything else as unsupported with the original text', () => {
    for (const text of ['SELECT 1', 'BASE_BACKUP', 'CREATE_REPLICATION_SLOT x PHYSICAL', 'IDENTIFY_SYSTEM extra', '', 'START_WAL_PUSHX']) {
      assert.deepEqual(parseCommand(text), { kind: 'unsupported', text });
    }
  });
});
