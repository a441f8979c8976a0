// `pgrelay sagas list|status|cancel|retry|skip|resolve`: thin over client.sagas.
import { createClient, type SagaStatusName } from '../client/index.js';

const USAGE = `usage: pgrelay sagas list [--status S] [--type T] [--limit N]
       pgrelay sagas status SAGA_ID
       pgrelay sagas cancel SAGA_ID [--reason TEXT]
       pgrelay sagas retry SAGA_ID
       pgrelay sagas skip SAGA_ID STEP
       pgrelay sagas resolve SAGA_ID --note TEXT`;

export type SagaCommandFlags = { status?: string; type?: string; limit?: string; reason?: string; note?: string };

const out = (value: unknown): void => void process.stdout.write(`${JSON.stringify(value, null, 2)}\n`);

export async function sagasCommand(verb: string | undefined, operands: readonly string[], databaseUrl: string, flags: SagaCommandFlags): Promise<number> {
  const [sagaId, step] = operands;
  const needId = (): string => {
    if (sagaId === undefined) throw new Error(USAGE);
    if (!/^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i.test(sagaId)) throw new Error(`SAGA_ID must be a uuid, got ${JSON.stringify(sagaId)}`);
    return sagaId;
  };
  if (verb === undefined || !['list', 'status', 'cancel', 'retry', 'skip', 'resolve'].includes(verb)) throw new Error(USAGE);
  const client = await createClient({ connectionString: databaseUrl, maximumPoolSize: 1 });
  try {
    switch (verb) {
      case 'list': {
        const limit = flags.limit === undefined ? undefined : Number(flags.limit);
        if (limit !== undefined && !Number.isInteger(limit)) throw new Error(`--limit must be a whole number, got ${flags.limit}`);
        out(await client.sagas.list({ status: flags.status as SagaStatusName | undefined, sagaType: flags.type, limit }));
        return 0;
      }
      case 'status':
        out(await client.sagas.status(needId()));
        return 0;
      case 'cancel':
        await client.sagas.cancel(needId(), flags.reason);
        break;
      case 'retry':
        await client.sagas.retry(needId());
        break;
      case 'skip':
        if (step === undefined) throw new Error(USAGE);
        await client.sagas.skip(needId(), step);
        break;
      case 'resolve':
        if (flags.note === undefined) throw new Error(`pgrelay sagas resolve needs --note saying how it was settled\n${USAGE}`);
        await client.sagas.resolve(needId(), flags.note);
        break;
    }
    // The action moved the saga on in its transaction: show where it is now.
    const status = await client.sagas.status(needId());
    out({ id: status.id, status: status.status, steps: status.steps.map((s) => ({ name: s.name, status: s.status })) });
    return 0;
  } finally {
    await client.end();
  }
}
