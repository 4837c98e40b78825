/**
 * Server-Sent Events without EventSource (which cannot send the bearer token): a parser of
 * text/event-stream, and the transports that bring its text.
 *
 * - `fetchTransport` reads `fetch`'s streaming body (`response.body.getReader()`): browsers, Node,
 *   and React Native with a streaming fetch (`expo/fetch`).
 * - `xhrTransport` reads XMLHttpRequest's `responseText` as it grows: React Native's own networking
 *   (its `fetch` does not stream), the way `react-native-sse` does it.
 *
 * A transport is any `(request) => Promise<SseResponse>`: bring your own (e.g. around
 * `react-native-sse`) and pass it as `GatewayClient({ sseTransport })`.
 */
import { GatewayError, NetworkError } from "./errors.js";
import type { FetchLike } from "./fetch.js";

export interface SseMessage {
  /** The last event id seen on the stream (it carries over to events without an `id:` line). */
  id: string | null;
  event: string;
  data: string;
}

/** Incremental text/event-stream parser (the WHATWG rules: CRLF, CR or LF lines, comments, `retry:`). */
export class SseParser {
  private buffer = "";
  private started = false;
  private skipLf = false;
  private eventType = "";
  private data: string[] = [];
  private hasData = false;
  /** The last event id (the `Last-Event-ID` to resume from). */
  lastEventId: string | null = null;
  /** The reconnection delay the server asked for with `retry:`, in ms. */
  retryMs: number | null = null;
  /** Comment lines seen (`: heartbeat`): counts them, for the idle watchdog's tests. */
  comments = 0;

  /** Feed a chunk of text; the events it completes. */
  push(chunk: string): SseMessage[] {
    if (!this.started && chunk.length > 0) {
      this.started = true;
      if (chunk.charCodeAt(0) === 0xfeff) chunk = chunk.slice(1);
    }
    if (chunk.length === 0) return [];
    if (this.skipLf && chunk.startsWith("\n")) chunk = chunk.slice(1); // the LF of a CRLF cut in two
    this.skipLf = false;
    this.buffer += chunk;
    const out: SseMessage[] = [];
    let start = 0;
    for (let i = 0; i < this.buffer.length; i++) {
      const c = this.buffer[i];
      if (c !== "\n" && c !== "\r") continue;
      const line = this.buffer.slice(start, i);
      if (c === "\r") {
        if (i + 1 === this.buffer.length) this.skipLf = true;
        else if (this.buffer[i + 1] === "\n") i++;
      }
      start = i + 1;
      const message = this.line(line);
      if (message) out.push(message);
    }
    this.buffer = this.buffer.slice(start);
    return out;
  }

  private line(line: string): SseMessage | null {
    if (line === "") {
      const message = this.hasData
        ? { id: this.lastEventId, event: this.eventType || "message", data: this.data.join("\n") }
        : null;
      this.eventType = "";
      this.data = [];
      this.hasData = false;
      return message;
    }
    if (line.startsWith(":")) {
      this.comments++;
      return null;
    }
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "data") {
      this.data.push(value);
      this.hasData = true;
    } else if (field === "event") {
      this.eventType = value;
    } else if (field === "id") {
      if (!value.includes("\0")) this.lastEventId = value;
    } else if (field === "retry") {
      if (/^\d+$/.test(value)) this.retryMs = Number(value);
    }
    return null;
  }
}

export interface SseRequest {
  url: string;
  headers: Record<string, string>;
  signal: AbortSignal;
}

export interface SseResponse {
  /** The HTTP status; anything but 200 is an error whose body is the error JSON's text. */
  status: number;
  /** The body's text as it arrives; it ends when the server ends the stream. */
  body: AsyncIterable<string>;
}

/** Opens one stream; rejects when no answer came (a network error). */
export type SseTransport = (request: SseRequest) => Promise<SseResponse>;

/** A streaming UTF-8 decoder: TextDecoder where there is one, else a small one of our own. */
export function utf8Decoder(): (bytes: Uint8Array, stream: boolean) => string {
  const TD = (globalThis as { TextDecoder?: new (label?: string) => { decode(b: Uint8Array, o?: { stream?: boolean }): string } }).TextDecoder;
  if (TD) {
    const decoder = new TD("utf-8");
    return (bytes, stream) => decoder.decode(bytes, { stream });
  }
  let pending: number[] = [];
  return (bytes, stream) => {
    const all = pending.length ? Uint8Array.from([...pending, ...bytes]) : bytes;
    pending = [];
    let out = "";
    let i = 0;
    while (i < all.length) {
      const b = all[i];
      const size = b < 0x80 ? 1 : b >= 0xf0 ? 4 : b >= 0xe0 ? 3 : b >= 0xc0 ? 2 : 1;
      if (i + size > all.length) {
        if (stream) pending = Array.from(all.subarray(i));
        else out += "\ufffd";
        break;
      }
      let cp = size === 1 ? (b < 0x80 ? b : 0xfffd) : b & (0xff >> (size + 1));
      for (let k = 1; k < size; k++) cp = (cp << 6) | (all[i + k] & 0x3f);
      out += String.fromCodePoint(cp);
      i += size;
    }
    return out;
  };
}

/** Events over `fetch`: the response body must be a ReadableStream (React Native's fetch's is not). */
export function fetchTransport(fetchFn: FetchLike): SseTransport {
  return async ({ url, headers, signal }) => {
    const response = await fetchFn(url, { method: "GET", headers, signal });
    if (response.status !== 200) {
      const text = await response.text();
      return { status: response.status, body: once(text) };
    }
    const reader = response.body && typeof response.body.getReader === "function" ? response.body.getReader() : null;
    if (!reader) {
      throw new GatewayError({
        code: "streaming_unsupported",
        message:
          "this fetch does not stream response bodies (React Native's): pass GatewayClient({ sseTransport: xhrTransport() })," +
          " or a streaming fetch such as expo/fetch",
        retry: "no",
      });
    }
    const decode = utf8Decoder();
    return {
      status: 200,
      body: (async function* () {
        try {
          for (;;) {
            const { done, value } = await reader.read();
            if (done) break;
            if (!value) continue;
            const text = decode(value, true);
            if (text) yield text;
          }
        } finally {
          reader.cancel().catch(() => undefined);
        }
      })(),
    };
  };
}

async function* once(text: string): AsyncGenerator<string> {
  yield text;
}

/** The part of XMLHttpRequest a transport uses (React Native's, a browser's, or a test's fake). */
export interface XhrLike {
  readyState: number;
  status: number;
  responseText: string;
  onreadystatechange: (() => void) | null;
  onprogress: (() => void) | null;
  onerror: (() => void) | null;
  ontimeout?: (() => void) | null;
  open(method: string, url: string): void;
  setRequestHeader(name: string, value: string): void;
  send(body?: null): void;
  abort(): void;
}

export interface XhrTransportOptions {
  /** The XMLHttpRequest class (default: the global one). */
  XMLHttpRequest?: new () => XhrLike;
  /**
   * XHR keeps the whole response text: after this many characters the connection is ended and
   * the client reconnects at once with Last-Event-ID, so memory stays bounded (default 1,000,000).
   */
  maxResponseChars?: number;
}

/** Events over XMLHttpRequest (React Native): reads `responseText` as it grows. */
export function xhrTransport(options: XhrTransportOptions = {}): SseTransport {
  const maxChars = options.maxResponseChars ?? 1_000_000;
  return ({ url, headers, signal }) =>
    new Promise<SseResponse>((resolve, reject) => {
      const Xhr = options.XMLHttpRequest ?? (globalThis as { XMLHttpRequest?: new () => XhrLike }).XMLHttpRequest;
      if (!Xhr) {
        reject(new GatewayError({ code: "streaming_unsupported", message: "no XMLHttpRequest here", retry: "no" }));
        return;
      }
      const xhr = new Xhr();
      const chunks: string[] = [];
      let seen = 0;
      let ended = false;
      let failure: unknown = null;
      let wake: (() => void) | null = null;
      let answered = false;
      const notify = () => {
        const w = wake;
        wake = null;
        w?.();
      };
      const finish = (error: unknown = null) => {
        if (ended) return;
        ended = true;
        failure = error;
        signal.removeEventListener("abort", onAbort);
        if (!answered) reject(error ?? new NetworkError("the event stream closed before it answered"));
        notify();
      };
      const onAbort = () => {
        xhr.abort();
        finish(signal.reason ?? new NetworkError("aborted"));
      };
      const body: AsyncIterable<string> = {
        async *[Symbol.asyncIterator]() {
          try {
            for (;;) {
              if (chunks.length) {
                yield chunks.shift() as string;
                continue;
              }
              if (ended) {
                if (failure) throw failure;
                return;
              }
              await new Promise<void>((r) => (wake = r));
            }
          } finally {
            if (!ended) {
              xhr.abort();
              finish();
            }
          }
        },
      };
      const update = () => {
        if (ended) return;
        if (!answered && xhr.readyState >= 2 && xhr.status !== 0) {
          answered = true;
          resolve({ status: xhr.status, body });
        }
        if (xhr.readyState >= 3) {
          const text = xhr.responseText ?? "";
          if (text.length > seen) {
            chunks.push(text.slice(seen));
            seen = text.length;
            notify();
          }
          if (seen > maxChars) {
            xhr.abort(); // recycled: the client reconnects with Last-Event-ID
            finish();
            return;
          }
        }
        if (xhr.readyState === 4) {
          if (!answered) finish(new NetworkError("no answer from the daemon"));
          else finish();
        }
      };
      xhr.onreadystatechange = update;
      xhr.onprogress = update;
      xhr.onerror = () => finish(new NetworkError("the event stream failed"));
      xhr.ontimeout = () => finish(new NetworkError("the event stream timed out"));
      if (signal.aborted) {
        reject(signal.reason ?? new NetworkError("aborted"));
        return;
      }
      signal.addEventListener("abort", onAbort);
      xhr.open("GET", url);
      for (const [name, value] of Object.entries(headers)) xhr.setRequestHeader(name, value);
      xhr.send(null);
    });
}
