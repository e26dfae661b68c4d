/**
 * What the runtime floor's three parts share (bench/runtime_floor.ts: client; runtime_floor_server.ts:
 * server process; runtime_floor_writer.ts: its Piscina writer). The wire is as plain as it gets: the client
 * sends raw bytes, the server answers with acks, each one float64 (little-endian) counting the bytes made
 * durable so far.
 */
export const RUNTIME_FLOOR_SEGMENT_BYTES = 16 * 1024 * 1024;
export const RUNTIME_FLOOR_ACK_BYTES = 8;
/** The server's ready line on stdout; the port follows. */
export const RUNTIME_FLOOR_READY = 'runtime floor listening on port ';

export interface FloorWorkerData {
  readonly ring: SharedArrayBuffer;
  /** Holds the two preallocated segment files. */
  readonly dir: string;
  /**
   * 0: one CRC-32C call per ring piece. Otherwise the bytes are checked as records of this size, each the
   * way the node verifies a WAL record (a CRC of its body, continued over its 20-byte header, compared with
   * 4 bytes of it), and a batch of at least OVERLAP_VERIFY_MIN_BYTES is checked while its fdatasync runs, as
   * the node's writer does: the cost of per-record verification with none of the decoder's other work.
   */
  readonly recordBytes: number;
}
