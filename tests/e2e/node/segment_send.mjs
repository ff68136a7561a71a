// Sends calls through Segment's own Node library (@segment/analytics-node), as an application
// would, and reports what the library saw. Run by tests/common/node.py beside the installed
// library: `node segment_send.mjs < config.json`, where the config is
//   {"host": URL, "path": "/v1/batch", "flushTimeoutMs": N,
//    "senders": [{"writeKey": KEY, "flushAt": N, "rounds": [[{"method": "track", ...call}, ...], ...]}]}
// Each sender is one Analytics instance; each round's calls are made, then flushed together.
// Prints one JSON document: per sender, every HTTP request and response the library made (its
// place in the order they happened, the time, status, Retry-After, the messageIds it carried) and
// every error it reported, through the calls' callbacks and its 'error' emitter. No key is printed.
import { Analytics } from "@segment/analytics-node";

const statusOf = (error) => {
  const match = /^\[(\d{3})\]/.exec(String(error?.message ?? error));
  return match ? Number(match[1]) : null;
};
const messageIdsOf = (body) => JSON.parse(body).batch.map((event) => event.messageId);
let order = 0;

async function send(sender, { host, path, flushTimeoutMs }) {
  const analytics = new Analytics({ writeKey: sender.writeKey, host, path, flushAt: sender.flushAt });
  const seen = { requests: [], responses: [], callbackErrors: [], emittedErrors: [], delivered: [] };
  analytics.on("http_request", ({ body, headers }) => {
    seen.requests.push({ order: order++, at: Date.now(), retryCount: headers["X-Retry-Count"] ?? null, messageIds: messageIdsOf(body) });
  });
  analytics.on("http_response", ({ status, headers, body }) => {
    seen.responses.push({ order: order++, at: Date.now(), status, retryAfter: headers["retry-after"] ?? null, messageIds: messageIdsOf(body) });
  });
  analytics.on("error", ({ code, reason, ctx }) => {
    const messageId = ctx?.event.messageId ?? null;
    seen.emittedErrors.push({ code, status: statusOf(reason), message: String(reason?.message ?? reason), messageId });
  });
  for (const round of sender.rounds) {
    for (const { method, ...call } of round) {
      analytics[method](call, (error) => {
        if (error) {
          seen.callbackErrors.push({ messageId: call.messageId, status: statusOf(error), message: String(error.message ?? error) });
        } else {
          seen.delivered.push(call.messageId);
        }
      });
    }
    await analytics.flush({ timeout: flushTimeoutMs });
  }
  await analytics.closeAndFlush({ timeout: flushTimeoutMs });
  return { version: analytics.VERSION, ...seen };
}

let input = "";
for await (const chunk of process.stdin) input += chunk;
const config = JSON.parse(input);
const senders = [];
for (const sender of config.senders) senders.push(await send(sender, config));
process.stdout.write(JSON.stringify({ senders }) + "\n");
