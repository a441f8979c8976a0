// A TCP proxy in front of PostgreSQL, so a test can make the database unreachable for a daemon
// (every connection cut, new ones refused) and then reachable again on the same address.
import { createServer, connect, type Server, type Socket } from 'node:net';
import type { Test } from 'tap';

export type TcpProxy = {
  /** The connection string, pointed at the proxy. */
  connectionString: string;
  /** Cuts every connection and refuses new ones. */
  down(): Promise<void>;
  /** Accepts connections again, on the same port. */
  up(): Promise<void>;
};

export async function startTcpProxy(t: Test, connectionString: string): Promise<TcpProxy> {
  const target = new URL(connectionString);
  const sockets = new Set<Socket>();
  let server: Server | undefined;
  let port = 0;

  const listen = (): Promise<void> =>
    new Promise((resolve, reject) => {
      const next = createServer((client) => {
        const upstream = connect(Number(target.port || 5432), target.hostname);
        sockets.add(client);
        sockets.add(upstream);
        const drop = (): void => {
          client.destroy();
          upstream.destroy();
          sockets.delete(client);
          sockets.delete(upstream);
        };
        client.on('error', drop).on('close', drop);
        upstream.on('error', drop).on('close', drop);
        client.pipe(upstream).pipe(client);
      });
      next.once('error', reject);
      next.listen(port, '127.0.0.1', () => {
        port = (next.address() as { port: number }).port;
        server = next;
        resolve();
      });
    });

  const down = (): Promise<void> =>
    new Promise((resolve) => {
      for (const socket of sockets) socket.destroy();
      sockets.clear();
      if (server === undefined) return resolve();
      const closing = server;
      server = undefined;
      closing.close(() => resolve());
    });

  await listen();
  t.teardown(down);
  const url = new URL(connectionString);
  url.hostname = '127.0.0.1';
  url.port = String(port);
  return { connectionString: url.toString(), down, up: listen };
}
