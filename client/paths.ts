import { existsSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

/** The pgrelay package root (holds migrations/ and sql/), whether running from source or dist/. */
export function packageRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (;;) {
    const manifest = join(dir, 'package.json');
    if (existsSync(manifest) && JSON.parse(readFileSync(manifest, 'utf8')).name === 'pgrelay') {
      return dir;
    }
    const parent = dirname(dir);
    if (parent === dir) throw new Error('pgrelay: cannot find the package root (package.json named pgrelay)');
    dir = parent;
  }
}

export const migrationsDir = (): string => join(packageRoot(), 'migrations');
export const functionsDir = (): string => join(packageRoot(), 'sql', 'functions');
