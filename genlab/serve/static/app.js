// genlab serve: the page. Plain JavaScript, no library, nothing fetched but this server's /api.
"use strict";
const $ = (id) => document.getElementById(id);
const state = { runs: [], run: null, info: null, job: null, cmpJob: null, curves: null, timer: null };

async function api(path, body) {
  const init = body === undefined ? {} : { method: "POST", headers: { "Content-Type": "application/json" },
                                           body: JSON.stringify(body) };
  const r = await fetch(path, init);
  const data = await r.json();
  if (!r.ok) throw new Error(data.error || r.statusText);
  return data;
}

function fmtEval(last) {
  if (!last) return "";
  return Object.entries(last).slice(0, 3).map(([k, v]) => `${k}=${Number(v).toPrecision(4)}`).join(", ");
}

async function loadRuns() {
  const data = await api("/api/runs");
  state.runs = data.runs;
  const body = $("runs").querySelector("tbody");
  body.innerHTML = "";
  $("run").innerHTML = "";
  for (const r of data.runs) {
    const tr = document.createElement("tr");
    tr.dataset.run = r.id;
    const data = r.data.replace(/^(\w+:).*\/([^/]+)$/, "$1$2");  // "text:/long/path/corpus.txt" -> "text:corpus.txt"
    for (const v of [r.id, r.family, data, r.steps, fmtEval(r.last_eval)]) {
      const td = document.createElement("td"); td.textContent = v; tr.appendChild(td);
    }
    tr.children[2].title = r.data;
    tr.onclick = () => { $("run").value = r.id; selectRun(r.id); };
    body.appendChild(tr);
    const opt = document.createElement("option"); opt.value = r.id; opt.textContent = `${r.id} (${r.family})`;
    $("run").appendChild(opt);
  }
  $("status").textContent = `${data.runs.length} runs`;
  if (data.runs.length && state.run === null) await selectRun(data.runs[0].id);
  const reports = await api("/api/reports");
  $("reports").innerHTML = "";
  for (const rep of reports.reports) {
    const li = document.createElement("li"); const a = document.createElement("a");
    a.href = rep.url; a.target = "_blank"; a.textContent = rep.id; li.appendChild(a); $("reports").appendChild(li);
  }
  if (!reports.reports.length) $("reports").innerHTML = "<li class=hint>none in the served folders</li>";
  document.body.dataset.ready = "1";
}

function optionInput(o) {
  let el;
  if (o.choices.length) {
    el = document.createElement("select");
    for (const c of ["", ...o.choices]) {
      const opt = document.createElement("option"); opt.value = c;
      opt.textContent = c === "" ? `(run default${o.default != null ? ": " + o.default : ""})` : c;
      el.appendChild(opt);
    }
  } else if (o.name === "prompt") {
    el = document.createElement("textarea"); el.rows = 2;
  } else {
    el = document.createElement("input");
    el.type = o.type === "str" ? "text" : "number";
    if (o.type === "float") el.step = "any";
    if (o.minimum != null && !o.exclusive_minimum) el.min = o.minimum;
    if (o.maximum != null) el.max = o.maximum;
    if (o.default != null) el.placeholder = `default ${o.default}`;
  }
  el.id = "opt-" + o.name; el.name = o.name; el.title = o.help;
  return el;
}

async function selectRun(id) {
  if (id === state.run && $("options").dataset.run === id) return;  // already shown: keep what was typed
  state.run = id;
  for (const tr of $("runs").querySelectorAll("tbody tr")) tr.classList.toggle("selected", tr.dataset.run === id);
  const info = await api(`/api/runs/${encodeURIComponent(id).replace(/%2F/g, "/")}/options`);
  if (state.run !== id) return;  // another run was chosen meanwhile: its form wins
  state.info = info;
  const form = $("options"); form.innerHTML = "";
  for (const o of info.options) {
    const label = document.createElement("label"); label.textContent = o.name; label.title = o.help;
    label.appendChild(optionInput(o)); form.appendChild(label);
  }
  form.dataset.run = id;
  $("n").value = info.text ? 2 : 16;
  $("infill-box").hidden = !info.infill;
  for (const sel of document.querySelectorAll(".axis-name")) {
    const keep = sel.id === "cmp-y-name" ? '<option value="">(none)</option>' : "";
    sel.innerHTML = keep + [...info.options.map((o) => o.name), "seed", "run"]
      .map((n) => `<option value="${n}">${n}</option>`).join("");
  }
  if (!$("tab-curves").hidden) loadCurves();
}

function formOptions() {
  const out = {};
  for (const el of $("options").elements) if (el.name && el.value !== "") out[el.name] = el.value;
  return out;
}

function follow(job, ui, onEnd) {
  ui.cancel.disabled = false; ui.progress.value = 0;
  const es = new EventSource(`/api/jobs/${job.id}/events`);
  const handle = (ev) => {
    const snap = JSON.parse(ev.data);
    ui.progress.value = snap.progress;
    if (ui.text) ui.text.textContent = `${snap.state} ${Math.round(snap.progress * 100)}%`;
    if (snap.preview && ui.preview) {
      $("preview-box").hidden = false; ui.preview.src = `/api/jobs/${job.id}/preview.png?v=${snap.version}`;
    }
    if (ev.type === "end") { es.close(); ui.cancel.disabled = true; onEnd(snap); }
  };
  es.addEventListener("progress", handle);
  es.addEventListener("end", handle);
  es.onerror = () => { es.close(); ui.cancel.disabled = true; };
}

async function generate(withText) {
  $("error").textContent = "";
  const body = { run: state.run, n: Number($("n").value), seed: Number($("seed").value), options: formOptions() };
  if (withText) body.text = $("infill").value;
  let job;
  try { job = await api("/api/sample", body); } catch (e) { $("error").textContent = e.message; return; }
  state.job = job;
  $("preview-box").hidden = true; $("result-box").hidden = true; $("result-text").hidden = true;
  follow(job, { cancel: $("cancel"), progress: $("progress"), text: $("progress-text"), preview: $("preview") },
    (snap) => {
      if (snap.state !== "done") { $("error").textContent = snap.message || snap.state; return; }
      const cell = snap.cells[0], hasImage = cell.image != null;
      $("result-image").hidden = !hasImage; $("png-part").hidden = !hasImage;
      if (hasImage) {
        $("result-image").src = `/api/jobs/${snap.id}/image/${cell.image}.png`;
        $("download-png").href = `/api/jobs/${snap.id}/image/${cell.image}.png?download=true`;
      }
      if (cell.texts) { $("result-text").textContent = cell.texts.join("\n\n----\n\n"); $("result-text").hidden = false; }
      $("download-json").href = `/api/jobs/${snap.id}/params.json`;
      $("command").textContent = cell.params.command;
      $("result-box").hidden = false;
    });
}

async function compare() {
  $("cmp-error").textContent = "";
  const axis = (name, values) => name ? { name: $(name).value,
    values: $(values).value.split(",").map((v) => v.trim()).filter((v) => v !== "") } : null;
  const body = { run: state.run, n: Number($("n").value), seed: Number($("seed").value), options: formOptions(),
                 x: axis("cmp-x-name", "cmp-x-values") };
  if ($("cmp-y-name").value) body.y = axis("cmp-y-name", "cmp-y-values");
  let job;
  try { job = await api("/api/compare", body); } catch (e) { $("cmp-error").textContent = e.message; return; }
  state.cmpJob = job;
  $("compare-grid").innerHTML = ""; $("cmp-download").hidden = true;
  follow(job, { cancel: $("cmp-cancel"), progress: $("cmp-progress") }, (snap) => {
    if (snap.state !== "done") { $("cmp-error").textContent = snap.message || snap.state; return; }
    const xs = body.x.values, ys = body.y ? body.y.values : [null];
    const grid = $("compare-grid");
    const head = document.createElement("tr");
    head.innerHTML = `<th>${body.y ? body.y.name + " \\ " : ""}${body.x.name}</th>` +
      xs.map((x) => `<th>${x}</th>`).join("");
    grid.appendChild(head);
    ys.forEach((y, r) => {
      const tr = document.createElement("tr");
      const th = document.createElement("th"); th.textContent = y == null ? "" : y; tr.appendChild(th);
      xs.forEach((x, c) => {
        const cell = snap.cells[r * xs.length + c]; const td = document.createElement("td");
        if (cell.image != null) {
          const img = document.createElement("img"); img.src = `/api/jobs/${snap.id}/image/${cell.image}.png`;
          img.alt = `${x} ${y == null ? "" : y}`; td.appendChild(img);
        } else if (cell.texts) { const pre = document.createElement("pre"); pre.textContent = cell.texts[0]; td.appendChild(pre); }
        tr.appendChild(td);
      });
      grid.appendChild(tr);
    });
    if (snap.cells.length > 1 && snap.cells.every((c) => c.image != null)) {
      $("cmp-download").href = `/api/jobs/${snap.id}/image/${snap.cells.length}.png?download=true`;
      $("cmp-download").hidden = false;
    }
  });
}

async function loadCurves() {
  if (!state.run) return;
  const data = await api(`/api/runs/${encodeURIComponent(state.run).replace(/%2F/g, "/")}/curves`);
  state.curves = data.curves;
  const sel = $("curve-name"), names = Object.keys(data.curves), keep = sel.value;
  sel.innerHTML = names.map((n) => `<option>${n}</option>`).join("");
  if (names.includes(keep)) sel.value = keep;
  drawCurve();
}

function drawCurve() {
  const cv = $("curves"), g = cv.getContext("2d"), curve = state.curves && state.curves[$("curve-name").value];
  g.clearRect(0, 0, cv.width, cv.height);
  if (!curve || !curve.step.length) { g.fillText("no curve logged yet", 20, 20); return; }
  const pad = 40, xs = curve.step, ys = curve.value;
  const x0 = Math.min(...xs), x1 = Math.max(...xs), y0 = Math.min(...ys), y1 = Math.max(...ys);
  const sx = (x) => pad + (x - x0) / ((x1 - x0) || 1) * (cv.width - 2 * pad);
  const sy = (y) => cv.height - pad - (y - y0) / ((y1 - y0) || 1) * (cv.height - 2 * pad);
  g.strokeStyle = "#999"; g.strokeRect(pad, pad, cv.width - 2 * pad, cv.height - 2 * pad);
  g.fillStyle = "#333";
  g.fillText(y1.toPrecision(4), 2, pad); g.fillText(y0.toPrecision(4), 2, cv.height - pad);
  g.fillText(`step ${x0}`, pad, cv.height - pad / 3); g.fillText(`${x1}`, cv.width - pad - 20, cv.height - pad / 3);
  g.strokeStyle = "#23395d"; g.beginPath();
  xs.forEach((x, i) => (i ? g.lineTo(sx(x), sy(ys[i])) : g.moveTo(sx(x), sy(ys[i]))));
  g.stroke();
}

function showTab(name) {
  for (const b of document.querySelectorAll(".tab")) b.classList.toggle("active", b.dataset.tab === name);
  for (const p of document.querySelectorAll(".panel")) p.hidden = p.id !== "tab-" + name;
  clearInterval(state.timer);
  if (name === "curves") { loadCurves(); state.timer = setInterval(loadCurves, 5000); }
}

$("run").onchange = () => selectRun($("run").value);
$("generate").onclick = () => generate(false);
$("infill-go").onclick = () => generate(true);
$("cancel").onclick = () => state.job && api(`/api/jobs/${state.job.id}/cancel`, {});
$("cmp-cancel").onclick = () => state.cmpJob && api(`/api/jobs/${state.cmpJob.id}/cancel`, {});
$("compare").onclick = compare;
$("randomise").onclick = () => { $("seed").value = Math.floor(Math.random() * 2 ** 31); };
$("curve-name").onchange = drawCurve;
for (const b of document.querySelectorAll(".tab")) b.onclick = () => showTab(b.dataset.tab);
loadRuns().catch((e) => { $("status").textContent = e.message; });
