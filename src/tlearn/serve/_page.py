"""The web page at `/`: choose or drop images, see each with its top labels as confidence bars,
"unknown" where the threshold says so, and its Grad-CAM on request. Self-contained: no CDN, no
framework; it talks to /metadata, /predict and /gradcam like any other client."""

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>tlearn serve</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
<style>
body { font: 15px/1.4 system-ui, sans-serif; margin: 2em auto; max-width: 980px; color: #222; }
h1 { font-size: 1.4em; margin-bottom: 0.2em; } #about { color: #666; margin-bottom: 1em; }
#drop { border: 2px dashed #99a; border-radius: 8px; padding: 2em; text-align: center; color: #557; }
#drop.over { background: #eef; }
#error { color: #b00; margin: 1em 0; min-height: 1.2em; }
.result { display: flex; gap: 1.2em; align-items: flex-start; border-bottom: 1px solid #ddd; padding: 1em 0; }
.result img { width: 160px; height: 160px; object-fit: contain; background: #f4f4f4; image-rendering: pixelated; }
.labels { flex: 1; } .name { font-weight: 600; margin-bottom: 0.4em; word-break: break-all; }
.row { display: flex; align-items: center; gap: 0.6em; margin: 0.2em 0; }
.row .label { width: 12em; overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }
.bar { flex: 1; height: 0.9em; background: #eee; border-radius: 3px; }
.bar div { height: 100%; background: #3a7bd5; border-radius: 3px; }
.prob { width: 4.5em; text-align: right; font-variant-numeric: tabular-nums; }
.unknown { color: #a60; font-weight: 600; }
button { margin-top: 0.5em; }
</style></head>
<body>
<h1>tlearn serve</h1><div id="about">loading the model...</div>
<div id="drop">Drop images here, or <input type="file" id="files" accept="image/*" multiple></div>
<div id="error"></div>
<div id="results"></div>
<script>
"use strict";
const results = document.getElementById("results"), errorBox = document.getElementById("error");
let topK = 3;

async function answer(response) {
  const body = await response.json();
  if (!response.ok) throw new Error(body.error || response.statusText);
  return body;
}

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function bar(label, prob) {
  const row = element("div", "row");
  row.append(element("span", "label", label));
  const outer = element("div", "bar"), inner = element("div");
  inner.style.width = (100 * prob).toFixed(1) + "%";
  outer.append(inner);
  row.append(outer, element("span", "prob", (100 * prob).toFixed(1) + "%"));
  return row;
}

function show(file, prediction) {
  const card = element("div", "result");
  card.dataset.file = file.name;
  const picture = element("img");
  picture.src = URL.createObjectURL(file);
  picture.alt = file.name;
  const labels = element("div", "labels");
  labels.append(element("div", "name", file.name));
  const verdict = prediction.answered === false ? "unknown (best guess: " + prediction.guess + ")"
                : (prediction.label === null ? "no label above its threshold" : prediction.label);
  labels.append(element("div", prediction.answered === false ? "verdict unknown" : "verdict", verdict));
  prediction.labels.forEach((label, i) => labels.append(bar(label, prediction.probs[i])));
  const explain = element("button", "explain", "Grad-CAM");
  explain.onclick = () => gradCam(file, picture, explain);
  labels.append(explain);
  card.append(picture, labels);
  results.append(card);
}

async function gradCam(file, picture, button) {
  const form = new FormData();
  form.append("files", file, file.name);
  button.disabled = true;
  try {
    const body = await answer(await fetch("gradcam", {method: "POST", body: form}));
    picture.src = body.image;
    picture.title = "Grad-CAM of " + body.label;
    button.textContent = "Grad-CAM: " + body.label;
  } catch (error) { errorBox.textContent = error.message; }
}

async function predict(files) {
  errorBox.textContent = "";
  if (!files.length) return;
  const form = new FormData();
  for (const file of files) form.append("files", file, file.name);
  form.append("top_k", String(topK));
  try {
    const body = await answer(await fetch("predict", {method: "POST", body: form}));
    body.predictions.forEach((prediction, i) => show(files[i], prediction));
  } catch (error) { errorBox.textContent = error.message; }
}

const drop = document.getElementById("drop"), input = document.getElementById("files");
input.onchange = () => predict(Array.from(input.files));
drop.ondragover = event => { event.preventDefault(); drop.classList.add("over"); };
drop.ondragleave = () => drop.classList.remove("over");
drop.ondrop = event => {
  event.preventDefault();
  drop.classList.remove("over");
  predict(Array.from(event.dataTransfer.files).filter(file => file.type.startsWith("image/")));
};

fetch("metadata").then(answer).then(meta => {
  topK = Math.min(3, meta.classes.length);
  const threshold = meta.calibration.min_confidence;
  document.getElementById("about").textContent = meta.model + ", " + meta.classes.length + " classes ("
    + meta.task + "), engine " + meta.engine + (threshold ? ", unknown below " + threshold.toFixed(3) : "");
}).catch(error => { errorBox.textContent = error.message; });
</script>
</body></html>
"""
