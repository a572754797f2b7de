// qwenvl chat page: vanilla JS, no build step, no network beyond this server.
// Chats through /v1/chat/completions (stream=true, server-sent events); after each answer asks
// /v1/qwenvl/parse for its boxes / document blocks / time spans, which come back in the original
// image's pixels (the server computes the model's resized input size with its own processor code).
"use strict";

const STORE = "qwenvl.chat.v1";
const SETTINGS = "qwenvl.settings.v1";
const COLORS = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#0aa5a5", "#f032e6", "#9a6324", "#808000", "#000075"];
const SVG = "http://www.w3.org/2000/svg";
const $ = (id) => document.getElementById(id);

let info = { model: "qwenvl", media: { max_image_bytes: 20 * 2 ** 20, max_video_bytes: 200 * 2 ** 20 } };
let messages = [];      // {role, text, media: [{kind, url, name, width, height}]} / {role, text, stats, parse, ...}
let pending = [];       // attachments for the next message
let controller = null;  // AbortController of the answer in flight
let emptyText = "";

// ------------------------------------------------------------------------------ small helpers

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children) if (c !== null && c !== undefined) node.append(c);
  return node;
}

function svg(tag, attrs) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  return node;
}

function status(text, error = false) {
  const s = $("status");
  s.textContent = text;
  s.classList.toggle("error", error);
}

function headers() {
  const h = { "Content-Type": "application/json" };
  const key = $("api_key").value.trim();
  if (key) h.Authorization = `Bearer ${key}`;
  return h;
}

async function errorMessage(res) {
  try {
    const body = await res.json();
    if (body && body.error && body.error.message) return `${res.status}: ${body.error.message}`;
  } catch (_) { /* not JSON */ }
  return `HTTP ${res.status} ${res.statusText}`;
}

function fmtSeconds(s) {
  if (!isFinite(s)) return "?";
  const m = Math.floor(s / 60);
  const r = s - 60 * m;
  return m ? `${m}:${r.toFixed(1).padStart(4, "0")}` : `${r.toFixed(1)} s`;
}

// ------------------------------------------------------------------------------ persistence

function saveSettings() {
  const s = {};
  for (const id of ["system", "temperature", "top_p", "max_tokens", "seed", "api_key"]) s[id] = $(id).value;
  localStorage.setItem(SETTINGS, JSON.stringify(s));
}

function loadSettings() {
  try {
    const s = JSON.parse(localStorage.getItem(SETTINGS) || "{}");
    for (const [id, v] of Object.entries(s)) if ($(id) && typeof v === "string") $(id).value = v;
  } catch (_) { /* a corrupt entry: keep the defaults */ }
}

function saveChat() {
  try {
    localStorage.setItem(STORE, JSON.stringify(messages));
    return;
  } catch (_) { /* over the quota (images are data URIs): keep the text, drop the media */ }
  const light = messages.map((m) => ({ ...m, media: (m.media || []).map((x) => ({ ...x, url: null })) }));
  try {
    localStorage.setItem(STORE, JSON.stringify(light));
    status("The browser storage is full: the conversation is kept without its images and videos.");
  } catch (_) {
    status("The conversation could not be saved in this browser (storage full).", true);
  }
}

function loadChat() {
  try {
    const m = JSON.parse(localStorage.getItem(STORE) || "[]");
    if (Array.isArray(m)) messages = m.filter((x) => x && (x.role === "user" || x.role === "assistant"));
  } catch (_) { messages = []; }
  for (const m of messages) if (m.state === "streaming") m.state = "stopped";   // the page was closed mid-answer
}

// ------------------------------------------------------------------------------ attachments

function readAsDataURL(file) {
  return new Promise((resolve, reject) => {
    const r = new FileReader();
    r.onload = () => resolve(r.result);
    r.onerror = () => reject(r.error);
    r.readAsDataURL(file);
  });
}

function mediaSize(kind, url) {
  return new Promise((resolve) => {
    if (kind === "image") {
      // The model sees the stored pixels: neither the server nor qwen-vl-utils applies EXIF rotation.
      // naturalWidth/Height (and createImageBitmap) report the rotated size, so measure the laid-out
      // size of an unscaled copy under image-orientation: none instead (CSS px = image px at 1:1).
      const img = new Image();
      img.style.cssText = "image-orientation:none;position:absolute;left:-99999px;top:0;visibility:hidden;" +
        "max-width:none;max-height:none;width:auto;height:auto;border:0;padding:0";
      img.src = url;
      document.body.append(img);
      img.decode().then(() => {
        const r = img.getBoundingClientRect();
        resolve([Math.round(r.width), Math.round(r.height)]);
      }, () => resolve([null, null])).finally(() => img.remove());
    } else {
      const v = document.createElement("video");
      v.preload = "metadata";
      v.onloadedmetadata = () => resolve([v.videoWidth, v.videoHeight, v.duration]);
      v.onerror = () => resolve([null, null, null]);
      v.src = url;
    }
  });
}

async function attach(files) {
  for (const file of files) {
    const kind = file.type.startsWith("image/") ? "image" : file.type.startsWith("video/") ? "video" : null;
    if (!kind) { status(`${file.name}: not an image or a video (${file.type || "unknown type"})`, true); continue; }
    const limit = kind === "image" ? info.media.max_image_bytes : info.media.max_video_bytes;
    if (limit && file.size > limit) {
      status(`${file.name}: ${(file.size / 2 ** 20).toFixed(1)} MB is over this server's limit of ${(limit / 2 ** 20).toFixed(0)} MB`, true);
      continue;
    }
    const url = await readAsDataURL(file);
    const [width, height, duration] = await mediaSize(kind, url);
    if (kind === "image" && !width) { status(`${file.name}: the browser cannot read this image`, true); continue; }
    pending.push({ kind, url, name: file.name || `${kind}`, width, height, duration });
    status(`Attached ${file.name || kind}${width ? ` (${width}×${height})` : ""}.`);
  }
  renderAttachments();
}

function renderAttachments() {
  const list = $("attachments");
  list.replaceChildren();
  pending.forEach((m, i) => {
    const preview = m.kind === "image" ? el("img", { src: m.url, alt: m.name }) : el("video", { src: m.url, muted: true, "aria-label": m.name });
    list.append(el("li", {}, preview, el("button", {
      type: "button", "aria-label": `Remove ${m.name}`, text: "×",
      onclick: () => { pending.splice(i, 1); renderAttachments(); $("prompt").focus(); },
    })));
  });
}

// ------------------------------------------------------------------------------ rendering

function renderAll() {
  const log = $("log");
  log.replaceChildren();
  if (!messages.length) log.append(el("p", { id: "empty", class: "empty", text: emptyText }));
  messages.forEach((m, i) => log.append(renderMessage(m, i)));
  log.scrollTop = log.scrollHeight;
}

function renderMessage(m, index) {
  const node = el("article", { class: `msg ${m.role}${m.state === "streaming" ? " streaming" : ""}`, "data-index": index,
    "data-state": m.state || "done", "aria-label": m.role === "user" ? "Your message" : "Answer",
    "aria-busy": m.state === "streaming" ? "true" : null });   // screen readers: read the answer once it is done
  node.append(el("div", { class: "role", text: m.role === "user" ? "You" : info.model }));
  if (m.role === "user" && m.media && m.media.length) {
    const thumbs = el("div", { class: "thumbs" });
    for (const x of m.media) {
      if (!x.url) thumbs.append(el("span", { class: "missing", text: `[${x.kind} ${x.name} not kept]` }));
      else if (x.kind === "image") thumbs.append(el("img", { src: x.url, alt: x.name }));
      else thumbs.append(el("video", { src: x.url, controls: true, "aria-label": x.name }));
    }
    node.append(thumbs);
  }
  const text = el("div", { class: "text", text: m.text });
  if (m.parse && m.parse.document && m.parse.document.blocks.length) {
    // a parsed document's HTML is long and shown as blocks below: keep it one click away
    node.append(el("details", { class: "raw" }, el("summary", { text: "Model output (QwenVL HTML)" }), text));
  } else node.append(text);
  if (m.error) node.append(el("div", { class: "error", role: "alert", text: `Error: ${m.error}` }));
  if (m.role === "assistant" && m.parse) {
    const viz = renderViz(m);
    if (viz) node.append(viz);
  }
  if (m.stats) node.append(el("div", { class: "stats", text: statsText(m.stats) }));
  return node;
}

function statsText(s) {
  const parts = [];
  if (s.ttft_ms != null) parts.push(`TTFT ${Math.round(s.ttft_ms)} ms`);
  if (s.tokens_per_s != null) parts.push(`${s.tokens_per_s.toFixed(1)} tok/s`);
  if (s.completion_tokens != null) parts.push(`${s.completion_tokens} tokens`);
  if (s.prompt_tokens != null) parts.push(`prompt ${s.prompt_tokens}` + (s.cached_tokens != null ? ` (cached ${s.cached_tokens})` : ""));
  if (s.total_ms != null) parts.push(`total ${(s.total_ms / 1000).toFixed(2)} s`);
  if (s.finish_reason) parts.push(s.finish_reason);
  return parts.join(" · ");
}

// The image the answer's coordinates refer to: the last one sent up to that answer.
function mediaFor(index, kind) {
  for (let i = index - 1; i >= 0; i--) {
    const media = messages[i].role === "user" ? (messages[i].media || []) : [];
    for (let j = media.length - 1; j >= 0; j--) if (media[j].kind === kind) return media[j];
  }
  return null;
}

function lastMediaKind(index) {
  for (let i = index - 1; i >= 0; i--) {
    const media = messages[i].role === "user" ? (messages[i].media || []) : [];
    if (media.length) return media[media.length - 1].kind;
  }
  return null;
}

function stage(image, shapes) {
  // The SVG's viewBox is the image's own pixel grid, so boxes scale with the displayed image.
  const fig = el("figure", { class: "stage" });
  fig.append(el("img", { src: image.url, alt: image.name, width: image.width, height: image.height }));
  const overlay = svg("svg", { class: "overlay", viewBox: `0 0 ${image.width} ${image.height}`, preserveAspectRatio: "none",
    role: "img", "aria-label": `${shapes.length} boxes and points drawn on ${image.name}` });
  const r = Math.max(image.width, image.height) / 90;
  shapes.forEach((s, i) => {
    const color = COLORS[i % COLORS.length];
    if (s.bbox) {
      const [x1, y1, x2, y2] = s.bbox;
      // a white halo under the coloured line keeps the box visible on any background (a red box on red)
      overlay.append(svg("rect", { x: x1, y: y1, width: x2 - x1, height: y2 - y1, class: "halo" }));
      const rect = svg("rect", { x: x1, y: y1, width: x2 - x1, height: y2 - y1, stroke: color, "data-i": i });
      rect.append(svg("title", {}));
      rect.firstChild.textContent = s.label || "";
      overlay.append(rect);
      if (s.label) fig.append(labelAt(s.label, x1, y1, image, color));
    } else if (s.point) {
      const [x, y] = s.point;
      overlay.append(svg("circle", { cx: x, cy: y, r, fill: color, "data-i": i }));
      if (s.label) fig.append(labelAt(s.label, x + r, y - r, image, color));
    }
  });
  fig.append(overlay);
  return fig;
}

function labelAt(text, x, y, image, color) {
  const label = el("span", { class: "box-label", text });
  label.style.left = `${(100 * x) / image.width}%`;
  label.style.top = `${(100 * y) / image.height}%`;
  if (y < 0.06 * image.height) label.style.transform = "none";   // no room above: put it inside the box
  label.style.background = color;
  return label;
}

function renderViz(m) {
  const p = m.parse;
  const index = messages.indexOf(m);
  const viz = el("div", { class: "viz" });
  const image = mediaFor(index, "image");
  if (p.document && p.document.blocks.length && image && image.url) {
    const blocks = p.document.blocks;
    const list = el("ol", { class: "blocks", "aria-label": "Parsed document blocks" });
    const fig = stage(image, blocks.map((b) => ({ bbox: b.bbox, label: "" })));
    blocks.forEach((b, i) => {
      const item = el("li", { tabindex: 0, "data-i": i }, el("span", { class: "kind", text: b.kind + (b.level ? ` ${b.level}` : "") }));
      item.style.setProperty("--c", COLORS[i % COLORS.length]);
      if (b.cells) {
        const table = el("table");
        for (const row of b.cells) table.append(el("tr", {}, ...row.map((c) => el("td", { text: c }))));
        item.append(table);
      } else item.append(document.createTextNode(b.text || (b.items || []).map((x) => `• ${x.text}`).join("\n")));
      const hl = (on) => {
        item.classList.toggle("hl", on);
        const rect = fig.querySelector(`rect[data-i="${i}"]`);
        if (rect) rect.classList.toggle("hl", on);
      };
      for (const [ev, on] of [["mouseenter", true], ["mouseleave", false], ["focus", true], ["blur", false]]) item.addEventListener(ev, () => hl(on));
      list.append(item);
    });
    viz.append(el("div", { class: "docview" }, fig, list));
    viz.append(el("div", { class: "caption", text: `${blocks.length} blocks · model input ${p.input_size.join("×")} → page ${image.width}×${image.height}` }));
    return viz;
  }
  if (p.detections && p.detections.items.length && image && image.url) {
    const items = p.detections.items;
    viz.append(stage(image, items));
    const nb = items.filter((d) => d.bbox).length;
    viz.append(el("div", { class: "caption", text: `${nb} boxes, ${items.length - nb} points (${p.detections.format}) · model input ${p.input_size.join("×")} → image ${image.width}×${image.height}` }));
    return viz;
  }
  const video = mediaFor(index, "video");
  // several timed events (dense captions) or else the one span of a temporal-grounding answer
  const events = p.events || [];
  const spans = events.length > 1 || (events.length && !p.span) ? events
    : p.span ? [{ start: p.span[0], end: p.span[1], description: "" }] : [];
  if (spans.length && video && video.url) {
    const player = el("video", { src: video.url, controls: true, preload: "metadata", "aria-label": video.name });
    const line = el("div", { class: "timeline" });
    const ticks = el("div", { class: "ticks" });
    const draw = (duration) => {
      const known = isFinite(duration) && duration > 0;
      const d = Math.max(known ? duration : 0, ...spans.map((s) => s.end)) || 1;
      line.replaceChildren();
      for (const s of spans) {
        const seg = el("button", { type: "button", class: "seg", title: `${fmtSeconds(s.start)} – ${fmtSeconds(s.end)} ${s.description || ""}`,
          "aria-label": `Play from ${fmtSeconds(s.start)} to ${fmtSeconds(s.end)} ${s.description || ""}`,
          onclick: () => { player.currentTime = s.start; player.play().catch(() => {}); } });
        seg.style.left = `${(100 * s.start) / d}%`;
        seg.style.width = `${(100 * (s.end - s.start)) / d}%`;
        line.append(seg);
      }
      ticks.replaceChildren(el("span", { text: "0 s" }), el("span", { text: known ? fmtSeconds(d) : `${fmtSeconds(d)} (video length unknown)` }));
    };
    draw(video.duration);
    player.addEventListener("loadedmetadata", () => draw(player.duration));
    viz.append(el("div", { class: "videoview" }, player, line, ticks));
    viz.append(el("div", { class: "caption", text: spans.map((s) => `${fmtSeconds(s.start)} – ${fmtSeconds(s.end)}${s.description ? " " + s.description : ""}`).join("; ") }));
    return viz;
  }
  return null;
}

// ------------------------------------------------------------------------------ chatting

function apiMessages() {
  const out = [];
  const system = $("system").value.trim();
  if (system) out.push({ role: "system", content: system });
  for (const m of messages) {
    if (m.role === "assistant") {
      if (m.state !== "streaming") out.push({ role: "assistant", content: m.text });
      continue;
    }
    const parts = [];
    for (const x of m.media || []) {
      if (!x.url) continue;   // dropped from storage: the model no longer sees it
      parts.push(x.kind === "image" ? { type: "image_url", image_url: { url: x.url } } : { type: "video_url", video_url: { url: x.url } });
    }
    parts.push({ type: "text", text: m.text });
    out.push({ role: "user", content: parts });
  }
  return out;
}

function samplingFields() {
  const body = {};
  const num = (id) => ($(id).value.trim() === "" ? null : Number($(id).value));
  for (const [id, name] of [["temperature", "temperature"], ["top_p", "top_p"], ["max_tokens", "max_tokens"], ["seed", "seed"]]) {
    const v = num(id);
    if (v !== null && !Number.isNaN(v)) body[name] = v;
  }
  return body;
}

async function send() {
  if (controller) return;
  const text = $("prompt").value.trim();
  if (!text && !pending.length) { status("Type a message or attach an image first.", true); return; }
  messages.push({ role: "user", text, media: pending });
  pending = [];
  renderAttachments();
  $("prompt").value = "";
  const answer = { role: "assistant", text: "", state: "streaming" };
  messages.push(answer);
  renderAll();
  saveChat();
  const node = () => $("log").querySelector(`article[data-index="${messages.indexOf(answer)}"]`);
  const textNode = node().querySelector(".text");

  controller = new AbortController();
  $("send").hidden = true;
  $("stop").hidden = false;
  status("Waiting for the first token…");
  const body = { model: info.model, messages: apiMessages(), stream: true, stream_options: { include_usage: true }, ...samplingFields() };
  const t0 = performance.now();
  let tFirst = null, tLast = null, chunks = 0, usage = null, finish = null;
  try {
    const res = await fetch("/v1/chat/completions", { method: "POST", headers: headers(), body: JSON.stringify(body), signal: controller.signal });
    if (!res.ok) throw new Error(await errorMessage(res));
    const reader = res.body.getReader();
    const decoder = new TextDecoder();
    let buf = "";
    let done = false;
    while (!done) {
      const { value, done: end } = await reader.read();
      if (end) break;
      // normalise CRLF on the whole buffer: a read may end between the \r and the \n
      buf = (buf + decoder.decode(value, { stream: true })).replace(/\r\n/g, "\n");
      let cut;
      while (!done && (cut = buf.indexOf("\n\n")) >= 0) {
        const event = buf.slice(0, cut);
        buf = buf.slice(cut + 2);
        const data = event.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trimStart()).join("\n");
        if (!data) continue;
        if (data === "[DONE]") { done = true; break; }
        const obj = JSON.parse(data);
        if (obj.error) throw new Error(obj.error.message || "the server reported an error");
        if (obj.usage) usage = obj.usage;
        for (const c of obj.choices || []) {
          if (c.index !== 0) continue;
          const delta = c.delta && c.delta.content;
          if (delta) {
            const now = performance.now();
            if (tFirst === null) { tFirst = now; status("Answering…"); }
            tLast = now;
            chunks += 1;
            answer.text += delta;
            textNode.textContent = answer.text;
          }
          if (c.finish_reason) finish = c.finish_reason;
        }
        const log = $("log");
        if (log.scrollHeight - log.scrollTop - log.clientHeight < 120) log.scrollTop = log.scrollHeight;
      }
    }
    answer.state = "done";
    status("");
  } catch (e) {
    if (e.name === "AbortError") { answer.state = "stopped"; status("Stopped."); }
    else { answer.state = "error"; answer.error = e.message; status(e.message, true); }
  } finally {
    controller = null;
    $("send").hidden = false;
    $("stop").hidden = true;
  }
  const end = performance.now();
  const n = usage ? usage.completion_tokens : chunks;
  answer.stats = {
    ttft_ms: tFirst === null ? null : tFirst - t0,
    // decode speed: the tokens after the first over the time they took
    tokens_per_s: n > 1 && tLast > tFirst ? (n - 1) / ((tLast - tFirst) / 1000) : null,
    completion_tokens: n,
    prompt_tokens: usage ? usage.prompt_tokens : null,
    cached_tokens: usage && usage.prompt_tokens_details ? usage.prompt_tokens_details.cached_tokens ?? null : null,
    total_ms: end - t0,
    finish_reason: answer.state === "done" ? finish : answer.state,
  };
  if (answer.text) answer.parse = await parseAnswer(messages.indexOf(answer));
  renderAll();
  saveChat();
  $("prompt").focus();
}

async function parseAnswer(index) {
  const m = messages[index];
  const kind = lastMediaKind(index);
  if (!kind) return null;
  const image = kind === "image" ? mediaFor(index, "image") : null;
  const body = { text: m.text, image_size: image && image.width ? [image.width, image.height] : null, video: kind === "video" };
  try {
    const res = await fetch("/v1/qwenvl/parse", { method: "POST", headers: headers(), body: JSON.stringify(body) });
    if (!res.ok) throw new Error(await errorMessage(res));
    return await res.json();
  } catch (e) {
    status(`Could not read boxes from the answer: ${e.message}`, true);
    return null;
  }
}

// ------------------------------------------------------------------------------ wiring

function setup() {
  emptyText = $("empty").textContent.replace(/\s+/g, " ").trim();   // shown again after "New chat"

  loadSettings();
  loadChat();
  renderAll();

  $("settings-form").addEventListener("input", saveSettings);
  $("settings-form").addEventListener("submit", (e) => e.preventDefault());
  $("composer").addEventListener("submit", (e) => { e.preventDefault(); send(); });
  $("stop").addEventListener("click", () => controller && controller.abort());
  $("new-chat").addEventListener("click", () => {
    if (controller) controller.abort();
    messages = [];
    pending = [];
    renderAttachments();
    renderAll();
    saveChat();
    status("New conversation.");
    $("prompt").focus();
  });
  $("settings-toggle").addEventListener("click", () => {
    const open = document.body.classList.toggle("settings-open");
    $("settings-toggle").setAttribute("aria-expanded", String(open));
  });
  $("file").addEventListener("change", (e) => { attach([...e.target.files]); e.target.value = ""; });

  const prompt = $("prompt");
  prompt.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) { e.preventDefault(); send(); }
    else if (e.key === "Escape" && controller) controller.abort();
  });
  prompt.addEventListener("paste", (e) => {
    const files = [...(e.clipboardData ? e.clipboardData.files : [])].filter((f) => /^(image|video)\//.test(f.type));
    if (files.length) { e.preventDefault(); attach(files); }
  });

  let depth = 0;   // dragenter/dragleave fire for every child element
  const zone = $("dropzone");
  window.addEventListener("dragenter", (e) => { if (e.dataTransfer && [...e.dataTransfer.types].includes("Files")) { depth++; zone.hidden = false; } });
  window.addEventListener("dragleave", () => { depth = Math.max(0, depth - 1); if (!depth) zone.hidden = true; });
  window.addEventListener("dragover", (e) => e.preventDefault());
  window.addEventListener("drop", (e) => {
    e.preventDefault();
    depth = 0;
    zone.hidden = true;
    if (e.dataTransfer && e.dataTransfer.files.length) attach([...e.dataTransfer.files]);
  });

  fetch("/v1/qwenvl/info").then((r) => (r.ok ? r.json() : null)).then((i) => {
    if (!i) return;
    info = i;
    $("model").textContent = `${i.model} · context ${i.max_model_len} tokens`;
    document.querySelectorAll(".msg.assistant .role").forEach((r) => { r.textContent = i.model; });
  }).catch(() => status("The server did not answer /v1/qwenvl/info.", true));
  prompt.focus();
}

document.addEventListener("DOMContentLoaded", setup);
