import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';

export type HttpOptions = {
  port: number;
  host?: string;
  health: () => Promise<{ ok: boolean } & Record<string, unknown>>;
  metrics: { render(): Promise<string>; contentType: string };
};

/** GET /healthz (200 or 503 with JSON) and GET /metrics (Prometheus text); anything else 404. */
export function createHttpServer(options: HttpOptions) {
  const server = createServer((request, response) => {
    const path = (request.url ?? '/').split('?')[0];
    const answer = async (): Promise<void> => {
      if (request.method === 'GET' && path === '/healthz') {
        const health = await options.health();
        response.writeHead(health.ok ? 200 : 503, { 'content-type': 'application/json' }).end(JSON.stringify(health));
        return;
      }
      if (request.method === 'GET' && path === '/metrics') {
        const text = await options.metrics.render();
        response.writeHead(200, { 'content-type': options.metrics.contentType }).end(text);
        return;
      }
      response.writeHead(404, { 'content-type': 'text/plain' }).end('not found\n');
    };
    answer().catch((error: unknown) => {
      response.writeHead(500, { 'content-type': 'text/plain' }).end(`${String(error)}\n`);
    });
  });
  return {
    listen: () =>
      new Promise<{ port: number }>((resolve, reject) => {
        server.once('error', reject);
        server.listen(options.port, options.host ?? '127.0.0.1', () => resolve({ port: (server.address() as AddressInfo).port }));
      }),
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections(); // idle keep-alive connections would hold close() for seconds
      }),
  };
}
