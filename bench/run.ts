/**
 * Runs every `bench/*.bench.ts` in name order, one after another in this process, and prints what each
 * returns (a table when it returns rows). Each bench file exports `async function run()` and also runs
 * itself when executed directly. `npm run bench`, or `node --import tsx bench/run.ts [name-filter]`.
 */
import { readdirSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

interface BenchModule {
  run?: () => Promise<unknown>;
}

const benchDir = dirname(fileURLToPath(import.meta.url));
const filter = process.argv[2] ?? '';
const files = readdirSync(benchDir).filter((name) => name.endsWith('.bench.ts') && name.includes(filter)).sort();
let failures = 0;
for (const name of files) {
  console.log(`\n## ${name}`);
  const startedMs = performance.now();
  try {
    const module = (await import(pathToFileURL(join(benchDir, name)).href)) as BenchModule;
    if (typeof module.run !== 'function') throw new Error(`${name} does not export run()`);
    const result = await module.run();
    if (Array.isArray(result) || (typeof result === 'object' && result !== null)) console.table(result);
    else if (result !== undefined) console.log(result);
  } catch (error) {
    failures++;
    console.error(`${name} failed:`, error);
  }
  console.log(`(${name}: ${((performance.now() - startedMs) / 1000).toFixed(1)} s)`);
}
if (failures > 0) process.exitCode = 1;
