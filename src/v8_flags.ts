/**
 * The V8 flags the node runs with, and a check that they were given.
 *
 * `--initial-old-space-size=128`: V8 counts ArrayBuffer memory allocated since the last full GC against the
 * old generation's limit, and Node gives accepted sockets no way to read into a reused buffer, so every
 * socket read allocates a fresh one. At a few hundred MiB/s of ingest the main thread's small heap (~16 MB
 * live, so a limit of ~40 MB) reached that limit every ~70 ms and ran a full mark-compact each time: a
 * pause of a few ms on the main thread plus concurrent marking on V8's helper threads, measured at ~15% of
 * ingest throughput on 2 cores. Starting the limit at 128 MiB keeps it far above what short-lived read
 * buffers add between the scavenges that free them (the heap itself stays small). V8 reads the flag only
 * when a heap is created, so it cannot be set from inside the process: the shebang of main.ts, `npm start`
 * and the test harness pass it, and `run` warns when it is missing.
 */
export const V8_FLAGS = ['--initial-old-space-size=128'] as const;

/** The flags of V8_FLAGS missing from the command line (`execArgv`; Node refuses them in NODE_OPTIONS). */
export function missingV8Flags(execArgv: readonly string[]): string[] {
  const given = new Set(execArgv.map((flag) => flag.split('=')[0]));
  return V8_FLAGS.filter((flag) => !given.has(flag.split('=')[0]));
}
