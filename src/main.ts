#!/usr/bin/env -S node --initial-old-space-size=128
/**
 * The `safekeeper` command line: `run` starts a node, `config` prints the default config file, `propose`
 * runs a proposer (`proposer/cli.ts`, which parses its own flags).
 * Flags come from the config schema (every key has its kebab-case flag; boolean keys are switches), and
 * are parsed strictly: an unknown flag is an error, never ignored.
 *
 * Exit codes: 0 after a graceful stop (SIGTERM or SIGINT); 2 for a bad command line or config (the
 * message names the key and its source); 1 for anything else, including a data directory locked by
 * another process. A second signal during shutdown exits at once (1), and so does a shutdown that takes
 * longer than SHUTDOWN_TIMEOUT_MS. Uncaught errors are logged and exit 1: an AssertionError is a bug, and
 * acknowledged WAL is durable, so crashing is safe. Main thread.
 */
import { parseArgs } from 'node:util';
import { loadConfig, renderDefaultConfig } from './config/load.js';
import { CONFIG_KEYS, CONFIG_KEY_NAMES, flagName } from './config/schema.js';
import { ConfigError, SafekeeperError } from './errors.js';
import { createLogger, log, setRootLogger } from './log.js';
import { readPackageVersion, SafekeeperNode } from './node.js';
import { createNodeHooks } from './services.js';
import { missingV8Flags } from './v8_flags.js';
import { type ArgOptions, joinNegativeValues, runCommandOptions } from './config/argv.js';

/** A stop that takes longer than this is stuck (the gate logs who holds it); exit rather than hang. */
const SHUTDOWN_TIMEOUT_MS = 30_000;
const EXIT_OK = 0;
const EXIT_FAILURE = 1;
const EXIT_USAGE = 2;

function usage(): string {
  const lines = [
    'Usage: safekeeper <command> [flags]',
    '',
    'Commands:',
    '  run [--config FILE] [flags]   run a safekeeper node; prints "listening pg=HOST:PORT http=HOST:PORT" when ready',
    '  config                        print the default config file (every key, commented)',
    '  propose --safekeepers H:P,... --tenant-id T --timeline-id L (--from POSTGRES_URL | --synthetic)',
    '                                stream WAL to a quorum of safekeepers (see safekeeper propose --help)',
    '',
    'Flags (each is the config key in kebab-case; flags override the file, the file overrides defaults):',
  ];
  for (const name of CONFIG_KEY_NAMES) {
    const spec = CONFIG_KEYS[name];
    const flag = spec.flag === 'boolean' ? `--${flagName(name)}` : `--${flagName(name)} VALUE`;
    const summary = (/^.*?\.(?=\s|$)/.exec(spec.doc)?.[0] ?? spec.doc).replace(/\.$/, '');
    lines.push(`  ${flag.padEnd(38)} ${summary} (default: ${JSON.stringify(spec.default)})`);
  }
  lines.push('  --config FILE'.padEnd(40) + ' TOML config file', '  -h, --help'.padEnd(40) + ' show this help', '  -V, --version'.padEnd(40) + ' print the version');
  return `${lines.join('\n')}\n`;
}

function fail(message: string, exitCode: number): never {
  process.stderr.write(`safekeeper: ${message}\n`);
  process.exit(exitCode);
}

async function main(argv: string[]): Promise<void> {
  // `propose` has flags of its own (not config keys): it parses them itself and returns the exit code.
  if (argv[0] === 'propose') {
    const { proposeMain } = await import('./proposer/cli.js');
    return process.exit(await proposeMain(argv.slice(1)));
  }
  let parsed: ReturnType<typeof parseArgs<{ options: ArgOptions; allowPositionals: true; strict: true }>>;
  try {
    const options = runCommandOptions();
    parsed = parseArgs({ args: joinNegativeValues(argv, options), options, allowPositionals: true, strict: true });
  } catch (error) {
    const message = error instanceof Error ? error.message : String(error);
    const unknownFlag = /^Unknown option '([^']+)'/.exec(message)?.[1];
    fail(`${unknownFlag === undefined ? message : `unknown flag '${unknownFlag}'`} (see safekeeper --help)`, EXIT_USAGE);
  }
  const { values, positionals } = parsed;
  if (values.help === true) return void process.stdout.write(usage());
  if (values.version === true) return void process.stdout.write(`safekeeper ${readPackageVersion()}\n`);
  const [command, ...rest] = positionals;
  if (rest.length > 0) fail(`unexpected argument '${rest[0]}' (see safekeeper --help)`, EXIT_USAGE);
  const { help: _help, version: _version, config: configFile, ...flags } = values;
  switch (command) {
    case 'run':
      return run(typeof configFile === 'string' ? configFile : undefined, flags);
    case 'config':
      if (configFile !== undefined || Object.keys(flags).length > 0) fail('the config command takes no flags', EXIT_USAGE);
      return void process.stdout.write(renderDefaultConfig());
    case undefined:
      process.stderr.write(usage());
      return process.exit(EXIT_USAGE);
    default:
      fail(`unknown command '${command}' (see safekeeper --help)`, EXIT_USAGE);
  }
}

async function run(configFile: string | undefined, flags: Record<string, string | boolean | (string | boolean)[] | undefined>): Promise<void> {
  const flagValues: Record<string, string | boolean> = {};
  for (const [name, value] of Object.entries(flags)) if (value !== undefined && !Array.isArray(value)) flagValues[name] = value;
  const config = loadConfig({ ...(configFile === undefined ? {} : { file: configFile }), flags: flagValues, cwd: process.cwd() });
  // node_id is added by the node's child logger once the id file has been read (it may differ from --id).
  setRootLogger(createLogger({ logLevel: config.logLevel, logFormat: config.logFormat }));
  const missing = missingV8Flags(process.execArgv);
  if (missing.length > 0) {
    log.warn({ missing }, 'node started without its V8 flags (the safekeeper command and npm start pass them): expect frequent full GCs and lower ingest throughput; see src/v8_flags.ts');
  }
  const node = await SafekeeperNode.start(config, createNodeHooks(config), log);
  let signalCount = 0;
  const onSignal = (signal: NodeJS.Signals): void => {
    signalCount += 1;
    if (signalCount > 1) {
      log.warn({ signal }, 'second signal during shutdown: exiting now');
      process.exit(EXIT_FAILURE);
    }
    log.info({ signal }, 'signal received: shutting down');
    setTimeout(() => {
      log.error({ timeout_ms: SHUTDOWN_TIMEOUT_MS, holders: node.gate.holderNames }, 'shutdown timed out: exiting');
      process.exit(EXIT_FAILURE);
    }, SHUTDOWN_TIMEOUT_MS).unref();
    node.stop().then(
      () => process.exit(EXIT_OK),
      (error: unknown) => {
        log.error({ err: error }, 'shutdown failed');
        process.exit(EXIT_FAILURE);
      },
    );
  };
  process.on('SIGTERM', onSignal);
  process.on('SIGINT', onSignal);
  process.stdout.write(`${node.readyLine()}\n`);
}

process.on('uncaughtException', (error) => {
  log.fatal({ err: error }, 'uncaught exception: exiting');
  process.exit(EXIT_FAILURE);
});
process.on('unhandledRejection', (reason) => {
  log.fatal({ err: reason }, 'unhandled promise rejection: exiting');
  process.exit(EXIT_FAILURE);
});

main(process.argv.slice(2)).catch((error: unknown) => {
  if (error instanceof ConfigError) fail(error.message, EXIT_USAGE);
  if (error instanceof SafekeeperError) {
    log.error({ err: error, code: error.code }, 'safekeeper failed to start');
    fail(error.message, EXIT_FAILURE);
  }
  log.fatal({ err: error }, 'safekeeper failed');
  process.exit(EXIT_FAILURE);
});
