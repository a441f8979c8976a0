/** A progress line on stderr: redrawn in place on a terminal, one line per 10% otherwise. */
export function createProgress(label: string, stream: NodeJS.WriteStream = process.stderr) {
  const started = Date.now();
  let lastDecile = -1;
  return {
    update(done: number, total: number, extra = ''): void {
      const fraction = total > 0 ? Math.min(done / total, 1) : 1;
      const width = 30;
      const filled = Math.round(fraction * width);
      const rate = Math.round(done / Math.max((Date.now() - started) / 1000, 0.001));
      const line = `${label} [${'#'.repeat(filled)}${'-'.repeat(width - filled)}] ${Math.floor(fraction * 100)}% ${done}/${total} rows ${rate} rows/s${extra ? ` ${extra}` : ''}`;
      if (stream.isTTY) {
        stream.write(`\r${line}`);
        return;
      }
      const decile = Math.floor(fraction * 10);
      if (decile !== lastDecile) {
        lastDecile = decile;
        stream.write(`${line}\n`);
      }
    },
    done(message: string): void {
      stream.write(`${stream.isTTY ? '\n' : ''}${message}\n`);
    },
  };
}
