/**
 * A TCP proxy in front of a real server, for outage tests: `stop()` closes it and cuts every
 * connection (the server went away: connects are refused), `start()` listens again on the same
 * port (it came back), and `hang()` keeps connections open but forwards nothing (a server that
 * stopped answering).
 */
import { createServer, Socket, type Server } from 'node:net';

export interface TcpProxy {
  /** The port clients connect to; the same across stop() and start(). */
  readonly port: number;
  /** e.g. redis://127.0.0.1:40123 for a Redis target */
  url(scheme: string): string;
  start(): Promise<void>;
  stop(): Promise<void>;
  /** Forward nothing either way until resume() or stop(); nothing is closed or lost. */
  hang(): void;
  resume(): void;
}

export async function startTcpProxy(target: { host: string; port: number }): Promise<TcpProxy> {
  const sockets = new Set<Socket>();
  let server: Server | undefined;
  let port = 0;
  let hung = false;

  const pipe = (from: Socket, to: Socket) => {
    from.pipe(to);
    if (hung) from.pause();
    from.on('close', () => to.destroy());
    from.on('error', () => to.destroy());
  };

  const listen = () =>
    new Promise<void>((resolve, reject) => {
      const s = createServer((client) => {
        const upstream = new Socket();
        sockets.add(client).add(upstream);
        client.on('close', () => sockets.delete(client));
        upstream.on('close', () => sockets.delete(upstream));
        pipe(client, upstream);
        pipe(upstream, client);
        upstream.connect(target.port, target.host);
      });
      s.once('error', reject);
      s.listen(port, '127.0.0.1', () => {
        port = (s.address() as { port: number }).port;
        server = s;
        resolve();
      });
    });

  await listen();
  return {
    get port() {
      return port;
    },
    url: (scheme) => `${scheme}://127.0.0.1:${port}`,
    start: async () => {
      hung = false;
      if (!server) await listen();
    },
    stop: async () => {
      const s = server;
      server = undefined;
      for (const socket of sockets) socket.destroy();
      sockets.clear();
      if (s) await new Promise<void>((resolve) => s.close(() => resolve()));
    },
    hang: () => {
      hung = true;
      for (const socket of sockets) socket.pause();
    },
    resume: () => {
      hung = false;
      for (const socket of sockets) socket.resume();
    },
  };
}
