// canonical JSON, as veil.hazmat.common.canonical_json writes it: sorted keys, "," and ":"
// separators, UTF-8 without \u escapes of non-ASCII text, null for absent values, integers in
// decimal, booleans, and byte strings as standard padded base64. veil-v3 authenticates these
// bytes (HPKE info, the signed usage), so both ends must produce exactly the same ones.

import { toB64, utf8 } from "./bytes";

export type Canonical = string | number | boolean | null | Uint8Array | Canonical[] | { [k: string]: Canonical };

function encode(value: Canonical): string {
  if (value instanceof Uint8Array) return JSON.stringify(toB64(value));
  if (value === null || typeof value === "boolean" || typeof value === "string") return JSON.stringify(value);
  if (typeof value === "number") {
    if (!Number.isSafeInteger(value)) throw new Error("canonical JSON carries integers only");
    return String(value);
  }
  if (Array.isArray(value)) return `[${value.map(encode).join(",")}]`;
  // Python sorts str keys by code point; for these ASCII keys that is JS's default order.
  const keys = Object.keys(value).sort();
  return `{${keys.map((k) => `${JSON.stringify(k)}:${encode(value[k])}`).join(",")}}`;
}

export function canonicalJson(fields: { [k: string]: Canonical }): Uint8Array {
  return utf8.encode(encode(fields));
}
