// The gateway's API, as the page calls it. The API key lives in sessionStorage and leaves the
// page only as the bearer header of these calls.

const KEY_STORAGE = "veil.api_key";

export class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
    readonly detail: Record<string, unknown> = {},
  ) {
    super(message);
    this.name = "ApiError";
  }

  get retryAfter(): number | null {
    const s = this.detail.retry_after_seconds;
    return typeof s === "number" ? s : null;
  }
}

/** The gateway (or, behind it, the node) could not be reached at all. */
export class Unreachable extends Error {
  constructor(message: string) {
    super(message);
    this.name = "Unreachable";
  }
}

export function storedKey(): string | null {
  return sessionStorage.getItem(KEY_STORAGE);
}

export function storeKey(key: string | null): void {
  if (key === null) sessionStorage.removeItem(KEY_STORAGE);
  else sessionStorage.setItem(KEY_STORAGE, key);
}

export class Gateway {
  constructor(
    readonly base: string,
    private readonly key: string,
  ) {}

  async request(method: string, path: string, init: { json?: unknown; body?: string; headers?: Record<string, string>; signal?: AbortSignal } = {}): Promise<Response> {
    const headers: Record<string, string> = { authorization: `Bearer ${this.key}`, ...init.headers };
    let body: string | undefined = init.body;
    if (init.json !== undefined) {
      body = JSON.stringify(init.json);
      headers["content-type"] = "application/json";
    }
    let response: Response;
    try {
      response = await fetch(`${this.base}${path}`, { method, headers, body, signal: init.signal, credentials: "omit", cache: "no-store" });
    } catch (e) {
      if ((e as Error).name === "AbortError") throw e;
      throw new Unreachable(`the gateway at ${this.base || location.origin} did not answer (${(e as Error).message})${corsHint(this.base)}`);
    }
    if (!response.ok) throw await apiError(response);
    return response;
  }

  async json<T = Record<string, unknown>>(method: string, path: string, json?: unknown): Promise<T> {
    const response = await this.request(method, path, json === undefined ? {} : { json });
    return (await response.json()) as T;
  }
}

/** A browser reports a gateway that refuses this page's origin (CORS) as it reports a network
 * failure; for a gateway on another origin, name the setting that allows this page. */
function corsHint(base: string): string {
  let origin: string;
  try {
    origin = new URL(base).origin;
  } catch {
    return "";
  }
  if (origin === location.origin) return "";
  return `; if it is running, it may not allow this console's origin: its operator must allow ${location.origin} (veil gateway --console-origin ${location.origin})`;
}

export async function apiError(response: Response): Promise<ApiError> {
  let code = `HTTP_${response.status}`;
  let message = response.statusText || "request failed";
  let detail: Record<string, unknown> = {};
  try {
    const body = (await response.json()) as { error?: Record<string, unknown> };
    if (body.error && typeof body.error === "object") {
      detail = body.error;
      if (typeof detail.code === "string") code = detail.code;
      if (typeof detail.message === "string") message = detail.message;
    }
  } catch {
    // not our error shape: keep the status line
  }
  const retry = response.headers.get("retry-after");
  if (retry !== null && detail.retry_after_seconds === undefined && /^\d+$/.test(retry)) {
    detail = { ...detail, retry_after_seconds: Number(retry) };
  }
  return new ApiError(response.status, code, message, detail);
}
