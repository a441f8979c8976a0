import { pino, type Logger } from 'pino';

/** JSON log lines on stderr (level PGRELAY_LOG_LEVEL, default info); secrets are redacted. */
export function createLogger(options: { level?: string; destination?: NodeJS.WritableStream } = {}): Logger {
  return pino(
    {
      name: 'pgrelay',
      level: options.level ?? process.env.PGRELAY_LOG_LEVEL ?? 'info',
      redact: { paths: ['secret', 'password', 'authorization', '*.secret', '*.password', '*.authorization'], censor: '[redacted]' },
    },
    options.destination ?? pino.destination(2),
  );
}
