// A TCP proxy a test can close and reopen on the same port, to play a server (PostgreSQL, a
// broker) that goes down and comes back, and that can hold back the server's replies.
import { createServer, connect, type Server, type Socket } from 'node:net';
import type { Test } from 'tap';

export type TcpProxy = {
  readonly port: number;
  /** Stops listening and cuts every open connection: the server looks down. */
  close(): Promise<void>;
  /** Listens again on the same port (and stops holding replies). */
  open(): Promise<void>;
  /** Connections accepted so far. */
  readonly accepted: number;
  /**
   * Once the client has sent `pattern` `times` times (counted per chunk), the server's replies
   * stop reaching the client (they are dropped) while the client's data still reaches the server:
   * publishes land, their acks never arrive. Resolves when the hold starts.
   */
  holdRepliesAfter(pattern: string, times: number): Promise<void>;
};

/** A TCP proxy on a free local port forwarding to host:port; closed when the test ends. */
export async function startTcpProxy(t: Test, host: string, port: number): Promise<TcpProxy> {
  const sockets = new Set<Socket>();
  let accepted = 0;
  let server: Server | undefined;
  let listenPort = 0;
  let hold: { pattern: string; remaining: number; held: boolean; started: () => void } | undefined;
  const listen = (): Promise<void> =>
    new Promise((resolve, reject) => {
      const next = createServer((client) => {
        accepted += 1;
        const upstream = connect({ host, port });
        sockets.add(client);
        sockets.add(upstream);
        const cut = (): void => {
          client.destroy();
          upstream.destroy();
          sockets.delete(client);
          sockets.delete(upstream);
        };
        client.on('error', cut).on('close', cut);
        upstream.on('error', cut).on('close', cut);
        client.on('data', (chunk: Buffer) => {
          if (hold !== undefined && !hold.held) {
            const text = chunk.toString('latin1');
            for (let at = text.indexOf(hold.pattern); at >= 0 && hold.remaining > 0; at = text.indexOf(hold.pattern, at + 1)) hold.remaining -= 1;
            if (hold.remaining <= 0) {
              hold.held = true;
              hold.started();
            }
          }
          upstream.write(chunk);
        });
        upstream.on('data', (chunk: Buffer) => {
          if (hold?.held !== true) client.write(chunk);
        });
      });
      next.once('error', reject);
      next.listen(listenPort, '127.0.0.1', () => {
        listenPort = (next.address() as { port: number }).port;
        server = next;
        resolve();
      });
    });
  await listen();
  const proxy: TcpProxy = {
    get port() {
      return listenPort;
    },
    get accepted() {
      return accepted;
    },
    close: async () => {
      const closing = server;
      server = undefined;
      for (const socket of sockets) socket.destroy();
      sockets.clear();
      if (closing !== undefined) await new Promise<void>((resolve) => closing.close(() => resolve()));
    },
    open: async () => {
      hold = undefined;
      if (server === undefined) await listen();
    },
    holdRepliesAfter: (pattern, times) =>
      new Promise<void>((resolve) => {
        hold = { pattern, remaining: times, held: false, started: resolve };
      }),
  };
  t.teardown(() => proxy.close());
  return proxy;
}

/** A proxy in front of the PostgreSQL server of `connectionString`, with that connection string pointed at it. */
export async function startPostgresProxy(t: Test, connectionString: string): Promise<TcpProxy & { connectionString: string }> {
  const target = new URL(connectionString);
  const proxy = await startTcpProxy(t, target.hostname, Number(target.port || 5432));
  const url = new URL(connectionString);
  url.hostname = '127.0.0.1';
  url.port = String(proxy.port);
  return Object.assign(proxy, { connectionString: url.toString() });
}
