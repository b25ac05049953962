// Build the page into web/dist: the sources, onnxruntime-web's WASM and WebGPU bundles (vendored
// from node_modules, so the page works offline and from a Pi), and the shipped model. Run after
// `npm ci` (make web does both). config.json (the thresholds) is written by make web from the
// edge's [detector] defaults; featherface-edge serve answers config.json from its own config.
import { copyFileSync, mkdirSync, readdirSync, rmSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const dist = join(here, "dist");
const ort = join(here, "node_modules", "onnxruntime-web", "dist");
const vendored = [
  "ort.wasm.min.mjs",
  "ort-wasm-simd-threaded.mjs",
  "ort-wasm-simd-threaded.wasm",
  "ort.webgpu.min.mjs",
  "ort-wasm-simd-threaded.asyncify.mjs",
  "ort-wasm-simd-threaded.asyncify.wasm",
];

rmSync(dist, { recursive: true, force: true });
mkdirSync(join(dist, "vendor"), { recursive: true });
for (const name of readdirSync(join(here, "src"))) copyFileSync(join(here, "src", name), join(dist, name));
for (const name of vendored) copyFileSync(join(ort, name), join(dist, "vendor", name));
copyFileSync(join(here, "..", "edge", "models", "featherface-nano-b.onnx"), join(dist, "model.onnx"));
console.log(`web/dist: ${readdirSync(join(here, "src")).length} page files, ${vendored.length} vendored, model.onnx`);
