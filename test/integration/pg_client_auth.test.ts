/**
 * The production frontend client (src/pg/client.ts) against a real PostgreSQL 15: cleartext, MD5 and
 * SCRAM-SHA-256 password authentication (pg_hba.conf rewritten per user), a wrong password, a replication
 * connection running IDENTIFY_SYSTEM, and a query error that leaves the connection usable.
 */
import assert from 'node:assert/strict';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { PgClient, PgServerError } from '../../src/pg/client.js';
import { startPostgres, type PostgresInstance } from '../harness/pg.js';

describe('pg client', { timeout: 60_000 }, () => {
  let server: PostgresInstance;
  const signal = new AbortController().signal;
  const connect = (user: string, password?: string, replication?: 'true'): Promise<PgClient> =>
    PgClient.connect({ host: '127.0.0.1', port: server.port, user, database: 'postgres', ...(password === undefined ? {} : { password }), ...(replication === undefined ? {} : { replication }) }, signal);

  before(async () => {
    server = await startPostgres();
    await server.psql("SET password_encryption = 'md5'; CREATE ROLE md5_user LOGIN PASSWORD 'md5 secret'");
    await server.psql("SET password_encryption = 'scram-sha-256'; CREATE ROLE scram_user LOGIN PASSWORD 'scram secret'; CREATE ROLE clear_user LOGIN PASSWORD 'clear secret'");
    const hba = join(server.dataDir, 'pg_hba.conf');
    const rules = ['host all md5_user 127.0.0.1/32 md5', 'host all scram_user 127.0.0.1/32 scram-sha-256', 'host all clear_user 127.0.0.1/32 password'];
    await writeFile(hba, `${rules.join('\n')}\n${await readFile(hba, 'utf8')}`);
    await server.psql('SELECT pg_reload_conf()');
  });

  after(async () => {
    await server?.stop();
  });

  for (const [user, password] of [['md5_user', 'md5 secret'], ['scram_user', 'scram secret'], ['clear_user', 'clear secret']] as const) {
    it(`authenticates ${user} and runs a query`, async () => {
      const client = await connect(user, password);
      const result = await client.query('SELECT current_user, 1 + 1', signal);
      assert.deepEqual(result.rows, [[user, '2']]);
      assert.equal(result.commandTag, 'SELECT 1');
      client.terminate();
      await client.closed;
    });
  }

  it('refuses a wrong password with the server error', async () => {
    await assert.rejects(connect('scram_user', 'wrong'), (error: unknown) => error instanceof PgServerError && error.sqlState === '28P01');
    await assert.rejects(connect('md5_user'), /asks for a password/);
  });

  it('opens a replication connection and keeps it usable after a failed command', async () => {
    const client = await connect('postgres', undefined, 'true');
    const system = await client.query('IDENTIFY_SYSTEM', signal);
    assert.deepEqual(system.fields, ['systemid', 'timeline', 'xlogpos', 'dbname']);
    assert.match(system.rows[0]?.[0] ?? '', /^\d+$/);
    await assert.rejects(client.query('READ_REPLICATION_SLOT no-such-slot!', signal), PgServerError);
    assert.equal((await client.query('SHOW wal_segment_size', signal)).rows[0]?.[0], '16MB');
    client.destroy();
  });
});
