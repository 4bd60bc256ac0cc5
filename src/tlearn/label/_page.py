"""The labelling page at `/`: the next image large, the probe's guess and alternatives, one button
per class, keys (digits for classes, s skip, u undo, n new class; in review mode k keep, r remove,
a / b remove the left / right copy), the cross-validated estimate and its curve as inline SVG.
Self-contained: no CDN, no framework. Keys are handled one at a time, in order (a chain of
promises), so fast typing answers each image once, with the answer meant for it."""

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>tlearn label</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
<style>
body { font: 15px/1.4 system-ui, sans-serif; margin: 1.5em auto; max-width: 1100px; color: #222; }
h1 { font-size: 1.3em; margin: 0 0 0.3em; } #counts, #help { color: #666; }
main { display: flex; gap: 2em; align-items: flex-start; margin-top: 1em; }
#pictures { display: flex; gap: 1em; } figure { margin: 0; text-align: center; }
#pictures img { width: 420px; height: 420px; object-fit: contain; background: #f2f2f2; image-rendering: pixelated; }
figcaption { color: #555; word-break: break-all; max-width: 420px; }
aside { flex: 1; min-width: 260px; } #item { margin-bottom: 0.6em; font-weight: 600; }
#classes button, #actions button { display: block; width: 100%; text-align: left; margin: 0.25em 0; padding: 0.4em;
  font: inherit; cursor: pointer; border: 1px solid #bbc; border-radius: 4px; background: #fafaff; }
#classes button.guess { border-color: #3a7bd5; background: #e8f0fc; font-weight: 600; }
.key { display: inline-block; width: 1.4em; color: #3a7bd5; font-weight: 700; }
.prob { float: right; color: #555; font-variant-numeric: tabular-nums; }
#error { color: #b00; min-height: 1.2em; margin: 0.5em 0; } #done { font-size: 1.2em; color: #270; }
#curve { border: 1px solid #ddd; background: #fcfcfc; margin-top: 0.5em; }
</style></head>
<body>
<h1>tlearn label</h1>
<div id="counts">loading...</div>
<div id="help"></div>
<div id="error"></div>
<main>
  <div><div id="pictures"></div><div id="done" hidden>Nothing left to ask: every image is answered.</div></div>
  <aside>
    <div id="item"></div>
    <div id="classes"></div>
    <div id="actions"></div>
    <div id="learning"><div>validation estimate (cross-validated on the labels so far): <b id="estimate">-</b>
      <span id="refitting"></span></div>
    <svg id="curve" width="300" height="140" viewBox="0 0 300 140"></svg></div>
  </aside>
</main>
<script>
"use strict";
let state = null, chain = Promise.resolve(), pending = 0, poll = 0;
const $ = id => document.getElementById(id);

async function call(method, url, body) {
  const response = await fetch(url, {method, headers: {"Content-Type": "application/json"},
                                     body: body === undefined ? undefined : JSON.stringify(body)});
  const answer = await response.json();
  if (!response.ok) throw new Error(answer.error || response.statusText);
  return answer;
}

function then(step) {  // every action waits for the one before: each answer is for the image it saw
  pending += 1; document.body.dataset.busy = "1";
  chain = chain.then(step).then(show, error => {
    $("error").textContent = error.message;
    if (!state) setTimeout(() => then(() => call("GET", "/api/state")), 2000);  // no page yet: look again
  })
               .then(() => { pending -= 1; document.body.dataset.busy = pending ? "1" : "0"; });
}

function button(parent, key, text, prob, onclick, guess) {
  const b = document.createElement("button");
  b.innerHTML = '<span class="key"></span><span class="text"></span><span class="prob"></span>';
  b.querySelector(".key").textContent = key; b.querySelector(".text").textContent = text;
  b.querySelector(".prob").textContent = prob === undefined ? "" : (100 * prob).toFixed(1) + " %";
  if (guess) b.className = "guess";
  b.onclick = () => then(onclick);
  parent.appendChild(b);
}

function picture(path, caption) {
  const figure = document.createElement("figure"), img = document.createElement("img");
  img.src = "/image/" + path.split("/").map(encodeURIComponent).join("/");
  img.alt = path; img.dataset.path = path;
  const text = document.createElement("figcaption"); text.textContent = caption;
  figure.append(img, text); $("pictures").appendChild(figure);
}

function classKey(i) { return i < 9 ? String(i + 1) : i === 9 ? "0" : ""; }

function show(next) {
  state = next; $("error").textContent = "";
  const item = state.mode === "review" ? state.item : state.image;
  document.body.dataset.current = item ? item.key || item.path : "";
  document.body.dataset.answered = state.answered;
  $("pictures").innerHTML = ""; $("classes").innerHTML = ""; $("actions").innerHTML = "";
  $("done").hidden = !!item;
  $("counts").textContent = state.mode === "review"
    ? `${state.reviewed} of ${state.items} findings reviewed`
    : `${state.answered} of ${state.pool} images answered, ${state.labelled} labelled; the probe refits every ` +
      `${state.refit_every} answers`;
  $("help").textContent = state.mode === "review"
    ? "keys: k keep, r remove, a / b remove the left / right copy, a digit relabels, u undo"
    : "keys: a digit answers its class, s skip, u undo, n new class";
  $("learning").hidden = state.mode === "review";  // review mode fits no probe
  $("estimate").textContent = state.estimate === null ? "-" : (100 * state.estimate).toFixed(1) + " %";
  $("refitting").textContent = state.refitting ? "(refitting...)" : "";
  clearTimeout(poll);  // while the probe refits, look again: its guesses and estimate replace the old ones
  if (state.refitting) poll = setTimeout(() => then(() => call("GET", "/api/state")), 1000);
  drawCurve(state.curve);
  if (!item) { $("item").textContent = ""; return; }
  if (state.mode === "review") return showReview(item);
  picture(item.path, item.path);
  $("item").textContent = item.guess ? "the probe's guess: " + item.guess : "no guess yet (the probe needs 2 classes)";
  const probs = Object.fromEntries(item.alternatives.map(a => [a.label, a.prob]));
  state.classes.forEach((name, i) => button($("classes"), classKey(i), name, probs[name],
                                            () => answer(name), name === item.guess));
  button($("actions"), "s", "skip", undefined, () => answer(""));
  button($("actions"), "u", "undo", undefined, undo);
  button($("actions"), "n", "new class", undefined, newClass);
}

function showReview(item) {
  item.paths.forEach((path, i) => picture(path, (item.paths.length > 1 ? "ab"[i] + ": " : "") + path));
  $("item").textContent = item.kind === "label_issue"
    ? `labelled ${item.given}; the probe suggests ${item.suggested} (score ${item.score})`
    : `near-duplicates (similarity ${item.score})`;
  if (item.kind === "label_issue")  // a duplicate pair is kept or thinned, not relabelled
    state.classes.forEach((name, i) => button($("classes"), classKey(i), "relabel: " + name, undefined,
                                              () => review("relabel", name), name === item.suggested));
  button($("actions"), "k", "keep", undefined, () => review("keep"));
  if (item.kind === "label_issue") button($("actions"), "r", "remove", undefined, () => review("remove"));
  else { button($("actions"), "a", "remove a", undefined, () => review("remove_a"));
         button($("actions"), "b", "remove b", undefined, () => review("remove_b")); }
  button($("actions"), "u", "undo", undefined, undo);
}

function drawCurve(points) {
  const svg = $("curve"), w = 300, h = 140, pad = 24;
  if (!points.length) { svg.innerHTML = '<text x="10" y="70" fill="#888">the curve starts at 4 labels</text>'; return; }
  const most = Math.max(...points.map(p => p[0]), 1);
  const xy = points.map(([n, a]) => [pad + (w - 2 * pad) * n / most, h - pad - (h - 2 * pad) * a]);
  svg.innerHTML = `<line x1="${pad}" y1="${h - pad}" x2="${w - pad}" y2="${h - pad}" stroke="#999"/>` +
    `<line x1="${pad}" y1="${pad}" x2="${pad}" y2="${h - pad}" stroke="#999"/>` +
    `<text x="2" y="${pad + 4}" font-size="10">100%</text><text x="8" y="${h - pad}" font-size="10">0</text>` +
    `<text x="${w - pad - 30}" y="${h - 6}" font-size="10">${most} labels</text>` +
    `<polyline fill="none" stroke="#3a7bd5" stroke-width="2" points="${xy.map(p => p.join(",")).join(" ")}"/>` +
    xy.map(([x, y]) => `<circle cx="${x}" cy="${y}" r="3" fill="#3a7bd5"/>`).join("");
}

const answer = label => call("POST", "/api/answer", {path: state.image.path, label});
const undo = () => call("POST", "/api/undo");
const review = (action, label = "") => call("POST", "/api/review", {key: state.item.key, action, label});
async function newClass() {
  const name = prompt("new class name");
  return name ? call("POST", "/api/class", {name}) : state;
}

document.addEventListener("keydown", event => {
  if (event.ctrlKey || event.metaKey || event.altKey) return;
  const key = event.key;
  then(() => {  // read the state when this key's turn comes, not when it was pressed
    const item = state && (state.mode === "review" ? state.item : state.image);
    const digit = "1234567890".indexOf(key);
    if (key === "u") return undo();
    if (!item) return state;
    if (digit >= 0 && digit < state.classes.length && item.kind !== "duplicate")
      return state.mode === "review" ? review("relabel", state.classes[digit]) : answer(state.classes[digit]);
    if (state.mode === "review") {
      const actions = {k: "keep", r: "remove", a: "remove_a", b: "remove_b"};
      return actions[key] ? review(actions[key]) : state;
    }
    if (key === "s") return answer("");
    if (key === "n") return newClass();
    return state;
  });
});
then(() => call("GET", "/api/state"));
</script>
</body></html>
"""
