/** Minimal argv parsing: positionals and --flag value / --flag=value / --switch. */
export type Args = { positional: string[]; flags: Map<string, string | true> };

export function parseArgs(argv: readonly string[], switches: ReadonlySet<string>): Args {
  const positional: string[] = [];
  const flags = new Map<string, string | true>();
  for (let i = 0; i < argv.length; i += 1) {
    const arg = argv[i]!;
    if (!arg.startsWith('--')) {
      positional.push(arg);
      continue;
    }
    const [name, inline] = arg.slice(2).split(/=(.*)/s, 2) as [string, string | undefined];
    if (inline !== undefined) flags.set(name, inline);
    else if (switches.has(name)) flags.set(name, true);
    else {
      const value = argv[i + 1];
      if (value === undefined) throw new Error(`--${name} needs a value`);
      flags.set(name, value);
      i += 1;
    }
  }
  return { positional, flags };
}

export function flag(args: Args, name: string): string | undefined {
  const value = args.flags.get(name);
  return value === true ? undefined : value;
}
