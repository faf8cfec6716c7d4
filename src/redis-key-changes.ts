/**
 * The scale-out KeyChangeSignal (key-changes.ts): a Redis pub/sub channel. Publishing uses an
 * ordinary connection; subscribing needs a connection of its own (a subscribed Redis connection
 * takes no other commands), opened at the first `subscribe` so that the CLI, which only
 * publishes, holds one connection.
 *
 * Pub/sub delivers to whoever listens at that moment: a message published while this instance
 * was disconnected is lost. So after the subscriber reconnects (ioredis subscribes again by
 * itself) the listeners are called once, as if a change had been signalled; the store polling
 * of key-changes.ts remains the fallback either way.
 */
import type { KeyChangeSignal } from './key-changes.ts';
import { connectRedis, quitRedis, throttled, type Redis } from './limits/redis-client.ts';
import type { Logger } from './logger.ts';

export interface RedisKeyChangeSignalOptions {
  logger: Logger;
  /** The pub/sub channel; default 'claudcode:keys'. */
  channel?: string;
}

export class RedisKeyChangeSignal implements KeyChangeSignal {
  private readonly url: string;
  private readonly logger: Logger;
  private readonly channel: string;
  private readonly publisher: Redis;
  private subscriber: Promise<Redis> | undefined;
  private readonly listeners: Array<() => void> = [];
  private readonly warnPublish = throttled(5000);
  private closed = false;

  private constructor(url: string, publisher: Redis, options: RedisKeyChangeSignalOptions) {
    this.url = url;
    this.publisher = publisher;
    this.logger = options.logger;
    this.channel = options.channel ?? 'claudcode:keys';
  }

  static async open(url: string, options: RedisKeyChangeSignalOptions): Promise<RedisKeyChangeSignal> {
    const publisher = await connectRedis(url, { logger: options.logger, role: 'key-changes' });
    return new RedisKeyChangeSignal(url, publisher, options);
  }

  async publish(): Promise<void> {
    try {
      await this.publisher.publish(this.channel, String(Date.now()));
    } catch (err) {
      this.warnPublish((suppressed) =>
        this.logger.warn({ err, suppressed }, 'Redis unreachable: key change not signalled (other instances see it at their next store poll)'),
      );
    }
  }

  async subscribe(listener: () => void): Promise<void> {
    if (this.closed) return;
    this.listeners.push(listener);
    this.subscriber ??= this.openSubscriber();
    await this.subscriber;
  }

  private notify(): void {
    for (const listener of this.listeners) {
      try {
        listener();
      } catch (err) {
        this.logger.error({ err }, 'key change listener failed');
      }
    }
  }

  private async openSubscriber(): Promise<Redis> {
    const subscriber = await connectRedis(this.url, { logger: this.logger, role: 'key-changes-subscriber' });
    try {
      subscriber.on('message', (channel: string) => {
        if (channel === this.channel) this.notify();
      });
      await subscriber.subscribe(this.channel);
      // Every later 'ready' is a reconnect: messages may have been missed meanwhile. Tell the
      // listeners once the channel is subscribed again (ioredis resubscribes by itself; this
      // SUBSCRIBE, sent after its own, answers when both are done).
      subscriber.on('ready', () => {
        subscriber.subscribe(this.channel).then(
          () => this.notify(),
          (err: unknown) => this.logger.warn({ err }, 'Redis key-change channel not subscribed again after a reconnect (store polling covers it)'),
        );
      });
    } catch (err) {
      subscriber.disconnect();
      this.subscriber = undefined;
      throw err;
    }
    return subscriber;
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    const subscriber = await this.subscriber?.catch(() => undefined);
    await Promise.all([quitRedis(this.publisher), subscriber ? quitRedis(subscriber) : undefined]);
  }
}
