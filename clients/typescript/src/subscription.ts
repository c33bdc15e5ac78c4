// A subscription that survives dropped connections: it remembers how far it has got (the last
// event it yielded, or the last checkpoint the server sent) and, when the call fails with a
// retryable status such as UNAVAILABLE, opens a new one after a backoff pause, starting right after
// that point. Events the server sends again are dropped, so every event is yielded once, in order.

import { type ClientReadableStream, status as Status } from "@grpc/grpc-js";
import type { RecordedEvent, SubscribeAllResponse } from "./gen/highwater/v1/event_store.js";
import { HighwaterError, toHighwaterError } from "./errors.js";

/** How a subscription reconnects after a dropped connection. */
export interface ReconnectOptions {
  /** First pause before reconnecting, in milliseconds (default 100). It doubles each failure. */
  initialDelayMs?: number;
  /** Longest pause, in milliseconds (default 5000). */
  maxDelayMs?: number;
  /**
   * Failed attempts in a row after which the subscription gives up and throws the last error
   * (default: never). The count starts again once a message arrives.
   */
  maxAttempts?: number;
  /** Status codes that cause a reconnect (default UNAVAILABLE, INTERNAL, RESOURCE_EXHAUSTED). */
  codes?: readonly Status[];
}

/** Notifications a subscription gives besides its events. Called synchronously, not awaited. */
export interface SubscriptionHooks {
  /** Everything up to `position` has been yielded or filtered out: a safe place to save. */
  onCheckpoint?(position: bigint): void;
  /** History is read; what follows is live. */
  onCaughtUp?(position: bigint): void;
  /** The subscriber was too slow for live delivery and reads history again; nothing is skipped. */
  onFellBehind?(position: bigint): void;
  /** The call failed with a retryable status; the subscription reconnects after `delayMs`. */
  onReconnect?(info: { error: HighwaterError; attempt: number; delayMs: number }): void;
}

/** Options common to subscribeAll and subscribeStream. */
export interface SubscriptionOptions extends SubscriptionHooks {
  /** Reconnect settings, or `false` to throw on the first dropped connection. */
  reconnect?: ReconnectOptions | false;
  /** Closes the subscription when aborted. */
  signal?: AbortSignal;
}

/** What a subscription call streams: SubscribeAllResponse and SubscribeStreamResponse alike. */
export type SubscriptionMessage = Pick<SubscribeAllResponse, "content">;

/** How a subscription opens its calls and recognises events already yielded. */
export interface SubscriptionSource {
  /** Opens a call that starts right after what `sub` has seen (or at the original start). */
  open(sub: Subscription): ClientReadableStream<SubscriptionMessage>;
  /** False for an event at or before what `sub` has already yielded. */
  isNew(sub: Subscription, event: RecordedEvent): boolean;
}

const DEFAULT_CODES: readonly Status[] = [Status.UNAVAILABLE, Status.INTERNAL, Status.RESOURCE_EXHAUSTED];

/**
 * An async iterable of events that resumes after dropped connections. Iterate it once
 * (`for await`); leaving the loop, `close()` or the abort signal ends the call.
 */
export class Subscription implements AsyncIterable<RecordedEvent> {
  /**
   * The global position up to which everything has been yielded or filtered out (the last event
   * yielded, or a later checkpoint); undefined until the first message.
   */
  position: bigint | undefined;
  /** The revision of the last event yielded; undefined before the first one. */
  revision: bigint | undefined;
  /** True between `caught_up` and `fell_behind` (or a reconnect). */
  caughtUp = false;
  /** How many times the subscription has reconnected. */
  reconnects = 0;

  private closed = false;
  private started = false;
  private call: ClientReadableStream<SubscriptionMessage> | undefined;
  private wake: (() => void) | undefined;
  private readonly reconnect: Required<ReconnectOptions> | false;

  constructor(
    private readonly source: SubscriptionSource,
    private readonly options: SubscriptionOptions = {},
  ) {
    this.reconnect = options.reconnect === false
      ? false
      : {
        initialDelayMs: options.reconnect?.initialDelayMs ?? 100,
        maxDelayMs: options.reconnect?.maxDelayMs ?? 5000,
        maxAttempts: options.reconnect?.maxAttempts ?? Number.POSITIVE_INFINITY,
        codes: options.reconnect?.codes ?? DEFAULT_CODES,
      };
    const signal = options.signal;
    if (signal) {
      if (signal.aborted) {
        this.closed = true;
      } else {
        signal.addEventListener("abort", () => this.close(), { once: true });
      }
    }
  }

  /** True once closed (by `close()`, the signal, leaving the loop, or a final error). */
  get isClosed(): boolean {
    return this.closed;
  }

  /** Ends the subscription: a pending `next()` resolves as done. */
  close(): void {
    this.closed = true;
    this.call?.cancel();
    this.wake?.();
  }

  [Symbol.asyncIterator](): AsyncIterator<RecordedEvent> {
    if (this.started) {
      throw new Error("a subscription can be iterated only once");
    }
    this.started = true;
    return this.run();
  }

  private async *run(): AsyncGenerator<RecordedEvent, void, undefined> {
    let failures = 0;
    try {
      while (!this.closed) {
        const call = this.source.open(this);
        this.call = call;
        // Errors reach the loop below through the iterator; this keeps a late one (after a
        // cancel) from being an unhandled 'error' event.
        call.on("error", () => {});
        let error: unknown;
        try {
          for await (const message of call as AsyncIterable<SubscriptionMessage>) {
            failures = 0;
            const content = message.content;
            switch (content?.$case) {
              case "event": {
                const event = content.value;
                if (!this.source.isNew(this, event)) {
                  continue; // sent again after a reconnect: already yielded
                }
                this.advance(event.position);
                this.revision = event.revision;
                yield event;
                break;
              }
              case "checkpoint":
                this.advance(content.value.position);
                this.options.onCheckpoint?.(content.value.position);
                break;
              case "caughtUp":
                this.advance(content.value.position);
                this.caughtUp = true;
                this.options.onCaughtUp?.(content.value.position);
                break;
              case "fellBehind":
                this.advance(content.value.position);
                this.caughtUp = false;
                this.options.onFellBehind?.(content.value.position);
                break;
              default:
                break;
            }
          }
          // The server ends a subscription only on shutdown or error; a clean end is treated as
          // a dropped connection.
          error = new HighwaterError(Status.UNAVAILABLE, "the server ended the subscription");
        } catch (err) {
          error = toHighwaterError(err);
        } finally {
          call.cancel();
          this.call = undefined;
        }
        if (this.closed) {
          return;
        }
        this.caughtUp = false;
        const retry = this.reconnect;
        if (!retry || !(error instanceof HighwaterError) || !retry.codes.includes(error.code)) {
          throw error;
        }
        failures += 1;
        if (failures > retry.maxAttempts) {
          throw error;
        }
        const base = Math.min(retry.maxDelayMs, retry.initialDelayMs * 2 ** Math.min(failures - 1, 30));
        const delayMs = Math.round(base / 2 + (Math.random() * base) / 2);
        this.reconnects += 1;
        this.options.onReconnect?.({ error, attempt: failures, delayMs });
        await this.pause(delayMs);
      }
    } finally {
      this.closed = true;
    }
  }

  private advance(position: bigint): void {
    if (this.position === undefined || position > this.position) {
      this.position = position;
    }
  }

  private pause(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const timer = setTimeout(done, ms);
      const self = this;
      function done(): void {
        clearTimeout(timer);
        self.wake = undefined;
        resolve();
      }
      this.wake = done;
    });
  }
}
