// The SEV-SNP and GPU pins the Attestation panel keeps beside the TDX ones (localStorage
// "veil.pins", the page's policy): the names and shapes of the Python client's policy keys.
//   snp_measurement      48 bytes of hex, or a list of them (one must match)
//   snp_min_tcb          { bootloader, tee, snp, microcode, fmc }: per-component minimums
//   gpu_driver_versions  e.g. ["550.90.07"]; gpu_vbios_versions e.g. ["96.00.9F.00.01"]
import { OID_TCB } from "./snp";

export const EXTRA_PINS = ["snp_measurement", "snp_min_tcb", "gpu_driver_versions", "gpu_vbios_versions"] as const;

const HEX96 = /^[0-9a-f]{96}$/i;

/** Why ``value`` is not a valid pin ``key`` of these (null: valid; undefined: not one of these). */
export function extraPinProblem(key: string, value: unknown): string | null | undefined {
  if (key === "snp_measurement") {
    const list = Array.isArray(value) ? value : [value];
    return list.length && list.every((m) => typeof m === "string" && HEX96.test(m)) ? null : "snp_measurement: expected 48 bytes of hex, or a list of them";
  }
  if (key === "snp_min_tcb") {
    const ok = value !== null && typeof value === "object" && !Array.isArray(value) && Object.entries(value).every(([k, v]) => k in OID_TCB && Number.isInteger(v) && (v as number) >= 0 && (v as number) <= 255);
    return ok ? null : `snp_min_tcb: expected an object of ${Object.keys(OID_TCB).join(", ")} -> 0..255`;
  }
  if (key === "gpu_driver_versions" || key === "gpu_vbios_versions") {
    return Array.isArray(value) && value.every((v) => typeof v === "string" && v.trim()) ? null : `${key}: expected a list of version strings`;
  }
  return undefined;
}
