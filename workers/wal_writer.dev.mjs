// Development entry (tests and benchmarks run TypeScript under tsx): Piscina would `require()` a `.ts`
// entry, and tsx's CommonJS transpilation turns every imported binding into a getter call, which costs
// the hot decode loop about half its speed. Loading this `.mjs` makes Piscina fall back to `import()`,
// so the writer runs as ESM, as the compiled `dist/workers/wal_writer.js` does.
export { default } from './wal_writer.ts';
