// Reproducible build: fixed file names (no content hashes, no timestamps), one output tree in
// src/veil/console/static, served by the gateway at / (index.html) and /console/ (assets).
import { defineConfig } from "vite";

export default defineConfig({
  base: "/console/",
  build: {
    // VEIL_CONSOLE_OUT: .ci/web builds into a temporary directory to compare with the shipped tree.
    outDir: (globalThis as { process?: { env: Record<string, string | undefined> } }).process?.env.VEIL_CONSOLE_OUT ?? "../src/veil/console/static",
    emptyOutDir: true,
    target: "es2022",
    modulePreload: false,
    sourcemap: false,
    reportCompressedSize: false,
    rollupOptions: {
      input: { index: "index.html", veil: "src/exports.ts" },
      preserveEntrySignatures: "exports-only",
      output: {
        entryFileNames: "assets/[name].js",
        chunkFileNames: "assets/[name].js",
        assetFileNames: "assets/[name][extname]",
      },
    },
  },
});
