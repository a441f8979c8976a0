// A real local HTTP webhook endpoint for daemon tests. It checks every request as a receiver
// would: the CloudEvents 1.0 structured-JSON body (the attributes the README lists) and, when
// given a secret, the X-Pgrelay-Signature HMAC, computed here independently of daemon/signature.ts.
// A request that fails a check is answered 400 and recorded in `problems`.
import { createHmac } from 'node:crypto';
import { createServer, type IncomingMessage } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Test } from 'tap';

export type ReceivedEvent = {
  /** Order of arrival over every request this receiver saw (acknowledged or not). */
  seq: number;
  id: string;
  position: bigint;
  topic: string;
  key: string | null;
  type: string;
  data: unknown;
  source: string;
  time: string;
  attempt: number;
  subscription: string;
  /** The HTTP status this receiver answered. */
  status: number;
  /** Date.now() when the request arrived (before any delay). */
  arrivedAt: number;
  /** Whether the answer has been written (a delayed one may still be pending). */
  answered: boolean;
};

export type ReceiverOptions = {
  /** Verify X-Pgrelay-Signature with this secret (and require it). */
  secret?: string;
  /** Answer this status instead of 204 (e.g. 500 for a message that must always fail). */
  statusFor?: (event: ReceivedEvent) => number;
  /** Delay before answering, per request. */
  delayMs?: number;
  /** Delay before answering this request (instead of delayMs). */
  delayFor?: (event: ReceivedEvent) => number;
};

export type WebhookReceiver = {
  url: string;
  /** Every well-formed request, in arrival order (answered or not yet). */
  requests: ReceivedEvent[];
  /** Requests answered 2xx, in arrival order. */
  acked(): ReceivedEvent[];
  problems: string[];
  /** Resolves once `done()` holds, checked after every request; rejects after timeoutMs. */
  waitFor(done: () => boolean, timeoutMs: number, what: string): Promise<void>;
  close(): Promise<void>;
};

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;
// CloudEvents 1.0: attribute names are lower-case ASCII letters and digits, at most 20 long.
const ATTRIBUTE = /^[a-z0-9]{1,20}$/;

function readBody(request: IncomingMessage): Promise<string> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    request.on('data', (chunk: Buffer) => chunks.push(chunk));
    request.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    request.on('error', reject);
  });
}

function checkSignature(secret: string, header: string | undefined, body: string): string | null {
  if (header === undefined) return 'no X-Pgrelay-Signature header';
  const match = /^t=(\d+),v1=([0-9a-f]{64})$/.exec(header);
  if (match === null) return `malformed signature header: ${header}`;
  const [, t, v1] = match;
  if (Math.abs(Date.now() / 1000 - Number(t)) > 300) return `signature timestamp ${t} is not recent`;
  const expected = createHmac('sha256', secret).update(`${t}.${body}`).digest('hex');
  return expected === v1 ? null : 'signature does not match the body';
}

/** Checks a CloudEvents 1.0 structured body; returns the event or the reason it is not one. */
function parseCloudEvent(body: string, headers: IncomingMessage['headers']): { event: Record<string, unknown> } | { problem: string } {
  const contentType = String(headers['content-type'] ?? '');
  if (!contentType.startsWith('application/cloudevents+json')) return { problem: `content-type ${contentType}` };
  let event: Record<string, unknown>;
  try {
    event = JSON.parse(body) as Record<string, unknown>;
  } catch {
    return { problem: `body is not JSON: ${body.slice(0, 80)}` };
  }
  const bad = (what: string) => ({ problem: `${what} in ${body.slice(0, 200)}` });
  for (const name of Object.keys(event)) if (!ATTRIBUTE.test(name)) return bad(`attribute name ${name} is not CloudEvents`);
  if (event.specversion !== '1.0') return bad('specversion is not "1.0"');
  if (typeof event.id !== 'string' || !UUID.test(event.id)) return bad('id is not the message uuid');
  if (event.id !== headers['x-pgrelay-id']) return bad('id differs from X-Pgrelay-Id');
  if (typeof event.source !== 'string' || event.source === '') return bad('source missing');
  if (typeof event.type !== 'string' || event.type === '') return bad('type missing');
  if ('subject' in event && typeof event.subject !== 'string') return bad('subject is not a string');
  if (typeof event.time !== 'string' || !/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)$/.test(event.time)) {
    return bad('time is not RFC 3339');
  }
  if (event.datacontenttype !== 'application/json') return bad('datacontenttype is not application/json');
  if (!('data' in event)) return bad('data missing');
  if (typeof event.pgrelaytopic !== 'string') return bad('pgrelaytopic missing');
  if (typeof event.pgrelayposition !== 'string' || !/^\d+$/.test(event.pgrelayposition)) return bad('pgrelayposition is not a position');
  return { event };
}

export async function startWebhookReceiver(t: Test, options: ReceiverOptions = {}): Promise<WebhookReceiver> {
  const requests: ReceivedEvent[] = [];
  const problems: string[] = [];
  const waiters = new Set<() => void>();
  let seq = 0;
  const server = createServer((request, response) => {
    void (async () => {
      const arrivedAt = Date.now();
      const body = await readBody(request);
      const parsed = parseCloudEvent(body, request.headers);
      const signatureProblem = options.secret === undefined ? null : checkSignature(options.secret, request.headers['x-pgrelay-signature'] as string | undefined, body);
      if ('problem' in parsed || signatureProblem !== null) {
        problems.push('problem' in parsed ? parsed.problem : (signatureProblem as string));
        response.writeHead(400).end();
        return;
      }
      const { event } = parsed;
      const received: ReceivedEvent = {
        seq: (seq += 1),
        id: event.id as string,
        position: BigInt(event.pgrelayposition as string),
        topic: event.pgrelaytopic as string,
        key: typeof event.subject === 'string' ? event.subject : null,
        type: event.type as string,
        data: event.data,
        source: event.source as string,
        time: event.time as string,
        attempt: Number(request.headers['x-pgrelay-attempt']),
        subscription: String(request.headers['x-pgrelay-subscription']),
        status: 204,
        arrivedAt,
        answered: false,
      };
      received.status = options.statusFor?.(received) ?? 204;
      requests.push(received);
      for (const wake of [...waiters]) wake();
      const delay = options.delayFor?.(received) ?? options.delayMs ?? 0;
      if (delay > 0) await new Promise((resolve) => setTimeout(resolve, delay).unref()); // never what keeps a test alive
      // Counted as acknowledged from here: a daemon killed before it reads the answer sends it again.
      received.answered = true;
      response.writeHead(received.status).end();
      for (const wake of [...waiters]) wake();
    })().catch((error: unknown) => {
      problems.push(`receiver error: ${String(error)}`);
      if (!response.headersSent) response.writeHead(500).end();
    });
  });
  server.keepAliveTimeout = 1_000;
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  const close = (): Promise<void> =>
    new Promise((resolve) => {
      server.closeAllConnections();
      server.close(() => resolve());
    });
  t.teardown(close);
  return {
    url: `http://127.0.0.1:${port}/hooks`,
    requests,
    acked: () => requests.filter((r) => r.answered && r.status >= 200 && r.status < 300),
    problems,
    waitFor: (done, timeoutMs, what) =>
      new Promise((resolve, reject) => {
        if (done()) return resolve();
        const check = (): void => {
          if (!done()) return;
          clearTimeout(timer);
          clearInterval(poll);
          waiters.delete(check);
          resolve();
        };
        const timer = setTimeout(() => {
          waiters.delete(check);
          clearInterval(poll);
          reject(new Error(`${what}: not within ${timeoutMs} ms (${requests.length} requests so far)`));
        }, timeoutMs);
        const poll = setInterval(check, 200); // conditions that also depend on things besides requests
        waiters.add(check);
      }),
    close,
  };
}
