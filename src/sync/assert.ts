/**
 * Invariant checks. A broken invariant is a bug in our code, never bad input: nothing catches an
 * AssertionError and the node exits. Acknowledged WAL is durable, so crashing is safe; limping on is not.
 * Assertions stay on in production. Messages are constant strings so nothing is built per call.
 */
export class AssertionError extends Error {
  override readonly name = 'AssertionError';
}

export function assert(condition: boolean, message = 'assertion failed'): asserts condition {
  if (!condition) throw new AssertionError(message);
}

/** Ends every switch over a union: the compiler proves it unreachable, the runtime check catches lies. */
export function unreachable(value: never, message = 'unreachable'): never {
  throw new AssertionError(`${message}: ${String(value)}`);
}
