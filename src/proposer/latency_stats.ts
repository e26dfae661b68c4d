/**
 * Latency and throughput bookkeeping for the synthetic load: how long WAL waited from generation until the
 * quorum committed it. Samples are weighted (one sample per batch of records, weighted by its record count)
 * and kept in a bounded reservoir (Vitter's algorithm R over weights ≈ over samples), so memory stays fixed
 * however long the run. Pure; main thread.
 */
import { assert } from '../sync/assert.js';

/** Enough samples for a stable p99 while staying a few hundred KiB. */
const RESERVOIR_SAMPLES_MAX = 50_000;

export interface LatencySummary {
  count: number;
  p50Ms: number;
  p90Ms: number;
  p99Ms: number;
  maxMs: number;
}

export class LatencyStats {
  readonly #latencyMs: number[] = [];
  readonly #weights: number[] = [];
  #samplesSeen = 0;
  #recordCount = 0;
  #maxMs = 0;

  add(latencyMs: number, weight: number): void {
    assert(weight > 0, 'a sample counts at least one record');
    this.#recordCount += weight;
    if (latencyMs > this.#maxMs) this.#maxMs = latencyMs;
    this.#samplesSeen += 1;
    if (this.#latencyMs.length < RESERVOIR_SAMPLES_MAX) {
      this.#latencyMs.push(latencyMs);
      this.#weights.push(weight);
      return;
    }
    const slot = Math.floor(Math.random() * this.#samplesSeen);
    if (slot < RESERVOIR_SAMPLES_MAX) {
      this.#latencyMs[slot] = latencyMs;
      this.#weights[slot] = weight;
    }
  }

  summary(): LatencySummary {
    const order = this.#latencyMs.map((_, index) => index).sort((a, b) => (this.#latencyMs[a] as number) - (this.#latencyMs[b] as number));
    let totalWeight = 0;
    for (const weight of this.#weights) totalWeight += weight;
    const percentile = (fraction: number): number => {
      let seen = 0;
      for (const index of order) {
        seen += this.#weights[index] as number;
        if (seen >= fraction * totalWeight) return this.#latencyMs[index] as number;
      }
      return this.#maxMs;
    };
    return { count: this.#recordCount, p50Ms: percentile(0.5), p90Ms: percentile(0.9), p99Ms: percentile(0.99), maxMs: this.#maxMs };
  }
}
