// TDX quotes verified in the page with dcap-qvl (Phala's Rust verifier, compiled to WebAssembly),
// the steps of veil.attestation.report_tdx:
//   collateral     the node's Intel-signed collateral, fresh: TCB info and QE identity issued
//                  at most maxAgeDays before the verification time, and before their nextUpdate
//   quote          signatures, the PCK chain to Intel's root and the CRLs, via dcap-qvl
//   TD attributes  a production TD: debug off, SEPT_VE_DISABLE on
//   TCB status     UpToDate (the Python client's default policy)
//   measurements   strict means pinned: MRTD and the RTMRs equal the values pinned in this page
//                  and, with a verified release, one of its TDX sets (report_tdx's rules)
import init, { js_verify } from "@phala/dcap-qvl-web";
import wasmUrl from "@phala/dcap-qvl-web/dcap-qvl-web_bg.wasm?url";
import type { Step } from "./attest";
import { fromHex } from "./bytes";
import type { ReleaseRefs } from "./references";
import { TDX_FIELDS } from "./release";

export const MEASUREMENTS = ["mr_td", "rtmr0", "rtmr1", "rtmr2", "rtmr3", "mr_config_id", "mr_owner", "mr_owner_config"] as const;
export type Pins = Partial<Record<(typeof MEASUREMENTS)[number], string>>;
const REGISTER: Record<string, string> = { rtmr0: "rt_mr0", rtmr1: "rt_mr1", rtmr2: "rt_mr2", rtmr3: "rt_mr3" };

let loaded: Promise<unknown> | null = null;

interface Verified {
  status: string;
  advisory_ids: string[];
  report: { TD10?: Record<string, string>; TD15?: Record<string, string>; [k: string]: unknown };
}

function freshness(collateral: Record<string, unknown>, at: Date, maxAgeDays: number, dates: string[]): string[] {
  const problems: string[] = [];
  for (const [key, name] of [["tcb_info", "TCB info"], ["qe_identity", "QE identity"]] as const) {
    let doc: Record<string, unknown>;
    try {
      const raw = collateral[key];
      doc = (typeof raw === "string" ? JSON.parse(raw) : raw) as Record<string, unknown>;
    } catch {
      problems.push(`${name} is not JSON`);
      continue;
    }
    const issued = Date.parse(String(doc?.issueDate));
    const next = Date.parse(String(doc?.nextUpdate));
    if (!Number.isNaN(issued) && !Number.isNaN(next)) dates.push(`${name} issued ${String(doc.issueDate)}, next update ${String(doc.nextUpdate)}`);
    if (Number.isNaN(issued) || Number.isNaN(next)) problems.push(`${name} has no readable issueDate and nextUpdate`);
    else if (issued > at.getTime()) problems.push(`${name} issued after the verification time`);
    else if (next <= at.getTime()) problems.push(`${name} expired at its nextUpdate ${new Date(next).toISOString()}`);
    else if (at.getTime() - issued > maxAgeDays * 86400_000) problems.push(`${name} issued more than ${maxAgeDays} days before the verification time`);
  }
  return problems;
}

/** The TDX steps; returns the report_data the quote signs, or null if a step before it failed. */
export async function checkTdx(
  quote: Uint8Array,
  evidence: Record<string, unknown>,
  steps: Step[],
  options: { at?: Date; pins?: Pins; maxCollateralAgeDays?: number; release?: ReleaseRefs | null; facts?: Record<string, string> } = {},
): Promise<Uint8Array | null> {
  const at = options.at ?? new Date();
  const maxAge = options.maxCollateralAgeDays ?? 30;
  const add = (name: string, ok: boolean, detail: string) => steps.push({ name, ok, detail });
  const collateral = evidence.collateral as Record<string, unknown> | null | undefined;
  if (!collateral || typeof collateral !== "object") {
    add("collateral", false, "no collateral: the node offered none, and this page fetches none");
    return null;
  }
  const dates: string[] = [];
  const stale = freshness(collateral, at, maxAge, dates);
  if (stale.length) {
    add("collateral", false, `collateral offered by the node refused: ${stale.join("; ")}`);
    return null;
  }
  add("collateral", true, `collateral offered by the node: issued within ${maxAge} days of ${at.toISOString()} and before its next update (${dates.join("; ")})`);
  loaded ??= init({ module_or_path: wasmUrl });
  await loaded;
  let verified: Verified;
  try {
    verified = js_verify(quote, collateral, BigInt(Math.floor(at.getTime() / 1000))) as Verified;
  } catch (e) {
    add("quote", false, `the quote did not verify [dcap-qvl: ${String((e as Error)?.message ?? e)}]`);
    return null;
  }
  const td = verified.report.TD10 ?? verified.report.TD15;
  if (!td) {
    add("quote", false, "the quote is not a TD report (an SGX enclave quote?)");
    return null;
  }
  add("quote", true, `TDX quote signed by a genuine Intel TDX platform; collateral chain and CRLs valid at ${at.toISOString()} (dcap-qvl in WebAssembly)`);
  const attributes = fromHex(td.td_attributes);
  const problems: string[] = [];
  if (attributes[0] & 0x01) problems.push("the TD is debuggable (TUD.DEBUG set)");
  if (!(attributes[3] & 0x10)) problems.push("SEPT_VE_DISABLE is off");
  add("TD attributes", !problems.length, problems.join("; ") || "production TD: debug off, SEPT_VE_DISABLE on");
  const advisories = verified.advisory_ids.length ? `; advisories: ${verified.advisory_ids.join(", ")}` : "";
  add("TCB status", verified.status === "UpToDate", verified.status === "UpToDate" ? `UpToDate${advisories}` : `${verified.status} is not allowed (policy: UpToDate)${advisories}`);
  const pins = options.pins ?? {};
  const actual = (n: string) => String(td[REGISTER[n] ?? n] ?? "").toLowerCase();
  if (options.release) releaseMeasurements(steps, pins, actual, options.release, options.facts);
  else {
    const pinned = MEASUREMENTS.filter((n) => pins[n]);
    if (!pinned.length) {
      add("measurements", false, `nothing pinned: a strict client trusts only the code it pinned. Pin mr_td = "${td.mr_td}" (and rtmr0..rtmr2) in the Attestation panel, or load a signed release`);
    } else {
      const wrong = pinned.filter((n) => actual(n) !== String(pins[n]).toLowerCase());
      add("measurements", !wrong.length, wrong.length ? `${wrong.join(", ")} differ from the pinned values` : `match the pins (${pinned.join(", ")})`);
    }
  }
  return fromHex(td.report_data);
}

/** report_tdx.check_tdx_measurements with a verified release: the pins must all hold, and one of
 *  the release's TDX sets must hold too; a set that leaves MRTD unpinned needs MRTD pinned. */
function releaseMeasurements(steps: Step[], pins: Pins, actual: (n: string) => string, release: ReleaseRefs, facts?: Record<string, string>): void {
  const add = (ok: boolean, detail: string) => steps.push({ name: "measurements", ok, detail });
  const pinned = MEASUREMENTS.filter((n) => pins[n]);
  const mismatches = (set: Partial<Record<string, string>>) => TDX_FIELDS.filter((n) => set[n] !== undefined && actual(n) !== String(set[n]).toLowerCase());
  const wrong = mismatches(pins);
  if (wrong.length) return void add(false, `${wrong.join(", ")} differ from the policy's pins`);
  let matched = pinned.length ? `policy pins ${pinned.join(", ")}` : "";
  if (!release.tdxSets.length) return void add(false, `release ${release.name} lists no TDX measurements: this node's platform is not part of the release`);
  const hits = release.tdxSets.map((set, i) => (mismatches(set).length ? -1 : i)).filter((i) => i >= 0);
  if (!hits.length) return void add(false, `the TD's measurements are in no measurement set of release ${release.name}`);
  const chosen = release.tdxSets[hits[0]];
  if (!("mr_td" in chosen) && !pins.mr_td) return void add(false, `release ${release.name} does not pin mr_td (the TD firmware, which measures everything else into the RTMRs): pin mr_td in the policy as well`);
  const names = TDX_FIELDS.filter((n) => n in chosen);
  const text = `release ${release.name} (${names.join(", ")})`;
  matched = matched ? `${matched} and ${text}` : text;
  if (facts) facts.release_match = `tdx[${hits[0]}] (${names.join(", ")})`;
  const unpinned = ["rtmr0", "rtmr1", "rtmr2"].filter((n) => !pins[n as keyof Pins] && !(n in chosen));
  add(true, `match ${matched}${unpinned.length ? `; not pinned: ${unpinned.join(", ")}` : ""}`);
}
