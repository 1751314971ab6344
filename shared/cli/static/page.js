// The page at / of `python -m shared serve`: each chosen or dropped image goes to POST /api/classify as an
// indexer sends it (a base64 string in a one-record batch), and the answer is shown: labels with their
// confidences, detection boxes and segmentation masks (objects[].polygon: lists of flat [x0, y0, x1, y1, ...]
// fractions) over the image, and the model version. Plain DOM, no libraries, nothing fetched from elsewhere.
"use strict";

const PALETTE = ["#ff3b30", "#34c759", "#007aff", "#ff9500", "#af52de", "#00c7be"];
const SVG = "http://www.w3.org/2000/svg";
const results = document.getElementById("results");
let nextId = 0;
let queue = Promise.resolve();

function element(tag, attributes = {}, text = "") {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, value);
  if (text) node.textContent = text;
  return node;
}

async function showModel() {
  const model = document.getElementById("model");
  try {
    const answer = await fetch("api/health");
    const health = await answer.json();
    const m = health.model || {};
    if (health.status === "ready") {
      model.textContent = `model ${m.version} (${m.task}, ${m.labels} labels) from ${m.source}`;
    } else {
      model.textContent = `no model is serving yet: ${m.lastError || "see the server's log"}`;
      model.className = "error";
    }
  } catch (error) {
    model.textContent = `cannot reach /api/health (${error})`;
    model.className = "error";
  }
}

function base64Of(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(String(reader.result).split(",", 2)[1] || "");
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(file);
  });
}

function query() {
  const params = new URLSearchParams();
  const topK = document.getElementById("topk").value.trim();
  const threshold = document.getElementById("threshold").value.trim();
  if (topK) params.set("topK", topK);
  if (threshold) params.set("threshold", threshold);
  const text = params.toString();
  return text ? `?${text}` : "";
}

function newCard(name) {
  const card = element("article", { class: "card", "data-id": String(nextId++) });
  card.append(element("h2", {}, name));
  const frame = element("div", { class: "frame" });
  const image = element("img", { alt: name });
  const overlay = document.createElementNS(SVG, "svg");
  overlay.setAttribute("viewBox", "0 0 1 1");
  overlay.setAttribute("preserveAspectRatio", "none");
  frame.append(image, overlay);
  card.append(frame, element("p", { class: "status muted" }, "classifying..."));
  results.prepend(card);
  return card;
}

function setStatus(card, text, kind) {
  const status = card.querySelector(".status");
  status.textContent = text;
  status.className = `status ${kind}`;
}

function colourFor(colours, label) {
  if (!colours.has(label)) colours.set(label, PALETTE[colours.size % PALETTE.length]);
  return colours.get(label);
}

// Draw one answer's data on its card: the shape of `data` is the skill's record data (docs/skill.md,
// docs/detection.md). Exposed for the page's tests.
function renderAnswer(card, data) {
  const overlay = card.querySelector("svg");
  const frame = card.querySelector(".frame");
  overlay.replaceChildren();
  frame.querySelectorAll(".tag").forEach((tag) => tag.remove());
  const table = element("table");
  const colours = new Map();
  const objects = Array.isArray(data.objects) ? data.objects : null;
  if (objects) {
    for (const object of [...objects].reverse()) {  // the best object drawn last, on top
      const colour = colourFor(colours, object.label);
      for (const ring of object.polygon || []) {
        if (!Array.isArray(ring) || ring.length < 6) continue;
        const points = [];
        for (let i = 0; i + 1 < ring.length; i += 2) points.push(`${ring[i]},${ring[i + 1]}`);
        const mask = document.createElementNS(SVG, "polygon");
        mask.setAttribute("points", points.join(" "));
        mask.setAttribute("class", "mask");
        mask.setAttribute("fill", colour);
        mask.setAttribute("stroke", colour);
        overlay.append(mask);
      }
      const box = object.box;
      if (box) {
        const rect = document.createElementNS(SVG, "rect");
        rect.setAttribute("x", box.topX);
        rect.setAttribute("y", box.topY);
        rect.setAttribute("width", Math.max(0, box.bottomX - box.topX));
        rect.setAttribute("height", Math.max(0, box.bottomY - box.topY));
        rect.setAttribute("class", "box");
        rect.setAttribute("stroke", colour);
        overlay.append(rect);
        const tag = element("span", { class: "tag" }, `${object.label} ${object.score.toFixed(2)}`);
        tag.style.left = `${100 * box.topX}%`;
        tag.style.top = `${100 * box.topY}%`;
        tag.style.background = colour;
        frame.append(tag);
      }
    }
    for (const object of objects) {
      addRow(table, object.label, object.score, false);
    }
    const count = objects.length;
    setStatus(card, `${count} object${count === 1 ? "" : "s"} · model ${data.modelVersion}`, "muted");
  } else {
    const above = new Set(data.labels || []);
    for (const prediction of data.predictions || []) {
      addRow(table, prediction.label, prediction.score, above.has(prediction.label));
    }
    const label = data.label === null || data.label === undefined ? "nothing above the threshold" : data.label;
    setStatus(card, `${label} · model ${data.modelVersion}`, "muted");
    card.querySelector(".status").classList.add("label");
  }
  card.append(table);
}

function addRow(table, label, score, top) {
  const row = element("tr", top ? { class: "top" } : {});
  const bar = element("div", { class: "bar" });
  bar.style.width = `${Math.round(100 * score)}%`;
  const cell = element("td", { class: "score" });
  cell.append(bar);
  row.append(element("td", {}, label), element("td", {}, score.toFixed(4)), cell);
  table.append(row);
}

async function classify(file) {
  const card = newCard(file.name);
  const image = card.querySelector("img");
  image.src = URL.createObjectURL(file);
  try {
    const body = JSON.stringify({ values: [{ recordId: "1", data: { image: await base64Of(file) } }] });
    const headers = { "Content-Type": "application/json" };
    const key = document.getElementById("key").value;
    if (key) headers["x-functions-key"] = key;
    const answer = await fetch(`api/classify${query()}`, { method: "POST", headers, body });
    const payload = await answer.json();
    if (!answer.ok) {
      const message = (payload.error && payload.error.message) || `HTTP ${answer.status}`;
      setStatus(card, `${answer.status}: ${message}`, "error");
      if (answer.status === 401) document.getElementById("options").open = true;
      return;
    }
    const record = payload.values[0];
    if (record.errors) {
      setStatus(card, record.errors.map((e) => e.message).join("; "), "error");
      return;
    }
    renderAnswer(card, record.data);
    for (const warning of record.warnings || []) {
      card.append(element("p", { class: "status warning" }, warning.message));
    }
  } catch (error) {
    setStatus(card, `the request failed: ${error}`, "error");
  }
}

function take(files) {
  for (const file of files) {
    // One at a time, in order: the answers fill in as they come.
    queue = queue.then(() => classify(file));
  }
}

const drop = document.getElementById("drop");
const picker = document.getElementById("files");
picker.addEventListener("change", () => {
  take([...picker.files]);
  picker.value = "";
});
for (const name of ["dragenter", "dragover"]) {
  drop.addEventListener(name, (event) => {
    event.preventDefault();
    drop.classList.add("over");
  });
}
for (const name of ["dragleave", "drop"]) {
  drop.addEventListener(name, () => drop.classList.remove("over"));
}
drop.addEventListener("drop", (event) => {
  event.preventDefault();
  take([...event.dataTransfer.files]);
});
window.renderAnswer = renderAnswer;
window.newCard = newCard;
showModel();
