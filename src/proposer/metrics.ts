/**
 * The proposer's Prometheus metrics, served by `safekeeper propose --http-listen` (`metrics_server.ts`).
 * They live in a registry of their own, not the node's (`src/metrics.ts`): a proposer process runs no
 * safekeeper, and a test or an embedding process may run both.
 *
 * Design: the proposer, its links and the primary source keep plain fields (flush_lsn, counters); the
 * metrics read them when scraped (`collect`), so the hot paths stay free of prom-client calls. The one
 * exception is the append→ack histogram, observed per acknowledged AppendRequest (`observeAppendAck`):
 * a histogram cannot be rebuilt from a summary. Counters are re-set from the source fields on each scrape
 * (reset + inc), which is exact as the fields only grow. Series per safekeeper carry `safekeeper="host:port"`
 * as configured; the set of safekeepers is fixed for the process, so series never need removing.
 * LSNs are gauges of byte positions (a float64 is exact up to 2^53 bytes of WAL). Main thread.
 */
import { collectDefaultMetrics, Counter, Gauge, Histogram, Registry } from 'prom-client';
import type { PostgresSource } from './postgres_source.js';
import type { Proposer } from './proposer.js';

/** Append→ack latency buckets in seconds: a flush on a fast disk (~1 ms) to a stalled safekeeper (10 s). */
export const APPEND_ACK_SECONDS_BUCKETS = [0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10];

const LABELS = ['safekeeper'] as const;

export class ProposerMetrics {
  readonly registry = new Registry();
  readonly #appendAckSeconds: Histogram<'safekeeper'>;

  constructor(proposer: Proposer, primary: PostgresSource | null) {
    const registers = [this.registry];
    collectDefaultMetrics({ register: this.registry });
    new Gauge({
      name: 'safekeeper_proposer_term', help: 'The term the proposer campaigns for or was elected in', registers,
      collect(this: Gauge) { this.set(Number(proposer.status().term)); },
    });
    new Gauge({
      name: 'safekeeper_proposer_commit_lsn', help: 'WAL position a quorum of safekeepers has flushed (commit_lsn), as a byte position', registers,
      collect(this: Gauge) { this.set(Number(proposer.commitLsn())); },
    });
    new Gauge({
      name: 'safekeeper_proposer_safekeeper_flush_lsn', help: 'flush_lsn last acknowledged by each safekeeper in our term, as a byte position', labelNames: LABELS, registers,
      collect(this: Gauge<'safekeeper'>) { for (const link of proposer.links) this.set({ safekeeper: link.name }, Number(link.flushLsn)); },
    });
    new Gauge({
      name: 'safekeeper_proposer_safekeeper_connected', help: '1 while a session with the safekeeper is established (past connect), else 0', labelNames: LABELS, registers,
      collect(this: Gauge<'safekeeper'>) { for (const link of proposer.links) this.set({ safekeeper: link.name }, link.state === 'offline' || link.state === 'connecting' ? 0 : 1); },
    });
    new Counter({
      name: 'safekeeper_proposer_safekeeper_reconnects_total', help: 'Connection attempts to the safekeeper after the first', labelNames: LABELS, registers,
      collect(this: Counter<'safekeeper'>) { this.reset(); for (const link of proposer.links) this.inc({ safekeeper: link.name }, link.reconnectsTotal); },
    });
    new Counter({
      name: 'safekeeper_proposer_safekeeper_sent_wal_bytes_total', help: 'WAL bytes sent to the safekeeper in AppendRequests', labelNames: LABELS, registers,
      collect(this: Counter<'safekeeper'>) { this.reset(); for (const link of proposer.links) this.inc({ safekeeper: link.name }, link.sentWalBytesTotal); },
    });
    this.#appendAckSeconds = new Histogram({
      name: 'safekeeper_proposer_append_ack_seconds', help: 'Time from sending an AppendRequest with WAL to the safekeeper reporting it flushed',
      labelNames: LABELS, buckets: APPEND_ACK_SECONDS_BUCKETS, registers,
    });
    for (const link of proposer.links) this.#appendAckSeconds.zero({ safekeeper: link.name });
    if (primary === null) return;
    new Gauge({
      name: 'safekeeper_proposer_primary_received_lsn', help: 'End of the WAL received from the primary, as a byte position', registers,
      collect(this: Gauge) { this.set(Number(primary.receivedLsn)); },
    });
    new Gauge({
      name: 'safekeeper_proposer_primary_connected', help: '1 while the replication stream from the primary is up, 0 while reconnecting', registers,
      collect(this: Gauge) { this.set(primary.connected ? 1 : 0); },
    });
    new Counter({
      name: 'safekeeper_proposer_primary_reconnects_total', help: 'Successful reconnects to the primary after losing it mid-stream', registers,
      collect(this: Counter) { this.reset(); this.inc(primary.reconnectsTotal); },
    });
  }

  /** An AppendRequest to `safekeeper` was acknowledged `latencyMs` after it was sent. */
  observeAppendAck(safekeeper: string, latencyMs: number): void {
    this.#appendAckSeconds.observe({ safekeeper }, latencyMs / 1000);
  }
}
