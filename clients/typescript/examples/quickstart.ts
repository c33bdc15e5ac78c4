// Append a few events, read them back, and follow the log with a resumable durable subscription.
//
//   highwater serve &                       # or: cargo run --release, from the repository root
//   npm run build && npm run example        # HIGHWATER_ADDRESS=host:port to use another server

import { randomUUID } from "node:crypto";
import { Client, eventJson, WrongExpectedRevisionError } from "../src/index";

interface ProductAdded {
  sku: string;
  quantity: number;
}

export async function main(address = process.env.HIGHWATER_ADDRESS ?? "127.0.0.1:50051", log = console.log): Promise<bigint[]> {
  const client = new Client(address);
  try {
    await client.ready(10_000);
    const cart = `cart-${randomUUID()}`;

    // Append: the first append expects the stream not to exist yet; ids make retries safe.
    const first = await client.append(cart, [
      { id: randomUUID(), type: "ProductAdded", data: { sku: "apple", quantity: 2 } },
      { id: randomUUID(), type: "ProductAdded", data: { sku: "pear", quantity: 1 } },
    ], { expectedRevision: "no-stream" });
    log(`appended ${cart} revisions ${first.firstRevision}..${first.lastRevision} at positions ${first.firstPosition}..${first.lastPosition}`);

    // Optimistic concurrency: a writer that read an old revision is told so.
    try {
      await client.append(cart, [{ type: "CartCheckedOut", data: {} }], { expectedRevision: 0n });
    } catch (err) {
      if (!(err instanceof WrongExpectedRevisionError)) throw err;
      log(`conflict: expected ${err.expected}, actual ${err.actual}`);
    }
    const last = await client.append(cart, [{ type: "CartCheckedOut", data: {} }], { expectedRevision: first.lastRevision });

    // Read the stream back.
    for await (const event of client.readStream(cart)) {
      const detail = event.type === "ProductAdded" ? ` ${JSON.stringify(eventJson<ProductAdded>(event))}` : "";
      log(`read ${event.stream}@${event.revision} (position ${event.position}) ${event.type}${detail}`);
    }

    // Subscribe to this cart's events in the global log. A durable subscription starts after its
    // saved checkpoint and reconnects by itself if the connection drops.
    const subscriptionName = `quickstart-${randomUUID()}`;
    await client.saveCheckpoint(subscriptionName, first.firstPosition - 1n);
    const subscription = client.subscribeAll({
      subscription: subscriptionName,
      filter: { streamPrefixes: [cart] },
    });
    const seen: bigint[] = [];
    for await (const event of subscription) {
      log(`subscription: ${event.type} at position ${event.position}`);
      seen.push(event.position);
      if (event.position === last.lastPosition) break;
    }
    await client.saveCheckpoint(subscriptionName, subscription.position!);
    await client.deleteSubscription(subscriptionName);
    return seen;
  } finally {
    client.close();
  }
}

if (require.main === module) {
  main().catch((err: unknown) => {
    console.error(err);
    process.exitCode = 1;
  });
}
