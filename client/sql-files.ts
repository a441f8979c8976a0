import { readdirSync, readFileSync } from 'node:fs';
import { basename, join, relative } from 'node:path';
import { functionsDir, migrationsDir } from './paths.js';

export type SqlFile = { name: string; sql: string };

function listSql(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true })
    .flatMap((entry) => {
      const path = join(dir, entry.name);
      if (entry.isDirectory()) return listSql(path);
      return entry.name.endsWith('.sql') ? [path] : [];
    })
    .sort();
}

/** Every function file under sql/functions, in a stable order (bodies are not checked at install). */
export function functionFiles(): SqlFile[] {
  const root = functionsDir();
  return listSql(root).map((path) => ({ name: relative(root, path), sql: readFileSync(path, 'utf8') }));
}

/** Migration files in the order node-pg-migrate runs them, split into their up and down parts. */
export function migrationFiles(): Array<SqlFile & { up: string; down: string }> {
  return listSql(migrationsDir()).map((path) => {
    const sql = readFileSync(path, 'utf8');
    const up = sql.search(/^\s*--[\s-]*up\s+migration/im);
    const down = sql.search(/^\s*--[\s-]*down\s+migration/im);
    return {
      name: basename(path, '.sql'),
      sql,
      up: sql.slice(up, down > up ? down : undefined),
      down: down >= 0 ? sql.slice(down, up > down ? up : undefined) : '',
    };
  });
}
