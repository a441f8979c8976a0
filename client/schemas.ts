import { z } from 'zod';

/** A message as every reader returns it. position is a decimal string (bigint-safe). */
export const messageSchema = z.object({
  position: z.string().regex(/^\d+$/),
  xid: z.string().regex(/^\d+$/),
  id: z.string().uuid(),
  topic: z.string(),
  key: z.string().nullable(),
  type: z.string(),
  data: z.unknown(),
  metadata: z.record(z.unknown()),
  created_at: z.string(),
});
export type Message = z.infer<typeof messageSchema>;

export const idSchema = z.object({ id: z.string().uuid() });
export const idsSchema = z.object({ ids: z.array(z.string().uuid()) });

export const topicSchema = z.string().regex(/^[A-Za-z0-9._-]{1,200}$/);

export type Json = string | number | boolean | null | Json[] | { [key: string]: Json };

export type PublishInput = {
  topic: string;
  key?: string | null;
  type: string;
  data: unknown;
  metadata?: Record<string, unknown>;
};

export type PublishOptions = { lockKey?: boolean; lockKeys?: boolean };

/** A reader's cursor: the (xid, position) pair, never the position alone. */
export type Cursor = { xid: string; position: string };
export const START: Cursor = { xid: '0', position: '0' };
