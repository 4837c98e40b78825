// Cash, card, split, a decline and a retry, against `gatewayd demo --tcp 127.0.0.1:8470`:
//   npx tsx examples/checkout.ts [path/to/state/demo.json]     (or GATEWAYD_DEMO_JSON=…)
// In an app: import { … } from "@gatewayd/client", and leave out `fetch` (the tablet trusts the CA).
import { CardDeclined, GatewayClient, newIdempotencyKey, type CheckoutRequest, type FetchLike } from "../src/index.js";
import { fetchTrustingCa, readDemo } from "./node-tls.js";

const demo = readDemo(process.argv[2]);
const trusted = fetchTrustingCa(demo.ca_file);
const gw = new GatewayClient({ baseUrl: demo.tcp_url, token: demo.token, fetch: trusted });
const money = (cents: number) => `$${(cents / 100).toFixed(2)}`;

// The terminal indicator: green before the cashier picks a terminal.
for (const t of await gw.terminals()) console.log(`${t.status === "online" ? "🟢" : "🔴"} ${t.id} ${t.status}`);

// One idempotency key per sale, made when the sale starts (the simulator answers by the cents).
function sale(cents: number, tenders: CheckoutRequest["tenders"]): CheckoutRequest {
  return { idempotency_key: newIdempotencyKey("reg1"), register_id: "reg1", lines: [{ sku: "MUG", quantity: 1, unit_price: cents }], tenders };
}

const cash = await gw.checkout(sale(1250, [{ type: "cash", amount: 1250, tendered: 2000 }]));
console.log(`cash:  order ${cash.order_number} ${cash.status}, change ${money(cash.change)}`);

const card = await gw.checkout(sale(1800, [{ type: "card", amount: 1800, terminal_id: "lane-1" }]));
const t = card.tenders[0];
console.log(`card:  order ${card.order_number} ${card.status}: ${t.card_brand} …${t.last4} ${t.entry_method}, auth ${t.auth_code}`);

const split = await gw.checkout(sale(3000, [{ type: "cash", amount: 1000 }, { type: "card", amount: 2000, terminal_id: "lane-2" }]));
console.log(`split: order ${split.order_number} ${split.status}: ${split.tenders.map((x) => `${x.type} ${money(x.amount)}`).join(" + ")}`);

try {
  await gw.checkout(sale(2051, [{ type: "card", amount: 2051, terminal_id: "lane-1" }])); // ..51: declined
} catch (error) {
  if (!(error instanceof CardDeclined)) throw error;
  // The cashier sees why; another attempt is a new sale with a new key (error.retry === "new_key").
  console.log(`decline: ${error.reason}: "${error.cashierMessage}" (order ${error.checkout.order_number} ${error.checkout.status}, retry: ${error.retry})`);
}

// A retry: the first answer is lost on the way back (a Wi-Fi drop, played here by this fetch).
// The client sends the same request with the same key; the daemon answers the same checkout.
let dropped = false;
const flaky: FetchLike = async (url, init) => {
  const answer = await trusted(url, init);
  if (init.method === "POST" && !dropped) {
    dropped = true;
    throw new TypeError("fetch failed: the connection was reset");
  }
  return answer;
};
const retrying = new GatewayClient({ baseUrl: demo.tcp_url, token: demo.token, fetch: flaky, retry: { initialDelayMs: 200 } });
const request = sale(2400, [{ type: "card", amount: 2400, terminal_id: "lane-2" }]);
const once = await retrying.checkout(request);
const again = await gw.checkout(request); // the cashier taps "pay" again: still one charge
console.log(`retry: order ${once.order_number} ${once.status} after a lost answer; sent again: order ${again.order_number}, the same checkout: ${once.id === again.id}`);

process.exitCode = [cash, card, split, once].every((c) => c.status === "completed") && once.id === again.id ? 0 : 1;
