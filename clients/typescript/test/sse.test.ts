/** The event stream without a daemon: the parser, reconnecting with Last-Event-ID, the transports. */
import { describe, expect, test } from "vitest";
import {
  GatewayClient,
  GatewayError,
  type LiveEvent,
  SseParser,
  type SseRequest,
  type SseTransport,
  Unauthorized,
  type XhrLike,
  fetchTransport,
  xhrTransport,
} from "../src/index.js";

const STATUS = (id: string, terminal: string, status: string) =>
  `id: ${id}\nevent: terminal.status\ndata: {"type":"terminal.status","terminal_id":"${terminal}","status":"${status}","last_error":null,"at":"t"}\n\n`;

describe("SseParser", () => {
  const text = `retry: 2000\n\n: heartbeat\n\n${STATUS("r-1", "lane-1", "offline")}data: a\r\ndata: b\r\n\r\nid: r-3\rdata: c\r\r`;

  function parse(chunks: string[]) {
    const parser = new SseParser();
    const out = chunks.flatMap((c) => parser.push(c));
    return { out, parser };
  }

  test("events, comments, retry, ids carried over, CRLF and CR", () => {
    const { out, parser } = parse([text]);
    expect(out.map((m) => [m.id, m.event, m.data])).toEqual([
      ["r-1", "terminal.status", expect.stringContaining('"status":"offline"')],
      ["r-1", "message", "a\nb"],
      ["r-3", "message", "c"],
    ]);
    expect(parser.retryMs).toBe(2000);
    expect(parser.comments).toBe(1);
    expect(parser.lastEventId).toBe("r-3");
  });

  test("the same events whichever way the text is cut", () => {
    const whole = parse([text]).out;
    expect(parse(text.split("")).out).toEqual(whole);
    for (let cut = 1; cut < text.length; cut += 7) expect(parse([text.slice(0, cut), text.slice(cut)]).out).toEqual(whole);
  });

  test("a byte-order mark and an event not yet ended", () => {
    const { out } = parse(["\ufeffdata: x\n", "\n", "data: unfinished\n"]);
    expect(out.map((m) => m.data)).toEqual(["x"]);
  });
});

/** A transport that serves each connection from a script, and records what each asked for. */
function scriptedTransport(connections: ((req: SseRequest) => { status: number; chunks: string[]; hang?: boolean } | Error)[]) {
  const requests: SseRequest[] = [];
  const transport: SseTransport = async (req) => {
    requests.push(req);
    const step = connections[Math.min(requests.length - 1, connections.length - 1)](req);
    if (step instanceof Error) throw step;
    return {
      status: step.status,
      body: (async function* () {
        for (const chunk of step.chunks) yield chunk;
        if (step.hang) {
          await new Promise<void>((_, fail) => req.signal.addEventListener("abort", () => fail(new Error("aborted"))));
        }
      })(),
    };
  };
  return { requests, transport };
}

function client(transport: SseTransport) {
  return new GatewayClient({ baseUrl: "https://store.example:8470", token: "T", sseTransport: transport, fetch: async () => ({ status: 500, text: async () => "" }) });
}

describe("events()", () => {
  test("reconnects after the stream ends or fails, resuming with Last-Event-ID, and hands stream.reset over", async () => {
    const { requests, transport } = scriptedTransport([
      () => ({ status: 200, chunks: ["retry: 5\n\n", STATUS("r-1", "lane-1", "offline"), STATUS("r-2", "lane-1", "online")] }),
      () => new TypeError("fetch failed"),
      () => ({ status: 503, chunks: ['{"error":{"code":"shutting_down","message":"","retry":"same_key","details":{}}}'] }),
      () => ({ status: 200, chunks: ['id: s-9\nevent: stream.reset\ndata: {"type":"stream.reset","reason":"restarted","last_event_id":"r-2","run":"s","at":"t"}\n\n', STATUS("s-10", "lane-2", "offline")] }),
    ]);
    const seen: LiveEvent[] = [];
    const states: string[] = [];
    for await (const e of client(transport).events({ types: ["terminal.status"], onConnection: (s) => states.push(s) })) {
      seen.push(e);
      if (seen.length === 4) break;
    }
    expect(seen.map((e) => [e.eventId, e.type])).toEqual([
      ["r-1", "terminal.status"],
      ["r-2", "terminal.status"],
      ["s-9", "stream.reset"],
      ["s-10", "terminal.status"],
    ]);
    expect(requests.map((r) => r.headers["Last-Event-ID"] ?? null)).toEqual([null, "r-2", "r-2", "r-2"]);
    expect(requests[0].url).toBe("https://store.example:8470/v1/events?types=terminal.status");
    expect(requests[0].headers).toMatchObject({ Authorization: "Bearer T", Accept: "text/event-stream" });
    expect(states).toEqual(["open", "closed", "open"]);
    expect(requests.at(-1)?.signal.aborted).toBe(true); // the loop's break closed the connection
  });

  test("a dead connection (not even a heartbeat) is replaced", async () => {
    const { requests, transport } = scriptedTransport([
      () => ({ status: 200, chunks: [STATUS("r-1", "lane-1", "offline")], hang: true }),
      () => ({ status: 200, chunks: [STATUS("r-2", "lane-1", "online")], hang: true }),
    ]);
    const seen: string[] = [];
    for await (const e of client(transport).events({ idleTimeoutMs: 30 })) {
      seen.push(e.eventId ?? "");
      if (seen.length === 2) break;
    }
    expect(seen).toEqual(["r-1", "r-2"]);
    expect(requests[1].headers["Last-Event-ID"]).toBe("r-1");
  });

  test("401 and 400 end the iteration with their error; the caller's signal ends it quietly", async () => {
    const unauthorized = scriptedTransport([() => ({ status: 401, chunks: ['{"error":{"code":"unauthorized","message":"no","retry":"no","details":{}}}'] })]);
    const iterate = async (transport: SseTransport, signal?: AbortSignal) => {
      for await (const _ of client(transport).events({ signal })) void _;
    };
    await expect(iterate(unauthorized.transport)).rejects.toBeInstanceOf(Unauthorized);
    expect(unauthorized.requests).toHaveLength(1);
    const stop = new AbortController();
    const quiet = scriptedTransport([() => ({ status: 200, chunks: [": heartbeat\n\n"], hang: true })]);
    setTimeout(() => stop.abort(), 20);
    await expect(iterate(quiet.transport, stop.signal)).resolves.toBeUndefined();
  });
});

describe("transports", () => {
  test("fetchTransport reads a streaming body, bytes cut inside a character included", async () => {
    const bytes = new TextEncoder().encode(STATUS("r-1", "café-1", "offline"));
    const cut = bytes.indexOf(0xc3) + 1; // inside é
    const body = new ReadableStream<Uint8Array>({
      start(c) {
        c.enqueue(bytes.slice(0, cut));
        c.enqueue(bytes.slice(cut));
        c.close();
      },
    });
    const transport = fetchTransport(async () => new Response(body, { status: 200 }));
    const response = await transport({ url: "u", headers: {}, signal: new AbortController().signal });
    let text = "";
    for await (const chunk of response.body) text += chunk;
    expect(text).toContain("café-1");
  });

  test("fetchTransport says what to do when fetch does not stream (React Native)", async () => {
    const transport = fetchTransport(async () => ({ status: 200, text: async () => "", body: null }));
    const error = await transport({ url: "u", headers: {}, signal: new AbortController().signal }).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(GatewayError);
    expect((error as GatewayError).message).toContain("xhrTransport");
  });

  test("xhrTransport reads responseText as it grows, and recycles a long connection", async () => {
    const made: FakeXhr[] = [];
    class FakeXhr implements XhrLike {
      readyState = 0;
      status = 0;
      responseText = "";
      onreadystatechange: (() => void) | null = null;
      onprogress: (() => void) | null = null;
      onerror: (() => void) | null = null;
      headers: Record<string, string> = {};
      aborted = false;
      constructor() {
        made.push(this);
      }
      open() {
        this.readyState = 1;
      }
      setRequestHeader(name: string, value: string) {
        this.headers[name] = value;
      }
      send() {
        setTimeout(() => {
          this.status = 200;
          this.readyState = 2;
          this.onreadystatechange?.();
          for (const part of [STATUS("r-1", "lane-1", "offline"), STATUS("r-2", "lane-1", "online")]) {
            this.readyState = 3;
            this.responseText += part;
            this.onprogress?.();
          }
        }, 1);
      }
      abort() {
        this.aborted = true;
      }
    }
    const transport = xhrTransport({ XMLHttpRequest: FakeXhr, maxResponseChars: 150 });
    const response = await transport({ url: "u", headers: { Authorization: "Bearer T" }, signal: new AbortController().signal });
    expect(response.status).toBe(200);
    let text = "";
    for await (const chunk of response.body) text += chunk; // ends: recycled past 150 characters
    expect(text).toContain("r-2");
    expect(made[0].headers.Authorization).toBe("Bearer T");
    expect(made[0].aborted).toBe(true);
  });
});
