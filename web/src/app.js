// The page: load model.onnx and its contract, pick WebGPU or WASM, detect on a picked image or the
// webcam, draw boxes / landmarks / scores. Query parameters: ?ep=wasm|webgpu (default: WebGPU when
// the browser has an adapter, else WASM) and ?threads=N (WASM threads; default: every core when the
// page is cross-origin isolated, as featherface-edge serve makes it, else 1).
// State for tests and benchmarks: window.featherface.

import { postprocess, preprocess, readContract, resizedSize } from "./featherface.js";

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const state = (window.featherface = { ready: false, runs: 0, last: null, error: null });
const priorsCache = new Map();
let session;
let ort;
let meta;
let thresholds;

function status(text, isError = false) {
  $("status").textContent = text;
  $("status").className = isError ? "error" : "";
  if (isError) state.error = text;
}

async function pickBackend() {
  const wanted = params.get("ep") || "auto";
  if (wanted === "webgpu" || (wanted === "auto" && navigator.gpu && (await navigator.gpu.requestAdapter()))) {
    return "webgpu";
  }
  return "wasm";
}

async function load() {
  const [modelBytes, config] = await Promise.all([
    fetch("model.onnx").then((r) => (r.ok ? r.arrayBuffer() : Promise.reject(new Error(`model.onnx: HTTP ${r.status}`)))),
    fetch("config.json").then((r) => (r.ok ? r.json() : Promise.reject(new Error(`config.json: HTTP ${r.status}`)))),
  ]);
  meta = readContract(modelBytes);
  thresholds = config; // the serving edge's [detector] score_threshold / nms_threshold
  const backend = await pickBackend();
  ort = await import(backend === "webgpu" ? "./vendor/ort.webgpu.min.mjs" : "./vendor/ort.wasm.min.mjs");
  ort.env.wasm.wasmPaths = new URL("vendor/", location.href).href;
  const cores = navigator.hardwareConcurrency || 1;
  ort.env.wasm.numThreads = Number(params.get("threads")) || (self.crossOriginIsolated ? cores : 1);
  const t0 = performance.now();
  session = await ort.InferenceSession.create(modelBytes, {
    executionProviders: backend === "webgpu" ? ["webgpu", "wasm"] : ["wasm"],
    graphOptimizationLevel: "all",
  });
  Object.assign(state, {
    ready: true,
    backend,
    threads: ort.env.wasm.numThreads,
    sessionMs: performance.now() - t0,
    meta,
    thresholds,
    modelBytes: modelBytes.byteLength,
  });
  showMeta(backend);
  status(`ready: ${meta.name} ${meta.version} on ${backend}${backend === "wasm" ? ` (${state.threads} thread(s))` : ""}`);
}

function showMeta(backend) {
  const inp = meta.input;
  const rows = [
    ["model", `${meta.name} ${meta.version}`],
    ["parameters", meta.parameters?.toLocaleString()],
    ["input", `${inp.dynamic ? "any size" : `${inp.width}x${inp.height}`} ${inp.layout} ${inp.color}`],
    ["mean / std", `${inp.mean.join(", ")} / ${inp.std.join(", ")}`],
    ["priors", `min sizes ${JSON.stringify(meta.priors.min_sizes)}, steps ${meta.priors.steps.join("/")}`],
    ["variances", meta.priors.variances.join(", ")],
    ["thresholds", `score > ${thresholds.score_threshold}, NMS IoU ${thresholds.nms_threshold}`],
    ["runtime", `onnxruntime-web ${ort.env.versions?.web ?? ""} ${backend}`],
    ["sha256", (meta.weights_sha256 || "").slice(0, 16) + "…"],
  ];
  $("meta").replaceChildren(
    ...rows.map(([k, v]) => {
      const tr = document.createElement("tr");
      for (const text of [k, v]) tr.appendChild(document.createElement("td")).textContent = text ?? "";
      return tr;
    }),
  );
}

// An offscreen canvas holds the frame at the size the network wants (the image's own, for a
// dynamic model); colorSpaceConversion "none" keeps the file's pixel values, as OpenCV reads them.
const work = document.createElement("canvas");
const workCtx = work.getContext("2d", { willReadFrequently: true });

async function detect(source, width, height) {
  const [sw, sh] = resizedSize(meta, width, height);
  work.width = sw;
  work.height = sh;
  workCtx.drawImage(source, 0, 0, sw, sh);
  const t0 = performance.now();
  const rgba = workCtx.getImageData(0, 0, sw, sh).data;
  const prep = preprocess(rgba, sw, sh, meta, width, height);
  const input = new ort.Tensor("float32", prep.data, prep.dims);
  const t1 = performance.now();
  const out = await session.run({ [session.inputNames[0]]: input });
  const t2 = performance.now();
  const outputs = Object.fromEntries(Object.entries(out).map(([k, t]) => [k, { data: t.data, dims: t.dims }]));
  const faces = postprocess(outputs, meta, prep, width, height, thresholds.score_threshold, thresholds.nms_threshold, priorsCache);
  const t3 = performance.now();
  state.runs += 1;
  return { faces, width, height, preMs: t1 - t0, inferMs: t2 - t1, postMs: t3 - t2, totalMs: t3 - t0 };
}

function draw(source, result) {
  const view = $("view");
  view.width = result.width;
  view.height = result.height;
  const ctx = view.getContext("2d");
  ctx.drawImage(source, 0, 0, result.width, result.height);
  const lw = Math.max(2, Math.round(result.width / 320));
  ctx.lineWidth = lw;
  ctx.font = `${6 * lw + 4}px system-ui, sans-serif`;
  const colours = ["#f33", "#33f", "#3c3", "#f3f", "#fc0"];
  for (const f of result.faces) {
    const [x1, y1, x2, y2] = [f.box[0] * result.width, f.box[1] * result.height, f.box[2] * result.width, f.box[3] * result.height];
    ctx.strokeStyle = "#0f0";
    ctx.strokeRect(x1, y1, x2 - x1, y2 - y1);
    ctx.fillStyle = "#0f0";
    ctx.fillText(f.score.toFixed(2), x1, Math.max(10, y1 - 3));
    const r = Math.max(1.5, (x2 - x1) / 16);
    f.landmarks.forEach(([x, y], i) => {
      ctx.fillStyle = colours[i % colours.length];
      ctx.beginPath();
      ctx.arc(x * result.width, y * result.height, r, 0, 2 * Math.PI);
      ctx.fill();
    });
  }
  $("timing").textContent =
    `${result.faces.length} face(s) · inference ${result.inferMs.toFixed(1)} ms · frame ${result.totalMs.toFixed(1)} ms`;
}

/** Detect on an image file; also used by tests and benchmarks (repeat > 1 times the same frame). */
async function runFile(file, repeat = 1) {
  const bitmap = await createImageBitmap(file, { colorSpaceConversion: "none", imageOrientation: "from-image" });
  const times = [];
  let result;
  for (let i = 0; i < repeat; i++) {
    result = await detect(bitmap, bitmap.width, bitmap.height);
    times.push({ inferMs: result.inferMs, totalMs: result.totalMs });
  }
  draw(bitmap, result);
  state.last = { name: file.name, ...result, times };
  return state.last;
}
state.runFile = runFile;

$("file").addEventListener("change", async (e) => {
  const file = e.target.files[0];
  if (!file || !state.ready) return;
  try {
    await runFile(file, Number(params.get("repeat")) || 1);
  } catch (err) {
    status(`${file.name}: ${err.message}`, true);
  }
});

let streaming = false;
$("webcam").addEventListener("click", async () => {
  const video = $("video");
  if (streaming) {
    streaming = false;
    video.srcObject?.getTracks().forEach((t) => t.stop());
    $("webcam").textContent = "Webcam";
    return;
  }
  try {
    video.srcObject = await navigator.mediaDevices.getUserMedia({ video: { width: 640, height: 480 } });
    await video.play();
  } catch (err) {
    status(`webcam: ${err.message}`, true);
    return;
  }
  streaming = true;
  $("webcam").textContent = "Stop";
  const loop = async () => {
    if (!streaming) return;
    const result = await detect(video, video.videoWidth, video.videoHeight);
    draw(video, result);
    state.last = { name: "webcam", ...result };
    requestAnimationFrame(loop);
  };
  loop();
});

load().catch((err) => status(err.message, true));
