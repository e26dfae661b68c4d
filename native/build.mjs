// Builds every target in native/binding.gyp with node-gyp (one `rebuild` builds them all): wal_crc.c, the batch
// WAL record CRC check (see src/wal/record_crc.ts), and fs_calls.c, flock for the data directory lock and
// fallocate(FALLOC_FL_ZERO_RANGE) for segment preparation (see src/native_fs.ts). Run by `npm ci` / `npm install`
// as this package's install script. It never fails the install: without a compiler, Node headers or SSE 4.2 the
// node uses the portable CRC path, which is correct and slower, the pid-file-only data directory lock, which
// cannot see a node in another PID namespace (it says so at startup), and writes zeros where it would mark
// blocks unwritten.
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';

const directory = fileURLToPath(new URL('.', import.meta.url));
// npm hands its bundled node-gyp to install scripts in npm_config_node_gyp; else try one on PATH.
const gyp = process.env.npm_config_node_gyp;
const [command, args] = gyp ? [process.execPath, [gyp]] : ['node-gyp', []];
const result = spawnSync(command, [...args, 'rebuild', '--directory', directory], { stdio: 'inherit' });
if (result.status !== 0) {
  const why = result.error ? result.error.message : `node-gyp exited with ${result.status ?? result.signal}`;
  console.warn(`safekeeper-ts: the native addons were not built (${why}); WAL records are verified by the slower portable path`);
  console.warn('safekeeper-ts: without native/fs_calls the data directory lock is a pid file only, which cannot detect a second node in another PID namespace (container)');
}
