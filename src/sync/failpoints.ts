/**
 * Failpoints: named points in multi-step background tasks (upload, removal, eviction, unevict) where a test
 * can make the task stop, fail or crash, to check that every step boundary is crash-safe. Enabled only in
 * test mode (`testing_failpoints`); otherwise `hit()` costs one map lookup on an empty map.
 *
 * Actions (the `fail` crate's syntax, as Neon's /v1/failpoints takes it, reduced): `off`; `pause` (wait
 * until the action changes, or the task's signal fires); `error` or `return` (throw FailpointError, which
 * the task handles like any operating error); `exit` (SIGKILL this process on the spot: a kill -9 at
 * exactly this step); `sleep(N)` (N ms). A term may carry a count, `N*ACTION` (the next N hits only), and
 * terms chain with `->`: `2*off->exit` lets two hits pass and kills the process at the third.
 * Each hit is counted, so a test can wait until a task has reached a point. Single thread (the
 * coordinator's); main forwards the HTTP route's settings as messages.
 */
import { InvalidArgumentError, SafekeeperError } from '../errors.js';
import { sleep } from './cancel.js';
import { Watch } from './watch.js';

export class FailpointError extends SafekeeperError {
  override readonly name = 'FailpointError';
  readonly code = 'SK_FAILPOINT';
  readonly sqlState = 'XX000';
  constructor(readonly point: string) {
    super(`failpoint ${point} injected an error`);
  }
}

export type FailpointTask = { kind: 'off' } | { kind: 'pause' } | { kind: 'error' } | { kind: 'exit' } | { kind: 'sleep'; delayMs: number };
/** Terms in order; a term with a count applies to that many hits, then the next term takes over. */
export type FailpointAction = { task: FailpointTask; count: number | null }[];

function parseTask(text: string, whole: string): FailpointTask {
  switch (text) {
    case 'off':
    case 'pause':
    case 'error':
    case 'exit':
      return { kind: text };
    case 'return':
      return { kind: 'error' };
  }
  const sleepMatch = /^sleep\((\d{1,7})\)$/.exec(text);
  if (sleepMatch !== null) return { kind: 'sleep', delayMs: Number(sleepMatch[1]) };
  throw new InvalidArgumentError(`unknown failpoint action ${JSON.stringify(whole)} (off, pause, error, exit, sleep(N), N*ACTION, A->B)`);
}

/** Parses `off`, `pause`, `error` (or `return`), `exit`, `sleep(N)`, with `N*` counts and `->` chains. */
export function parseFailpointAction(text: string): FailpointAction {
  return text.split('->').map((term) => {
    const match = /^\s*(?:(\d{1,6})\*)?(.+?)\s*$/.exec(term);
    if (match === null) throw new InvalidArgumentError(`unknown failpoint action ${JSON.stringify(text)}`);
    return { task: parseTask(match[2] ?? '', text), count: match[1] === undefined ? null : Number(match[1]) };
  });
}

export function formatFailpointAction(action: FailpointAction): string {
  return action.map(({ task, count }) => `${count === null ? '' : `${count}*`}${task.kind === 'sleep' ? `sleep(${task.delayMs})` : task.kind}`).join('->') || 'off';
}

export interface FailpointState {
  name: string;
  action: string;
  hits: number;
}

export class Failpoints {
  readonly #actions = new Map<string, FailpointAction>();
  readonly #hits = new Map<string, number>();
  /** Bumped on every `set`, so paused tasks re-read their action. */
  readonly #changes = new Watch(0);

  constructor(readonly enabled: boolean) {}

  set(name: string, action: FailpointAction): void {
    if (!this.enabled) throw new InvalidArgumentError('failpoints are disabled (start the node with testing_failpoints = true)');
    const terms = action.map((term) => ({ ...term }));
    if (terms.length === 0 || (terms.length === 1 && terms[0]?.task.kind === 'off' && terms[0].count === null)) this.#actions.delete(name);
    else this.#actions.set(name, terms);
    this.#changes.set(this.#changes.value + 1);
  }

  list(): FailpointState[] {
    const names = new Set([...this.#actions.keys(), ...this.#hits.keys()]);
    return [...names].sort().map((name) => ({ name, action: formatFailpointAction(this.#actions.get(name) ?? []), hits: this.#hits.get(name) ?? 0 }));
  }

  /** Runs the action configured for `name`, if any. Rejects with FailpointError or the signal's reason. */
  async hit(name: string, signal: AbortSignal): Promise<void> {
    if (!this.enabled) return;
    this.#hits.set(name, (this.#hits.get(name) ?? 0) + 1);
    const terms = this.#actions.get(name);
    if (terms === undefined) return;
    // The first term with hits left takes this hit (a counted term uses one up).
    while (terms.length > 0 && terms[0]?.count === 0) terms.shift();
    const term = terms[0];
    if (term === undefined) return;
    if (term.count !== null) term.count -= 1;
    await this.#run(name, term.task, signal);
  }

  async #run(name: string, task: FailpointTask, signal: AbortSignal): Promise<void> {
    switch (task.kind) {
      case 'off':
        return;
      case 'error':
        throw new FailpointError(name);
      case 'exit':
        process.kill(process.pid, 'SIGKILL');
        return;
      case 'sleep':
        await sleep(task.delayMs, signal);
        return;
      case 'pause': {
        // Paused until someone changes this point's action; then the new action decides.
        const version = this.#changes.version;
        await this.#changes.changed(version, signal);
        const terms = this.#actions.get(name);
        const next = terms?.find((term) => term.count !== 0);
        if (next !== undefined) await this.#run(name, next.task, signal);
        return;
      }
    }
  }
}
