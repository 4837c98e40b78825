/** The little the client needs of `fetch`, and of timers and abort signals, on any runtime. */

/** What the client calls: the global `fetch` of a browser, Node 18+ or React Native, or one you wrap. */
export type FetchLike = (
  url: string,
  init: { method: string; headers: Record<string, string>; body?: string; signal?: AbortSignal },
) => Promise<ResponseLike>;

/** The part of a fetch Response the client reads. */
export interface ResponseLike {
  status: number;
  text(): Promise<string>;
  body?: { getReader(): { read(): Promise<{ done: boolean; value?: Uint8Array }>; cancel(): Promise<void> } } | null;
}

export function defaultFetch(): FetchLike {
  return (url, init) => {
    const f = (globalThis as { fetch?: (url: string, init: object) => Promise<ResponseLike> }).fetch;
    if (typeof f !== "function") throw new TypeError("no global fetch: pass GatewayClient({ fetch })");
    return f(url, init);
  };
}

/** An error as `fetch` rejects it when its signal aborts. */
export function abortError(signal?: AbortSignal): unknown {
  if (signal?.reason !== undefined) return signal.reason;
  const error = new Error("the operation was aborted");
  error.name = "AbortError";
  return error;
}

/** A signal that aborts when any of `signals` does, or after `timeoutMs`; `done()` releases it. */
export function linkedSignal(
  signals: (AbortSignal | undefined)[],
  timeoutMs?: number,
): { signal: AbortSignal; timedOut: () => boolean; done: () => void } {
  const controller = new AbortController();
  let timedOut = false;
  const cleanups: (() => void)[] = [];
  for (const s of signals) {
    if (!s) continue;
    if (s.aborted) {
      controller.abort(s.reason);
      break;
    }
    const onAbort = () => controller.abort(s.reason);
    s.addEventListener("abort", onAbort);
    cleanups.push(() => s.removeEventListener("abort", onAbort));
  }
  if (timeoutMs !== undefined && !controller.signal.aborted) {
    const timer = setTimeout(() => {
      timedOut = true;
      controller.abort(new Error(`timed out after ${timeoutMs} ms`));
    }, Math.max(0, timeoutMs));
    cleanups.push(() => clearTimeout(timer));
  }
  return {
    signal: controller.signal,
    timedOut: () => timedOut,
    done: () => {
      for (const c of cleanups) c();
    },
  };
}

/** Waits `ms`; rejects with the abort error if `signal` aborts first. */
export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) {
      reject(abortError(signal));
      return;
    }
    const onAbort = () => {
      clearTimeout(timer);
      reject(abortError(signal));
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      resolve();
    }, Math.max(0, ms));
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}
