/**
 * Bounds of every buffer and queue, each with the reason for its size. Relations between bounds are
 * asserted here, once, at load. Configurable bounds have their defaults and allowed ranges here and
 * their keys in `config/schema.ts`.
 */
import { assert } from './sync/assert.js';

/** walproposer sends at most 128 KiB of WAL per AppendRequest (MAX_SEND_SIZE). */
export const APPEND_WAL_BYTES_MAX = 128 * 1024;
/** Ceiling for the configurable message size limit: one AppendRequest plus generous headroom for headers. */
export const FRAME_BYTES_MAX = 1 << 20;
/** Default message size limit (`max_message_bytes`). */
export const FRAME_BYTES_DEFAULT = 256 * 1024;
/** A StartupMessage carries a handful of short parameters; PostgreSQL itself caps it at 10000 bytes. */
export const STARTUP_PACKET_BYTES_MAX = 10_000;
/** The HTTP API takes small JSON documents only. */
export const HTTP_BODY_BYTES_MAX = 1 << 20;
/**
 * Concurrent connections on the HTTP port (operators and metrics scrapers, a handful in practice). Without a
 * bound, idle connections could take every file descriptor, and an append then fails to open its segment.
 */
export const HTTP_CONNECTIONS_MAX = 1_000;
/** An HTTP connection with no bytes either way for this long is closed (a request that long still in progress, too). */
export const HTTP_IDLE_TIMEOUT_MS = 300_000;
/**
 * Requests served on one HTTP connection; the last answer says `Connection: close`, later requests get a short
 * 503 (Node). Bounds what a client that pipelines requests without reading the answers makes the node buffer.
 */
export const HTTP_REQUESTS_PER_CONNECTION_MAX = 100;
/** Concurrent client connections on the pg port. */
export const CONNECTIONS_MAX = 10_000;
/** Smaller, and one frame could wait for ring space forever. */
export const RING_SIZE_BYTES_MIN = 2 * FRAME_BYTES_MAX;
export const RING_SIZE_BYTES_DEFAULT = 16 * 1024 * 1024;
/** A wait that can stall logs a warning after this long and is counted. */
export const SLOW_WAIT_MS = 10_000;
/** A socket that sends nothing for this long is dropped (Neon: 600 s). */
export const SOCKET_READ_TIMEOUT_MS = 600_000;

assert(RING_SIZE_BYTES_MIN % 8 === 0, 'ring slots stay 8-byte aligned');
assert(FRAME_BYTES_DEFAULT <= FRAME_BYTES_MAX, 'default frame limit within the ceiling');
assert(APPEND_WAL_BYTES_MAX + 128 <= FRAME_BYTES_DEFAULT, 'an AppendRequest fits in a default frame');
assert(RING_SIZE_BYTES_DEFAULT >= RING_SIZE_BYTES_MIN, 'default ring above the minimum');
