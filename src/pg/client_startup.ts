/**
 * The frontend client's startup exchange: the StartupMessage with its parameters, then authentication
 * (trust, cleartext password, MD5, SCRAM-SHA-256) until ReadyForQuery.
 *
 * Design: this module owns the order of the exchange and which password message answers which request;
 * the message bodies and the SCRAM arithmetic are in `client_auth.ts`, and the socket is reached through a
 * `StartupLink` that `PgClient.connect` provides, so nothing here touches the client's queue directly.
 * Errors: an ErrorResponse is a PgServerError; a missing password, an unsupported method or a SASL step out
 * of order is a PgConnectionError; a server SCRAM signature that does not verify is a ProtocolViolationError.
 * Abort behaviour: the exchange has no signal of its own; the caller's connect deadline and abort destroy the
 * connection, which ends the wait here with the close error. Main thread.
 */
import { decodeErrorFields } from './backend_parser.js';
import { cleartextPasswordBody, md5PasswordBody, SCRAM_SHA_256, ScramClient } from './client_auth.js';
import { type BackendMessage, PgConnectionError, PgServerError, typedMessage } from './client_protocol.js';

const PROTOCOL_VERSION_3 = 196608;
/** PasswordMessage, SASLInitialResponse and SASLResponse all use the tag 'p'. */
const PASSWORD_MESSAGE_TAG = 0x70;

/** The startup parameters and credentials of a connection. */
export interface StartupOptions {
  user: string;
  database?: string;
  password?: string;
  applicationName?: string;
  /** The startup `options` parameter, e.g. `-c timeline_id=<tl> tenant_id=<t>`. */
  options?: string;
  /** `true` for a physical replication connection (walsender), `database` for a logical one. */
  replication?: 'true' | 'database';
}

/** What the exchange needs of the connection. */
export interface StartupLink {
  /** Writes one frontend message to the socket. */
  write(bytes: Uint8Array): boolean;
  /** The next backend message (ParameterStatus and NoticeResponse already absorbed). */
  next(signal: AbortSignal): Promise<BackendMessage>;
  /** Destroys the connection and returns the error to throw for a message that has no place here. */
  unexpected(message: BackendMessage, expected: string): Error;
}

/** Sends the StartupMessage and answers authentication requests until ReadyForQuery. */
export async function runStartup(link: StartupLink, options: StartupOptions): Promise<void> {
  const parameters: [string, string][] = [['user', options.user], ['database', options.database ?? options.user], ['client_encoding', 'UTF8']];
  if (options.applicationName !== undefined) parameters.push(['application_name', options.applicationName]);
  if (options.options !== undefined) parameters.push(['options', options.options]);
  if (options.replication !== undefined) parameters.push(['replication', options.replication]);
  link.write(startupMessage(parameters));
  const never = new AbortController().signal; // the connect timeout bounds the whole startup
  let scram: ScramClient | null = null;
  for (;;) {
    const message = await link.next(never);
    switch (String.fromCharCode(message.tag)) {
      case 'R':
        scram = authenticate(link, message.body, options, scram);
        break;
      case 'K': // BackendKeyData: we never cancel
        break;
      case 'E':
        throw new PgServerError(decodeErrorFields(message.body), 'startup');
      case 'Z':
        return;
      case 'v': // NegotiateProtocolVersion: the server ignores parameters it does not know
        break;
      default:
        throw link.unexpected(message, 'an authentication message');
    }
  }
}

/** Answers one Authentication* request. Returns the SCRAM exchange while one is in progress, else null. */
function authenticate(link: StartupLink, body: Buffer, options: StartupOptions, scram: ScramClient | null): ScramClient | null {
  const code = body.readInt32BE(0);
  const password = options.password;
  const needPassword = (): string => {
    if (password === undefined) throw new PgConnectionError(`the server asks for a password for user ${JSON.stringify(options.user)} and none was given`);
    return password;
  };
  switch (code) {
    case 0: // AuthenticationOk
      return null;
    case 3: // cleartext
      link.write(typedMessage(PASSWORD_MESSAGE_TAG, cleartextPasswordBody(needPassword())));
      return null;
    case 5: // MD5 with a 4-byte salt
      link.write(typedMessage(PASSWORD_MESSAGE_TAG, md5PasswordBody(options.user, needPassword(), body.subarray(4, 8))));
      return null;
    case 10: { // SASL: a list of mechanisms
      const mechanisms = body.toString('utf8', 4).split('\0').filter((name) => name !== '');
      if (!mechanisms.includes(SCRAM_SHA_256)) throw new PgConnectionError(`no supported SASL mechanism among ${mechanisms.join(', ')}`);
      const client = new ScramClient(needPassword());
      link.write(typedMessage(PASSWORD_MESSAGE_TAG, client.firstMessage()));
      return client;
    }
    case 11: // SASLContinue: server-first-message
      if (scram === null) throw new PgConnectionError('SASLContinue without a SASL exchange');
      link.write(typedMessage(PASSWORD_MESSAGE_TAG, scram.finalMessage(body.toString('utf8', 4))));
      return scram;
    case 12: // SASLFinal: server-final-message
      if (scram === null) throw new PgConnectionError('SASLFinal without a SASL exchange');
      scram.verify(body.toString('utf8', 4));
      return null;
    default:
      throw new PgConnectionError(`unsupported authentication method ${code} (trust, password, md5 and scram-sha-256 are supported)`);
  }
}

/** StartupMessage: int32 length, int32 protocol version 3.0, then NUL-terminated name/value pairs and a final NUL. */
function startupMessage(parameters: readonly [string, string][]): Buffer {
  const body = Buffer.from(`${parameters.map(([name, value]) => `${name}\0${value}\0`).join('')}\0`, 'utf8');
  const message = Buffer.allocUnsafe(8 + body.length);
  message.writeInt32BE(8 + body.length, 0);
  message.writeInt32BE(PROTOCOL_VERSION_3, 4);
  message.set(body, 8);
  return message;
}
