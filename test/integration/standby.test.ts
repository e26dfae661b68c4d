/**
 * A stock PostgreSQL 15 hot standby replicating from a safekeeper (neon-safekeeper-tests §9,
 * test_hot_standby): a primary whose synchronous_standby_names names `safekeeper propose`, one safekeeper
 * node, and a standby made by pg_basebackup whose primary_conninfo points at the safekeeper with
 * `options='-c tenant_id=… timeline_id=…'`. pgbench runs on the primary while the standby streams; then
 * the standby's replay LSN reaches the safekeeper's commit_lsn, its pgbench tables equal the primary's
 * (row counts and an aggregate checksum), and its hot standby feedback has travelled standby → safekeeper →
 * proposer → primary (the proposer's slot or walsender gets an xmin). Every process and dir is cleaned up.
 */
import assert from 'node:assert/strict';
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { appendFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { after, before, describe, it } from 'node:test';
import pg from 'pg';
import { parseLsn, type Lsn } from '../../src/wal/lsn.js';
import { cliEntry, killAllNodes, REPO_ROOT, spawnNode, testNodeArgs, type NodeProcess } from '../harness/node_process.js';
import { freePort, PG_BIN_DIR, runAsPostgres, startPostgres, type PostgresInstance } from '../harness/pg.js';
import { makeTempDir, removeAllTempDirs } from '../harness/tmp.js';
import { waitFor } from '../harness/wait.js';

const execFileAsync = promisify(execFile);
const APP = 'sk_standby_proposer';
const TENANT = '4a'.repeat(16);
const TIMELINE = '5b'.repeat(16);
/** The tables pgbench writes, and a checksum that covers every row's content. */
const TABLE_CHECKS = [
  'SELECT count(*), sum(hashtext(a::text)) FROM pgbench_accounts a',
  'SELECT count(*), sum(hashtext(b::text)) FROM pgbench_branches b',
  'SELECT count(*), sum(hashtext(t::text)) FROM pgbench_tellers t',
  'SELECT count(*), sum(hashtext(h::text)) FROM pgbench_history h',
];

const children = new Set<ChildProcess>();

describe('a PostgreSQL 15 hot standby fed by a safekeeper', { timeout: 120_000 }, () => {
  let primary: PostgresInstance;
  let safekeeper: NodeProcess;
  let proposer: ChildProcess;
  let proposerOutput = '';
  let standby: { port: number; dir: string; process: ChildProcess; log: () => string } | null = null;

  before(async () => {
    primary = await startPostgres({ extraConf: { synchronous_standby_names: APP, wal_keep_size: '1GB', fsync: 'off' } });
    safekeeper = await spawnNode(testNodeArgs(makeTempDir('sk-standby-'), ['--no-sync']));
    proposer = spawn(process.execPath, [...cliEntry(false), 'propose', '--safekeepers', `127.0.0.1:${safekeeper.pgPort}`, '--tenant-id', TENANT, '--timeline-id', TIMELINE, '--from', `postgres://postgres@127.0.0.1:${primary.port}/postgres`, '--application-name', APP, '--log-format', 'json'], { cwd: REPO_ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
    children.add(proposer);
    proposer.stdout?.setEncoding('utf8').on('data', (chunk: string) => (proposerOutput += chunk));
    proposer.stderr?.setEncoding('utf8').on('data', (chunk: string) => (proposerOutput += chunk));
    await waitFor(() => {
      if (proposer.exitCode !== null) throw new Error(`proposer exited: ${proposerOutput.slice(-3000)}`);
      return /elected term=/.test(proposerOutput);
    }, { timeoutMs: 30_000, what: 'the proposer to be elected' }).catch((error: unknown) => {
      throw new Error(`${String(error)}\nproposer output:\n${proposerOutput.slice(-3000)}`);
    });
  });

  after(async () => {
    for (const child of children) child.kill('SIGKILL');
    await killAllNodes();
    await primary?.stop();
    await removeAllTempDirs();
  });

  const pgbench = async (args: readonly string[]): Promise<string> =>
    (await execFileAsync(join(PG_BIN_DIR, 'pgbench'), ['-h', '127.0.0.1', '-p', String(primary.port), '-U', 'postgres', ...args, 'postgres'])).stdout;

  async function query(port: number, sql: string): Promise<unknown[][]> {
    const client = new pg.Client({ host: '127.0.0.1', port, user: 'postgres', database: 'postgres' });
    await client.connect();
    try {
      return (await client.query({ text: sql, rowMode: 'array' })).rows as unknown[][];
    } finally {
      await client.end();
    }
  }

  async function safekeeperCommitLsn(): Promise<Lsn> {
    const response = await fetch(`${safekeeper.httpUrl}/v1/tenant/${TENANT}/timeline/${TIMELINE}`);
    return parseLsn(((await response.json()) as { commit_lsn: string }).commit_lsn);
  }

  /** pg_basebackup of the primary, turned into a hot standby whose upstream is the safekeeper. */
  async function startStandby(): Promise<NonNullable<typeof standby>> {
    const dir = makeTempDir('sk-standby-pg-');
    await execFileAsync('chown', ['postgres:postgres', dir]);
    const dataDir = join(dir, 'data');
    await runAsPostgres('pg_basebackup', ['-D', dataDir, '-h', '127.0.0.1', '-p', String(primary.port), '-U', 'postgres', '-X', 'stream', '-c', 'fast', '--no-sync']);
    const conninfo = `host=127.0.0.1 port=${safekeeper.pgPort} application_name=sk_standby options=''-c tenant_id=${TENANT} timeline_id=${TIMELINE}''`;
    await appendFile(join(dataDir, 'postgresql.conf'), `\nprimary_conninfo = '${conninfo}'\nhot_standby = on\nhot_standby_feedback = on\nwal_receiver_status_interval = 1s\nfsync = off\n`);
    await writeFile(join(dataDir, 'standby.signal'), '');
    await execFileAsync('chown', ['-R', 'postgres:postgres', dataDir]);
    const port = await freePort();
    const child = spawn('setpriv', ['--reuid=postgres', '--regid=postgres', '--init-groups', join(PG_BIN_DIR, 'postgres'), '-D', dataDir, '-p', String(port), '-k', dir, '-c', 'listen_addresses=127.0.0.1', '-c', 'dynamic_shared_memory_type=mmap'], { stdio: ['ignore', 'pipe', 'pipe'] });
    children.add(child);
    let log = '';
    child.stdout?.setEncoding('utf8').on('data', (chunk: string) => (log = (log + chunk).slice(-65536)));
    child.stderr?.setEncoding('utf8').on('data', (chunk: string) => (log = (log + chunk).slice(-65536)));
    await waitFor(async () => {
      if (child.exitCode !== null) throw new Error(`standby exited:\n${log.slice(-4000)}`);
      return (await query(port, 'SELECT pg_is_in_recovery()'))[0]?.[0] === true;
    }, { timeoutMs: 30_000, intervalMs: 50, what: `the standby accepting read-only connections (log: ${log.slice(-2000)})` });
    return { port, dir, process: child, log: () => log };
  }

  it('replays pgbench from the safekeeper: same tables as the primary, replay reaches commit_lsn, hot standby feedback reaches the primary', async () => {
    await pgbench(['-i', '-s', '1', '-q']);
    standby = await startStandby();
    const running = pgbench(['-c', '4', '-T', '5', '-N']);
    await waitFor(async () => (await query(standby!.port, 'SELECT pg_last_wal_receive_lsn() IS NOT NULL'))[0]?.[0] === true, { what: 'the standby to receive WAL from the safekeeper' });
    const output = await running;
    assert.match(output, /number of failed transactions: 0 /);

    // Quiesce: everything the primary flushed is committed on the safekeeper, then replayed by the standby.
    const primaryFlushLsn = parseLsn(String((await query(primary.port, 'SELECT pg_current_wal_flush_lsn()'))[0]?.[0]));
    const commitLsn = await waitFor(async () => {
      const lsn = await safekeeperCommitLsn();
      return lsn >= primaryFlushLsn ? lsn : null;
    }, { timeoutMs: 30_000, what: 'the safekeeper to commit the primary flush position' });
    await waitFor(async () => parseLsn(String((await query(standby!.port, 'SELECT pg_last_wal_replay_lsn()'))[0]?.[0])) >= commitLsn, {
      timeoutMs: 30_000,
      what: `the standby to replay up to commit_lsn (log: ${standby.log().slice(-2000)})`,
    });
    for (const check of TABLE_CHECKS) {
      assert.deepEqual(await query(standby.port, check), await query(primary.port, check), check);
    }

    const statuses = (await (await fetch(`${safekeeper.httpUrl}/v1/tenant/${TENANT}/timeline/${TIMELINE}`)).json()) as { walsenders: { appname: string; feedback: Record<string, { hs_feedback?: { xmin: number } }> }[] };
    const sender = statuses.walsenders.find((each) => each.appname === 'sk_standby');
    assert.ok(sender !== undefined && 'Standby' in sender.feedback, 'the standby is registered as a standby reader');
    // Hot standby feedback: standby `h` → safekeeper aggregate → AppendResponse → proposer `h` → primary.
    await waitFor(async () => {
      const rows = await query(primary.port, `SELECT coalesce((SELECT backend_xmin::text FROM pg_stat_replication WHERE application_name = '${APP}'), (SELECT max(xmin::text) FROM pg_replication_slots))`);
      return rows[0]?.[0] !== null;
    }, { timeoutMs: 20_000, what: 'an xmin from hot standby feedback on the primary' });
  });
});
