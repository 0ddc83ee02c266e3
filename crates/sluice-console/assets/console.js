// The Sluice console: one script for every page (the body's data-page says which). It asks
// this server's own API for everything it shows and loads nothing from another host.
"use strict";

const $ = (id) => document.getElementById(id);
const TOKEN_KEY = "sluice-api-token";

/** fetch against this server, with the API token when the tab holds one; a 401 asks the
 *  person for the token once and tries again. */
async function api(path, options = {}) {
  const send = () => {
    const headers = new Headers(options.headers || {});
    const token = sessionStorage.getItem(TOKEN_KEY);
    if (token && !headers.has("Authorization")) headers.set("Authorization", "Bearer " + token);
    return fetch(path, { ...options, headers, cache: "no-store" });
  };
  const first = await send();
  if (first.status !== 401 || options.body instanceof ReadableStream) return first;
  await askToken(sessionStorage.getItem(TOKEN_KEY) ? "That token was refused; this server needs its API token" : null);
  return send();
}

let asking = null;

/** Shows the token form until the person gives one (one form, however many ask). */
function askToken(label) {
  if (asking) return asking;
  const form = $("token");
  if (label) form.querySelector("label").textContent = label;
  form.hidden = false;
  $("token-input").focus();
  asking = new Promise((resolve) => {
    form.addEventListener("submit", (e) => {
      e.preventDefault();
      sessionStorage.setItem(TOKEN_KEY, $("token-input").value.trim());
      form.hidden = true;
      asking = null;
      resolve();
    }, { once: true });
  });
  return asking;
}

/** A URL this page may read `path` at: as it is, or, where reads need a signed link, one
 *  the server signs for the token holder (the page never holds the URL secret). */
async function readable(path) {
  const probe = await fetch(path, { method: "HEAD", cache: "no-store" });
  if (probe.status !== 403) return path;
  const r = await api("/v1/sign?path=" + encodeURIComponent(path));
  if (!r.ok) throw new Error("signing a link: " + r.status + " " + await r.text());
  return (await r.json()).url;
}

async function json(path) {
  const r = await api(path);
  if (!r.ok) throw new Error(path + " answered " + r.status);
  return r.json();
}

function problem(text) {
  const p = $("problem");
  if (!p) return;
  p.textContent = text || "";
  p.hidden = !text;
}

function bytes(n) {
  if (n == null || isNaN(n)) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return (i === 0 ? n : n.toFixed(1)) + " " + units[i];
}

function duration(secs) {
  secs = Math.max(0, Math.floor(secs));
  const d = Math.floor(secs / 86400), h = Math.floor(secs % 86400 / 3600);
  const m = Math.floor(secs % 3600 / 60), s = secs % 60;
  if (d) return d + "d " + h + "h";
  if (h) return h + "h " + m + "m";
  if (m) return m + "m " + s + "s";
  return s + "s";
}

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") e.className = v; else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c instanceof Node ? c : String(c));
  return e;
}

function table(head, rows) {
  const t = el("table", {}, el("thead", {}, el("tr", {}, ...head.map((h) => el("th", { scope: "col" }, h)))));
  const body = el("tbody");
  for (const r of rows) body.append(r);
  t.append(body);
  return el("div", { class: "table" }, t);
}

/** Prometheus text: sums of each metric, and per-status request totals. */
function parseMetrics(text) {
  const sums = {}, statuses = {};
  for (const line of text.split("\n")) {
    if (!line || line[0] === "#") continue;
    const m = line.match(/^([a-z_]+)(\{[^}]*\})?\s+([0-9.e+-]+)$/);
    if (!m) continue;
    const value = Number(m[3]);
    sums[m[1]] = (sums[m[1]] || 0) + value;
    if (m[1] === "sluice_http_requests_total") {
      const s = (m[2] || "").match(/status="(\d+)"/);
      if (s) statuses[s[1]] = (statuses[s[1]] || 0) + value;
    }
  }
  return { sums, statuses };
}

function param(name) {
  return new URLSearchParams(location.search).get(name);
}

// ----- Overview -----------------------------------------------------------------------

async function overview() {
  let last = null;
  const tick = async () => {
    try {
      const about = await json("/v1/about");
      $("role").textContent = about.role;
      $("version").textContent = about.version;
      $("uptime").textContent = duration(about.uptime_secs);
      const metrics = parseMetrics(await (await api("/metrics")).text());
      const s = metrics.sums;
      if ("sluice_store_files" in s) {
        $("files").textContent = s.sluice_store_files.toLocaleString();
        $("bytes").textContent = bytes(s.sluice_store_bytes);
      } else {
        $("store-card").hidden = true;
      }
      const total = s.sluice_http_requests_total || 0;
      const now = performance.now();
      if (last) {
        const rate = (total - last.total) / ((now - last.at) / 1000);
        $("rate").textContent = rate.toFixed(1) + " req/s";
      }
      last = { total, at: now };
      const failed = Object.entries(metrics.statuses).filter(([k]) => k >= "500").reduce((a, [, v]) => a + v, 0);
      const refused = Object.entries(metrics.statuses).filter(([k]) => k >= "400" && k < "500").reduce((a, [, v]) => a + v, 0);
      $("errors").textContent = total.toLocaleString() + " requests, " + failed + " server errors, " + refused + " refused";
      const live = await api("/v1/live/streams");
      if (live.ok) {
        $("streams").textContent = (await live.json()).streams.length + " live";
      } else {
        $("live-card").hidden = true;
      }
      problem("");
    } catch (e) {
      problem("Cannot reach this server: " + e.message);
    }
  };
  await tick();
  setInterval(tick, 2000);
}

// ----- Cluster ------------------------------------------------------------------------

async function cluster() {
  const tick = async () => {
    const r = await api("/v1/cluster").catch(() => null);
    if (!r || r.status === 404) {
      problem("This role keeps no cluster view: open a tracker's console, or sluice serve's.");
      return;
    }
    if (!r.ok) { problem("/v1/cluster answered " + r.status); return; }
    problem("");
    const view = await r.json();
    const groups = $("groups");
    groups.replaceChildren();
    if (!view.groups.length) groups.append(el("p", { class: "muted" }, "No storage node has registered yet."));
    for (const g of view.groups) {
      groups.append(el("h2", {}, "Group " + g.name + " ", el("span", { class: "muted" }, g.writable === false ? "(takes no uploads now)" : "")));
      groups.append(table(["Node", "URL", "State", "Files", "Bytes", "Free", "Sync lag"], g.nodes.map((n) =>
        el("tr", { class: n.state === "offline" ? "down" : "", "data-node": n.id },
          el("td", {}, el("code", {}, n.id)), el("td", {}, n.url),
          el("td", { class: "state-" + n.state }, n.state),
          el("td", {}, (n.files ?? 0).toLocaleString()), el("td", {}, bytes(n.bytes)),
          el("td", {}, bytes(n.free_bytes)), el("td", {}, n.sync_lag ?? 0)))));
    }
    const edges = await api("/v1/edges").catch(() => null);
    const box = $("edges");
    box.replaceChildren();
    if (edges && edges.ok) {
      const list = (await edges.json()).edges || [];
      if (!list.length) box.append(el("p", { class: "muted" }, "No edge has registered."));
      else box.append(table(["Region", "Edge", "URL"], list.map((e) =>
        el("tr", {}, el("td", {}, e.region || "–"), el("td", {}, el("code", {}, e.id || "")), el("td", {}, e.url)))));
    } else {
      box.append(el("p", { class: "muted" }, "Edges are listed by trackers."));
    }
  };
  await tick();
  setInterval(tick, 1000);
}

// ----- Upload ---------------------------------------------------------------------------

const CHUNK = 64 * 1024;

function b64(text) {
  return btoa(unescape(encodeURIComponent(text)));
}

/** A picture over tus: its id comes back at the share q, before the rest is sent. */
async function uploadProgressive(file, q, row) {
  const started = performance.now();
  const metadata = ["filetype " + b64(file.type || "image/jpeg"), "filename " + b64(file.name), "q " + b64(String(q))].join(",");
  const created = await api("/v1/uploads", {
    method: "POST",
    headers: { "Tus-Resumable": "1.0.0", "Upload-Length": String(file.size), "Upload-Metadata": metadata },
  });
  if (created.status !== 201) throw new Error("creating the upload: " + created.status + " " + await created.text());
  const where = created.headers.get("Location");
  let offset = 0, fileid = null, idAt = null;
  while (offset < file.size) {
    const piece = file.slice(offset, offset + CHUNK);
    const r = await api(where, {
      method: "PATCH",
      headers: { "Tus-Resumable": "1.0.0", "Upload-Offset": String(offset), "Content-Type": "application/offset+octet-stream" },
      body: piece,
    });
    if (r.status !== 204) throw new Error("sending: " + r.status + " " + await r.text());
    offset = Number(r.headers.get("Upload-Offset"));
    row.progress.value = offset / file.size;
    const id = r.headers.get("Sluice-File-Id");
    if (id && !fileid) {
      fileid = id;
      idAt = performance.now() - started;
      row.done(fileid, "id after " + Math.round(idAt) + " ms");
    }
  }
  const total = performance.now() - started;
  row.done(fileid, "id after " + Math.round(idAt) + " ms; whole after " + Math.round(total) + " ms");
}

/** Any other file, in one request, with progress. */
function uploadWhole(file, row) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", "/v1/files");
    const token = sessionStorage.getItem(TOKEN_KEY);
    if (token) xhr.setRequestHeader("Authorization", "Bearer " + token);
    xhr.setRequestHeader("Content-Type", file.type || "application/octet-stream");
    xhr.upload.onprogress = (e) => { if (e.lengthComputable) row.progress.value = e.loaded / e.total; };
    xhr.onload = () => {
      if (xhr.status === 401) {
        askToken(sessionStorage.getItem(TOKEN_KEY) ? "That token was refused; this server needs its API token" : null)
          .then(() => uploadWhole(file, row)).then(resolve, reject);
        return;
      }
      if (xhr.status !== 201) { reject(new Error(xhr.status + " " + xhr.responseText)); return; }
      const answer = JSON.parse(xhr.responseText);
      row.progress.value = 1;
      row.done(answer.fileid, "stored");
      resolve();
    };
    xhr.onerror = () => reject(new Error("the connection failed"));
    xhr.send(file);
  });
}

function uploadRow(file) {
  const progress = el("progress", { max: "1", value: "0", "aria-label": "progress of " + file.name });
  const result = el("span", { class: "muted" }, "sending…");
  const li = el("li", {}, el("strong", {}, file.name), " ", el("span", { class: "muted" }, bytes(file.size)), progress, result);
  $("uploads").prepend(li);
  return {
    progress,
    done(fileid, note) {
      const kind = (file.type || "").split("/")[0];
      const links = [el("a", { href: "/v1/files/" + fileid, "data-fileid": fileid }, fileid)];
      if (kind === "image") links.push(" · ", el("a", { href: "/console/view?file=" + encodeURIComponent(fileid) }, "view"));
      if (kind === "video" || kind === "audio") links.push(" · ", el("a", { href: "/console/play?file=" + encodeURIComponent(fileid) }, "play"));
      result.replaceChildren(...links, " ", el("span", { class: "muted" }, note));
      li.dataset.fileid = fileid;
    },
    fail(e) { result.replaceChildren(el("span", { class: "state-offline" }, "failed: " + e.message)); },
  };
}

async function upload() {
  const form = $("pick"), input = $("files");
  const send = async (files) => {
    for (const file of files) {
      const row = uploadRow(file);
      try {
        const q = Number($("q").value) || 1;
        if ((file.type === "image/jpeg" || file.type === "image/pjpeg") && file.size > 0) await uploadProgressive(file, q, row);
        else await uploadWhole(file, row);
      } catch (e) {
        row.fail(e);
      }
    }
  };
  input.addEventListener("change", () => { send([...input.files]); input.value = ""; });
  form.addEventListener("submit", (e) => e.preventDefault());
  form.addEventListener("dragover", (e) => { e.preventDefault(); form.classList.add("over"); });
  form.addEventListener("dragleave", () => form.classList.remove("over"));
  form.addEventListener("drop", (e) => { e.preventDefault(); form.classList.remove("over"); send([...e.dataTransfer.files]); });
}

// ----- Viewer: a progressive picture sharpening -----------------------------------------

async function view() {
  const fileid = param("file");
  if (!fileid) { problem("Open this page with ?file=FILEID."); return; }
  const image = $("image");
  let shown = -1, url = null, at = await readable("/v1/files/" + fileid);
  for (;;) {
    let r = await fetch(at, { cache: "no-store" });
    if (r.status === 403) {
      at = await readable("/v1/files/" + fileid);
      r = await fetch(at, { cache: "no-store" });
    }
    if (!r.ok) { problem("/v1/files answered " + r.status); return; }
    const received = Number(r.headers.get("Sluice-Received") || r.headers.get("Content-Length"));
    const total = Number(r.headers.get("Sluice-Total") || received);
    const complete = r.headers.get("Sluice-Complete") !== "false";
    const body = await r.blob();
    if (received !== shown) {
      shown = received;
      const next = URL.createObjectURL(body);
      image.src = next;
      if (url) URL.revokeObjectURL(url);
      url = next;
      image.dataset.paints = String(Number(image.dataset.paints || 0) + 1);
    }
    $("status").textContent = complete
      ? "Whole: " + bytes(total)
      : "Arrived " + bytes(received) + " of " + bytes(total) + " (" + Math.round(100 * received / total) + "%): sharpening as the rest arrives";
    image.dataset.complete = String(complete);
    if (complete) return;
    await new Promise((done) => setTimeout(done, 300));
  }
}

// ----- Player ---------------------------------------------------------------------------

function loadScript(src) {
  return new Promise((resolve, reject) => {
    const s = el("script", { src });
    s.onload = resolve;
    s.onerror = () => reject(new Error("cannot load " + src));
    document.head.append(s);
  });
}

async function play() {
  const video = $("video"), file = param("file"), stream = param("stream");
  const stats = $("stats");
  let player = null, liveDelay = () => null;
  const show = () => {
    const q = video.getVideoPlaybackQuality ? video.getVideoPlaybackQuality() : {};
    const rows = [
      ["Time", video.currentTime.toFixed(1) + " s" + (isFinite(video.duration) ? " of " + video.duration.toFixed(1) + " s" : "")],
      ["Resolution", video.videoWidth ? video.videoWidth + "×" + video.videoHeight : "–"],
      ["Dropped frames", q.droppedVideoFrames ?? "–"],
    ];
    const delay = liveDelay();
    if (delay != null) rows.push(["Behind live", delay.toFixed(1) + " s"]);
    if (player && player.bitrate) rows.push(["Bitrate", Math.round(player.bitrate() / 1000) + " kbit/s"]);
    stats.replaceChildren(...rows.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v)]));
  };
  setInterval(show, 500);
  if (file) {
    video.src = await readable("/v1/files/" + file);
    return;
  }
  if (!stream || !/^[^/]+\/[^/]+$/.test(stream)) { problem("Open this page with ?file=FILEID or ?stream=APP/STREAM."); return; }
  $("switch").hidden = false;
  const start = async (via) => {
    if (player) { player.destroy(); player = null; }
    video.removeAttribute("src");
    if (via === "hls") {
      const src = await readable("/live/" + stream + ".m3u8");
      if (!window.Hls) await loadScript("/console/assets/vendor/hls.min.js");
      if (window.Hls && window.Hls.isSupported()) {
        // A stream that has just begun has no playlist until its first segment is cut:
        // keep asking.
        const hls = new window.Hls({ lowLatencyMode: true, manifestLoadingMaxRetry: 30, manifestLoadingRetryDelay: 1000, manifestLoadingMaxRetryTimeout: 2000 });
        hls.on(window.Hls.Events.ERROR, (_, data) => {
          if (!data.fatal) return;
          if (data.type === window.Hls.ErrorTypes.MEDIA_ERROR) hls.recoverMediaError();
          else setTimeout(() => hls.loadSource(src), 1000);
        });
        hls.loadSource(src);
        hls.attachMedia(video);
        player = { destroy: () => hls.destroy(), bitrate: () => hls.bandwidthEstimate };
        liveDelay = () => (hls.latency ?? null);
      } else {
        video.src = src;
        liveDelay = () => null;
      }
    } else {
      if (!window.mpegts) await loadScript("/console/assets/vendor/mpegts.min.js");
      const flvUrl = await readable("/live/" + stream + ".flv");
      const flv = window.mpegts.createPlayer({ type: "flv", isLive: true, url: flvUrl }, { enableWorker: false, liveBufferLatencyChasing: true });
      flv.attachMediaElement(video);
      flv.load();
      player = { destroy: () => flv.destroy(), bitrate: () => null };
      liveDelay = () => (video.buffered.length ? video.buffered.end(video.buffered.length - 1) - video.currentTime : null);
    }
    video.play().catch(() => {});
  };
  for (const radio of document.querySelectorAll("input[name=via]")) {
    radio.addEventListener("change", () => start(radio.value));
  }
  await start(param("via") === "flv" ? "flv" : "hls");
  if (param("via") === "flv") document.querySelector("input[value=flv]").checked = true;
}

// ----- Live -----------------------------------------------------------------------------

async function live() {
  const tick = async () => {
    const r = await api("/v1/live/streams").catch(() => null);
    if (!r || r.status === 404) { problem("This role serves no live streams: open a live server's console, or sluice serve --rtmp's."); return; }
    problem("");
    const list = (await r.json()).streams;
    const box = $("streams");
    box.replaceChildren(list.length ? table(["Stream", "Video", "Audio", "Size", "Bitrate", "Players", "Up for", ""], list.map((s) =>
      el("tr", {}, el("td", {}, s.app + "/" + s.stream), el("td", {}, s.video_codec || "–"), el("td", {}, s.audio_codec || "–"),
        el("td", {}, s.width ? s.width + "×" + s.height : "–"), el("td", {}, Math.round(s.bitrate / 1000) + " kbit/s"),
        el("td", {}, s.players), el("td", {}, duration(s.uptime_secs)),
        el("td", {}, el("a", { href: "/console/play?stream=" + encodeURIComponent(s.app + "/" + s.stream) }, "play")))))
      : el("p", { class: "muted" }, "Nothing is live. Publish with: ffmpeg -re -i input.mp4 -c copy -f flv rtmp://HOST/live/NAME"));
    const rec = await api("/v1/live/recordings").catch(() => null);
    const rbox = $("recordings");
    if (rec && rec.ok) {
      const rows = await rec.json();
      rbox.replaceChildren(rows.length ? table(["Stream", "Started", "Length", "Size", ""], rows.map((x) =>
        el("tr", {}, el("td", {}, x.app + "/" + x.stream), el("td", {}, new Date(x.started * 1000).toLocaleString()),
          el("td", {}, duration(x.duration)), el("td", {}, bytes(x.size)),
          el("td", {}, el("a", { href: "/console/play?file=" + encodeURIComponent(x.fileid) }, "play")))))
        : el("p", { class: "muted" }, "No recordings (serve --record stores every publish)."));
    }
  };
  await tick();
  setInterval(tick, 2000);
}

// ----- Start ----------------------------------------------------------------------------

const PAGES = { overview, cluster, upload, view, play, live };

document.addEventListener("DOMContentLoaded", () => {
  for (const a of document.querySelectorAll("nav a")) {
    if (a.getAttribute("href") === location.pathname) a.setAttribute("aria-current", "page");
  }
  const page = PAGES[document.body.dataset.page];
  if (page) page().catch((e) => problem(e.message));
});
