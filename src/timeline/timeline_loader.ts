/**
 * Opening one timeline directory (`<data_dir>/<tenant>/<timeline>`) into a Timeline, for the registry's
 * load at startup and for each create (registry.ts): the control file, then the end of WAL found by decoding
 * the segments from the persisted commit_lsn (a record boundary) in a writer worker. A timeline that fails to
 * load is returned `broken` with its reason (and logged), so the node and the other timelines go on.
 *
 * Separate from the registry, which owns the map of timelines, the state block arena and the races between
 * create and delete: this reads one directory and shares no state but the state block it is handed.
 * Main thread (the WAL scan runs in a writer worker). Takes no signal: a load or a create waits for the scan.
 */
import { ttid, type TenantId, type TimelineId } from '../acceptor/state.js';
import { SafekeeperError } from '../errors.js';
import type { StateBlock } from '../ingest/state_block.js';
import { TimelineWal } from '../ingest/timeline_wal.js';
import { loadControlFile } from '../storage/control_file.js';
import { timelineDir } from '../storage/layout.js';
import { pageMagicForPgVersion } from '../wal/page.js';
import { ControlStore } from './control_store.js';
import type { RegistryOptions } from './registry.js';
import { Timeline } from './timeline.js';

/** What opening a timeline reads of the registry's options. */
export type TimelineOpenOptions = Pick<
  RegistryOptions,
  'dataDir' | 'nodeId' | 'noSync' | 'ringSizeBytes' | 'ringReleaseDelayMs' | 'pool' | 'cancel' | 'log' | 'onBatch' | 'onPrepared' | 'onRingBytes'
>;

/**
 * Opens a timeline's directory over `stateBlock` (the registry allocates it, and frees it when this throws):
 * a Timeline, broken if its files are. Only a bug or an I/O failure throws.
 */
export async function openTimeline(options: TimelineOpenOptions, stateBlock: StateBlock, tenantId: TenantId, timelineId: TimelineId): Promise<Timeline> {
  const { dataDir, nodeId, noSync, ringSizeBytes, ringReleaseDelayMs, pool } = options;
  const dir = timelineDir(dataDir, tenantId, timelineId);
  const broken = (reason: string): Timeline => {
    options.log.error({ tenant_id: tenantId, timeline_id: timelineId, reason }, 'timeline is broken');
    return new Timeline(tenantId, timelineId, dir, options.cancel.child(), stateBlock, null, null, nodeId, reason);
  };
  let state;
  try {
    state = await loadControlFile(dir);
  } catch (error) {
    if (error instanceof SafekeeperError) return broken(`control file: ${error.message}`);
    throw error;
  }
  if (state.tenantId !== tenantId || state.timelineId !== timelineId) {
    return broken(`control file names ${ttid(state.tenantId, state.timelineId)}, not its directory`);
  }
  try {
    pageMagicForPgVersion(state.server.pgVersion); // the WAL scan and every write task need it
  } catch (error) {
    if (error instanceof SafekeeperError) return broken(`control file: ${error.message}`);
    throw error;
  }
  const files = { dir, segmentSizeBytes: state.server.walSegSizeBytes, noSync };
  let endLsn = 0n;
  if (state.evictionState.kind === 'Offloaded') {
    // An offloaded timeline has (at most) its last segment locally: the end of WAL is what eviction
    // recorded, and the manager downloads the segment again before anything reads or writes it.
    endLsn = state.evictionState.flushLsn;
  } else if (state.commitLsn !== 0n) {
    const scan = await pool.scan({ kind: 'scan', startLsn: state.commitLsn, pgVersion: state.server.pgVersion, ...files });
    if (!scan.ok) return broken(`WAL scan: ${scan.detail}`);
    if (scan.endLsn < state.commitLsn) return broken(`WAL ends before commit_lsn (${scan.detail})`);
    endLsn = scan.endLsn;
  }
  const control = new ControlStore(dir, state, noSync); // the store owns `state` now: only read below
  // One literal with every field, so all timelines' options share one hidden class.
  const walOptions = { dir, segmentSizeBytes: files.segmentSizeBytes, pgVersion: state.server.pgVersion, ringSizeBytes, ringReleaseDelayMs, noSync, pool, state: stateBlock, onBatch: options.onBatch ?? ignoreResult, onPrepared: options.onPrepared ?? ignoreResult, onRingBytes: options.onRingBytes ?? ignoreResult };
  const wal = new TimelineWal(walOptions, endLsn);
  stateBlock.setMany({ commitLsn: state.commitLsn, term: state.acceptorState.term, localStartLsn: state.localStartLsn, backupLsn: state.backupLsn });
  // The ids of the control state (equal, checked above): one copy of each string per timeline.
  return new Timeline(state.tenantId, state.timelineId, dir, options.cancel.child(), stateBlock, control, wal, nodeId, null);
}

/** The `onBatch`, `onPrepared` and `onRingBytes` of a registry without them: shared, rather than a closure per timeline. */
function ignoreResult(): void {}
