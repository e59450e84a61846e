// X.509 for the page's SEV-SNP and GPU checks: certificates parsed with PKI.js (asn1js for the
// DER inside extensions), signatures verified with WebCrypto. Nothing here parses DER by hand.
//   - RSA-PSS SHA-384 (AMD's VCEK <- ASK <- ARK) and ECDSA with SHA-256/384/512 (NVIDIA's chains)
//   - an X.509 ECDSA signature is DER (ECDSA-Sig-Value); WebCrypto takes raw r || s
import * as asn1js from "asn1js";
import { AlgorithmIdentifier, BasicConstraints, Certificate, RSASSAPSSParams } from "pkijs";
import { buf, concat, fromB64, fromHex, same, sha256, toHex } from "./bytes";

export const OID = {
  rsaPss: "1.2.840.113549.1.1.10",
  mgf1: "1.2.840.113549.1.1.8",
  sha256: "2.16.840.1.101.3.4.2.1",
  sha384: "2.16.840.1.101.3.4.2.2",
  sha512: "2.16.840.1.101.3.4.2.3",
  ecdsaSha256: "1.2.840.10045.4.3.2",
  ecdsaSha384: "1.2.840.10045.4.3.3",
  ecdsaSha512: "1.2.840.10045.4.3.4",
  ecPublicKey: "1.2.840.10045.2.1",
  p256: "1.2.840.10045.3.1.7",
  p384: "1.3.132.0.34",
  p521: "1.3.132.0.35",
  commonName: "2.5.4.3",
  basicConstraints: "2.5.29.19",
  extKeyUsage: "2.5.29.37",
  ocspSigning: "1.3.6.1.5.5.7.3.9",
} as const;

const CURVES: Record<string, { name: string; size: number }> = {
  [OID.p256]: { name: "P-256", size: 32 },
  [OID.p384]: { name: "P-384", size: 48 },
  [OID.p521]: { name: "P-521", size: 66 },
};
const ECDSA_HASH: Record<string, string> = { [OID.ecdsaSha256]: "SHA-256", [OID.ecdsaSha384]: "SHA-384", [OID.ecdsaSha512]: "SHA-512" };

/** One certificate: PKI.js's parse and its exact DER (what a fingerprint covers). */
export interface Cert {
  der: Uint8Array;
  cert: Certificate;
}

export class CertError extends Error {}

export function parseDer(der: Uint8Array): Cert {
  const parsed = asn1js.fromBER(buf(der));
  if (parsed.offset === -1 || parsed.offset !== der.length) throw new CertError("not one DER structure");
  try {
    return { der, cert: new Certificate({ schema: parsed.result }) };
  } catch (e) {
    throw new CertError(`not an X.509 certificate (${(e as Error).message})`);
  }
}

/** Every certificate of a PEM text, in order (an empty list for text with none). */
export function parsePem(text: string): Cert[] {
  const found = [...text.matchAll(/-----BEGIN CERTIFICATE-----([\s\S]*?)-----END CERTIFICATE-----/g)];
  return found.map((m) => parseDer(fromB64(m[1].replace(/\s+/g, ""))));
}

export function commonNames(c: Cert): string[] {
  return c.cert.subject.typesAndValues.filter((t) => t.type === OID.commonName).map((t) => String(t.value.valueBlock.value));
}

export function label(c: Cert): string {
  return commonNames(c)[0] ?? "(no common name)";
}

export function stamp(d: Date): string {
  return d.toISOString().replace(/\.\d+Z$/, "Z");
}

export function validity(c: Cert): [Date, Date] {
  return [c.cert.notBefore.value, c.cert.notAfter.value];
}

/** The DER bytes inside extension ``oid``'s OCTET STRING, or null if the certificate has none. */
export function extension(c: Cert, oid: string): Uint8Array | null {
  const ext = (c.cert.extensions ?? []).find((e) => e.extnID === oid);
  return ext ? new Uint8Array(ext.extnValue.valueBlock.valueHexView) : null;
}

/** One DER value (asn1js), refusing trailing bytes; null if it is not that. */
export function decodeOne(der: Uint8Array): asn1js.AsnType | null {
  const parsed = asn1js.fromBER(buf(der));
  return parsed.offset === -1 || parsed.offset !== der.length ? null : parsed.result;
}

export function isCa(c: Cert): boolean {
  const raw = extension(c, OID.basicConstraints);
  if (raw === null) return false;
  const value = decodeOne(raw);
  if (value === null) return false;
  try {
    return new BasicConstraints({ schema: value }).cA === true;
  } catch {
    return false;
  }
}

function spki(c: Cert): ArrayBuffer {
  return c.cert.subjectPublicKeyInfo.toSchema().toBER(false);
}

/** The certificate's EC curve ("P-384", ...), or null if its key is not an EC key. */
export function curveOf(c: Cert): string | null {
  const info = c.cert.subjectPublicKeyInfo;
  if (info.algorithm.algorithmId !== OID.ecPublicKey) return null;
  const params = info.algorithm.algorithmParams as asn1js.ObjectIdentifier | undefined;
  const oid = params instanceof asn1js.ObjectIdentifier ? params.valueBlock.toString() : "";
  return CURVES[oid]?.name ?? null;
}

export async function ecKey(c: Cert): Promise<CryptoKey> {
  const curve = curveOf(c);
  if (curve === null) throw new CertError(`the key of '${label(c)}' is not an EC key on P-256, P-384 or P-521`);
  return crypto.subtle.importKey("spki", spki(c), { name: "ECDSA", namedCurve: curve }, false, ["verify"]);
}

/** A big-endian unsigned integer as exactly ``size`` bytes (null if it does not fit). */
export function fixed(value: Uint8Array, size: number): Uint8Array | null {
  let start = 0;
  while (start < value.length - 1 && value[start] === 0) start++;
  const trimmed = value.subarray(start);
  if (trimmed.length > size) return null;
  return concat(new Uint8Array(size - trimmed.length), trimmed);
}

/** ECDSA-Sig-Value (DER SEQUENCE of two INTEGERs) -> raw r || s for WebCrypto. */
export function rawEcdsa(der: Uint8Array, size: number): Uint8Array | null {
  const seq = decodeOne(der);
  if (!(seq instanceof asn1js.Sequence) || seq.valueBlock.value.length !== 2) return null;
  const [r, s] = seq.valueBlock.value;
  if (!(r instanceof asn1js.Integer) || !(s instanceof asn1js.Integer)) return null;
  const rr = fixed(new Uint8Array(r.valueBlock.valueHexView), size);
  const ss = fixed(new Uint8Array(s.valueBlock.valueHexView), size);
  return rr && ss ? concat(rr, ss) : null;
}

function sameName(cert: Cert, issuer: Cert): boolean {
  return cert.cert.issuer.isEqual(issuer.cert.subject);
}

function pssParams(c: Cert): { hash: string; mgf: string; salt: number } | null {
  const raw = c.cert.signatureAlgorithm.algorithmParams;
  if (!raw) return null;
  try {
    const p = new RSASSAPSSParams({ schema: raw });
    const mgf = p.maskGenAlgorithm.algorithmId === OID.mgf1 && p.maskGenAlgorithm.algorithmParams ? new AlgorithmIdentifier({ schema: p.maskGenAlgorithm.algorithmParams }).algorithmId : "";
    return { hash: p.hashAlgorithm.algorithmId, mgf, salt: p.saltLength };
  } catch {
    return null;
  }
}

/** Why ``issuer`` did not sign ``cert`` with RSA-PSS SHA-384 (MGF1-SHA-384, salt 48), or null. */
export async function pssProblem(cert: Cert, issuer: Cert, what: string): Promise<string | null> {
  const p = cert.cert.signatureAlgorithm.algorithmId === OID.rsaPss ? pssParams(cert) : null;
  if (p === null || p.hash !== OID.sha384 || p.mgf !== OID.sha384 || p.salt !== 48) return `the ${what} is not signed with RSA-PSS SHA-384, as AMD signs`;
  if (!sameName(cert, issuer)) return `the ${what} was not issued by the next certificate (names differ)`;
  let key: CryptoKey;
  try {
    key = await crypto.subtle.importKey("spki", spki(issuer), { name: "RSA-PSS", hash: "SHA-384" }, false, ["verify"]);
  } catch {
    return `the ${what}'s issuer has no RSA key`;
  }
  const sig = new Uint8Array(cert.cert.signatureValue.valueBlock.valueHexView);
  const ok = await crypto.subtle.verify({ name: "RSA-PSS", saltLength: 48 }, key, buf(sig), buf(cert.cert.tbsView));
  return ok ? null : `the ${what}'s signature does not verify`;
}

/** Did ``issuer`` sign ``cert`` (names match, ECDSA signature verifies)? */
export async function ecdsaIssued(cert: Cert, issuer: Cert): Promise<boolean> {
  const hash = ECDSA_HASH[cert.cert.signatureAlgorithm.algorithmId];
  const curve = curveOf(issuer);
  if (!hash || curve === null || !sameName(cert, issuer)) return false;
  const size = Object.values(CURVES).find((c) => c.name === curve)!.size;
  const raw = rawEcdsa(new Uint8Array(cert.cert.signatureValue.valueBlock.valueHexView), size);
  if (raw === null) return false;
  try {
    return await crypto.subtle.verify({ name: "ECDSA", hash }, await ecKey(issuer), buf(raw), buf(cert.cert.tbsView));
  } catch {
    return false;
  }
}

/** A certificate PKI.js parsed inside another structure (an OCSP reply's certs), with its DER. */
export function fromCertificate(cert: Certificate): Cert {
  return { der: new Uint8Array(cert.toSchema().toBER(false)), cert };
}

/** Does the certificate's extended key usage name ``oid``? */
export function hasEku(c: Cert, oid: string): boolean {
  const raw = extension(c, OID.extKeyUsage);
  const value = raw === null ? null : decodeOne(raw);
  if (!(value instanceof asn1js.Sequence)) return false;
  return value.valueBlock.value.some((v) => v instanceof asn1js.ObjectIdentifier && v.valueBlock.toString() === oid);
}

/** The key's curve size in bytes (48 for P-384), or null for a key that is not EC. */
export function curveSize(c: Cert): number | null {
  const curve = curveOf(c);
  return Object.values(CURVES).find((x) => x.name === curve)?.size ?? null;
}

/**
 * pki_nvidia.verify_chain: ``chain`` leaf first, each valid at ``at`` and signed by the next (a
 * CA), the last self-signed with a SHA-256 fingerprint among ``pins`` (hex). Why not, or null.
 */
export async function chainProblem(chain: Cert[], at: Date, pins: string[], what: string): Promise<string | null> {
  if (!chain.length) return `${what}: no certificates`;
  for (const c of chain) {
    const [start, end] = validity(c);
    if (at < start) return `${what}: certificate '${label(c)}' is not valid before ${stamp(start)} (verification time ${stamp(at)})`;
    if (at > end) return `${what}: certificate '${label(c)}' expired on ${stamp(end)} (verification time ${stamp(at)})`;
  }
  for (let i = 0; i + 1 < chain.length; i++) {
    const [cert, issuer] = [chain[i], chain[i + 1]];
    if (!isCa(issuer)) return `${what}: '${label(issuer)}' issued '${label(cert)}' but is not a CA`;
    if (!(await ecdsaIssued(cert, issuer))) return `${what}: '${label(cert)}' is not signed by the next certificate '${label(issuer)}'`;
  }
  const root = chain[chain.length - 1];
  if (!(await ecdsaIssued(root, root))) return `${what}: the last certificate '${label(root)}' is not self-signed`;
  const seen = await sha256(root.der);
  if (!pins.some((pin) => same(seen, fromHex(pin)))) return `${what}: ends at '${label(root)}' (SHA-256 ${toHex(seen).slice(0, 16)}...), not the pinned NVIDIA root`;
  return null;
}
