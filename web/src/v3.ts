// The veil-v3 suite in the browser (veil.hazmat.v3 is the reference; tests/vectors/veil-v3.json
// pins both). Request: HPKE base mode, single shot, X-Wing (KEM 0x647a) or DHKEM(X25519),
// HKDF-SHA256, AES-256-GCM, with every routing field the gateway sees bound into HPKE's info.
// Response: AES-256-GCM chunks under keys derived from a secret sealed inside the request, a
// running SHA-256 over the chunks, and one Ed25519 signature (WebCrypto) on the final chunk.

import { Aes256Gcm, CipherSuite, DhkemX25519HkdfSha256, HkdfSha256 } from "@hpke/core";
import { XWing } from "@hpke/hybridkem-x-wing";
import { buf, concat, fromB64, random, same, sha256, toB64, u64, utf8 } from "./bytes";
import { canonicalJson } from "./canonical";
import { keyId } from "./keyid";

export const SUITE = "veil-v3";
export type Kem = "mlkem768-x25519" | "x25519";
const PUBLIC_KEY_SIZE: Record<Kem, number> = { "mlkem768-x25519": 1184 + 32, x25519: 32 };
const REQUEST_LABEL = utf8.encode("veil-v3 request\x00");
const RESPONSE_LABEL = utf8.encode("veil-v3 response");
const CHUNK_LABEL = utf8.encode("veil-v3 chunk");
const ANSWER_LABEL = utf8.encode("veil-v3 answer");
const SIGNATURE_LABEL = utf8.encode("veil-v3 signature");

/** Which check an answer failed; the UI names it, and shows nothing of the chunk. */
export type Check =
  | "malformed"
  | "stream-order"
  | "decryption"
  | "response-hash"
  | "signature"
  | "usage"
  | "truncated"
  | "request-binding"
  | "model";

export class IntegrityError extends Error {
  constructor(
    readonly check: Check,
    message: string,
  ) {
    super(message);
    this.name = "IntegrityError";
  }
}

export function suiteOf(kem: Kem): CipherSuite {
  return new CipherSuite({
    kem: kem === "x25519" ? new DhkemX25519HkdfSha256() : new XWing(),
    kdf: new HkdfSha256(),
    aead: new Aes256Gcm(),
  });
}

export interface RequestFields {
  kem: Kem;
  keyId: string;
  endpoint: string;
  modelName: string;
  stackSmallId: number;
  numComputeUnits: number | null;
  stream: boolean | null;
  requestId: Uint8Array;
  timestamp: number;
  reservationId: string | null;
}

export function requestInfo(f: RequestFields): Uint8Array {
  return concat(
    REQUEST_LABEL,
    canonicalJson({
      protocol: SUITE,
      kem: f.kem,
      key_id: f.keyId,
      endpoint: f.endpoint,
      model_name: f.modelName,
      stack_small_id: f.stackSmallId,
      num_compute_units: f.numComputeUnits,
      stream: f.stream,
      request_id: f.requestId,
      timestamp: f.timestamp,
      reservation_id: f.reservationId,
    }),
  );
}

export interface Usage {
  prompt_tokens: number;
  completion_tokens: number;
  total_tokens: number;
}

const USAGE_KEYS = ["prompt_tokens", "completion_tokens", "total_tokens"] as const;

/** The usage a chunk carries, as the wire model reads it (absent fields are 0); anything else
 *  is refused rather than guessed at. */
export function parseUsage(raw: unknown): Usage | null {
  if (raw === null || raw === undefined) return null;
  if (typeof raw !== "object" || Array.isArray(raw)) throw new IntegrityError("usage", "usage is not an object");
  const fields = raw as Record<string, unknown>;
  const usage: Usage = { prompt_tokens: 0, completion_tokens: 0, total_tokens: 0 };
  for (const [k, v] of Object.entries(fields)) {
    if (!(USAGE_KEYS as readonly string[]).includes(k) || !Number.isSafeInteger(v) || (v as number) < 0) {
      throw new IntegrityError("usage", "usage carries an unexpected field or value");
    }
    usage[k as keyof Usage] = v as number;
  }
  return usage;
}

export function signedMessage(finalHash: Uint8Array, usage: Usage | null): Uint8Array {
  const fields = usage === null ? {} : { ...usage };
  return concat(SIGNATURE_LABEL, finalHash, canonicalJson(fields));
}

function flags(index: number, final: boolean): Uint8Array {
  return concat(u64(index), new Uint8Array([final ? 1 : 0]));
}

/** One answer's keys and running hash (both ends share this schedule). */
export class AnswerCipher {
  private constructor(
    private readonly key: CryptoKey,
    private readonly baseNonce: Uint8Array,
    readonly responseNonce: Uint8Array,
    public hash: Uint8Array,
  ) {}

  static async derive(
    secret: Uint8Array,
    requestId: Uint8Array,
    responseNonce: Uint8Array,
    infoDigest: Uint8Array,
  ): Promise<AnswerCipher> {
    if (responseNonce.length !== 32) throw new IntegrityError("malformed", "response nonce must be 32 bytes");
    const ikm = await crypto.subtle.importKey("raw", buf(secret), "HKDF", false, ["deriveBits"]);
    const okm = new Uint8Array(
      await crypto.subtle.deriveBits(
        { name: "HKDF", hash: "SHA-256", salt: buf(responseNonce), info: buf(concat(RESPONSE_LABEL, requestId)) },
        ikm,
        44 * 8,
      ),
    );
    const key = await crypto.subtle.importKey("raw", buf(okm.subarray(0, 32)), "AES-GCM", false, ["encrypt", "decrypt"]);
    const start = await sha256(concat(ANSWER_LABEL, responseNonce, infoDigest));
    return new AnswerCipher(key, okm.slice(32), responseNonce, start);
  }

  nonce(index: number): Uint8Array {
    if (!Number.isSafeInteger(index) || index < 0) throw new IntegrityError("stream-order", "chunk index out of range");
    const out = this.baseNonce.slice();
    const i = u64(index);
    for (let k = 0; k < 8; k++) out[4 + k] ^= i[k];
    return out;
  }

  chain(index: number, final: boolean, ciphertext: Uint8Array): Promise<Uint8Array> {
    return sha256(concat(this.hash, flags(index, final), ciphertext));
  }

  async seal(index: number, final: boolean, plaintext: Uint8Array): Promise<Uint8Array> {
    const params = { name: "AES-GCM", iv: buf(this.nonce(index)), additionalData: buf(concat(CHUNK_LABEL, flags(index, final))) };
    return new Uint8Array(await crypto.subtle.encrypt(params, this.key, buf(plaintext)));
  }

  async open(index: number, final: boolean, ciphertext: Uint8Array): Promise<Uint8Array> {
    const params = { name: "AES-GCM", iv: buf(this.nonce(index)), additionalData: buf(concat(CHUNK_LABEL, flags(index, final))) };
    try {
      return new Uint8Array(await crypto.subtle.decrypt(params, this.key, buf(ciphertext)));
    } catch {
      throw new IntegrityError(
        "decryption",
        "the chunk's AES-GCM tag did not verify: it was altered, belongs to another request or position, or was sealed for another request",
      );
    }
  }
}

/** A sealed chunk as the wire carries it (ConfidentialComputeResponse, veil-v3 fields). */
export interface SealedChunk {
  ciphertext: string;
  nonce: string;
  response_hash?: string | null;
  signature?: string | null;
  usage?: unknown;
  response_nonce?: string | null;
  index?: number | null;
  final?: boolean | null;
}

function field(value: unknown, what: string): Uint8Array {
  try {
    return fromB64(value);
  } catch {
    throw new IntegrityError("malformed", `the chunk's ${what} is not base64`);
  }
}

/** Opens one answer chunk by chunk, in order; the final chunk's signature must verify. */
export class ClientSession {
  private cipher: AnswerCipher | null = null;
  private nextIndex = 0;
  private finalSeen = false;
  usage: Usage | null = null;

  constructor(
    private readonly secret: Uint8Array,
    readonly requestId: Uint8Array,
    readonly timestamp: number,
    private readonly infoDigest: Uint8Array,
    private readonly signingKey: CryptoKey,
  ) {}

  get complete(): boolean {
    return this.finalSeen;
  }

  get chunks(): number {
    return this.nextIndex;
  }

  /** Verify and decrypt one chunk; throws IntegrityError naming the check that failed. */
  async open(chunk: SealedChunk): Promise<Uint8Array> {
    if (typeof chunk !== "object" || chunk === null) throw new IntegrityError("malformed", "the chunk is not an object");
    const { index, final } = chunk;
    if (chunk.response_nonce == null || typeof index !== "number" || typeof final !== "boolean") {
      throw new IntegrityError("malformed", "not a veil-v3 chunk: response_nonce, index or final missing");
    }
    if (chunk.response_hash == null) throw new IntegrityError("response-hash", "the chunk carries no response_hash");
    if (this.finalSeen) throw new IntegrityError("stream-order", "a chunk arrived after the final chunk of the answer");
    if (index !== this.nextIndex) {
      throw new IntegrityError(
        "stream-order",
        `chunk ${index} arrived where chunk ${this.nextIndex} was expected (dropped, reordered or duplicated)`,
      );
    }
    const responseNonce = field(chunk.response_nonce, "response_nonce");
    let cipher = this.cipher;
    if (cipher === null) {
      cipher = await AnswerCipher.derive(this.secret, this.requestId, responseNonce, this.infoDigest);
    } else if (!same(cipher.responseNonce, responseNonce)) {
      throw new IntegrityError("stream-order", "the chunk carries another response nonce: it is not from this answer");
    }
    if (!same(cipher.nonce(index), field(chunk.nonce, "nonce"))) {
      throw new IntegrityError("decryption", "the chunk nonce does not match its index");
    }
    const ciphertext = field(chunk.ciphertext, "ciphertext");
    const plaintext = await cipher.open(index, final, ciphertext);
    const running = await cipher.chain(index, final, ciphertext);
    if (!same(running, field(chunk.response_hash, "response_hash"))) {
      throw new IntegrityError("response-hash", "response_hash is not the running hash of the chunks received");
    }
    if (final) {
      if (chunk.signature == null) throw new IntegrityError("signature", "the final chunk of the answer is not signed");
      const usage = parseUsage(chunk.usage);
      const ok = await crypto.subtle.verify(
        "Ed25519",
        this.signingKey,
        buf(field(chunk.signature, "signature")),
        buf(signedMessage(running, usage)),
      );
      if (!ok) throw new IntegrityError("signature", "the answer's signature does not verify under the attested node key");
      this.usage = usage;
    } else if (chunk.signature != null) {
      throw new IntegrityError("signature", "a chunk before the final one carries a signature the node never made");
    } else if (chunk.usage != null) {
      throw new IntegrityError("usage", "a chunk before the final one carries usage the node never signed");
    }
    cipher.hash = running;
    this.cipher = cipher;
    this.nextIndex = index + 1;
    this.finalSeen = final;
    return plaintext;
  }

  /** The transport ended: without the final chunk the answer was truncated. */
  finish(): void {
    if (!this.finalSeen) {
      throw new IntegrityError("truncated", `the answer ended after ${this.nextIndex} chunk(s) without its final chunk (truncated)`);
    }
  }
}

export interface SealOptions extends Omit<RequestFields, "requestId" | "timestamp"> {
  nodePublicKey: Uint8Array;
  signingKey: Uint8Array;
  body: Uint8Array;
  // For test vectors only: fixed values instead of fresh random ones / the clock.
  requestId?: Uint8Array;
  responseSecret?: Uint8Array;
  now?: number;
}

export async function importSigningKey(raw: Uint8Array): Promise<CryptoKey> {
  if (raw.length !== 32) throw new Error("the node signing key must be 32 bytes of Ed25519");
  return crypto.subtle.importKey("raw", buf(raw), "Ed25519", false, ["verify"]);
}

/** Seal a request: the envelope (as the gateway receives it) and the session opening its answer. */
export async function sealRequest(o: SealOptions): Promise<{ envelope: Record<string, unknown>; session: ClientSession }> {
  if (o.nodePublicKey.length !== PUBLIC_KEY_SIZE[o.kem]) throw new Error(`${o.kem} public key must be ${PUBLIC_KEY_SIZE[o.kem]} bytes`);
  if (keyId(o.nodePublicKey) !== o.keyId) throw new Error("key_id does not belong to the node public key");
  const requestId = o.requestId ?? random(16);
  const secret = o.responseSecret ?? random(32);
  if (requestId.length !== 16 || secret.length !== 32) throw new Error("request id or response secret has the wrong size");
  const timestamp = Math.floor(o.now ?? Date.now() / 1000);
  const fields: RequestFields = { ...o, requestId, timestamp };
  const info = requestInfo(fields);
  const suite = suiteOf(o.kem);
  const recipientPublicKey = await suite.kem.importKey("raw", buf(o.nodePublicKey), true);
  const sealed = await suite.seal({ recipientPublicKey, info: buf(info) }, buf(concat(secret, o.body)));
  const envelope = {
    ciphertext: toB64(concat(new Uint8Array(sealed.enc), new Uint8Array(sealed.ct))),
    client_dh_public_key: toB64(random(32)), // unused by v3 (v1 shape only)
    model_name: o.modelName,
    node_dh_public_key: toB64(o.nodePublicKey.subarray(o.nodePublicKey.length - 32)),
    nonce: toB64(random(12)), // unused by v3
    plaintext_body_hash: toB64(random(32)), // unused by v3
    salt: toB64(random(16)), // unused by v3
    stack_small_id: o.stackSmallId,
    num_compute_units: o.numComputeUnits,
    stream: o.stream,
    protocol: SUITE,
    key_id: o.keyId,
    request_id: toB64(requestId),
    timestamp,
    kem: o.kem,
    reservation_id: o.reservationId,
  };
  const session = new ClientSession(secret, requestId, timestamp, await sha256(info), await importSigningKey(o.signingKey));
  return { envelope, session };
}
