// Builds native/wal_crc.c (the batch WAL record CRC check, see src/wal/record_crc.ts) with node-gyp; run by
// `npm ci` / `npm install` as this package's install script. It never fails the install: without a compiler,
// Node headers or SSE 4.2 the node uses the portable path, which is correct and slower, and says so at startup.
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';

const directory = fileURLToPath(new URL('.', import.meta.url));
// npm hands its bundled node-gyp to install scripts in npm_config_node_gyp; else try one on PATH.
const gyp = process.env.npm_config_node_gyp;
const [command, args] = gyp ? [process.execPath, [gyp]] : ['node-gyp', []];
const result = spawnSync(command, [...args, 'rebuild', '--directory', directory], { stdio: 'inherit' });
if (result.status !== 0) {
  const why = result.error ? result.error.message : `node-gyp exited with ${result.status ?? result.signal}`;
  console.warn(`safekeeper-ts: the native WAL record CRC check was not built (${why}); WAL records are verified by the slower portable path`);
}
