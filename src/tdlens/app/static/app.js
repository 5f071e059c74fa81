// tdlens explorer page: plain JavaScript, no build step. Every string from the model or the
// data (class names, feature names, labels, error messages) is put in the page as text
// (textContent / option text), never parsed as HTML.
"use strict";

const state = { info: null, methods: [], offset: 0, limit: 48, total: 0, selected: null, run: 0 };

function $(id) { return document.getElementById(id); }

function el(tag, props, text) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props || {})) {
    if (key === "className") node.className = value;
    else if (key.startsWith("data-")) node.setAttribute(key, value);
    else node[key] = value;
  }
  if (text !== undefined) node.textContent = String(text);
  return node;
}

function className(id) {
  const names = state.info ? state.info.classes : [];
  return id === null || id === undefined ? "?" : (names[id] !== undefined ? names[id] : String(id));
}

function showError(message) {
  const box = $("error");
  box.textContent = message;
  box.hidden = false;
}

function clearError() {
  $("error").hidden = true;
  $("error").textContent = "";
}

async function api(path, options) {
  const response = await fetch(path, options);
  let body = null;
  try { body = await response.json(); } catch (_) { body = null; }
  if (!response.ok) {
    const reason = body && body.error ? body.error : response.status + " " + response.statusText;
    throw new Error(reason);
  }
  return body;
}

function fillClassSelect(select) {
  state.info.classes.forEach((name, id) => select.appendChild(el("option", { value: String(id) }, id + ": " + name)));
}

// -- samples ---------------------------------------------------------------------------------
async function loadSamples() {
  const query = new URLSearchParams({ offset: state.offset, limit: state.limit });
  if ($("filter-label").value !== "") query.set("label", $("filter-label").value);
  if ($("filter-predicted").value !== "") query.set("predicted", $("filter-predicted").value);
  if ($("filter-misclassified").checked) query.set("misclassified", "true");
  try {
    const page = await api("/api/samples?" + query);
    state.total = page.total;
    renderGrid(page.samples);
    clearError();
  } catch (error) {
    showError("Could not load samples: " + error.message);
  }
}

function renderGrid(samples) {
  const grid = $("grid");
  grid.replaceChildren();
  for (const sample of samples) {
    const card = el("div", { className: "card" + (sample.misclassified ? " misclassified" : ""), "data-id": sample.id, tabIndex: 0 });
    if (state.selected === sample.id) card.classList.add("selected");
    if (state.info.modality === "image") {
      card.appendChild(el("img", { src: "/api/sample/" + sample.id + "/image", alt: "sample " + sample.id }));
    }
    card.appendChild(el("div", { className: "id" }, "#" + sample.id));
    if (sample.label !== null) card.appendChild(el("div", { className: "label" }, "label: " + className(sample.label)));
    const pred = el("div", { className: "pred" + (sample.misclassified ? " wrong" : "") },
      "pred: " + className(sample.predicted) + " (" + Math.round(sample.confidence * 100) + "%)");
    card.appendChild(pred);
    card.addEventListener("click", () => selectSample(sample));
    card.addEventListener("keydown", (event) => { if (event.key === "Enter") selectSample(sample); });
    grid.appendChild(card);
  }
  const last = Math.min(state.offset + state.limit, state.total);
  $("sample-count").textContent = state.total + " samples match";
  $("page").textContent = state.total ? (state.offset + 1) + "-" + last + " of " + state.total : "none";
  $("prev").disabled = state.offset === 0;
  $("next").disabled = last >= state.total;
}

function selectSample(sample) {
  state.selected = sample.id;
  state.selectedInfo = sample;
  for (const card of document.querySelectorAll(".card")) {
    card.classList.toggle("selected", Number(card.dataset.id) === sample.id);
  }
  explain();
}

// -- methods and their arguments -------------------------------------------------------------
function renderArgs() {
  const box = $("method-args");
  box.replaceChildren();
  const method = state.methods.find((m) => m.name === $("method").value);
  if (!method) return;
  for (const arg of method.args) {
    const label = el("label", {}, arg.name + " ");
    let input;
    if (arg.type === "bool") {
      input = el("input", { type: "checkbox", checked: Boolean(arg.default) });
    } else {
      const shown = arg.type === "ints" ? arg.default.join(",") : String(arg.default);
      input = el("input", { type: "text", value: shown });
    }
    input.dataset.name = arg.name;
    input.dataset.type = arg.type;
    input.className = "arg";
    label.appendChild(input);
    box.appendChild(label);
  }
}

// The page sends what was typed; the server checks the types and answers 400 on a mismatch.
function readArgs() {
  const args = {};
  for (const input of document.querySelectorAll("#method-args input.arg")) {
    const type = input.dataset.type, text = input.value.trim();
    let value = text;
    if (type === "bool") value = input.checked;
    else if (type === "int" && /^-?\d+$/.test(text)) value = parseInt(text, 10);
    else if (type === "float" && text !== "" && Number.isFinite(Number(text))) value = Number(text);
    else if (type === "ints" && /^\s*-?\d+(\s*,\s*-?\d+)*\s*$/.test(text)) value = text.split(",").map((t) => parseInt(t, 10));
    args[input.dataset.name] = value;
  }
  return args;
}

// -- attributions ----------------------------------------------------------------------------
async function explain() {
  if (state.selected === null) return;
  const run = ++state.run;  // only the latest request may draw its answer
  const sample = state.selected, method = $("method").value, args = readArgs();
  const targets = [{ kind: "predicted", target: null }];
  const other = $("compare-class").value;
  if (other !== "" && Number(other) !== (state.selectedInfo || {}).predicted) {
    targets.push({ kind: "chosen", target: Number(other) });
  }
  $("selected").textContent = "Sample #" + sample + " with " + method;
  const panels = $("panels");
  panels.replaceChildren();
  $("status").textContent = "computing…";
  clearError();
  try {
    const answers = await Promise.all(targets.map((t) => api("/api/attribute", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ sample: sample, method: method, target: t.target, args: args }),
    })));
    if (run !== state.run) return;  // a newer click won
    answers.forEach((answer, i) => panels.appendChild(renderPanel(answer, targets[i].kind)));
    $("status").textContent = "";
  } catch (error) {
    if (run !== state.run) return;
    $("status").textContent = "";
    showError("Attribution failed: " + error.message);
  }
}

function renderPanel(answer, kind) {
  const panel = el("div", { className: "panel loading", "data-kind": kind, "data-target": answer.target, "data-method": answer.method });
  const heading = (kind === "predicted" ? "predicted class: " : "class: ") + className(answer.target);
  panel.appendChild(el("h3", {}, heading));
  const query = new URLSearchParams({ method: answer.method, target: answer.target, args: JSON.stringify(answer.args) });
  const picture = el("img", { className: "heatmap", alt: answer.method + " attribution for class " + className(answer.target) });
  picture.dataset.scores = JSON.stringify(answer.scores);
  picture.dataset.shape = JSON.stringify(answer.shape);
  picture.addEventListener("load", () => { panel.classList.remove("loading"); panel.dataset.ready = "1"; });
  picture.addEventListener("error", () => showError("Could not draw the attribution picture."));
  picture.src = "/api/sample/" + answer.sample + "/heatmap?" + query;
  panel.appendChild(picture);
  const peak = answer.scores.reduce((m, v) => Math.max(m, Math.abs(v)), 0);
  panel.appendChild(el("p", { className: "metrics took" }, answer.method + ": " + answer.took_ms.toFixed(1) + " ms" + (answer.cached ? " (cached)" : "")));
  panel.appendChild(el("p", { className: "metrics deletion" }, answer.deletion ? "deletion AUC: " + answer.deletion.auc.toFixed(4) + " (class probability; lower is better)" : "deletion AUC: n/a for this map"));
  panel.appendChild(el("p", { className: "metrics peak" }, "largest |attribution|: " + peak.toPrecision(3)));
  return panel;
}

// -- start -----------------------------------------------------------------------------------
async function start() {
  try {
    state.info = await api("/api/info");
    state.methods = (await api("/api/methods")).methods;
  } catch (error) {
    showError("Could not reach the explorer: " + error.message);
    return;
  }
  document.title = state.info.title;
  $("title").textContent = state.info.title;
  fillClassSelect($("filter-label"));
  fillClassSelect($("filter-predicted"));
  fillClassSelect($("compare-class"));
  for (const method of state.methods) $("method").appendChild(el("option", { value: method.name }, method.name));
  if (!state.info.has_labels) {
    $("filter-label").disabled = true;
    $("filter-misclassified").disabled = true;
  }
  renderArgs();
  for (const id of ["filter-label", "filter-predicted", "filter-misclassified"]) {
    $(id).addEventListener("change", () => { state.offset = 0; loadSamples(); });
  }
  $("method").addEventListener("change", () => { renderArgs(); explain(); });
  $("compare-class").addEventListener("change", explain);
  $("method-form").addEventListener("submit", (event) => { event.preventDefault(); explain(); });
  $("prev").addEventListener("click", () => { state.offset = Math.max(0, state.offset - state.limit); loadSamples(); });
  $("next").addEventListener("click", () => { state.offset += state.limit; loadSamples(); });
  await loadSamples();
  document.body.dataset.ready = "1";
}

document.addEventListener("DOMContentLoaded", start);
