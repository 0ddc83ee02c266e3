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

let aboutCache = null;

/** What this server is and what it asks of a client (`/v1/about`), asked once per page. */
function about() {
  if (!aboutCache) aboutCache = json("/v1/about");
  return aboutCache;
}

/** Whether this role has `what`: "files", "cluster", "live". */
async function has(what) {
  const role = (await about()).role;
  return {
    files: ["serve", "storage"],
    cluster: ["serve", "tracker"],
    live: ["serve", "live"],
  }[what].includes(role);
}

/** A URL this page may read `path` at: as it is, or, where reads need a signed link, one
 *  the server signs for the token holder (the page never holds the URL secret). */
async function readable(path) {
  if (!(await about()).signed_reads) return path;
  const r = await api("/v1/sign?path=" + encodeURIComponent(path));
  if (r.status === 403) throw new Error("reads here need signed links, and this server signs them only for holders of its API token (SLUICE_API_TOKEN is not set); use `sluice sign`");
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

/** A table; a heading starting with "~" names a column hidden at phone width. */
function table(head, rows) {
  const wide = head.map((h) => h.startsWith("~"));
  const t = el("table", {}, el("thead", {}, el("tr", {}, ...head.map((h, i) =>
    el("th", { scope: "col", class: wide[i] ? "wide" : "" }, h.replace(/^~/, ""))))));
  const body = el("tbody");
  for (const r of rows) {
    [...r.children].forEach((cell, i) => { if (wide[i]) cell.classList.add("wide"); });
    body.append(r);
  }
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
      if (await has("live")) {
        const live = await json("/v1/live/streams");
        $("streams").textContent = live.streams.length + " live";
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
  if (!(await has("cluster"))) {
    problem("This role keeps no cluster view: open a tracker's console, or sluice serve's.");
    return;
  }
  const tick = async () => {
    const r = await api("/v1/cluster").catch(() => null);
    if (!r || !r.ok) { problem("/v1/cluster answered " + (r ? r.status : "nothing")); return; }
    problem("");
    const view = await r.json();
    const groups = $("groups");
    groups.replaceChildren();
    if (!view.groups.length) groups.append(el("p", { class: "muted" }, "No storage node has registered yet."));
    for (const g of view.groups) {
      const taking = g.nodes.some((n) => n.state === "active" && n.writable);
      groups.append(el("h2", {}, "Group " + g.name + " ", el("span", { class: "muted" }, taking ? "" : "(takes no uploads now)")));
      groups.append(table(["Node", "~URL", "State", "Uploads", "Files", "~Bytes", "Free", "~Sync lag"], g.nodes.map((n) =>
        el("tr", { class: n.state === "offline" ? "down" : "", "data-node": n.id },
          el("td", {}, el("code", { class: "id", title: n.id }, n.id)), el("td", {}, n.url),
          el("td", { class: "state-" + n.state }, n.state),
          el("td", { class: n.writable ? "" : "state-syncing" }, n.writable ? "yes" : "no"),
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
        el("tr", {}, el("td", {}, e.region || "–"), el("td", {}, el("code", { class: "id" }, e.id || "")), el("td", {}, e.url)))));
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

/** Raised when a picture turns out not to be one the server takes progressively. */
class NotProgressive extends Error {}

/** A picture over tus: its id comes back at the share q, before the rest is sent. The first
 *  PATCH carries the share q (so the id comes after one request), the rest goes in growing
 *  pieces (few round trips on a far link, progress all along). */
async function uploadProgressive(file, q, row) {
  const started = performance.now();
  const metadata = ["filetype " + b64(file.type || "image/jpeg"), "filename " + b64(file.name), "q " + b64(String(q))].join(",");
  const created = await api("/v1/uploads", {
    method: "POST",
    headers: { "Tus-Resumable": "1.0.0", "Upload-Length": String(file.size), "Upload-Metadata": metadata },
  });
  if (created.status !== 201) throw new Error("creating the upload: " + created.status + " " + await created.text());
  // The session is on this server, whatever absolute URL it advertises: only its path is
  // used, so the token never goes to another host.
  const where = new URL(created.headers.get("Location"), location.href).pathname;
  let offset = 0, fileid = null, idAt = null;
  let piece = Math.min(file.size, Math.max(CHUNK, Math.ceil(file.size * q) + CHUNK));
  while (offset < file.size) {
    const r = await api(where, {
      method: "PATCH",
      headers: { "Tus-Resumable": "1.0.0", "Upload-Offset": String(offset), "Content-Type": "application/offset+octet-stream" },
      body: file.slice(offset, offset + piece),
    });
    if (r.status === 400 && !fileid) {
      await api(where, { method: "DELETE", headers: { "Tus-Resumable": "1.0.0" } }).catch(() => {});
      throw new NotProgressive(await r.text());
    }
    if (r.status !== 204) throw new Error("sending: " + r.status + " " + await r.text());
    offset = Number(r.headers.get("Upload-Offset"));
    row.progress.value = offset / file.size;
    const id = r.headers.get("Sluice-File-Id");
    if (id && !fileid) {
      fileid = id;
      idAt = performance.now() - started;
      row.done(fileid, "id after " + Math.round(idAt) + " ms");
    }
    piece = Math.min(piece === CHUNK ? 4 * CHUNK : piece * 2, 8 << 20);
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
  const result = el("span", { class: "muted" }, "waiting…");
  const li = el("li", {}, el("strong", {}, file.name), " ", el("span", { class: "muted" }, bytes(file.size)), progress, result);
  $("uploads").append(li);
  return {
    progress,
    start() { result.textContent = "sending…"; },
    done(fileid, note) {
      const kind = (file.type || "").split("/")[0];
      const raw = el("a", { href: "/v1/files/" + fileid, "data-fileid": fileid }, fileid);
      const links = [raw];
      if (kind === "image") links.push(" · ", el("a", { href: "/console/view?file=" + encodeURIComponent(fileid) }, "view"));
      if (kind === "video" || kind === "audio") links.push(" · ", el("a", { href: "/console/play?file=" + encodeURIComponent(fileid) }, "play"));
      result.replaceChildren(...links, " ", el("span", { class: "muted" }, note));
      li.dataset.fileid = fileid;
      // Where reads need signed links, the raw link is one (for an hour).
      readable("/v1/files/" + fileid).then((url) => raw.setAttribute("href", url), (e) => raw.setAttribute("title", e.message));
    },
    fail(e) { result.replaceChildren(el("span", { class: "state-offline" }, "failed: " + e.message)); },
  };
}

async function upload() {
  const form = $("pick"), input = $("files");
  if (!(await has("files"))) {
    form.hidden = true;
    const role = (await about()).role;
    problem("This " + role + " stores no files: upload on a storage node's console, or sluice serve's.");
    if (role === "tracker") {
      const view = await json("/v1/cluster").catch(() => ({ groups: [] }));
      const nodes = view.groups.flatMap((g) => g.nodes).filter((n) => n.state === "active");
      if (nodes.length) $("uploads").append(el("li", {}, "Active nodes: ", ...nodes.flatMap((n, i) =>
        [i ? ", " : "", el("a", { href: n.url + "/console/upload" }, n.url)])));
    }
    return;
  }
  const send = async (files) => {
    const q = Number($("q").value);
    if (!(q > 0 && q <= 1)) { problem("q must be more than 0 and at most 1"); return; }
    problem("");
    // Every file gets its row at once; they go up one after another.
    const rows = files.map((file) => [file, uploadRow(file)]);
    for (const [file, row] of rows) {
      row.start();
      try {
        // A JPEG by its type and by its first bytes (SOI and a marker).
        const head = new Uint8Array(await file.slice(0, 3).arrayBuffer());
        const jpeg = (file.type === "image/jpeg" || file.type === "image/pjpeg")
          && head[0] === 0xff && head[1] === 0xd8 && head[2] === 0xff;
        if (jpeg) {
          try {
            await uploadProgressive(file, q, row);
          } catch (e) {
            if (!(e instanceof NotProgressive)) throw e;
            // Named like a JPEG, but not one: it goes up as it is.
            row.progress.value = 0;
            await uploadWhole(file, row);
          }
        } else {
          await uploadWhole(file, row);
        }
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
    if (!r.ok) { problem(r.status === 404 ? "No such file." : "/v1/files answered " + r.status); return; }
    const type = r.headers.get("Content-Type") || "";
    if (!type.startsWith("image/")) {
      problem("This file is not a picture (" + type + ").");
      $("status").replaceChildren(el("a", { href: "/console/play?file=" + encodeURIComponent(fileid) }, "Play it"));
      return;
    }
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
  let player = null, liveDelay = () => null, bitrate = null;
  const show = () => {
    const q = video.getVideoPlaybackQuality ? video.getVideoPlaybackQuality() : {};
    const rows = [
      ["Time", video.currentTime.toFixed(1) + " s" + (isFinite(video.duration) && !stream ? " of " + video.duration.toFixed(1) + " s" : "")],
      ["Resolution", video.videoWidth ? video.videoWidth + "×" + video.videoHeight : "–"],
      ["Dropped frames", q.droppedVideoFrames ?? "–"],
    ];
    const delay = liveDelay();
    if (delay != null) rows.push(["Behind live", delay.toFixed(1) + " s"]);
    if (bitrate != null) rows.push(["Bitrate", Math.round(bitrate / 1000) + " kbit/s"]);
    stats.replaceChildren(...rows.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v)]));
  };
  setInterval(show, 500);
  if (file) {
    // A stored file plays with its sound, and gets a fresh link when its signed one lapses.
    const path = "/v1/files/" + file;
    const head = await api(path, { method: "HEAD" });
    if (head.status === 404) { problem("No such file."); return; }
    video.muted = false;
    let tries = 0;
    video.addEventListener("error", async () => {
      if (++tries > 3) { problem("Cannot play this file: " + (video.error ? video.error.message || "code " + video.error.code : "unknown error")); return; }
      const at = video.currentTime;
      try {
        video.src = await readable(path);
        video.currentTime = at;
      } catch (e) { problem(e.message); }
    });
    video.addEventListener("playing", () => { tries = 0; });
    try { video.src = await readable(path); } catch (e) { problem(e.message); }
    return;
  }
  if (!stream || !/^[^/]+\/[^/]+$/.test(stream)) { problem("Open this page with ?file=FILEID or ?stream=APP/STREAM."); return; }
  $("switch").hidden = false;
  // The stream's bitrate as the server measures it (the same for either protocol).
  setInterval(async () => {
    const r = await api("/v1/live/streams").catch(() => null);
    if (!r || !r.ok) return;
    const s = (await r.json()).streams.find((x) => x.app + "/" + x.stream === stream);
    bitrate = s ? s.bitrate : null;
  }, 2000);
  let via = param("via") === "flv" ? "flv" : "hls", restarting = null;
  // On an error the player starts over with a fresh link (a signed one lapses; a stream
  // comes back), at most every two seconds.
  const restart = () => {
    if (restarting) return;
    restarting = setTimeout(() => { restarting = null; start(); }, 2000);
  };
  const start = async () => {
    if (player) { player.destroy(); player = null; }
    video.removeAttribute("src");
    try {
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
            else restart();
          });
          hls.loadSource(src);
          hls.attachMedia(video);
          player = { destroy: () => hls.destroy() };
          liveDelay = () => (hls.latency ?? null);
        } else {
          video.src = src;
          liveDelay = () => null;
        }
      } else {
        const url = await readable("/live/" + stream + ".flv");
        if (!window.mpegts) await loadScript("/console/assets/vendor/mpegts.min.js");
        const flv = window.mpegts.createPlayer({ type: "flv", isLive: true, url }, { enableWorker: false, liveBufferLatencyChasing: true });
        flv.on(window.mpegts.Events.ERROR, restart);
        flv.attachMediaElement(video);
        flv.load();
        player = { destroy: () => flv.destroy() };
        liveDelay = () => (video.buffered.length ? video.buffered.end(video.buffered.length - 1) - video.currentTime : null);
      }
      problem("");
      video.play().catch(() => {});
    } catch (e) {
      problem(e.message);
    }
  };
  for (const radio of document.querySelectorAll("input[name=via]")) {
    radio.checked = radio.value === via;
    radio.addEventListener("change", () => { via = radio.value; start(); });
  }
  await start();
}

// ----- Live -----------------------------------------------------------------------------

async function live() {
  if (!(await has("live"))) {
    problem("This role serves no live streams: open a live server's console, or sluice serve --rtmp's.");
    return;
  }
  const tick = async () => {
    const r = await api("/v1/live/streams").catch(() => null);
    if (!r || !r.ok) { problem("/v1/live/streams answered " + (r ? r.status : "nothing")); return; }
    problem("");
    const list = (await r.json()).streams;
    const box = $("streams");
    box.replaceChildren(list.length ? table(["Stream", "Video", "~Audio", "~Size", "~Bitrate", "Players", "~Up for", ""], list.map((s) =>
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
