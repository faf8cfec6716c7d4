/**
 * The Hono app's environment: Node's request and response as bindings, and what the gateway's
 * middleware notes per request (gateway.ts). The metered routes do not go through Hono (see
 * request-listener.ts); everything else does.
 */
import type { HttpBindings } from '@hono/node-server';
import type { Context } from 'hono';
import type { KeyRegistry } from './keys.ts';
import type { KeyRecord } from './store/types.ts';

export type GatewayEnv = {
  Bindings: HttpBindings;
  Variables: { requestId: string; startedAt: number; keyId: string | undefined };
};

/** The request's key (or an AuthenticationError), noted on the context for the access log. */
export function authenticateRequest(c: Context<GatewayEnv>, keys: KeyRegistry, now: number = c.get('startedAt')): KeyRecord {
  const key = keys.authenticate(c.env.incoming.headers, now);
  c.set('keyId', key.id);
  return key;
}
