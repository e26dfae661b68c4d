/**
 * Reads WAL back from a safekeeper, as walproposer's neon_walreader does: `START_REPLICATION PHYSICAL X/Y
 * (term='T')` (term mode: the safekeeper serves up to its flush_lsn, and only while its term is T), with
 * application_name `wal_proposer_recovery`. Used to recover a lagging acceptor whose start point is below
 * the proposer's WAL window (`readDonorWal`), and to find the record before the term start for a generator
 * (`findPrevRecordLsn`).
 * The consumer gets each XLogData piece in order and returns whether it wants more; back-pressure is the
 * consumer's await (the next message is not read before it resolves). Abort-safe: the connection is
 * destroyed when the read ends, for any reason. Main thread.
 */
import type { TenantId, TimelineId } from '../acceptor/state.js';
import type { HostPort } from '../config/value_parsers.js';
import { PgClient } from '../pg/client.js';
import { ProtocolViolationError } from '../errors.js';
import { formatLsn, type Lsn, segmentNumber, segmentStartLsn } from '../wal/lsn.js';
import { initialDecoderState, WalRecordDecoder } from '../wal/record_decoder.js';
import { CONNECT_TIMEOUT_MS } from './limits.js';
import { decodeWalSenderMessage, encodeStandbyReply, postgresNowUs } from '../pg/replication_messages.js';
import type { ServerIdentity } from './source.js';

export interface DonorReadArgs {
  donor: HostPort;
  tenantId: TenantId;
  timelineId: TimelineId;
  startLsn: Lsn;
  term: bigint;
  /** Gets WAL at `lsn` (contiguous from startLsn); resolves true to go on, false to stop. */
  onWal(lsn: Lsn, bytes: Uint8Array): Promise<boolean> | boolean;
  signal: AbortSignal;
}

export async function readDonorWal(args: DonorReadArgs): Promise<void> {
  const { donor, signal } = args;
  const client = await PgClient.connect({
    host: donor.host, port: donor.port, user: 'proposer', database: 'replication', applicationName: 'wal_proposer_recovery',
    options: `-c timeline_id=${args.timelineId} tenant_id=${args.tenantId}`, connectTimeoutMs: CONNECT_TIMEOUT_MS,
  }, signal);
  try {
    await client.startCopyBoth(`START_REPLICATION PHYSICAL ${formatLsn(args.startLsn)} (term='${args.term}')`, signal);
    let expectedLsn = args.startLsn;
    for (;;) {
      const event = await client.nextCopy(signal);
      if (event.kind === 'done') return;
      const message = decodeWalSenderMessage(event.payload);
      if (message.kind === 'keepalive') {
        if (message.replyRequested) client.sendCopyData(encodeStandbyReply({ writeLsn: expectedLsn, flushLsn: expectedLsn, applyLsn: expectedLsn, replyTimeUs: postgresNowUs(), replyRequested: false }));
        continue;
      }
      if (message.startLsn !== expectedLsn) {
        throw new ProtocolViolationError('XLogData', `donor sent WAL at ${formatLsn(message.startLsn)}, expected ${formatLsn(expectedLsn)}`);
      }
      if (message.data.length === 0) continue;
      expectedLsn += BigInt(message.data.length);
      if (!(await args.onWal(message.startLsn, message.data))) return;
    }
  } finally {
    client.destroy();
  }
}

export interface PrevRecordArgs {
  donor: HostPort;
  tenantId: TenantId;
  timelineId: TimelineId;
  term: bigint;
  identity: ServerIdentity;
  /** Where the timeline's WAL begins (the first history entry): a record start. */
  timelineStartLsn: Lsn;
  termStartLsn: Lsn;
  signal: AbortSignal;
}

/**
 * The start of the last record before `termStartLsn` (a generator's xl_prev for its first record), read back
 * from the donor: the segment holding the byte before the term start is decoded from its beginning (with
 * skipLeadingContrecord), or from the timeline start when that is in the same segment. Null when the term
 * starts at the timeline start. Throws what the read throws.
 */
export async function findPrevRecordLsn(args: PrevRecordArgs): Promise<Lsn | null> {
  const { termStartLsn, timelineStartLsn, identity } = args;
  if (termStartLsn <= timelineStartLsn) return null;
  const segmentSizeBytes = identity.walSegSizeBytes;
  const segmentStart = segmentStartLsn(segmentNumber(termStartLsn - 1n, segmentSizeBytes), segmentSizeBytes);
  const fromLsn = segmentStart > timelineStartLsn ? segmentStart : timelineStartLsn;
  const decoder = new WalRecordDecoder(initialDecoderState({ startLsn: fromLsn, segmentSizeBytes, pgVersion: identity.pgVersion, skipLeadingContrecord: fromLsn !== timelineStartLsn }));
  let prevRecordLsn: Lsn | null = null;
  await readDonorWal({
    donor: args.donor, tenantId: args.tenantId, timelineId: args.timelineId, startLsn: fromLsn, term: args.term, signal: args.signal,
    onWal: (lsn, bytes) => {
      const usefulBytes = Number(termStartLsn - lsn < BigInt(bytes.length) ? termStartLsn - lsn : BigInt(bytes.length));
      decoder.feed(bytes.subarray(0, usefulBytes), (startLsn) => (prevRecordLsn = startLsn));
      return lsn + BigInt(usefulBytes) < termStartLsn;
    },
  });
  return prevRecordLsn;
}
