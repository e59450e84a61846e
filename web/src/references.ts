// Step "release" and the references the measurement steps compare against, as
// veil.attestation.report_references.check_release builds them: the page's pins (all must hold)
// and, when a release verified under a key the USER configured, the release's sets (one must
// hold; SNP measurements narrowed by any pin; GPU versions added to the pinned ones).
// The release is the one loaded in the Attestation panel or, if none is, the one the node shows
// (evidence.release): either way only the user's keys are tried.
import type { Step } from "./attest";
import { fromB64, utf8 } from "./bytes";
import { ReleaseError, SIGSTORE_REFUSED, signerText, verifyRelease, type VerifiedRelease } from "./release";

export interface ReleaseRefs {
  name: string;
  digest: string;
  signer: string;
  tdxSets: Record<string, string>[];
  snpMeasurements: string[];
  gpuSets: [string, string][];
}

export interface ReleaseConfig {
  /** The Ed25519 release keys the user trusts (32 bytes each). */
  keys: Uint8Array[];
  /** A release loaded in the panel: the manifest's exact bytes and its signature document's. */
  loaded: { manifest: Uint8Array; signature: Uint8Array } | null;
}

export function refsOf(v: VerifiedRelease): ReleaseRefs {
  return { name: v.manifest.release, digest: v.digest, signer: v.signer, tdxSets: v.manifest.tdx, snpMeasurements: v.manifest.sev_snp, gpuSets: v.manifest.gpu };
}

function shownRelease(evidence: Record<string, unknown>): { manifest: Uint8Array | null; signature: unknown; bundle: unknown } | null {
  const shown = evidence.release;
  if (shown === null || shown === undefined || typeof shown !== "object") return null;
  const r = shown as Record<string, unknown>;
  let manifest: Uint8Array | null = null;
  try {
    manifest = r.manifest == null ? null : fromB64(r.manifest);
  } catch {
    manifest = null;
  }
  return { manifest, signature: r.signature ?? null, bundle: r.sigstore_bundle ?? null };
}

/** Step "release"; the release's references when it verified, else null (pins alone then). */
export async function checkRelease(evidence: Record<string, unknown>, config: ReleaseConfig, steps: Step[], facts: Record<string, string>): Promise<ReleaseRefs | null> {
  const add = (ok: boolean, detail: string, notChecked = false) => steps.push(notChecked ? { name: "release", ok, detail, notChecked } : { name: "release", ok, detail });
  const shown = shownRelease(evidence);
  if (!config.keys.length && !config.loaded) {
    if (shown) add(true, "the node shows a release, but this page trusts no release key (add one in the Attestation panel)", true);
    return null;
  }
  const trusts = config.keys.map(signerText).join("; ");
  let verified: VerifiedRelease;
  let source: string;
  try {
    if (config.loaded) {
      source = "loaded in this page";
      verified = await verifyRelease(config.loaded.manifest, config.loaded.signature, config.keys);
    } else if (!shown) {
      throw new ReleaseError(`this page accepts only releases signed by ${trusts}, and the node shows none (or load one in the Attestation panel)`);
    } else if (shown.signature !== null && shown.manifest !== null) {
      source = "shown by the node";
      verified = await verifyRelease(shown.manifest, shown.signature as Record<string, unknown>, config.keys);
    } else if (shown.signature !== null) {
      throw new ReleaseError("the node shows an Ed25519 signature but no manifest");
    } else if (shown.bundle !== null) {
      throw new ReleaseError(`the node shows a Sigstore bundle. ${SIGSTORE_REFUSED}`);
    } else {
      throw new ReleaseError(`the node shows no release signature, but this page trusts only ${trusts}`);
    }
  } catch (e) {
    add(false, e instanceof ReleaseError ? e.reason : `release: ${String((e as Error)?.message ?? e)}`);
    return null;
  }
  const m = verified.manifest;
  add(true, `${m.release} signed by ${verified.signer}`);
  facts.release = m.release;
  facts.release_signer = verified.signer;
  facts.release_sha256 = verified.digest;
  facts.release_source = source;
  return refsOf(verified);
}

/** What the panel stores: the release files as base64 (re-verified on every lock, never trusted). */
export function encodeLoaded(manifest: Uint8Array, signature: Uint8Array): string {
  const b64 = (b: Uint8Array) => btoa(Array.from(b, (x) => String.fromCharCode(x)).join(""));
  return JSON.stringify({ manifest: b64(manifest), signature: b64(signature) });
}

export function decodeLoaded(stored: string | null): ReleaseConfig["loaded"] {
  if (!stored) return null;
  try {
    const doc = JSON.parse(stored) as Record<string, unknown>;
    return { manifest: fromB64(doc.manifest), signature: fromB64(doc.signature) };
  } catch {
    return { manifest: utf8.encode(""), signature: utf8.encode("") }; // fails verification: closed
  }
}
