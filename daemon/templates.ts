import type { Message } from '../client/index.js';

/**
 * Subject and routing-key templates for the broker sinks: literal text with placeholders
 * {topic}, {type}, {key} and {subscription}, e.g. "pgrelay.{topic}.{type}".
 *
 * For a NATS subject every value is made a valid part of a subject: {topic}, {type} and
 * {subscription} keep their dots (they are hierarchies, so "orders.eu" becomes two tokens), while
 * {key} is always one token (its dots become "_"); any character outside [A-Za-z0-9_-] becomes "_"
 * and an empty token becomes "_". So no value can add wildcards (* >), whitespace or empty tokens.
 * For an AMQP routing key values are used as they are (routing keys are opaque UTF-8 up to 255
 * bytes). A message without a key renders {key} as "_" in both. The exact values always travel in
 * the message headers; the subject or routing key is for routing and filtering.
 */
export const PLACEHOLDERS = ['topic', 'type', 'key', 'subscription'] as const;
export type Placeholder = (typeof PLACEHOLDERS)[number];
export type TemplateTarget = 'nats' | 'amqp';

/** Renders a template for one message. Throws when the result is not a valid subject/routing key. */
export type RenderTemplate = (message: Pick<Message, 'topic' | 'type' | 'key'>) => string;

type Part = { literal: string } | { placeholder: Placeholder };

const NO_KEY = '_';
const MAX_ROUTING_KEY_BYTES = 255;

function parse(template: string, what: string): Part[] {
  const parts: Part[] = [];
  const pattern = /\{([^{}]*)\}/g;
  let last = 0;
  for (let match = pattern.exec(template); match !== null; match = pattern.exec(template)) {
    if (match.index > last) parts.push({ literal: template.slice(last, match.index) });
    const name = match[1] as Placeholder;
    if (!PLACEHOLDERS.includes(name)) {
      throw new Error(`${what} template ${JSON.stringify(template)} has an unknown placeholder {${match[1]}}; known: ${PLACEHOLDERS.map((p) => `{${p}}`).join(' ')}`);
    }
    parts.push({ placeholder: name });
    last = match.index + match[0].length;
  }
  if (last < template.length) parts.push({ literal: template.slice(last) });
  for (const part of parts) {
    if ('literal' in part && /[{}]/.test(part.literal)) {
      throw new Error(`${what} template ${JSON.stringify(template)} has an unmatched brace`);
    }
  }
  return parts;
}

/** One NATS subject token from any text: [A-Za-z0-9_-] kept, every other character "_", never empty. */
export function natsToken(value: string): string {
  const token = value.replace(/[^A-Za-z0-9_-]/g, '_');
  return token === '' ? '_' : token;
}

/** A value as NATS subject tokens: split on dots (each part made a token), or one token. */
export function natsTokens(value: string, keepDots: boolean): string {
  return keepDots ? value.split('.').map(natsToken).join('.') : natsToken(value);
}

/** Why `subject` cannot be published to, or null when it is a valid NATS publish subject. */
export function natsSubjectProblem(subject: string): string | null {
  if (subject === '') return 'is empty';
  if (/[\s\u0000-\u001f\u007f]/.test(subject)) return 'contains whitespace or control characters';
  const tokens = subject.split('.');
  if (tokens.some((token) => token === '')) return 'has an empty token (leading, trailing or double dot)';
  if (tokens.some((token) => token.includes('*') || token.includes('>'))) return 'contains a wildcard (* or >)';
  return null;
}

function value(target: TemplateTarget, name: Placeholder, message: Pick<Message, 'topic' | 'type' | 'key'>, subscription: string): string {
  const raw = name === 'topic' ? message.topic : name === 'type' ? message.type : name === 'key' ? message.key : subscription;
  if (raw === null) return NO_KEY;
  if (target === 'amqp') return raw;
  return natsTokens(raw, name !== 'key');
}

/**
 * Compiles a template once (unknown placeholders, stray braces and, for NATS, literal text that
 * cannot be part of a subject are errors here, at sink creation) into a renderer.
 */
export function compileTemplate(template: string, target: TemplateTarget, subscription: string): RenderTemplate {
  const what = target === 'nats' ? 'NATS subject' : 'AMQP routing key';
  if (typeof template !== 'string') throw new Error(`${what} template must be a string`);
  const parts = parse(template, what);
  const render: RenderTemplate = (message) => {
    let out = '';
    for (const part of parts) out += 'literal' in part ? part.literal : value(target, part.placeholder, message, subscription);
    if (target === 'nats') {
      const problem = natsSubjectProblem(out);
      if (problem !== null) throw new Error(`${what} ${JSON.stringify(out)} from template ${JSON.stringify(template)} ${problem}`);
    } else if (Buffer.byteLength(out) > MAX_ROUTING_KEY_BYTES) {
      throw new Error(`${what} from template ${JSON.stringify(template)} is longer than ${MAX_ROUTING_KEY_BYTES} bytes`);
    }
    return out;
  };
  // Literal text is checked now with a harmless sample, so a bad template fails at sink creation.
  render({ topic: 'sample', type: 'sample', key: 'sample' });
  return render;
}

/**
 * The subjects a JetStream stream needs to capture everything a NATS template renders: the
 * literal tokens before the first placeholder, then ">" (a template without placeholders is its
 * own subject). Null when the template starts with a placeholder (the stream's subjects must then
 * be given explicitly).
 */
export function streamSubjectsFor(template: string): string[] | null {
  const tokens = template.split('.');
  const fixed: string[] = [];
  for (const token of tokens) {
    if (/[{}]/.test(token)) return fixed.length === 0 ? null : [[...fixed, '>'].join('.')];
    fixed.push(token);
  }
  return [template];
}
