/**
 * Password authentication for the frontend client (`client.ts`): the bodies of the PasswordMessage and
 * SASL messages for cleartext, MD5 and SCRAM-SHA-256 (RFC 5802/7677, as PostgreSQL implements it: no
 * channel binding, the user name in client-first-message left empty because the server takes it from the
 * startup packet). Built on node:crypto only.
 *
 * Not done: SASLprep normalisation of the password (PostgreSQL applies it when the password is valid
 * UTF-8 and needs it; plain ASCII passwords, the usual case, are unchanged by it).
 * Pure apart from the random nonce; main thread.
 */
import { createHash, createHmac, pbkdf2Sync, randomBytes, timingSafeEqual } from 'node:crypto';
import { ProtocolViolationError } from '../errors.js';

export const SCRAM_SHA_256 = 'SCRAM-SHA-256';
const SCRAM_KEY_BYTES = 32;
/** RFC 5802 recommends at least 4096 iterations; PostgreSQL's default is 4096. Refuse absurd costs. */
const SCRAM_ITERATIONS_MAX = 10_000_000;
const CLIENT_NONCE_BYTES = 18;

/** The PasswordMessage body for MD5: "md5" + md5hex(md5hex(password + user) + salt), NUL-terminated. */
export function md5PasswordBody(user: string, password: string, salt: Buffer): Buffer {
  const inner = createHash('md5').update(password, 'utf8').update(user, 'utf8').digest('hex');
  const outer = createHash('md5').update(inner, 'latin1').update(salt).digest('hex');
  return Buffer.from(`md5${outer}\0`, 'latin1');
}

export function cleartextPasswordBody(password: string): Buffer {
  return Buffer.from(`${password}\0`, 'utf8');
}

/** One SCRAM-SHA-256 exchange: `firstMessage()`, then `finalMessage(serverFirst)`, then `verify(serverFinal)`. */
export class ScramClient {
  readonly #password: string;
  readonly #clientNonce = randomBytes(CLIENT_NONCE_BYTES).toString('base64');
  #clientFirstBare = '';
  #expectedServerSignature: Buffer | null = null;

  constructor(password: string) {
    this.#password = password;
  }

  /** The SASLInitialResponse body: mechanism name, int32 length, client-first-message. */
  firstMessage(): Buffer {
    this.#clientFirstBare = `n=,r=${this.#clientNonce}`;
    const data = Buffer.from(`n,,${this.#clientFirstBare}`, 'utf8');
    const mechanism = Buffer.from(`${SCRAM_SHA_256}\0`, 'latin1');
    const length = Buffer.alloc(4);
    length.writeInt32BE(data.length, 0);
    return Buffer.concat([mechanism, length, data]);
  }

  /** The SASLResponse body (client-final-message) for the server-first-message. */
  finalMessage(serverFirst: string): Buffer {
    const attributes = parseAttributes(serverFirst);
    const nonce = attributes.get('r');
    const saltText = attributes.get('s');
    const iterations = Number(attributes.get('i'));
    if (nonce === undefined || !nonce.startsWith(this.#clientNonce) || nonce.length === this.#clientNonce.length) {
      throw new ProtocolViolationError('SASL', 'server nonce does not extend the client nonce');
    }
    if (saltText === undefined || !Number.isInteger(iterations) || iterations < 1 || iterations > SCRAM_ITERATIONS_MAX) {
      throw new ProtocolViolationError('SASL', 'bad salt or iteration count in server-first-message');
    }
    const saltedPassword = pbkdf2Sync(this.#password, Buffer.from(saltText, 'base64'), iterations, SCRAM_KEY_BYTES, 'sha256');
    const clientKey = hmac(saltedPassword, 'Client Key');
    const storedKey = createHash('sha256').update(clientKey).digest();
    const clientFinalWithoutProof = `c=biws,r=${nonce}`;
    const authMessage = `${this.#clientFirstBare},${serverFirst},${clientFinalWithoutProof}`;
    const clientSignature = hmac(storedKey, authMessage);
    const proof = Buffer.alloc(SCRAM_KEY_BYTES);
    for (let index = 0; index < SCRAM_KEY_BYTES; index += 1) proof[index] = (clientKey[index] as number) ^ (clientSignature[index] as number);
    this.#expectedServerSignature = hmac(hmac(saltedPassword, 'Server Key'), authMessage);
    return Buffer.from(`${clientFinalWithoutProof},p=${proof.toString('base64')}`, 'utf8');
  }

  /** Checks the server-final-message: the server proves it knows the password too. */
  verify(serverFinal: string): void {
    const signature = parseAttributes(serverFinal).get('v');
    const expected = this.#expectedServerSignature;
    if (signature === undefined || expected === null) throw new ProtocolViolationError('SASL', 'no server signature in server-final-message');
    const actual = Buffer.from(signature, 'base64');
    if (actual.length !== expected.length || !timingSafeEqual(actual, expected)) {
      throw new ProtocolViolationError('SASL', 'server signature does not match: the server does not know the password');
    }
  }
}

function hmac(key: Buffer, text: string): Buffer {
  return createHmac('sha256', key).update(text, 'utf8').digest();
}

function parseAttributes(message: string): Map<string, string> {
  const attributes = new Map<string, string>();
  for (const part of message.split(',')) {
    const equals = part.indexOf('=');
    if (equals === 1) attributes.set(part.slice(0, 1), part.slice(2));
  }
  return attributes;
}
