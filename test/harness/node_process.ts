/**
 * Runs the real `safekeeper` CLI (src/main.ts under tsx) as a child process for integration tests, or the
 * compiled build (`built: true`, dist/src/main.js, what `npm start` runs) for benchmarks, which must measure
 * what ships: under tsx the writer's hot loop runs markedly slower.
 * `spawnNode(args)` waits for the ready line `listening pg=HOST:PORT http=HOST:PORT` on stdout, with a
 * deadline, and returns the ports and handles to stop or kill the process. `runCli(args)` runs a one-shot
 * command to completion. Every spawned process is tracked and killed by `killAllNodes()` (call it in
 * `after()`), so a failing test does not leave processes behind. Output is captured for assertions and
 * for the failure messages.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { appendFileSync, readdirSync, statSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { V8_FLAGS } from '../../src/v8_flags.js';

export const REPO_ROOT = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
export const MAIN_PATH = join(REPO_ROOT, 'src', 'main.ts');
/** The compiled CLI that `npm start` runs (`npm run build` writes it). */
export const BUILT_MAIN_PATH = join(REPO_ROOT, 'dist', 'src', 'main.js');
/** The sources the build compiles; the build is stale when one is newer than BUILT_MAIN_PATH. */
const SOURCE_DIRS = ['src', 'workers'];
/** tsx compiles on first start; a loaded CI machine can take several seconds. */
export const READY_TIMEOUT_MS_DEFAULT = 30_000;
const READY_LINE = /^listening pg=(.+):(\d+) http=(.+):(\d+)$/;

export interface ExitStatus {
  readonly code: number | null;
  readonly signal: NodeJS.Signals | null;
}

export interface NodeProcess {
  readonly process: ChildProcess;
  readonly pgHost: string;
  readonly pgPort: number;
  readonly httpHost: string;
  readonly httpPort: number;
  /** `http://HOST:PORT` of the HTTP API. */
  readonly httpUrl: string;
  stdout(): string;
  stderr(): string;
  /** Resolves when the process has exited (at once if it already has). */
  waitExit(): Promise<ExitStatus>;
  /** SIGTERM, then waits for the exit. */
  stop(): Promise<ExitStatus>;
  /** SIGKILL, then waits for the exit. */
  kill9(): Promise<ExitStatus>;
}

export interface SpawnOptions {
  readonly cwd?: string;
  readonly env?: NodeJS.ProcessEnv;
  readonly readyTimeoutMs?: number;
  /** Run the compiled build instead of src/ under tsx (benchmarks); it must be up to date. */
  readonly built?: boolean;
}

const liveProcesses = new Set<ChildProcess>();

/** The usual arguments of a test node: its data dir, ephemeral ports, JSON logs. */
export function testNodeArgs(dataDir: string, extra: readonly string[] = []): string[] {
  return ['run', '--data-dir', dataDir, '--listen-pg', '127.0.0.1:0', '--listen-http', '127.0.0.1:0', '--log-format', 'json', ...extra];
}

/**
 * Collects a child's stdout and stderr as text. Debugging aid: SK_TEST_NODE_LOG=FILE also appends its
 * stderr (the log of a node or a proposer) to FILE.
 */
export function captureOutput(child: ChildProcess): { stdout: string; stderr: string } {
  const out = { stdout: '', stderr: '' };
  child.stdout?.setEncoding('utf8').on('data', (chunk: string) => (out.stdout += chunk));
  child.stderr?.setEncoding('utf8').on('data', (chunk: string) => (out.stderr += chunk));
  const logFile = process.env['SK_TEST_NODE_LOG'];
  if (logFile !== undefined) child.stderr?.on('data', (chunk: string) => appendFileSync(logFile, chunk));
  return out;
}

/**
 * The node arguments that run the CLI with the V8 flags it ships with: src/main.ts under tsx, or the build,
 * which is checked for being up to date so that a benchmark never measures old code. Profiling aid:
 * SK_NODE_FLAGS adds Node flags that NODE_OPTIONS refuses (e.g. `--cpu-prof --cpu-prof-dir=DIR`).
 */
export function cliEntry(built: boolean): string[] {
  const flags = [...V8_FLAGS, ...(process.env['SK_NODE_FLAGS'] ?? '').split(' ').filter((flag) => flag !== '')];
  if (!built) return [...flags, '--import', 'tsx', MAIN_PATH];
  const builtMs = statSync(BUILT_MAIN_PATH, { throwIfNoEntry: false })?.mtimeMs;
  if (builtMs === undefined) throw new Error(`${BUILT_MAIN_PATH} is missing: run \`npm run build\` first (\`npm run bench\` does)`);
  for (const dir of SOURCE_DIRS) {
    for (const name of readdirSync(join(REPO_ROOT, dir), { recursive: true, encoding: 'utf8' })) {
      const path = join(REPO_ROOT, dir, name);
      if (/\.[cm]?[jt]s$/.test(name) && statSync(path).mtimeMs > builtMs) {
        throw new Error(`the build is older than ${path}: run \`npm run build\` first (\`npm run bench\` does)`);
      }
    }
  }
  return [...flags, BUILT_MAIN_PATH];
}

function spawnCli(args: readonly string[], options: SpawnOptions): { child: ChildProcess; exited: Promise<ExitStatus>; out: { stdout: string; stderr: string } } {
  const child = spawn(process.execPath, [...cliEntry(options.built ?? false), ...args], {
    cwd: options.cwd ?? REPO_ROOT,
    env: options.env ?? process.env,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  liveProcesses.add(child);
  const out = captureOutput(child);
  const exited = new Promise<ExitStatus>((resolve) => {
    child.once('close', (code, signal) => {
      liveProcesses.delete(child);
      resolve({ code, signal });
    });
  });
  return { child, exited, out };
}

/** Spawns `safekeeper ARGS` and resolves once it prints its ready line. Rejects if it exits first or the deadline passes. */
export async function spawnNode(args: readonly string[], options: SpawnOptions = {}): Promise<NodeProcess> {
  const { child, exited, out } = spawnCli(args, options);
  const timeoutMs = options.readyTimeoutMs ?? READY_TIMEOUT_MS_DEFAULT;
  const match = await new Promise<RegExpExecArray>((resolve, reject) => {
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`safekeeper not ready after ${timeoutMs} ms\nstdout:\n${out.stdout}\nstderr:\n${out.stderr}`));
    }, timeoutMs);
    const onData = (): void => {
      for (const line of out.stdout.split('\n')) {
        const found = READY_LINE.exec(line);
        if (found === null) continue;
        clearTimeout(timer);
        child.stdout?.off('data', onData);
        resolve(found);
        return;
      }
    };
    child.stdout?.on('data', onData);
    void exited.then((status) => {
      clearTimeout(timer);
      reject(new Error(`safekeeper exited before ready (code ${status.code}, signal ${status.signal})\nstdout:\n${out.stdout}\nstderr:\n${out.stderr}`));
    });
  });
  const [, pgHost = '', pgPort = '', httpHost = '', httpPort = ''] = match;
  const waitExit = (): Promise<ExitStatus> => exited;
  return {
    process: child,
    pgHost,
    pgPort: Number(pgPort),
    httpHost,
    httpPort: Number(httpPort),
    httpUrl: `http://${httpHost}:${httpPort}`,
    stdout: () => out.stdout,
    stderr: () => out.stderr,
    waitExit,
    stop: () => {
      child.kill('SIGTERM');
      return exited;
    },
    kill9: () => {
      child.kill('SIGKILL');
      return exited;
    },
  };
}

/** Runs `safekeeper ARGS` to completion (killed after `timeoutMs`). */
export async function runCli(args: readonly string[], options: SpawnOptions & { timeoutMs?: number } = {}): Promise<ExitStatus & { stdout: string; stderr: string }> {
  const { child, exited, out } = spawnCli(args, options);
  const timer = setTimeout(() => child.kill('SIGKILL'), options.timeoutMs ?? READY_TIMEOUT_MS_DEFAULT);
  const status = await exited;
  clearTimeout(timer);
  return { ...status, stdout: out.stdout, stderr: out.stderr };
}

/** Kills every process this harness started that is still running; for `after()` hooks. */
export async function killAllNodes(): Promise<void> {
  const waits = [...liveProcesses].map((child) => {
    const closed = new Promise<void>((resolve) => child.once('close', () => resolve()));
    child.kill('SIGKILL');
    return closed;
  });
  await Promise.all(waits);
}

