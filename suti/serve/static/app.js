// suti serve page: uploads photos one by one, submits a request, polls its status, shows the results.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { info: null, photos: [], pending: 0, job: null, polling: null };

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c);
  return node;
}

function showMessage(text, kind = "error", box = $("message")) {
  box.textContent = text;
  box.className = kind === "info" ? "message info" : "message";
  box.hidden = !text;
}

function formatBytes(n) {
  const units = ["bytes", "KB", "MB", "GB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return i ? `${n.toFixed(1).replace(/\.0$/, "")} ${units[i]}` : `${n} bytes`;
}

// Every call answers {error} on failure; a dead server becomes a message too, never an exception.
async function api(method, url, body, headers = {}) {
  let response;
  try {
    response = await fetch(url, { method, body, headers });
  } catch (e) {
    return { ok: false, data: { error: "The server did not answer. Is it still running?" } };
  }
  let data;
  try { data = await response.json(); } catch (e) { data = { error: `The server answered ${response.status} ${response.statusText}.` }; }
  return { ok: response.ok, status: response.status, data };
}

// -- photos --------------------------------------------------------------------------------------------
async function addFiles(files) {
  const limits = state.info.limits;
  for (const file of files) {
    if (state.photos.length + state.pending >= limits.max_photos) {
      showMessage(`At most ${limits.max_photos} photos: "${file.name}" was not added. Remove one first.`);
      continue;
    }
    if (file.size > limits.max_upload_bytes) {
      showMessage(`${file.name}: the photo is ${formatBytes(file.size)}, over the ${formatBytes(limits.max_upload_bytes)} limit.`);
      continue;
    }
    state.pending++;
    const r = await api("POST", "/api/uploads", file,
      { "X-Filename": encodeURIComponent(file.name), "Content-Type": file.type || "application/octet-stream" });
    state.pending--;
    if (!r.ok) { showMessage(r.data.error); continue; }
    state.photos.push({ ...r.data, caption: "" });
    showMessage("");
    renderPhotos();
  }
}

function renderPhotos() {
  const list = $("photos");
  list.replaceChildren(...state.photos.map((p, i) => el("div", { class: "photo", "data-name": p.name },
    el("img", { src: p.thumbnail, alt: p.name, title: `${p.name} (${p.width}x${p.height})` }),
    (() => {
      const input = el("input", { type: "text", placeholder: `caption ${i + 1} (optional)`, class: "caption" });
      input.value = p.caption;
      input.addEventListener("input", () => { p.caption = input.value; });
      return input;
    })(),
    el("button", { type: "button", class: "remove", title: "remove", onclick: () => removePhoto(p) }, "\u00d7"))));
  if (!state.job) renderExemplars(state.photos);
}

async function removePhoto(photo) {
  state.photos = state.photos.filter((p) => p !== photo);
  renderPhotos();
  await api("DELETE", `/api/uploads/${photo.id}`);
}

function renderExemplars(photos) {
  const box = $("exemplars");
  if (!photos.length) { box.replaceChildren(el("p", { class: "muted" }, "No photos: plain text-to-image.")); return; }
  box.replaceChildren(...photos.map((p) => el("figure", {},
    el("img", { src: p.thumbnail, alt: p.name }), el("figcaption", {}, p.caption || p.name))));
}

// -- generation ----------------------------------------------------------------------------------------
function numberOrNull(id) { const v = $(id).value.trim(); return v === "" ? null : Number(v); }

async function submit(event) {
  event.preventDefault();
  showMessage("");
  if (state.pending) { showMessage("Wait for the photos to finish uploading.", "info"); return; }
  const body = {
    prompt: $("prompt").value,
    subjects: state.photos.map((p) => ({ upload: p.id, caption: p.caption })),
    num_images: numberOrNull("num-images"), steps: numberOrNull("steps"),
    guidance_mode: $("guidance-mode").value, guidance: numberOrNull("guidance"),
    context_guidance: numberOrNull("context-guidance"), text_ratio: numberOrNull("text-ratio"),
    seed: numberOrNull("seed"), fit: $("fit").value,
  };
  $("generate").disabled = true;
  const r = await api("POST", "/api/jobs", JSON.stringify(body), { "Content-Type": "application/json" });
  if (!r.ok) { $("generate").disabled = false; showMessage(r.data.error); return; }
  state.job = r.data;
  renderExemplars(state.photos.map((p) => ({ ...p })));
  $("results").replaceChildren(el("p", { class: "muted" }, "Waiting for the images..."));
  showStatus(r.data);
  clearInterval(state.polling);
  state.polling = setInterval(poll, 400);
}

async function poll() {
  if (!state.job) return;
  const r = await api("GET", `/api/jobs/${state.job.id}`);
  if (!r.ok) { stopPolling(); showMessage(r.data.error); return; }
  state.job = r.data;
  showStatus(r.data);
  if (r.data.status === "done") { stopPolling(); renderResults(r.data); }
  else if (r.data.status === "error") { stopPolling(); showMessage(r.data.error); $("results").replaceChildren(); }
  else if (r.data.status === "cancelled") { stopPolling(); $("results").replaceChildren(el("p", { class: "muted" }, "Cancelled.")); }
}

function stopPolling() { clearInterval(state.polling); state.polling = null; $("generate").disabled = false; }

function showStatus(job) {
  $("status").hidden = false;
  const pct = job.total_steps ? Math.round(100 * job.step / job.total_steps) : 0;
  let text;
  if (job.status === "queued") text = job.position ? `In the queue: ${job.position} request${job.position > 1 ? "s" : ""} ahead of yours.` : "Starting...";
  else if (job.status === "running") text = `Sampling${job.stage ? ` (${job.stage})` : ""}: step ${job.step} of ${job.total_steps}, ${pct}%`;
  else if (job.status === "done") text = `Done in ${job.seconds.toFixed(1)} s (seed ${job.settings.seed}).`;
  else if (job.status === "error") text = "Failed.";
  else text = "Cancelled.";
  $("status-text").textContent = text;
  $("bar-fill").style.width = `${job.status === "done" ? 100 : pct}%`;
  $("cancel").hidden = job.status !== "queued" && job.status !== "running";
}

function renderResults(job) {
  $("results").replaceChildren(...job.images.map((img, i) => el("figure", { class: "result" },
    el("img", { src: img.url, alt: `result ${i + 1}` }),
    el("figcaption", {}, `#${i + 1}, seed ${job.settings.seed} `,
      el("a", { href: img.download, download: `suti-${job.id}-${i}.png` }, "Download PNG")))));
}

// -- search tab ----------------------------------------------------------------------------------------
async function search(event) {
  event.preventDefault();
  const q = $("search-text").value;
  showMessage("", "error", $("search-message"));
  const r = await api("GET", `/api/search?q=${encodeURIComponent(q)}&k=12`);
  if (!r.ok) { showMessage(r.data.error, "error", $("search-message")); return; }
  if (!r.data.results.length) showMessage("No pairs found.", "info", $("search-message"));
  $("search-results").replaceChildren(...r.data.results.map((h) => el("div", { class: "pair" },
    el("img", { src: h.thumbnail, alt: h.caption }),
    el("div", {}, h.caption || el("i", {}, "(no caption)")),
    el("div", { class: "score" }, `score ${h.score.toFixed(3)} \u00b7 ${h.key}`),
    /^https?:\/\//i.test(h.page_url || "") ? el("a", { href: h.page_url, target: "_blank", rel: "noopener noreferrer" }, "page") : "",
    " ",
    el("button", { type: "button", class: "link", onclick: () => usePair(h) }, "use as subject photo"))));
}

async function usePair(hit) {
  if (state.photos.length + state.pending >= state.info.limits.max_photos) {
    showMessage(`At most ${state.info.limits.max_photos} photos: remove one first.`, "error", $("search-message"));
    return;
  }
  const r = await api("POST", `/api/uploads/from-pair/${hit.id}`);
  if (!r.ok) { showMessage(r.data.error, "error", $("search-message")); return; }
  state.photos.push({ ...r.data, caption: r.data.caption || "" });
  renderPhotos();
  showMessage(`Added "${hit.key}" to the subject photos.`, "info", $("search-message"));
}

function switchTab(name) {
  for (const t of document.querySelectorAll(".tab")) t.classList.toggle("active", t.dataset.tab === name);
  $("personalise").hidden = name !== "personalise";
  $("search").hidden = name !== "search";
}

// -- start ---------------------------------------------------------------------------------------------
async function start() {
  const r = await api("GET", "/api/info");
  if (!r.ok) { showMessage(r.data.error); return; }
  const info = state.info = r.data;
  $("model-name").textContent = `${info.model} \u00b7 ${info.stages.map((s) => `${s.name} ${s.size}px`).join(" \u2192 ")}`;
  $("num-images").max = info.limits.max_images;
  $("num-images").value = info.defaults.num_images;
  $("steps").max = info.limits.max_steps;
  $("steps").value = info.defaults.steps;
  $("guidance").value = info.defaults.guidance;
  if (!info.uses_context) {
    $("photos-hint").textContent = "This checkpoint is text-to-image only: it cannot read subject photos.";
    $("drop").hidden = true;
  } else {
    $("photos-hint").textContent = `1-${info.limits.max_photos} photos of one subject (up to ${formatBytes(info.limits.max_upload_bytes)} each), each with an optional caption.`;
  }
  document.querySelector("nav").hidden = !info.database;
  if (info.database) { $("tab-search").hidden = false; $("search-text").placeholder = `text to search ${info.database.records} pairs for`; }
  renderExemplars([]);
}

$("photo-input").addEventListener("change", (e) => { addFiles([...e.target.files]); e.target.value = ""; });
const drop = $("drop");
drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => { e.preventDefault(); drop.classList.remove("over"); addFiles([...e.dataTransfer.files]); });
$("generate-form").addEventListener("submit", submit);
$("search-form").addEventListener("submit", search);
$("cancel").addEventListener("click", () => state.job && api("DELETE", `/api/jobs/${state.job.id}`).then(poll));
for (const t of document.querySelectorAll(".tab")) t.addEventListener("click", () => switchTab(t.dataset.tab));
start();
