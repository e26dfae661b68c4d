// Test/dev only: loads a TypeScript worker entry under tsx. tsx's CommonJS hook serves `require` of
// `.ts` files in worker threads, while its ESM hooks are not active there on Node 20 (Piscina loads the
// writer workers the same way). workerData.entry is the `.ts` path; the entry reads the rest of workerData.
const { workerData } = require('node:worker_threads');
require(workerData.entry);
