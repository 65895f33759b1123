// bc review: the page (plain JS, canvas drawn by hand; the data comes from the app's JSON API).
"use strict";

const $ = (id) => document.getElementById(id);
const COLORS = { steering: "#1f77b4", throttle: "#2ca02c", brake: "#d62728", speed: "#9467bd",
                 model: "#ff7f0e", cte: "#d62728" };
const FLAG_COLORS = { bad: "#c0392b", standstill: "#95a5a6", spike: "#d35400", duplicate: "#8e44ad" };
const DETAIL_ROWS = 450;      // rows the detail timeline shows around the cursor (30 s at 15 Hz)
const BEFORE_S = 2.0;         // seconds of frames shown before an intervention
const STRIP = 6;              // frames in that strip
const GUTTER = 62;            // px left of a timeline for the lane names

async function getJSON(url) {
  const response = await fetch(url);
  if (!response.ok) throw new Error(`${url}: ${response.status}`);
  return response.json();
}

async function postJSON(url, body) {
  const response = await fetch(url, { method: "POST", headers: { "Content-Type": "application/json" },
                                      body: JSON.stringify(body) });
  const data = await response.json();
  if (!response.ok) throw new Error(data.error || response.status);
  return data;
}

function sizeCanvas(canvas) {  // drawing buffer = displayed size, so lines stay sharp
  const width = Math.max(200, Math.round(canvas.getBoundingClientRect().width));
  if (canvas.width !== width) canvas.width = width;
  return canvas.getContext("2d");
}

// Channels drawn as lanes: [name, low, high]
function lanesFor(data) {
  const speeds = data.columns.speed.filter((v) => v !== null);
  const top = Math.max(1, ...speeds.slice(0, 200000));
  return [["steering", -1, 1], ["throttle", -1, 1], ["brake", 0, 1], ["speed", 0, Math.ceil(top)]];
}

// ---------------------------------------------------------------------------------------------
// Recording view
const rec = { data: null, cursor: 0, selection: null, playing: null, lanes: null, model: null,
              flags: [], saliency: false, version: 0, drawPending: false, direction: 1 };
window.review = rec;  // for tests and the console

async function openRecording() {
  $("recording-view").hidden = false;
  const data = await getJSON("/api/recording");
  rec.data = data;
  rec.lanes = lanesFor(data);
  rec.flags = data.stretches;
  $("title").textContent = `recording ${data.name}`;
  $("subtitle").textContent = `${data.rows.length} rows · ${(data.rows.length / data.rate_hz).toFixed(1)} s at ${data.rate_hz} Hz`;
  $("sidecar-name").textContent = data.sidecar.split("/").pop();
  drawHistogram();
  renderFlags(data.duplicates_done, data.duplicates_checked);
  renderExclusions();
  bindTimeline($("overview"), () => [0, data.rows.length - 1]);
  bindTimeline($("detail"), detailWindow);
  $("btn-prev").onclick = () => move(-1);
  $("btn-next").onclick = () => move(1);
  $("btn-play").onclick = togglePlay;
  $("btn-exclude").onclick = excludeSelection;
  $("btn-undo").onclick = undoExclusion;
  document.addEventListener("keydown", onKey);
  window.addEventListener("resize", drawTimelines);
  setCursor(0);
  if (!data.duplicates_done) pollFlags();
  if (info.model) {
    $("saliency-toggle").hidden = false;
    $("disagreement-panel").hidden = false;
    $("chk-saliency").onchange = (event) => { rec.saliency = event.target.checked; showFrames(); };
    pollPredictions();
  }
}

function detailWindow() {
  const n = rec.data.rows.length;
  const half = Math.floor(DETAIL_ROWS / 2);
  let first = Math.max(0, rec.cursor - half);
  const last = Math.min(n - 1, first + DETAIL_ROWS - 1);
  first = Math.max(0, last - DETAIL_ROWS + 1);
  return [first, last];
}

function setCursor(index) {
  const n = rec.data.rows.length;
  rec.cursor = Math.max(0, Math.min(n - 1, index));
  showFrames();
  showReadout();
  drawTimelines();
}

function move(step) { rec.direction = step < 0 ? -1 : 1; setCursor(rec.cursor + step); }

function showFrames() {
  const i = rec.cursor;
  for (const camera of ["left", "center", "right"]) {
    const img = $(`img-${camera}`);
    if (!rec.data.cameras.includes(camera)) { img.removeAttribute("src"); continue; }
    img.src = camera === "center" && rec.saliency ? `/saliency/${i}` : `/frame/${camera}/${i}`;
    img.onerror = () => explainFailure(img.src);
  }
  $("center-caption").textContent = rec.saliency ? "center + saliency (where the model looks)" : "center";
  // The next row in the direction of travel, into the browser's cache: the next step shows at once.
  const next = i + rec.direction;
  if (next >= 0 && next < rec.data.rows.length) {
    for (const camera of rec.data.cameras) new Image().src = `/frame/${camera}/${next}`;
  }
}

// An image that did not load: the app says why in JSON (e.g. a frame of another size than the model's).
async function explainFailure(url) {
  try {
    const response = await fetch(url);
    const body = await response.json();
    $("status").textContent = `${url.split("/").slice(3).join("/")}: ${body.error || response.status}`;
  } catch (error) { $("status").textContent = `${url}: not available`; }
}

function fmt(value, digits = 3) { return value === null || value === undefined ? "—" : Number(value).toFixed(digits); }

function showReadout() {
  const d = rec.data, i = rec.cursor, c = d.columns;
  $("cursor-row").textContent = `row ${i + 1}/${d.rows.length} · csv line ${d.rows[i]} · ${(i / d.rate_hz).toFixed(2)} s`;
  $("cursor-values").textContent = `steering ${fmt(c.steering[i])}  throttle ${fmt(c.throttle[i])}  brake ${fmt(c.brake[i])}  speed ${fmt(c.speed[i], 1)} mph`;
  const problem = d.problems[String(i)];
  const excluded = isExcluded(d.rows[i]);
  let model = "";
  if (rec.model && rec.model.steering[i] !== undefined) model = `model ${fmt(rec.model.steering[i])}`;
  $("cursor-model").textContent = [model, excluded ? "EXCLUDED" : "", problem ? `bad row: ${problem}` : ""].filter(Boolean).join(" · ");
}

function isExcluded(row) { return rec.data.exclusions.some((e) => row >= e.first_row && row <= e.last_row); }

// Timelines ------------------------------------------------------------------------------------
// Redrawn once per animation frame however often the cursor moves; what does not depend on
// the cursor is drawn once into an offscreen canvas (`rec.version` changes when it must be redrawn).
function drawTimelines() {
  if (!rec.data || rec.drawPending) return;
  rec.drawPending = true;
  requestAnimationFrame(() => {
    rec.drawPending = false;
    drawTimeline($("overview"), [0, rec.data.rows.length - 1], true);
    drawTimeline($("detail"), detailWindow(), false);
  });
}

function drawTimeline(canvas, [first, last], overview) {
  const ctx = sizeCanvas(canvas);
  const W = canvas.width, H = canvas.height;
  const key = `${W}|${H}|${first}|${last}|${rec.version}`;
  if (!canvas.cache || canvas.cache.key !== key) {
    const background = canvas.cache ? canvas.cache.canvas : document.createElement("canvas");
    background.width = W; background.height = H;
    drawLanes(background.getContext("2d"), W, H, first, last);
    canvas.cache = { key, canvas: background };
  }
  ctx.clearRect(0, 0, W, H);
  ctx.drawImage(canvas.cache.canvas, 0, 0);
  const span = Math.max(1, last - first + 1);
  const xOf = (i) => GUTTER + ((i - first + 0.5) / span) * (W - GUTTER);
  ctx.strokeStyle = "#000"; ctx.lineWidth = 1;
  ctx.beginPath(); ctx.moveTo(xOf(rec.cursor), 0); ctx.lineTo(xOf(rec.cursor), H); ctx.stroke();
  if (overview) {  // the detail timeline's window
    const [a, b] = detailWindow();
    ctx.strokeStyle = "rgba(0,0,0,0.35)";
    ctx.strokeRect(xOf(a - 0.5), 0.5, xOf(b + 0.5) - xOf(a - 0.5), H - 1);
  }
}

function drawLanes(ctx, W, H, first, last) {
  const d = rec.data;
  const flagH = 10, laneGap = 4, lanes = rec.lanes;
  const laneH = (H - flagH - laneGap * lanes.length) / lanes.length;
  const span = Math.max(1, last - first + 1);
  const xOf = (i) => GUTTER + ((i - first + 0.5) / span) * (W - GUTTER);
  ctx.clearRect(0, 0, W, H);
  // excluded ranges and the selection, behind everything
  const rowIndex = (row) => lowerBound(d.rows, row);
  for (const e of d.exclusions) {
    const a = rowIndex(e.first_row), b = rowIndex(e.last_row + 1) - 1;
    if (b < first || a > last) continue;
    ctx.fillStyle = "rgba(120,120,120,0.28)";
    ctx.fillRect(xOf(a - 0.5), 0, Math.max(2, xOf(b + 0.5) - xOf(a - 0.5)), H);
  }
  if (rec.selection) {
    const [a, b] = rec.selection;
    ctx.fillStyle = "rgba(52,152,219,0.25)";
    ctx.fillRect(xOf(a - 0.5), 0, Math.max(2, xOf(b + 0.5) - xOf(a - 0.5)), H);
  }
  // flags lane
  for (const s of rec.flags) {
    if (s.last < first || s.first > last) continue;
    ctx.fillStyle = FLAG_COLORS[s.kind] || "#000";
    ctx.fillRect(xOf(s.first - 0.5), 1, Math.max(2, xOf(s.last + 0.5) - xOf(s.first - 0.5)), flagH - 2);
  }
  lanes.forEach(([name, low, high], k) => {
    const top = flagH + laneGap + k * (laneH + laneGap);
    const yOf = (v) => top + laneH - ((Math.max(low, Math.min(high, v)) - low) / (high - low)) * laneH;
    ctx.strokeStyle = "#e3e3e8";
    const base = yOf(low <= 0 && high >= 0 ? 0 : low);
    ctx.beginPath(); ctx.moveTo(GUTTER, base); ctx.lineTo(W, base); ctx.stroke();
    drawSeries(ctx, d.columns[name], first, last, xOf, yOf, COLORS[name], W - GUTTER, GUTTER);
    if (name === "steering" && rec.model) drawSeries(ctx, rec.model.steering, first, Math.min(last, rec.model.steering.length - 1), xOf, yOf, COLORS.model, W - GUTTER, GUTTER);
    ctx.fillStyle = COLORS[name]; ctx.font = "11px sans-serif";
    ctx.fillText(name, 4, top + 12);
    ctx.fillStyle = "#888"; ctx.font = "10px sans-serif";
    ctx.fillText(`${low}…${high}`, 4, top + 24);
    if (name === "steering" && rec.model) { ctx.fillStyle = COLORS.model; ctx.fillText("— model", 4, top + 36); }
  });
}

// Min/max per pixel column: 30,000 rows draw as fast as 300.
function drawSeries(ctx, values, first, last, xOf, yOf, color, W, left = 0) {
  if (last < first) return;
  ctx.strokeStyle = color; ctx.lineWidth = 1.2; ctx.beginPath();
  const perPixel = (last - first + 1) / W;
  if (perPixel <= 1.5) {
    let pen = false;
    for (let i = first; i <= last; i++) {
      const v = values[i];
      if (v === null || v === undefined) { pen = false; continue; }
      if (pen) ctx.lineTo(xOf(i), yOf(v)); else ctx.moveTo(xOf(i), yOf(v));
      pen = true;
    }
  } else {
    for (let x = 0; x < W; x++) {
      const a = first + Math.floor(x * perPixel), b = Math.min(last, first + Math.floor((x + 1) * perPixel) - 1);
      let lo = Infinity, hi = -Infinity;
      for (let i = a; i <= b; i++) { const v = values[i]; if (v !== null && v !== undefined) { lo = Math.min(lo, v); hi = Math.max(hi, v); } }
      if (lo === Infinity) continue;
      ctx.moveTo(left + x + 0.5, yOf(hi)); ctx.lineTo(left + x + 0.5, yOf(lo) + 0.5);
    }
  }
  ctx.stroke();
}

function lowerBound(sorted, value) {
  let lo = 0, hi = sorted.length;
  while (lo < hi) { const mid = (lo + hi) >> 1; if (sorted[mid] < value) lo = mid + 1; else hi = mid; }
  return lo;
}

function bindTimeline(canvas, windowOf) {
  let start = null;
  const indexAt = (event) => {
    const [first, last] = windowOf();
    const box = canvas.getBoundingClientRect();
    const scale = canvas.width / box.width;
    const fraction = ((event.clientX - box.left) * scale - GUTTER) / (canvas.width - GUTTER);
    return Math.max(first, Math.min(last, first + Math.floor(fraction * (last - first + 1))));
  };
  canvas.addEventListener("mousedown", (event) => { start = { x: event.clientX, index: indexAt(event) }; });
  canvas.addEventListener("mousemove", (event) => {
    if (!start || Math.abs(event.clientX - start.x) < 4) return;
    const here = indexAt(event);
    rec.selection = [Math.min(start.index, here), Math.max(start.index, here)];
    showSelection(); drawTimelines();
  });
  window.addEventListener("mouseup", (event) => {
    if (!start) return;
    if (Math.abs(event.clientX - start.x) < 4) { rec.selection = null; showSelection(); setCursor(start.index); }
    start = null;
  });
}

function showSelection() {
  rec.version++;
  const s = rec.selection;
  $("selection").textContent = s ? `selected rows ${s[0] + 1}–${s[1] + 1} (${s[1] - s[0] + 1}, csv lines ${rec.data.rows[s[0]]}–${rec.data.rows[s[1]]})` : "";
  $("btn-exclude").disabled = !s;
}

function onKey(event) {
  if (event.target.tagName === "INPUT" || event.target.tagName === "SELECT") return;
  if (event.key === "ArrowRight") { move(event.shiftKey ? 10 : 1); event.preventDefault(); }
  else if (event.key === "ArrowLeft") { move(event.shiftKey ? -10 : -1); event.preventDefault(); }
  else if (event.key === " ") { togglePlay(); event.preventDefault(); }
}

function togglePlay() {
  if (rec.playing) { clearInterval(rec.playing); rec.playing = null; $("btn-play").textContent = "▶ play"; return; }
  $("btn-play").textContent = "❚❚ pause";
  rec.playing = setInterval(() => {
    if (rec.cursor >= rec.data.rows.length - 1) { togglePlay(); return; }
    move(1);
  }, 1000 / rec.data.rate_hz);
}

// Exclusions -----------------------------------------------------------------------------------
async function excludeSelection() {
  if (!rec.selection) return;
  const [first, last] = rec.selection;
  try {
    const result = await postJSON("/api/exclusions", { first, last });
    rec.data.exclusions = result.exclusions;
    rec.selection = null;
    showSelection(); renderExclusions(); drawTimelines(); showReadout();
    $("status").textContent = `excluded csv lines ${rec.data.rows[first]}–${rec.data.rows[last]} (written to ${rec.data.sidecar.split("/").pop()})`;
  } catch (error) { $("status").textContent = `exclude failed: ${error.message}`; }
}

async function undoExclusion(index) {
  try {
    const body = typeof index === "number" ? { index } : {};
    const result = await postJSON("/api/exclusions/undo", body);
    rec.data.exclusions = result.exclusions;
    renderExclusions(); drawTimelines(); showReadout();
    $("status").textContent = "exclusion removed";
  } catch (error) { $("status").textContent = `undo failed: ${error.message}`; }
}

function renderExclusions() {
  rec.version++;
  const list = $("exclusions");
  list.replaceChildren();
  rec.data.exclusions.forEach((e, k) => {
    const li = document.createElement("li");
    li.textContent = `csv lines ${e.first_row}–${e.last_row} (${e.last_row - e.first_row + 1})${e.note ? " · " + e.note : ""}`;
    const remove = document.createElement("button");
    remove.textContent = "remove";
    remove.onclick = (event) => { event.stopPropagation(); undoExclusion(k); };
    li.append(remove);
    li.onclick = () => setCursor(lowerBound(rec.data.rows, e.first_row));
    list.append(li);
  });
  if (!rec.data.exclusions.length) list.innerHTML = "<li class='note'>none: every row is trained on</li>";
  $("btn-undo").disabled = rec.data.exclusions.length === 0;
}

// Flags ----------------------------------------------------------------------------------------
function renderFlags(done, checked) {
  rec.version++;
  const list = $("flags");
  list.replaceChildren();
  for (const s of rec.flags) {
    const li = document.createElement("li");
    li.innerHTML = `<span class="kind kind-${s.kind}">${s.kind}</span> rows ${s.first + 1}–${s.last + 1}: `;
    li.append(document.createTextNode(s.text));
    li.onclick = () => { rec.selection = [s.first, s.last]; showSelection(); setCursor(s.first); };
    list.append(li);
  }
  if (!rec.flags.length) list.innerHTML = "<li class='note'>nothing suspicious found</li>";
  $("flags-status").textContent = done ? `(${rec.flags.length})` : `(near-duplicate check: ${checked}/${rec.data.rows.length} frames…)`;
}

async function pollFlags() {
  const result = await getJSON("/api/flags");
  rec.flags = result.stretches;
  renderFlags(result.duplicates_done, result.duplicates_checked);
  drawTimelines();
  if (!result.duplicates_done) setTimeout(pollFlags, 1000);
}

// Histogram ------------------------------------------------------------------------------------
function drawHistogram() {
  const canvas = $("histogram"), ctx = canvas.getContext("2d");
  const W = canvas.width, H = canvas.height, bins = 41, counts = new Array(bins).fill(0);
  let n = 0, straight = 0;
  for (const v of rec.data.columns.steering) {
    if (v === null) continue;
    const k = Math.max(0, Math.min(bins - 1, Math.floor(((v + 1) / 2) * bins)));
    counts[k]++; n++;
    if (Math.abs(v) < 0.01) straight++;
  }
  const top = Math.max(1, ...counts), barW = (W - 20) / bins;
  ctx.clearRect(0, 0, W, H);
  ctx.fillStyle = COLORS.steering;
  counts.forEach((c, k) => { const h = (c / top) * (H - 24); ctx.fillRect(10 + k * barW, H - 16 - h, barW - 1, h); });
  ctx.fillStyle = "#555"; ctx.font = "11px sans-serif";
  ctx.fillText("-1", 6, H - 3); ctx.fillText("0", W / 2 - 3, H - 3); ctx.fillText("+1", W - 18, H - 3);
  $("histogram-note").textContent = `${n} rows; ${(100 * straight / Math.max(1, n)).toFixed(0)} % with |steering| < 0.01`;
}

// Model ----------------------------------------------------------------------------------------
async function pollPredictions() {
  const result = await getJSON("/api/predictions");
  rec.model = result;
  rec.version++;
  $("status").textContent = `model ${result.source}`;
  $("model-status").textContent = result.done < result.total ? `(predicted ${result.done}/${result.total}…)` : "";
  if (result.problem) $("model-status").textContent += ` (no prediction for some frames: ${result.problem})`;
  renderDisagreements();
  drawTimelines(); showReadout();
  if (result.done < result.total) setTimeout(pollPredictions, 700);
}

function renderDisagreements() {
  const labels = rec.data.columns.steering, predicted = rec.model.steering;
  const gaps = [];
  for (let i = 0; i < predicted.length; i++) {
    if (predicted[i] !== null && labels[i] !== null) gaps.push([Math.abs(predicted[i] - labels[i]), i]);
  }
  gaps.sort((a, b) => b[0] - a[0]);
  const list = $("disagreements");
  list.replaceChildren();
  for (const [gap, i] of gaps.slice(0, 25)) {
    const li = document.createElement("li");
    li.textContent = `row ${i + 1}: label ${fmt(labels[i])}, model ${fmt(predicted[i])} (off by ${gap.toFixed(3)})`;
    li.onclick = () => setCursor(i);
    list.append(li);
  }
}

// ---------------------------------------------------------------------------------------------
// Drive view
const drv = { drives: [], current: 0, cursor: 0, intervention: null };
window.drives = drv;

async function openDrives() {
  $("drive-view").hidden = false;
  const data = await getJSON("/api/drives");
  drv.drives = data.drives;
  const select = $("drive-select");
  data.drives.forEach((d, k) => { const o = document.createElement("option"); o.value = k; o.textContent = d.name; select.append(o); });
  select.onchange = () => showDrive(Number(select.value));
  bindDriveTimeline();
  $("trajectory").addEventListener("click", onTrajectoryClick);
  window.addEventListener("resize", () => drawDriveTimeline());
  document.addEventListener("keydown", (event) => {
    if (event.key === "ArrowRight") setDriveCursor(drv.cursor + (event.shiftKey ? 10 : 1));
    else if (event.key === "ArrowLeft") setDriveCursor(drv.cursor - (event.shiftKey ? 10 : 1));
  });
  if (info.model) $("status").textContent = `model ${info.model}`;
  showDrive(0);
}

function drive() { return drv.drives[drv.current]; }

function showDrive(k) {
  drv.current = k; drv.cursor = 0; drv.intervention = null;
  const d = drive();
  $("title").textContent = `drive ${d.name}`;
  $("subtitle").textContent = `${d.source === "evaluate" ? "evaluate.py" : "drive.py"} · ${d.t.length} steps · ${fmt(d.t[d.t.length - 1], 1)} s`;
  const m = d.metrics;
  $("drive-metrics").textContent = d.source === "evaluate"
    ? `track ${m.track ?? "?"} · autonomy ${fmt(m.autonomy, 1)} % · interventions ${m.interventions ?? d.interventions.length} · mean |CTE| ${fmt(m.mean_abs_cte, 2)} m`
    : "drive.py recording: the simulator reports no position, so there is no trajectory or CTE";
  $("trajectory-note").hidden = d.x === null;
  $("intervention-panel").hidden = true;
  const list = $("interventions");
  list.replaceChildren();
  d.interventions.forEach((step) => {
    const li = document.createElement("li");
    li.textContent = `t ${fmt(d.t[step], 1)} s (step ${step}) · |CTE| ${fmt(d.abs_cte[step], 2)} m`;
    li.onclick = () => showIntervention(step);
    list.append(li);
  });
  if (!d.interventions.length) list.innerHTML = "<li class='note'>none</li>";
  drawTrajectory(); setDriveCursor(0);
  if (d.frames_error) $("status").textContent = d.frames_error;
}

function cteColor(v) {  // 0 m green -> 1 m yellow -> 2 m and more red
  const f = Math.max(0, Math.min(1, (v ?? 0) / 2));
  const r = Math.round(f < 0.5 ? 510 * f : 255), g = Math.round(f < 0.5 ? 190 : 190 * (1 - f) * 2);
  return `rgb(${r},${g},40)`;
}

function trajectoryTransform() {
  const d = drive(), canvas = $("trajectory");
  const xs = d.x.filter((v) => v !== null), ys = d.y.filter((v) => v !== null);
  if (d.road) for (const [x, y] of [...d.road.left, ...d.road.right]) { xs.push(x); ys.push(y); }
  const minX = xs.reduce((a, b) => Math.min(a, b)), maxX = xs.reduce((a, b) => Math.max(a, b));
  const minY = ys.reduce((a, b) => Math.min(a, b)), maxY = ys.reduce((a, b) => Math.max(a, b));
  const pad = 20, scale = Math.min((canvas.width - 2 * pad) / Math.max(1e-6, maxX - minX), (canvas.height - 2 * pad) / Math.max(1e-6, maxY - minY));
  return { px: (x) => pad + (x - minX) * scale, py: (y) => canvas.height - pad - (y - minY) * scale };
}

function drawTrajectory() {
  const d = drive(), canvas = $("trajectory"), ctx = canvas.getContext("2d");
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  if (d.x === null) { canvas.hidden = true; return; }
  canvas.hidden = false;
  const { px, py } = trajectoryTransform();
  if (d.road) {  // the road as a grey band between its edges
    ctx.fillStyle = "#d5d8dc";
    const edge = (points) => points.forEach(([x, y], i) => (i ? ctx.lineTo(px(x), py(y)) : ctx.moveTo(px(x), py(y))));
    ctx.beginPath(); edge(d.road.left); ctx.closePath(); edge([...d.road.right].reverse()); ctx.closePath();
    ctx.fill("evenodd");
  }
  ctx.lineWidth = 3;
  for (let i = 1; i < d.x.length; i++) {
    if (d.x[i] === null || d.x[i - 1] === null || d.interventions.includes(i)) continue;
    ctx.strokeStyle = cteColor(d.abs_cte[i]);
    ctx.beginPath(); ctx.moveTo(px(d.x[i - 1]), py(d.y[i - 1])); ctx.lineTo(px(d.x[i]), py(d.y[i])); ctx.stroke();
  }
  ctx.lineWidth = 2.5; ctx.strokeStyle = "#000";
  for (const step of d.interventions) {
    const x = px(d.x[step]), y = py(d.y[step]);
    ctx.beginPath(); ctx.moveTo(x - 7, y - 7); ctx.lineTo(x + 7, y + 7); ctx.moveTo(x + 7, y - 7); ctx.lineTo(x - 7, y + 7); ctx.stroke();
  }
  const c = drv.cursor;
  if (d.x[c] !== null) { ctx.fillStyle = "#1f77b4"; ctx.beginPath(); ctx.arc(px(d.x[c]), py(d.y[c]), 5, 0, 2 * Math.PI); ctx.fill(); }
}

function onTrajectoryClick(event) {
  const d = drive();
  if (d.x === null) return;
  const box = event.target.getBoundingClientRect(), { px, py } = trajectoryTransform();
  const x = event.clientX - box.left, y = event.clientY - box.top;
  let best = null, bestDistance = 12;
  for (const step of d.interventions) {
    const distance = Math.hypot(px(d.x[step]) - x, py(d.y[step]) - y);
    if (distance < bestDistance) { best = step; bestDistance = distance; }
  }
  if (best !== null) showIntervention(best);
  else {  // nearest point of the path: move the cursor there
    let nearest = 0, nearestDistance = Infinity;
    d.x.forEach((value, i) => { if (value === null) return; const dd = Math.hypot(px(value) - x, py(d.y[i]) - y); if (dd < nearestDistance) { nearest = i; nearestDistance = dd; } });
    setDriveCursor(nearest);
  }
}

function setDriveCursor(step) {
  const d = drive();
  drv.cursor = Math.max(0, Math.min(d.t.length - 1, step));
  $("drive-frame").src = `/drive/${drv.current}/frame/${drv.cursor}`;
  $("drive-frame-caption").textContent = `t ${fmt(d.t[drv.cursor], 2)} s · model steering ${fmt(d.steering[drv.cursor])} · speed ${fmt(d.speed[drv.cursor], 1)} mph` + (d.abs_cte ? ` · |CTE| ${fmt(d.abs_cte[drv.cursor], 2)} m` : "");
  drawTrajectory(); drawDriveTimeline();
}

function drawDriveTimeline() {
  const d = drive(), canvas = $("drive-timeline"), ctx = sizeCanvas(canvas);
  const W = canvas.width, H = canvas.height, n = d.t.length;
  const lanes = d.abs_cte ? [["abs_cte", "|CTE| (m)", 0, Math.max(1, ...d.abs_cte.filter((v) => v !== null)), COLORS.cte], ["speed", "speed (mph)", 0, 30, COLORS.speed]]
                          : [["steering", "model steering", -1, 1, COLORS.steering], ["speed", "speed (mph)", 0, 30, COLORS.speed]];
  const laneH = (H - 8) / lanes.length, xOf = (i) => ((i + 0.5) / n) * W;
  ctx.clearRect(0, 0, W, H);
  lanes.forEach(([key, label, low, high, color], k) => {
    const top = 4 + k * laneH;
    const yOf = (v) => top + laneH - 4 - ((Math.max(low, Math.min(high, v)) - low) / (high - low)) * (laneH - 8);
    drawSeries(ctx, d[key], 0, n - 1, xOf, yOf, color, W);
    ctx.fillStyle = "#555"; ctx.font = "11px sans-serif"; ctx.fillText(`${label}, max ${fmt(high, 1)}`, 4, top + 11);
  });
  ctx.strokeStyle = "#000";
  for (const step of d.interventions) { ctx.fillStyle = "#000"; ctx.fillRect(xOf(step) - 1, 0, 2, H); }
  ctx.strokeStyle = "#1f77b4"; ctx.beginPath(); ctx.moveTo(xOf(drv.cursor), 0); ctx.lineTo(xOf(drv.cursor), H); ctx.stroke();
}

function bindDriveTimeline() {
  const canvas = $("drive-timeline");
  canvas.addEventListener("click", (event) => {
    const box = canvas.getBoundingClientRect(), n = drive().t.length;
    const step = Math.floor(((event.clientX - box.left) / box.width) * n);
    const near = drive().interventions.find((s) => Math.abs(s - step) <= Math.max(2, n / 300));
    if (near !== undefined) showIntervention(near); else setDriveCursor(step);
  });
}

// The frames of the seconds before an intervention, with the model's steering; click for saliency.
function showIntervention(step) {
  const d = drive();
  drv.intervention = step;
  const dt = d.t.length > 1 ? (d.t[d.t.length - 1] - d.t[0]) / (d.t.length - 1) : 1 / 15;
  const first = Math.max(0, step - Math.round(BEFORE_S / dt));
  const steps = [];
  for (let k = 0; k < STRIP; k++) steps.push(Math.round(first + ((step - first) * k) / (STRIP - 1)));
  $("intervention-panel").hidden = false;
  $("intervention-title").textContent = `intervention at t ${fmt(d.t[step], 1)} s (step ${step}): the ${BEFORE_S} s before it` + (info.model ? " · click a frame for the model's saliency" : "");
  const strip = $("intervention-frames");
  strip.replaceChildren();
  for (const s of [...new Set(steps)]) {
    const figure = document.createElement("figure"), img = document.createElement("img"), caption = document.createElement("figcaption");
    img.src = `/drive/${drv.current}/frame/${s}`;
    img.dataset.step = s;
    caption.textContent = `${fmt(d.t[s] - d.t[step], 2)} s · steering ${fmt(d.steering[s])}` + (d.abs_cte ? ` · |CTE| ${fmt(d.abs_cte[s], 2)}` : "");
    if (info.model) {
      img.onclick = () => {
        const salient = img.dataset.saliency !== "1";
        img.dataset.saliency = salient ? "1" : "0";
        img.src = salient ? `/drive/${drv.current}/saliency/${s}` : `/drive/${drv.current}/frame/${s}`;
        img.onerror = () => explainFailure(img.src);
      };
    }
    figure.append(img, caption); strip.append(figure);
  }
  setDriveCursor(step);
  $("intervention-panel").scrollIntoView({ block: "nearest" });
}

// ---------------------------------------------------------------------------------------------
let info = null;
(async () => {
  try {
    info = await getJSON("/api/info");
    if (info.kind === "recording") await openRecording(); else await openDrives();
    document.body.dataset.readyMs = Math.round(performance.now());  // since the page was asked for
    document.body.dataset.ready = "1";
  } catch (error) {
    $("status").textContent = `error: ${error.message}`;
  }
})();
