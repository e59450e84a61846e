// One headless Chromium for the whole pytest session, driven over stdin/stdout with JSON lines:
// {"id": 1, "op": "goto", "page": "p1", "url": "..."} -> {"id": 1, "ok": true, "value": ...}.
// Each page records every request it sends (method, URL, headers, body) for the tests to search.
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createRequire } from "node:module";
import { createInterface } from "node:readline";

// playwright-core is web/'s devDependency (npm ci in web/): resolved from there.
const { chromium } = createRequire(join(process.env.VEIL_WEB_DIR, "package.json"))("playwright-core");

const profile = mkdtempSync(join(tmpdir(), "veil-chromium-"));
const context = await chromium.launchPersistentContext(profile, {
  executablePath: process.env.VEIL_CHROMIUM ?? "/usr/bin/chromium",
  headless: true,
  args: ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--no-first-run"],
  viewport: { width: 1100, height: 800 },
});
for (const page of context.pages()) await page.close().catch(() => {});
const pages = new Map();
const sel = (testid) => `[data-testid="${testid}"]`;

const ops = {
  async open({ page: name }) {
    const page = await context.newPage();
    const log = { requests: [], console: [], errors: [] };
    page.on("request", (r) => log.requests.push({ method: r.method(), url: r.url(), headers: r.headers(), body: r.postData() ?? "" }));
    page.on("console", (m) => log.console.push(`${m.type()}: ${m.text()}`));
    page.on("pageerror", (e) => log.errors.push(String(e)));
    pages.set(name, { page, log });
    return true;
  },
  async close({ page }) {
    await pages.get(page).page.close();
    pages.delete(page);
    return true;
  },
  goto: ({ page, url }) => pages.get(page).page.goto(url).then((r) => r?.status() ?? null),
  fill: ({ page, testid, value }) => pages.get(page).page.fill(sel(testid), value),
  click: ({ page, testid }) => pages.get(page).page.click(sel(testid)),
  check: ({ page, testid, checked }) => pages.get(page).page.setChecked(sel(testid), checked),
  select: ({ page, testid, value }) => pages.get(page).page.selectOption(sel(testid), value).then(() => true),
  async wait({ page, testid, timeout, state }) {
    const locator = pages.get(page).page.locator(sel(testid)).first();
    await locator.waitFor({ state: state ?? "visible", timeout: timeout ?? 30000 });
    return state === "hidden" || state === "detached" ? null : await locator.evaluate((e) => e.innerText ?? e.textContent);
  },
  async download({ page, testid }) {
    const p = pages.get(page).page;
    const [download] = await Promise.all([p.waitForEvent("download"), p.click(sel(testid))]);
    return { name: download.suggestedFilename(), text: readFileSync(await download.path(), "utf8") };
  },
  text: ({ page, testid }) => pages.get(page).page.locator(sel(testid)).first().innerText(),
  attr: ({ page, testid, name }) => pages.get(page).page.locator(sel(testid)).first().getAttribute(name),
  count: ({ page, testid }) => pages.get(page).page.locator(sel(testid)).count(),
  html: ({ page }) => pages.get(page).page.content(),
  // A function's source, called with arg: one expression (evaluated by the browser's debugger
  // protocol, so the page's Content-Security-Policy, which forbids eval, is not weakened).
  evaluate: ({ page, expression, arg }) => pages.get(page).page.evaluate(`(${expression})(${JSON.stringify(arg ?? null)})`),
  screenshot: ({ page, path }) => pages.get(page).page.screenshot({ path, fullPage: true }).then(() => true),
  log: ({ page }) => pages.get(page).log,
  async quit() {
    await context.close();
    rmSync(profile, { recursive: true, force: true });
    setImmediate(() => process.exit(0));
    return true;
  },
};

process.stdout.write(JSON.stringify({ ready: true, version: context.browser()?.version() ?? "persistent" }) + "\n");
const lines = createInterface({ input: process.stdin });
for await (const line of lines) {
  const { id, op, ...args } = JSON.parse(line);
  try {
    const value = await ops[op](args);
    process.stdout.write(JSON.stringify({ id, ok: true, value: value ?? null }) + "\n");
  } catch (e) {
    process.stdout.write(JSON.stringify({ id, ok: false, error: String(e?.message ?? e) }) + "\n");
  }
}
await context.close().catch(() => {});
rmSync(profile, { recursive: true, force: true });
