// `npm run bench -- [--quick] [suite …]`: runs the named suites (default: all) on one server, one
// after another, and writes bench/results/<suite>.json for each. Suites: bench/<name>.ts.
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { startBenchServer, writeResults, type BenchSuite } from './lib.js';

const SUITES = ['relay', 'sagas', 'cdc', 'sync', 'brokers'];

async function main(argv: string[]): Promise<void> {
  const quick = argv.includes('--quick');
  const names = argv.filter((a) => !a.startsWith('--'));
  const chosen = names.length > 0 ? names : SUITES;
  const here = dirname(fileURLToPath(import.meta.url));
  const log = (line: string): void => void process.stderr.write(`${line}\n`);
  const server = await startBenchServer(log);
  let failed = 0;
  try {
    for (const name of chosen) {
      if (!SUITES.includes(name)) throw new Error(`unknown suite ${name}; known: ${SUITES.join(', ')}`);
      if (!existsSync(join(here, `${name}.js`))) {
        log(`# ${name}: not built (no bench/${name}.ts)`);
        continue;
      }
      const suite = (await import(`./${name}.js`)).default as BenchSuite;
      log(`# ${name} on ${server.description}${quick ? ' (quick)' : ''}`);
      try {
        const result = await suite.run({ server, quick, log });
        const file = writeResults(name, server.description, { quick, ...result });
        process.stdout.write(`${JSON.stringify({ suite: name, ...result }, null, 2)}\n`);
        log(`# ${name}: results in ${file}`);
      } catch (error) {
        failed++;
        log(`# ${name} FAILED: ${(error as Error).stack ?? String(error)}`);
      }
    }
  } finally {
    await server.stop();
  }
  if (failed > 0) process.exitCode = 1;
}

await main(process.argv.slice(2));
