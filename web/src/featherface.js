// FeatherFace pre- and post-processing for the browser: the one JavaScript port of edge/detector.py
// and edge/anchors.py (priors, decode, NMS), checked against the Python edge by tests/web.
//
// Conventions as in edge/anchors.py: priors are (cx, cy, w, h) normalised to the network input,
// level by level (strides 8, 16, 32), row-major, the sizes of one location adjacent; boxes are
// (x1, y1, x2, y2) and landmarks (x, y) pairs, returned normalised to the ORIGINAL image (0..1).
// Everything about the model comes from its own metadata (DESIGN section 1): nothing is hard-coded.

export const METADATA_KEY = "featherface";
export const PRE_NMS_TOP_K = 2000; // as edge/detector.py: greedy NMS is quadratic in its input

// --- the contract: ModelProto.metadata_props (field 14) read straight from the .onnx bytes ---

function varint(bytes, pos) {
  let value = 0;
  let shift = 1;
  for (;;) {
    const b = bytes[pos.i++];
    if (b === undefined) throw new Error("truncated protobuf");
    value += (b & 0x7f) * shift; // no bitwise ops past 2^31: lengths of big tensors exceed it
    if (b < 0x80) return value;
    shift *= 128;
  }
}

function* fields(bytes, start = 0, end = bytes.length) {
  const pos = { i: start };
  while (pos.i < end) {
    const key = varint(bytes, pos);
    const field = Math.floor(key / 8);
    const wire = key & 7;
    if (wire === 0) yield { field, wire, value: varint(bytes, pos) };
    else if (wire === 1) pos.i += 8;
    else if (wire === 5) pos.i += 4;
    else if (wire === 2) {
      const len = varint(bytes, pos);
      yield { field, wire, start: pos.i, end: pos.i + len };
      pos.i += len;
    } else throw new Error(`unsupported protobuf wire type ${wire}`);
  }
}

/** The DESIGN section 1 document of an ONNX file, parsed; throws when the model has none. */
export function readContract(buffer) {
  const bytes = new Uint8Array(buffer);
  const text = new TextDecoder();
  for (const f of fields(bytes)) {
    if (f.field !== 14 || f.wire !== 2) continue; // metadata_props: StringStringEntryProto
    let key = "";
    let value = "";
    for (const g of fields(bytes, f.start, f.end)) {
      if (g.wire !== 2) continue;
      const s = text.decode(bytes.subarray(g.start, g.end));
      if (g.field === 1) key = s;
      else if (g.field === 2) value = s;
    }
    if (key === METADATA_KEY) return checkContract(JSON.parse(value));
  }
  throw new Error("no FeatherFace metadata ('featherface' in metadata_props): export it with featherface-train export");
}

function checkContract(meta) {
  if (meta.format_version > 1) throw new Error(`metadata format_version ${meta.format_version} is newer than this page`);
  for (const key of ["input", "outputs", "priors"]) {
    if (!meta[key]) throw new Error(`metadata field '${key}' is missing`);
  }
  const inp = meta.input;
  inp.layout ??= "NCHW";
  inp.color ??= "BGR";
  if (!["NCHW", "NHWC"].includes(inp.layout.toUpperCase())) throw new Error(`input layout ${inp.layout}`);
  if (!inp.mean || !inp.std) throw new Error("metadata input.mean / input.std missing");
  meta.conf_softmax ??= true;
  meta.num_landmarks ??= 5;
  return meta;
}

// --- pre-processing ---

/** [netW, netH, scale]: the padded input the priors are built for, network pixels per image pixel. */
export function networkSize(meta, width, height, maxSide = 0) {
  const inp = meta.input;
  if (!inp.dynamic) {
    return [inp.width, inp.height, Math.min(inp.width / width, inp.height / height)];
  }
  let scale = 1;
  if (maxSide && Math.max(width, height) > maxSide) scale = maxSide / Math.max(width, height);
  const stride = Math.max(...meta.priors.steps);
  const sw = Math.max(1, pyRound(width * scale));
  const sh = Math.max(1, pyRound(height * scale));
  return [Math.ceil(sw / stride) * stride, Math.ceil(sh / stride) * stride, scale];
}

/** [sw, sh]: the size the image is resized to before padding (as edge/detector.py preprocess). */
export function resizedSize(meta, width, height, maxSide = 0) {
  const [netW, netH, scale] = networkSize(meta, width, height, maxSide);
  const sw = Math.max(1, pyRound(width * scale));
  const sh = Math.max(1, pyRound(height * scale));
  return meta.input.dynamic ? [sw, sh] : [Math.min(netW, sw), Math.min(netH, sh)];
}

function pyRound(x) {
  // Python's round(): halves to even, so the JS sizes equal the edge's for every input.
  const r = Math.round(x);
  return Math.abs(x % 1) === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

/**
 * RGBA pixels already resized to resizedSize() -> the network input: colour order, (x - mean) / std,
 * layout, padded bottom/right with zeros (the mean colour). Returns {data, dims, netW, netH, scaleX, scaleY}.
 */
export function preprocess(rgba, sw, sh, meta, origW, origH, maxSide = 0) {
  const [netW, netH] = networkSize(meta, origW, origH, maxSide);
  const { mean, std, color } = meta.input;
  const nhwc = meta.input.layout.toUpperCase() === "NHWC";
  const src = color === "RGB" ? [0, 1, 2] : [2, 1, 0]; // RGBA offsets of the model's channels
  const plane = netW * netH;
  const data = new Float32Array(3 * plane);
  for (let y = 0; y < sh; y++) {
    for (let x = 0; x < sw; x++) {
      const p = (y * sw + x) * 4;
      const q = y * netW + x;
      for (let c = 0; c < 3; c++) {
        const v = (rgba[p + src[c]] - mean[c]) / std[c];
        if (nhwc) data[q * 3 + c] = v;
        else data[c * plane + q] = v;
      }
    }
  }
  const dims = nhwc ? [1, netH, netW, 3] : [1, 3, netH, netW];
  return { data, dims, netW, netH, scaleX: sw / origW, scaleY: sh / origH };
}

// --- priors, decoding, NMS (edge/anchors.py) ---

/** Float32Array of A x 4 priors (cx, cy, w, h) for a width x height input. */
export function priorBoxes(width, height, minSizes, steps, clip = false) {
  const rows = [];
  for (let l = 0; l < steps.length; l++) {
    const step = steps[l];
    const fh = Math.ceil(height / step);
    const fw = Math.ceil(width / step);
    for (let i = 0; i < fh; i++) {
      for (let j = 0; j < fw; j++) {
        for (const size of minSizes[l]) {
          rows.push(((j + 0.5) * step) / width, ((i + 0.5) * step) / height, size / width, size / height);
        }
      }
    }
  }
  const priors = Float32Array.from(rows);
  if (clip) for (let k = 0; k < priors.length; k++) priors[k] = Math.min(1, Math.max(0, priors[k]));
  return priors;
}

/** Greedy NMS over [x1, y1, x2, y2] boxes; returns kept indices, highest score first. */
export function nms(boxes, scores, iouThreshold) {
  let order = scores.map((_, i) => i).sort((a, b) => scores[b] - scores[a]); // stable, as NumPy's
  const keep = [];
  while (order.length) {
    const i = order[0];
    keep.push(i);
    const [ax1, ay1, ax2, ay2] = boxes[i];
    const areaA = (ax2 - ax1) * (ay2 - ay1);
    order = order.slice(1).filter((k) => {
      const [bx1, by1, bx2, by2] = boxes[k];
      const w = Math.max(0, Math.min(ax2, bx2) - Math.max(ax1, bx1));
      const h = Math.max(0, Math.min(ay2, by2) - Math.max(ay1, by1));
      const inter = w * h;
      return inter / (areaA + (bx2 - bx1) * (by2 - by1) - inter) <= iouThreshold;
    });
  }
  return keep;
}

/**
 * Raw outputs ({name: {data, dims}}) -> [{box, score, landmarks}] normalised to the original image,
 * highest score first: softmax if the graph lacks it, score threshold, top-K, decode, clip, drop
 * boxes in the padding, NMS, landmarks. `prep` is what preprocess() returned.
 */
export function postprocess(outputs, meta, prep, origW, origH, scoreThreshold, nmsThreshold, priorsCache) {
  const key = `${prep.netW}x${prep.netH}`;
  if (!priorsCache.has(key)) {
    const p = meta.priors;
    priorsCache.set(key, priorBoxes(prep.netW, prep.netH, p.min_sizes, p.steps, p.clip));
  }
  const priors = priorsCache.get(key);
  const anchors = priors.length / 4;
  const loc = outputs[meta.outputs.loc].data;
  const conf = outputs[meta.outputs.conf];
  const classes = conf.data.length / anchors;
  if (loc.length !== anchors * 4 || !Number.isInteger(classes)) {
    throw new Error(`the model produced ${loc.length / 4} anchors for ${key} but its priors give ${anchors}`);
  }
  const scores = new Float32Array(anchors);
  for (let a = 0; a < anchors; a++) {
    const row = conf.data.subarray(a * classes, (a + 1) * classes);
    if (meta.conf_softmax) scores[a] = classes > 1 ? row[1] : row[0];
    else {
      const m = Math.max(...row);
      let sum = 0;
      for (const v of row) sum += Math.exp(v - m);
      scores[a] = Math.exp((classes > 1 ? row[1] : row[0]) - m) / sum;
    }
  }
  let idx = [];
  for (let a = 0; a < anchors; a++) if (scores[a] > scoreThreshold) idx.push(a);
  if (idx.length > PRE_NMS_TOP_K) idx = idx.sort((a, b) => scores[b] - scores[a]).slice(0, PRE_NMS_TOP_K);
  const [v0, v1] = meta.priors.variances;
  const sx = prep.netW / prep.scaleX / origW;
  const sy = prep.netH / prep.scaleY / origH;
  const clip01 = (v) => Math.min(1, Math.max(0, v));
  const cand = [];
  for (const a of idx) {
    const [pcx, pcy, pw, ph] = priors.subarray(a * 4, a * 4 + 4);
    const cx = pcx + loc[a * 4] * v0 * pw;
    const cy = pcy + loc[a * 4 + 1] * v0 * ph;
    const w = pw * Math.exp(loc[a * 4 + 2] * v1);
    const h = ph * Math.exp(loc[a * 4 + 3] * v1);
    const box = [clip01((cx - w / 2) * sx), clip01((cy - h / 2) * sy), clip01((cx + w / 2) * sx), clip01((cy + h / 2) * sy)];
    if (box[2] > box[0] && box[3] > box[1]) cand.push({ a, box });
  }
  const kept = nms(cand.map((c) => c.box), cand.map((c) => scores[c.a]), nmsThreshold);
  const ldm = meta.outputs.landmarks && outputs[meta.outputs.landmarks];
  return kept.map((k) => {
    const { a, box } = cand[k];
    const landmarks = [];
    if (ldm && meta.num_landmarks > 0) {
      const per = ldm.data.length / anchors;
      const [pcx, pcy, pw, ph] = priors.subarray(a * 4, a * 4 + 4);
      for (let n = 0; n < per / 2; n++) {
        const x = ldm.data[a * per + 2 * n] * v0 * pw + pcx;
        const y = ldm.data[a * per + 2 * n + 1] * v0 * ph + pcy;
        landmarks.push([clip01(x * sx), clip01(y * sy)]);
      }
    }
    return { box, score: scores[a], landmarks };
  });
}
