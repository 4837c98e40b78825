/**
 * Idempotency keys: one per sale, made when the sale starts and kept with it (also across an app
 * restart) until the sale is over, so that every retry of it sends the same key.
 *
 * The random part comes from `globalThis.crypto.getRandomValues` (browsers, Node 19+, Hermes with
 * the `react-native-get-random-values` polyfill imported first thing in index.js). Without it the
 * key still is unique for a register (time, a counter and Math.random), but install the polyfill.
 */

let counter = 0;

interface RandomSource {
  getRandomValues<T extends ArrayBufferView | null>(array: T): T;
}

function randomHex(bytes: number): string {
  const source = (globalThis as { crypto?: RandomSource }).crypto;
  const values = new Uint8Array(bytes);
  if (source && typeof source.getRandomValues === "function") {
    source.getRandomValues(values);
  } else {
    for (let i = 0; i < bytes; i++) values[i] = Math.floor(Math.random() * 256);
  }
  let out = "";
  for (const v of values) out += v.toString(16).padStart(2, "0");
  return out;
}

/**
 * A new idempotency key for a sale on `registerId`: `<register>-<time>-<random>`, printable ASCII
 * without spaces (the daemon's rule), at most 100 characters. The register's id is kept readable
 * (other characters become `_`) so that a key in the logs says where it came from.
 */
export function newIdempotencyKey(registerId: string): string {
  const register = registerId.replace(/[^A-Za-z0-9._-]/g, "_").slice(0, 48) || "pos";
  counter = (counter + 1) % 1296;
  const time = Date.now().toString(36) + counter.toString(36).padStart(2, "0");
  return `${register}-${time}-${randomHex(12)}`;
}
