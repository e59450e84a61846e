// One confidential request, as the Python client's flow does it: lock (with a fresh nonce) ->
// verify the evidence and the lock's keys -> seal with veil-v3 -> send -> open every chunk.
// Nothing is sealed or sent before the evidence passed; a failed check throws, and the text of a
// chunk that failed is never handed on.

import { fromB64, random, toB64, utf8 } from "./bytes";
import { verifyEvidence, type Report, type Step } from "./attest";
import { ApiError, Gateway } from "./gateway";
import { keyId } from "./keyid";
import { eventData } from "./sse";
import { IntegrityError, sealRequest, type ClientSession, type Usage } from "./v3";

export type Endpoint = "chat" | "embeddings";
const PATHS: Record<Endpoint, string> = { chat: "/v1/confidential/chat/completions", embeddings: "/v1/confidential/embeddings" };
const DEFAULT_CHAT_MAX_TOKENS = 256;
const RESERVATION_HEADER = "X-Veil-Reservation";

export class AttestationFailed extends Error {
  constructor(readonly report: Report) {
    const failed = report.steps.filter((s) => !s.ok).map((s) => `${s.name}: ${s.detail}`);
    super(`the node's ${report.format} attestation did not verify (${failed.join("; ")}); nothing was encrypted or sent`);
    this.name = "AttestationFailed";
  }
}

export class UnverifiableNode extends Error {
  constructor(message: string) {
    super(`${message}; nothing was encrypted or sent`);
    this.name = "UnverifiableNode";
  }
}

export interface Receipt {
  protocol: string;
  endpoint: Endpoint;
  model: string;
  node_small_id: number;
  node_key_id: string;
  kem: string;
  kem_key_id: string;
  stack_small_id: number;
  reserved_units: number | null;
  usage: Usage | null;
  signature_verified: boolean;
  chunks_verified: number;
  attestation: { format: string; ok: boolean; insecure: boolean; steps: Step[] };
}

export interface Hooks {
  allowNoTee: boolean;
  verifyTdx?: Parameters<typeof verifyEvidence>[2]["verifyTdx"];
  verifySnp?: Parameters<typeof verifyEvidence>[2]["verifySnp"];
  verifyGpus?: Parameters<typeof verifyEvidence>[2]["verifyGpus"];
  checkRelease?: Parameters<typeof verifyEvidence>[2]["checkRelease"];
  onAttestation?: (report: Report) => void;
  /** A verified chunk's JSON (never called for a chunk that failed a check). */
  onChunk?: (chunk: Record<string, unknown>) => void;
  signal?: AbortSignal;
}

interface Lock {
  public_key: string;
  node_small_id: number;
  stack_small_id: number;
  key_id?: string | null;
  node_signing_public_key?: string | null;
  reserved_units?: number | null;
  evidence?: unknown;
  reservation_id?: string | null;
  kem?: string | null;
  kem_public_key?: string | null;
  kem_key_id?: string | null;
}

function decode(value: unknown, what: string): Uint8Array {
  try {
    return fromB64(value);
  } catch {
    throw new UnverifiableNode(`the lock's ${what} is not base64`);
  }
}

function plan(endpoint: Endpoint, body: Record<string, unknown>, raw: Uint8Array) {
  const model = body.model;
  if (typeof model !== "string" || !model) throw new Error("choose a model");
  const stream = endpoint === "chat" && body.stream === true;
  let units: number | null = null;
  if (endpoint === "chat") units = ((body.max_tokens as number | undefined) ?? DEFAULT_CHAT_MAX_TOKENS) + raw.length;
  return { model, stream, units };
}

function parseObject(plaintext: Uint8Array): Record<string, unknown> {
  let doc: unknown;
  try {
    doc = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(plaintext));
  } catch {
    throw new IntegrityError("malformed", "the decrypted answer is not JSON");
  }
  if (typeof doc !== "object" || doc === null || Array.isArray(doc)) throw new IntegrityError("malformed", "the decrypted answer is not a JSON object");
  return doc as Record<string, unknown>;
}

/** The usage inside the answer; when the node also sent (and signed) usage in clear, the two
 *  must agree (veil.client.opening.signed_usage). */
function checkUsage(signed: Usage | null, doc: Record<string, unknown>): Usage | null {
  const raw = doc.usage as Record<string, unknown> | null | undefined;
  let inner: Usage | null = null;
  if (raw != null) {
    if (typeof raw !== "object") throw new IntegrityError("usage", "the usage inside the answer is not an object");
    const p = (raw.prompt_tokens as number) ?? 0, c = (raw.completion_tokens as number) ?? 0;
    inner = { prompt_tokens: p, completion_tokens: c, total_tokens: (raw.total_tokens as number) ?? p + c };
  }
  if (signed !== null && (inner === null || signed.prompt_tokens !== inner.prompt_tokens || signed.completion_tokens !== inner.completion_tokens || signed.total_tokens !== inner.total_tokens)) {
    throw new IntegrityError("usage", "the usage sent in clear differs from the usage inside the answer");
  }
  return signed ?? inner;
}

/** Content checks of a chat stream (the Python StreamChecker's): one completion, in order. */
class Place {
  private id: unknown = undefined;
  private events = 0;
  private finished = new Set<number>();
  check(chunk: Record<string, unknown>): void {
    if (this.id === undefined) this.id = chunk.id;
    else if (chunk.id !== this.id) throw new IntegrityError("stream-order", "a chunk belongs to another completion");
    if (!Array.isArray(chunk.choices)) throw new IntegrityError("malformed", "a chunk has no choices list");
    for (const choice of chunk.choices as Record<string, unknown>[]) {
      const index = (choice.index as number) ?? 0;
      const delta = (choice.delta as Record<string, unknown>) ?? {};
      if ("role" in delta && this.events > 0) throw new IntegrityError("stream-order", "the stream's opening chunk arrived out of order");
      if (this.finished.has(index) && delta.content) throw new IntegrityError("stream-order", "content arrived after its choice had finished");
      if (choice.finish_reason != null) this.finished.add(index);
    }
    this.events++;
  }
}

const stackModels = new Map<number, string>();

/** The node signing keys this page saw in locks that passed attestation (this tab only): what
 *  the usage download carries, so a verifier can check each receipt against attested keys. */
export const attestedNodes: { node_small_id: number; node_signing_key: string; key_id: string; format: string; insecure: boolean; seen_at: string }[] = [];

/** The lock's stack must hold units of the model asked for: a lock for another model's stack
 *  means the model was swapped on the way (the node would also refuse the envelope, whose HPKE
 *  info binds the model; here it is caught before anything is sealed). */
async function checkStackModel(gw: Gateway, stack: number, model: string): Promise<void> {
  if (!stackModels.has(stack)) {
    const { stacks } = await gw.json<{ stacks: { stack_small_id: number; model: string }[] }>("GET", "/v1/stacks");
    for (const s of stacks) stackModels.set(s.stack_small_id, s.model);
  }
  const held = stackModels.get(stack);
  if (held !== model) {
    throw new IntegrityError(
      "model",
      `the gateway locked stack ${stack}${held === undefined ? ", which is none of yours," : `, which holds units of ${held},`} for a request to ${model}: the model was swapped on the way; nothing was sealed or sent`,
    );
  }
}

async function lockAndAttest(gw: Gateway, p: ReturnType<typeof plan>, hooks: Hooks) {
  const nonce = random(32);
  const ask: Record<string, unknown> = { model: p.model, attestation_nonce: toB64(nonce) };
  if (p.units !== null) ask.max_num_tokens = p.units;
  const lock = await gw.json<Lock>("POST", "/v1/nodes/lock", ask);
  await checkStackModel(gw, lock.stack_small_id, p.model);
  const x25519 = decode(lock.public_key, "public_key");
  if (lock.node_signing_public_key == null) throw new UnverifiableNode("the lock names no node signing key, so the answer could not be verified");
  const signing = decode(lock.node_signing_public_key, "node signing key");
  if (x25519.length !== 32 || signing.length !== 32) throw new UnverifiableNode("the lock's keys have the wrong size");
  if (lock.key_id != null && lock.key_id !== keyId(x25519)) throw new UnverifiableNode("the lock's key_id does not match its public key");
  let kem: Uint8Array | null = null;
  if (lock.kem_public_key != null) {
    if (lock.kem != null && lock.kem !== "mlkem768-x25519") throw new UnverifiableNode(`the lock's kem ${lock.kem} is not mlkem768-x25519`);
    kem = decode(lock.kem_public_key, "post-quantum key");
    if (lock.kem_key_id != null && lock.kem_key_id !== keyId(kem)) throw new UnverifiableNode("the lock's kem_key_id does not match its post-quantum key");
  } else if (lock.kem != null || lock.kem_key_id != null) {
    throw new UnverifiableNode("the lock names a KEM but no post-quantum key");
  }
  const report = await verifyEvidence(lock.evidence ?? null, { x25519, ed25519: signing, kem, nonce }, { allowNoTee: hooks.allowNoTee, verifyTdx: hooks.verifyTdx, verifySnp: hooks.verifySnp, verifyGpus: hooks.verifyGpus, checkRelease: hooks.checkRelease });
  hooks.onAttestation?.(report);
  if (!report.ok) throw new AttestationFailed(report);
  if (!attestedNodes.some((n) => n.node_signing_key === lock.node_signing_public_key)) {
    attestedNodes.push({ node_small_id: lock.node_small_id, node_signing_key: lock.node_signing_public_key, key_id: keyId(signing), format: report.format, insecure: report.insecure, seen_at: report.facts.verified_at });
  }
  if (kem === null) throw new UnverifiableNode("the lock names no post-quantum (mlkem768-x25519) key, so veil-v3 cannot seal to it");
  return { lock, signing, kem, report };
}

export interface Answer {
  document: Record<string, unknown>;
  receipt: Receipt;
}

const RETRIED = new Set(["STALE_NODE_KEY", "UNAVAILABLE_STACK", "SERVICE_UNAVAILABLE"]);

/** Send one confidential request; retried (re-locked, re-attested, re-sealed) like the Python
 *  client on a stale key, a lost reservation or a node that was not ready. */
export async function confidential(gw: Gateway, endpoint: Endpoint, body: Record<string, unknown>, hooks: Hooks): Promise<Answer> {
  for (let attempt = 1; ; attempt++) {
    try {
      return await once(gw, endpoint, body, hooks);
    } catch (e) {
      if (!(e instanceof ApiError) || !RETRIED.has(e.code) || attempt >= 3 || hooks.signal?.aborted) throw e;
    }
  }
}

async function once(gw: Gateway, endpoint: Endpoint, body: Record<string, unknown>, hooks: Hooks): Promise<Answer> {
  const raw = utf8.encode(JSON.stringify(body));
  const p = plan(endpoint, body, raw);
  const { lock, signing, kem, report } = await lockAndAttest(gw, p, hooks);
  const kemKeyId = keyId(kem);
  const { envelope, session } = await sealRequest({
    kem: "mlkem768-x25519",
    keyId: kemKeyId,
    nodePublicKey: kem,
    signingKey: signing,
    body: raw,
    endpoint: PATHS[endpoint],
    modelName: p.model,
    stackSmallId: lock.stack_small_id,
    numComputeUnits: p.units,
    stream: endpoint === "chat" ? p.stream : null,
    reservationId: lock.reservation_id ?? null,
  });
  const headers: Record<string, string> = { "content-type": "application/json" };
  if (lock.reservation_id) headers[RESERVATION_HEADER] = lock.reservation_id;
  let response: Response;
  try {
    response = await gw.request("POST", PATHS[endpoint], { body: JSON.stringify(envelope), headers, signal: hooks.signal });
  } catch (e) {
    if (e instanceof ApiError && e.code === "DECRYPTION_FAILED") {
      throw new IntegrityError("request-binding", `the node could not open the request: the envelope or its bound fields (model, stack, units, route, reservation) were altered on the way (${e.message})`);
    }
    throw e;
  }
  const receipt: Receipt = {
    protocol: "veil-v3",
    endpoint,
    model: p.model,
    node_small_id: lock.node_small_id,
    node_key_id: keyId(fromB64(lock.public_key)),
    kem: "mlkem768-x25519",
    kem_key_id: kemKeyId,
    stack_small_id: lock.stack_small_id,
    reserved_units: lock.reserved_units ?? p.units,
    usage: null,
    signature_verified: false,
    chunks_verified: 0,
    attestation: { format: report.format, ok: report.ok, insecure: report.insecure, steps: report.steps },
  };
  const document = p.stream ? await readStream(response, session, hooks) : await readWhole(response, session);
  receipt.usage = session.usage ?? checkUsage(null, document);
  receipt.signature_verified = session.complete;
  receipt.chunks_verified = session.chunks;
  return { document, receipt };
}

async function readWhole(response: Response, session: ClientSession): Promise<Record<string, unknown>> {
  let sealed: unknown;
  try {
    sealed = await response.json();
  } catch {
    throw new IntegrityError("malformed", "the answer is not a sealed response");
  }
  const plaintext = await session.open(sealed as never);
  if (!session.complete) throw new IntegrityError("malformed", "the answer is not the node's complete (final) message");
  const doc = parseObject(plaintext);
  checkUsage(session.usage, doc);
  return doc;
}

async function readStream(response: Response, session: ClientSession, hooks: Hooks): Promise<Record<string, unknown>> {
  if (!response.body) throw new IntegrityError("truncated", "the stream has no body");
  const place = new Place();
  let last: Record<string, unknown> = {};
  let done = false;
  try {
    for await (const data of eventData(response.body, hooks.signal)) {
      if (data.trim() === "[DONE]") {
        if (!session.complete) throw new IntegrityError("truncated", "the stream said [DONE] before its final chunk arrived");
        if (done) throw new IntegrityError("stream-order", "[DONE] arrived twice");
        done = true;
        continue;
      }
      if (session.complete) throw new IntegrityError("stream-order", "an event arrived after the stream's final chunk");
      let sealed: unknown;
      try {
        sealed = JSON.parse(data);
      } catch {
        throw new IntegrityError("malformed", "a stream event is not a sealed chunk");
      }
      const chunk = parseObject(await session.open(sealed as never));
      if ("error" in chunk && !("choices" in chunk)) {
        const err = chunk.error as Record<string, unknown>;
        throw new ApiError(502, String(err?.code ?? "ENGINE_ERROR"), String(err?.message ?? "the node failed while answering"));
      }
      place.check(chunk);
      if (session.complete) checkUsage(session.usage, chunk);
      else if (chunk.usage != null) checkUsage(null, chunk); // well-formed, at least
      last = chunk;
      hooks.onChunk?.(chunk);
    }
  } catch (e) {
    if (e instanceof IntegrityError || e instanceof ApiError || (e as Error).name === "AbortError") throw e;
    if (hooks.signal?.aborted) throw e;
    throw new IntegrityError("truncated", `the stream broke before its final chunk (${(e as Error).name})`);
  }
  if (hooks.signal?.aborted) throw new DOMException("stopped", "AbortError");
  session.finish();
  return last;
}
