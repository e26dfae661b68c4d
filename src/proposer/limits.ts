/**
 * Bounds and timings of the proposer, each with the reason for its value. Relations between them are
 * asserted once, at load. Values follow Neon's walproposer where it has one (named in the comment).
 */
import { APPEND_WAL_BYTES_MAX } from '../limits.js';
import { assert } from '../sync/assert.js';

/** WAL bytes per AppendRequest: walproposer's MAX_SEND_SIZE, which the acceptor enforces. */
export const APPEND_BYTES_MAX = APPEND_WAL_BYTES_MAX;
/**
 * WAL kept in memory for acceptors that lag or reconnect (the WAL window). Beyond it a lagging acceptor is
 * recovered from a donor safekeeper. 64 MiB holds several seconds of pgbench WAL, so a safekeeper that
 * restarts quickly catches up from memory; the window never drops WAL above max(commit_lsn, term start)
 * (below the term start the donor has it all), and the source is paused instead (backpressure), so memory
 * stays within this plus one chunk.
 */
export const WAL_WINDOW_BYTES_DEFAULT = 64 * 1024 * 1024;
export const WAL_WINDOW_BYTES_MIN = 4 * APPEND_BYTES_MAX;
/**
 * WAL the source may run ahead of max(commit_lsn, term start) (`window_budget.ts`). Enough in flight for the
 * safekeepers to batch fsyncs (several 128 KiB appends per fsync), small enough that a full-speed load
 * measures the pipeline's latency rather than the depth of our queue.
 */
export const UNCOMMITTED_BYTES_MAX = 16 * 1024 * 1024;
/**
 * AppendRequests per safekeeper timed for the append→ack latency metric. In flight there are at most
 * UNCOMMITTED_BYTES_MAX of WAL in 128 KiB appends (128), more when appends are small; past the bound new
 * appends join the newest timed one, so memory stays fixed whatever the safekeeper does.
 */
export const APPENDS_TIMED_MAX = 4096;
/** An idle acceptor gets an empty AppendRequest this often (neon.safekeeper_reconnect_timeout = 1 s). */
export const HEARTBEAT_INTERVAL_MS = 1000;
/** An acceptor that sends nothing for this long is dropped (neon.safekeeper_connect_timeout = 10 s). */
export const ACCEPTOR_SILENCE_MS_MAX = 10_000;
/** Connect + authenticate to a safekeeper or the primary. */
export const CONNECT_TIMEOUT_MS = 10_000;
/** Reconnect backoff: doubles from MIN to MAX, with ±JITTER_RATIO jitter so restarts do not stampede. */
export const RECONNECT_BACKOFF_MS_MIN = 100;
export const RECONNECT_BACKOFF_MS_MAX = 5000;
export const RECONNECT_JITTER_RATIO = 0.2;

/**
 * The wait before try number `attempt` + 1 (`attempt` counts from 1): `minMs` · 2^(attempt−1), capped at
 * `maxMs`, times a jitter factor in [1 − RATIO, 1 + RATIO] picked by `random` (a number in [0, 1)). Pure.
 */
export function jitteredBackoffMs(attempt: number, minMs: number, maxMs: number, random: number): number {
  const exponent = Math.min(attempt - 1, 30); // 2^30 · min is far past max: no overflow to Infinity
  return Math.round(Math.min(maxMs, minMs * 2 ** exponent) * (1 + (random * 2 - 1) * RECONNECT_JITTER_RATIO));
}
/**
 * Reconnecting to a lost primary: the first attempt is immediate, then the delay doubles from MIN to MAX
 * with ±JITTER_RATIO. MAX is short next to a primary restart (seconds) so we are back soon after it is,
 * and long enough that a primary down for minutes sees one connection every few seconds, not a storm.
 */
export const PRIMARY_RECONNECT_BACKOFF_MS_MIN = 100;
export const PRIMARY_RECONNECT_BACKOFF_MS_MAX = 5000;
/**
 * Default for `--primary-reconnect-timeout`, counted from the loss. Long enough for a primary restart, a
 * crash recovery or a short failover of its host; past it a human should look (the process exits 1).
 */
export const PRIMARY_RECONNECT_TIMEOUT_MS_DEFAULT = 5 * 60_000;
/**
 * Default for `--primary-timeout`: PostgreSQL's wal_receiver_timeout. A live walsender answers the reply
 * request we send at half of it within a round trip, so only a primary that is really gone (or a route that
 * drops everything) goes silent this long; a shorter limit would drop a busy primary's connection for a
 * hiccup, a longer one leaves the proposer (and synchronous commits) stuck for longer.
 */
export const PRIMARY_TIMEOUT_MS_DEFAULT = 60_000;
/** Default for `--quorum-timeout`: how long the election may take before the proposer gives up. */
export const QUORUM_TIMEOUT_MS_DEFAULT = 30_000;
/**
 * Election rounds after the first, each with a higher term, when a safekeeper refuses our vote in our own
 * term (our vote reply was lost, or another candidate took our term), before giving up. walproposer exits
 * then and its postmaster restarts it; a few rounds cover lost replies, while two proposers that keep
 * taking each other's terms still stop soon.
 */
export const ELECTION_ATTEMPTS_MAX = 3;
/**
 * Backoff before a new election round: doubles from MIN to MAX, with ±RECONNECT_JITTER_RATIO jitter so two
 * candidates that collided in one term do not collide again. Short next to the quorum timeout, which
 * bounds the whole election including these waits.
 */
export const ELECTION_RETRY_BACKOFF_MS_MIN = 100;
export const ELECTION_RETRY_BACKOFF_MS_MAX = 1000;
/** A commit_lsn change waits this long for an append to carry it before a heartbeat carries it alone. */
export const COMMIT_BROADCAST_DELAY_MS = 20;
/**
 * A clean stop (SIGTERM, a finished synthetic run) waits at most this long for every connected safekeeper to
 * acknowledge the WAL it was sent and the final commit_lsn, so none is left a broadcast behind. A healthy
 * safekeeper answers within a few fsyncs (milliseconds); a dead or stuck one must not hold up the exit, and
 * a second long enough for several slow fsyncs is far inside the grace period a supervisor gives (10 s+).
 */
export const STOP_DRAIN_MS_MAX = 1000;
/**
 * In that drain, how long without any AppendResponse before a safekeeper whose flush_lsn stops short of the
 * window end is taken to be missing only the rest of an incomplete record (`stop_drain.ts`): WAL in flight
 * brings a response within a write task's fsync, a few ms on a healthy disk.
 */
export const STOP_SETTLE_MS = 100;
/** Standby status updates to the primary at least this often (wal_receiver_status_interval is 10 s). */
export const STATUS_INTERVAL_MS = 1000;
/** Most safekeepers one proposer talks to (walproposer's MAX_SAFEKEEPERS). */
export const SAFEKEEPERS_MAX = 32;

assert(WAL_WINDOW_BYTES_DEFAULT >= WAL_WINDOW_BYTES_MIN, 'default window above the minimum');
assert(UNCOMMITTED_BYTES_MAX >= 8 * APPEND_BYTES_MAX, 'several appends in flight');
assert(COMMIT_BROADCAST_DELAY_MS < STOP_SETTLE_MS && STOP_SETTLE_MS * 4 <= STOP_DRAIN_MS_MAX, 'a commit broadcast fits in the settle time, which fits in the stop drain');
assert(HEARTBEAT_INTERVAL_MS * 3 <= ACCEPTOR_SILENCE_MS_MAX, 'several heartbeats fit in the silence limit');
assert(RECONNECT_BACKOFF_MS_MIN < RECONNECT_BACKOFF_MS_MAX, 'backoff range');
assert(PRIMARY_RECONNECT_BACKOFF_MS_MIN < PRIMARY_RECONNECT_BACKOFF_MS_MAX, 'primary backoff range');
assert(ELECTION_RETRY_BACKOFF_MS_MIN < ELECTION_RETRY_BACKOFF_MS_MAX, 'election backoff range');
assert(ELECTION_ATTEMPTS_MAX * ELECTION_RETRY_BACKOFF_MS_MAX * (1 + RECONNECT_JITTER_RATIO) < QUORUM_TIMEOUT_MS_DEFAULT / 4, 'election rounds fit well in the default quorum timeout');
assert(PRIMARY_RECONNECT_BACKOFF_MS_MAX < PRIMARY_RECONNECT_TIMEOUT_MS_DEFAULT, 'many attempts fit in the default reconnect timeout');
