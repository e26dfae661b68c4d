/**
 * The entry points of the proposer-acceptor codec: dispatch on the protocol version chosen by
 * START_WAL_PUSH (`proto_version`, default 2). Message types and the AppendRequest hot path are in
 * `messages.ts`; layouts in `messages_v3.ts` and `messages_v2.ts`. Pure; any thread.
 *
 * The acceptor side uses decodeProposerMessage + encodeAcceptorMessage; our proposer and test clients
 * use encodeProposerMessage + decodeAcceptorMessage.
 */
import type { AcceptorMessage, ProposerMessage, ProtocolVersion } from './messages.js';
import { decodeAcceptorMessageV2, decodeProposerMessageV2, encodeAcceptorMessageV2, encodeProposerMessageV2 } from './messages_v2.js';
import { decodeAcceptorMessageV3, decodeProposerMessageV3, encodeAcceptorMessageV3, encodeProposerMessageV3 } from './messages_v3.js';

/** Decodes the payload of one CopyData from a proposer. Trailing bytes are ignored, as in Neon. */
export function decodeProposerMessage(payload: Uint8Array, protocolVersion: ProtocolVersion): ProposerMessage {
  return protocolVersion === 3 ? decodeProposerMessageV3(payload) : decodeProposerMessageV2(payload);
}

/** Encodes a reply; the result is exactly the CopyData payload (no extra bytes). */
export function encodeAcceptorMessage(message: AcceptorMessage, protocolVersion: ProtocolVersion): Uint8Array {
  return protocolVersion === 3 ? encodeAcceptorMessageV3(message) : encodeAcceptorMessageV2(message);
}

export function encodeProposerMessage(message: ProposerMessage, protocolVersion: ProtocolVersion): Uint8Array {
  return protocolVersion === 3 ? encodeProposerMessageV3(message) : encodeProposerMessageV2(message);
}

/** Decodes an acceptor reply; it must be consumed exactly, as walproposer requires. */
export function decodeAcceptorMessage(payload: Uint8Array, protocolVersion: ProtocolVersion): AcceptorMessage {
  return protocolVersion === 3 ? decodeAcceptorMessageV3(payload) : decodeAcceptorMessageV2(payload);
}
