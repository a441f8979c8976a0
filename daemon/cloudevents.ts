import type { Message } from '../client/index.js';

/** A CloudEvents 1.0 event in structured JSON mode, as the webhook sink sends it. */
export type CloudEvent = {
  specversion: '1.0';
  id: string;
  source: string;
  type: string;
  subject?: string;
  time: string;
  datacontenttype: 'application/json';
  data: unknown;
  pgrelaytopic: string;
  pgrelayposition: string;
};

/** id is the message uuid, subject its key (absent for keyless messages), time its commit time. */
export function toCloudEvent(message: Message, source: string): CloudEvent {
  return {
    specversion: '1.0',
    id: message.id,
    source,
    type: message.type,
    ...(message.key === null ? {} : { subject: message.key }),
    time: message.created_at,
    datacontenttype: 'application/json',
    data: message.data,
    pgrelaytopic: message.topic,
    pgrelayposition: message.position,
  };
}
