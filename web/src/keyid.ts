// Key ids (veil.wire.keyid): the first 8 bytes of BLAKE2b-256 of the raw public key, in hex.
import { blake2b } from "@noble/hashes/blake2.js";
import { toHex } from "./bytes";

export function keyId(publicKey: Uint8Array): string {
  return toHex(blake2b(publicKey, { dkLen: 32 }).subarray(0, 8));
}
