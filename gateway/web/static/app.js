// Home Gateway admin page. Forms post JSON to the API (one implementation of every
// action); the page follows the gateway live through Server-Sent Events.
"use strict";

const csrf = () => document.querySelector('meta[name="csrf-token"]').content;

async function api(method, url, body) {
  const init = { method, headers: { "X-CSRF-Token": csrf() }, credentials: "same-origin" };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const res = await fetch(url, init);
  let data = {};
  try { data = await res.json(); } catch (e) { data = { error: res.statusText }; }
  return { ok: res.ok, status: res.status, data, retryAfter: res.headers.get("Retry-After") };
}

function collect(form) {
  const body = {};
  if (form.dataset.fixedAction) body.action = form.dataset.fixedAction;
  for (const el of form.elements) {
    if (!el.name || el.dataset.local !== undefined) continue;
    if (el.closest("[hidden]") && el.value === "") continue;
    let value = el.value;
    if (el.dataset.type === "bool") value = value === "true";
    else if (el.dataset.type === "number") value = Number(value);
    else if (el.dataset.type === "optional-number") value = value === "" ? null : Number(value);
    else if (el.dataset.type === "optional") value = value === "" ? null : value;
    else if (el.dataset.type === "json") {
      try { value = JSON.parse(value); } catch (e) { throw new Error(`${el.name}: not valid JSON`); }
    }
    else if (value === "" && !el.required) continue;
    const path = el.name.split(".");
    let target = body;
    for (const key of path.slice(0, -1)) target = target[key] = target[key] || {};
    target[path[path.length - 1]] = value;
  }
  return body;
}

// Control and format characters (the list in pages.py's INVISIBLE) in text a stranger
// controls would hide or reorder what is shown: they are shown escaped, as \u202e.
const INVISIBLE = /[\u0000-\u0008\u000b-\u001f\u007f-\u009f\u00ad\u0600-\u0605\u061c\u06dd\u070f\u0890\u0891\u08e2\u180e\u200b-\u200f\u202a-\u202e\u2060-\u2064\u2066-\u206f\ufeff\ufff9-\ufffb\u{110bd}\u{110cd}\u{13430}-\u{1343f}\u{1bca0}-\u{1bca3}\u{1d173}-\u{1d17a}\u{e0001}\u{e0020}-\u{e007f}]/gu;

function visible(text) {
  return String(text).replace(INVISIBLE, (c) => "\\u" + c.codePointAt(0).toString(16).padStart(4, "0"));
}

function say(form, text, kind) {
  const out = form.querySelector(".result");
  if (!out) return;
  out.textContent = visible(text);
  out.className = "result " + (kind || "");
}

// A value as the server renders it: booleans as yes / no.
function shown(v) { return typeof v === "boolean" ? (v ? "yes" : "no") : String(v); }

function clear(el) { while (el.firstChild) el.removeChild(el.firstChild); }

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  for (const c of children) node.append(c);
  return node;
}

// An <svg> from our own server's markup (a QR code), as an element: parsed as inert HTML
// (nothing in it runs), only the <svg> kept, scaled by CSS, with a text alternative.
function svgFrom(markup, label) {
  const doc = new DOMParser().parseFromString(markup, "text/html");
  const found = doc.querySelector("body > svg");
  if (!found) return null;
  for (const node of found.querySelectorAll("script, foreignObject")) node.remove();
  const image = document.importNode(found, true);
  if (!image.getAttribute("viewBox") && image.getAttribute("width")) {
    image.setAttribute("viewBox", `0 0 ${image.getAttribute("width")} ${image.getAttribute("height")}`);
  }
  image.setAttribute("role", "img");
  image.setAttribute("aria-label", label);
  return image;
}

function enrollmentRow(e) {
  const revoke = el("form", { "data-api": `/api/v1/enrollments/${e.id}`, "data-method": "DELETE",
                              "data-done": "gone", "data-confirm": `Revoke the enrollment ${e.id}? Its token stops working.` },
                    el("button", { class: "link danger" }, "Revoke"), el("span", { class: "result", role: "status" }));
  wireForm(revoke);
  return el("tr", { "data-id": e.id }, el("td", {}, el("code", {}, e.id)),
            el("td", { "data-label": "For" }, e.device_id || e.name || "a new device"),
            el("td", { "data-label": "Created by" }, e.created_by),
            el("td", { "data-label": "Expires" }, el("time", { "data-ts": e.expires_at }, clock(e.expires_at))),
            el("td", { "data-label": "State" }, e.state), el("td", {}, revoke));
}

async function listEnrollments() {
  const list = document.getElementById("enrollment-list");
  let res;
  try { res = await api("GET", "/api/v1/enrollments"); } catch (e) { return; }
  if (!res.ok) return;
  clear(list);
  for (const e of res.data.enrollments) list.append(enrollmentRow(e));
  if (!res.data.enrollments.length) list.append(el("tr", { class: "empty" }, el("td", { colspan: "6" }, "None open.")));
}

const done = {
  login(form, res) {
    if (res.ok) { location.assign(form.dataset.next || "/"); return; }
    if (res.data.second_factor) {
      const box = form.querySelector(".second-factor");
      const wasHidden = box.hidden;
      box.hidden = false;
      form.elements.code.required = true;
      form.elements.code.focus();
      if (wasHidden) { say(form, res.data.error, "info"); return; }
    }
    say(form, res.data.error, "error");
  },
  reload() { location.reload(); },
  reset(form) { form.reset(); say(form, "Saved.", "ok"); },
  totp(form, res) {
    document.getElementById("totp-enrol").hidden = false;
    const qr = document.getElementById("totp-qr");
    clear(qr);
    const image = svgFrom(res.data.qr_svg, "QR code for your authenticator app");
    if (image) qr.append(image);
    // Shown in groups of four, the way authenticator apps accept it typed in.
    document.getElementById("totp-secret").textContent = res.data.secret.replace(/(.{4})(?=.)/g, "$1 ");
    document.querySelector('#totp-confirm [name="secret"]').value = res.data.secret;
    form.hidden = true;
    const off = document.getElementById("totp-off");
    if (off) off.hidden = true;
    document.querySelector('#totp-confirm [name="code"]').focus();
  },
  recovery(form, res) {
    document.getElementById("totp-enrol").hidden = true;
    const list = document.getElementById("recovery-codes");
    clear(list);
    for (const code of res.data.recovery_codes) list.append(el("li", {}, el("code", {}, code)));
    document.getElementById("recovery").hidden = false;
  },
  token(form, res) {
    say(form, "", "ok");
    form.querySelector(".result").append("Copy it now, it is not shown again: ",
                                         el("code", { class: "secret" }, res.data.token));
  },
  // A new device's credential, shown once: under the form, or where data-say points
  // (outside a section that is redrawn, as the adopted thing leaves it).
  credential(form, res) {
    const c = res.data.credential;
    const out = form.dataset.say ? document.getElementById(form.dataset.say) : form.querySelector(".result");
    if (form.dataset.say) say(form, "", "");
    clear(out);
    out.className = "result ok";
    out.append(`Added ${res.data.device.id}. MQTT user `,
      el("code", {}, c.username), " password ", el("code", { class: "secret" }, c.password),
      " — shown once.");
    if (form.closest("[data-fragment]")) refreshFragments();
  },
  // A discovered thing ignored or taken back: said above the section, which is redrawn.
  discovered(form, res) {
    const out = document.getElementById("discovered-result");
    const item = form.closest("[data-key]");
    const name = item ? item.querySelector(".found-name strong").textContent : res.data.key;
    out.textContent = visible(res.data.status === "ignored" ? `Ignored ${name}.` : `${name} is back in the list.`);
    out.className = "result ok";
    refreshFragments();
  },
  // Home Assistant's password, fetched when an admin asks (the gateway audits it).
  password(form, res) {
    const out = document.getElementById("ha-password");
    out.textContent = res.data.password;
    out.hidden = false;
    form.querySelector("button").hidden = true;
    say(form, "", "");
    haUsername(res.data.username);
  },
  harotated(form, res) {
    const u = res.data.username;
    say(form, "", "ok");
    form.querySelector(".result").append("New login ", el("code", {}, u),
      " issued: enter it and its password in Home Assistant's MQTT integration. The old login keeps working until Home Assistant logs in with the new one.");
    haUsername(u);
    refreshFragments();
  },
  rotated(form, res) {
    const n = res.data.started.length;
    say(form, n === 1 ? "Rotation started." : `${n} rotations started.`, "ok");
  },
  enrollment(form, res) {
    const d = res.data;
    say(form, `Token ${d.id} created.`, "ok");
    const qr = document.getElementById("ticket-qr");
    clear(qr);
    const image = svgFrom(d.qr_svg, "QR code with the enrollment token, the brokers and the CA fingerprint");
    if (image) qr.append(image);
    document.getElementById("ticket-token").textContent = d.token;
    const expires = document.getElementById("ticket-expires");
    expires.textContent = clock(d.expires_at);
    expires.dateTime = new Date(d.expires_at * 1000).toISOString();
    const brokers = document.getElementById("ticket-brokers");
    clear(brokers);
    d.brokers.forEach((b, i) => {
      if (i) brokers.append(", ");
      brokers.append(el("code", {}, `${b.host.includes(":") ? `[${b.host}]` : b.host}:${b.port}`), " ",
                     el("span", { class: `pill ${b.tls ? "ok" : "bad"}` }, b.tls ? "TLS" : "plain text"));
    });
    document.getElementById("ticket-ca").textContent = d.ca_sha256;
    const ticket = document.getElementById("ticket");
    ticket.hidden = false;
    ticket.scrollIntoView({ block: "nearest" });
    listEnrollments();
  },
  gone(form) {
    const row = form.closest("tr");
    const list = row.parentNode;
    row.remove();
    if (!list.querySelector("tr")) list.append(el("tr", { class: "empty" }, el("td", { colspan: "6" }, "None open.")));
  },
  command(form, res) {
    const r = res.data.result || {};
    say(form, `${r.status || "?"}${r.error ? ": " + r.error : ""}`, r.status === "ok" ? "ok" : "error");
  },
  // A change in the Cloud page's lists (which are redrawn): said above them.
  cloud(form, res) {
    const out = document.getElementById("cloud-result");
    const d = res.data;
    out.textContent = d.deleted ? `Deleted the schedule ${d.deleted}.`
      : `${d.name}: ${d.enabled ? "enabled" : "disabled"}.`;
    out.className = "result ok";
    refreshFragments();
  },
  schedule(form, res) {
    const d = res.data;
    say(form, `Saved ${d.name}: ${d.when}, next run ${d.next_at ? clock(d.next_at) : "never"}.`, "ok");
    for (const name of ["id", "name", "when"]) form.elements[name].value = "";
    refreshFragments();
  },
  // "Delete queued export data" on the Privacy page: said above, the sections redrawn.
  purged(form, res) {
    const n = res.data.purged;
    privacySay(`Deleted ${n} queued report${n === 1 ? "" : "s"} and this week's data collected so far.`, "ok");
    say(form, "", "");
    refreshFragments();
  },
  // A policy change: the row moves to its new table, so the answer is said above them.
  policy(form, res) {
    const d = res.data;
    const out = document.getElementById("network-result");
    out.textContent = `${d.id}: ${d.policy}${d.policy === "restricted" || d.policy === "open" ? ` (profile ${d.profile || "of its kind"})` : ""}` +
      `${d.applied ? ", applied" : ", saved but not applied"}. ${d.firewall}`;
    out.className = "result ok";
    refreshNetwork();
  },
};

function wireForms() {
  for (const form of document.querySelectorAll("form[data-api]")) wireForm(form);
}

function wireForm(form) {
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    if (form.dataset.confirm && !confirm(form.dataset.confirm)) return;
    if (form.dataset.match) {
      const [a, b] = form.dataset.match.split(",");
      if (form.elements[a].value !== form.elements[b].value) {
        say(form, "The two passwords differ.", "error");
        return;
      }
    }
    const method = form.dataset.method || "POST";
    let body;
    try { body = method === "DELETE" || method === "GET" ? undefined : collect(form); } catch (e) {
      say(form, e.message, "error");
      return;
    }
    // "/api/v1/schedules/{id}": the URL takes the form's field of that name.
    const url = form.dataset.api.replace(/\{(\w+)\}/g,
                                         (_, name) => encodeURIComponent(form.elements[name].value));
    const button = form.querySelector("button");
    if (button) button.disabled = true;
    if (form.classList.contains("logout") && liveSource) liveSource.close();
    say(form, "…", "");
    let res;
    try {
      res = await api(method, url, body);
    } catch (e) {
      res = { ok: false, status: 0, data: { error: "the gateway did not answer" } };
    } finally {
      if (button) button.disabled = false;
    }
    const then = form.dataset.done || "";
    if (res.status === 429) {
      say(form, `${res.data.error}`, "error");
    } else if (then === "login" || (res.ok && then)) {
      if (then.startsWith("goto:")) location.assign(then.slice(5));
      else done[then](form, res);
    } else if (res.ok) {
      say(form, "Done.", "ok");
    } else {
      say(form, res.data.error || `failed (${res.status})`, "error");
    }
  });
}

// -- relative times ------------------------------------------------------------------

function ago(ts) {
  if (!ts) return "never";
  const s = Math.max(0, Math.floor(Date.now() / 1000 - ts));
  if (s < 60) return `${s} s ago`;
  if (s < 3600) return `${Math.floor(s / 60)} min ago`;
  if (s < 86400) return `${Math.floor(s / 3600)} h ago`;
  return `${Math.floor(s / 86400)} d ago`;
}

// A credential's age, "12 min" or "30 d"; `until` a time ahead, "in 29 d".
function age(seconds) {
  if (seconds === null || seconds === undefined) return "none";
  const s = Math.max(0, Math.floor(seconds));
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min`;
  if (s < 86400) return `${Math.floor(s / 3600)} h`;
  return `${Math.floor(s / 86400)} d`;
}

function until(ts) {
  if (!ts) return "not scheduled";
  const left = ts - Date.now() / 1000;
  return left <= 0 ? "due now" : `in ${age(left)}`;
}

function duration(seconds) {
  let s = Math.floor(seconds);
  const d = Math.floor(s / 86400); s -= d * 86400;
  const h = Math.floor(s / 3600); s -= h * 3600;
  const m = Math.floor(s / 60); s -= m * 60;
  if (d) return `${d} d ${h} h`;
  if (h) return `${h} h ${m} min`;
  return `${m} min ${s} s`;
}

function clock(ts) {
  const d = new Date(ts * 1000);
  const p = (n) => String(n).padStart(2, "0");
  return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())} ` +
         `${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}`;
}

// Times are shown in the browser's time zone: the server renders its own, the live views
// the browser's, so the server's are rewritten once on load to match.
function localTimes() {
  for (const node of document.querySelectorAll("time[data-ts]")) {
    const ts = Number(node.dataset.ts);
    if (ts) { node.textContent = clock(ts); node.dateTime = new Date(ts * 1000).toISOString(); }
  }
}

function refreshTimes() {
  for (const node of document.querySelectorAll("[data-seen]")) {
    node.textContent = ago(Number(node.dataset.seen) || 0);
  }
  for (const node of document.querySelectorAll("[data-since]")) {
    if (node.dataset.since) node.textContent = age(Date.now() / 1000 - Number(node.dataset.since));
  }
}

// -- live views ------------------------------------------------------------------------

function setField(name, value, good) {
  const node = document.querySelector(`[data-field="${name}"]`);
  if (!node) return;
  node.textContent = visible(value);
  if (good !== undefined) {
    node.classList.toggle("ok", good);
    node.classList.toggle("bad", !good);
  }
}

// Marks a field good (ok), bad or neither.
function tone(name, good, bad) {
  const node = document.querySelector(`[data-field="${name}"]`);
  if (!node) return;
  node.classList.toggle("ok", good);
  node.classList.toggle("bad", bad);
}

// The firewall's banner (on every page; live where the page follows the gateway).
function firewallNotice(notice) {
  const box = document.getElementById("firewall-notice");
  if (!box) return;
  box.hidden = !notice;
  setField("fw-notice-title", notice ? notice.title : "");
  setField("fw-notice-text", notice ? notice.text : "");
}

// The devices list's login cell: an alert, a rotation in flight, or the login's age.
function credentialCell(c) {
  if (c.alert) return el("span", { class: "pill bad", title: c.last_result }, "alert");
  if (c.rotating) return el("span", { class: "pill" }, "rotating");
  if (c.username) return el("span", { title: `rotated ${ago(c.rotated_at)}` }, age(c.age_s));
  return el("small", {}, "none");
}

function auditRow(e) {
  return el("tr", {}, el("td", { class: "c-when" }, el("time", { "data-ts": e.ts }, clock(e.ts))),
            el("td", { class: "c-who" }, e.actor || ""), el("td", { class: "c-what" }, e.action),
            el("td", { class: "c-target" }, e.target || ""),
            el("td", { class: `c-result r-${e.result}` }, e.result));
}

const live = {
  dashboard(snap) {
    const s = snap.status;
    setField("health", s.healthy ? "Healthy" : "Degraded", s.healthy);
    setField("uptime", duration(s.uptime_s));
    setField("broker", s.broker.connected ? "Running" : "Unreachable", s.broker.connected);
    setField("restarts", s.broker.restarts);
    setField("online", s.devices.online);
    setField("total", s.devices.total);
    setField("rate", s.messages_per_s);
    setField("rejected", s.messages.rejected);
    const tile = s.tiles.credentials;
    setField("cred-state", tile.label);
    tone("cred-state", tile.state === "ok", tile.state === "alert");
    setField("cred-detail", tile.detail);
    const fw = s.tiles.firewall;
    setField("fw-state", fw.label);
    tone("fw-state", fw.state === "ok", fw.state === "render-only" || fw.state === "unhealthy");
    setField("fw-detail", fw.detail);
    const cloud = s.tiles.cloud;
    setField("cloud-state", cloud.label);
    tone("cloud-state", cloud.state === "connected", cloud.state === "offline");
    setField("cloud-detail", cloud.detail);
    const privacy = s.tiles.privacy;
    setField("privacy-state", privacy.label);
    tone("privacy-state", privacy.state === "on", privacy.state === "error");
    setField("privacy-detail", privacy.detail);
    const ha = s.tiles.homeassistant;
    setField("ha-state", ha.label);
    tone("ha-state", ha.state === "connected", ha.state === "disconnected");
    setField("ha-detail", ha.detail);
    const found = s.tiles.discovery;
    setField("disc-state", found.label);
    document.querySelector('[data-field="disc-state"]').classList.toggle("warn", found.new > 0);
    setField("disc-detail", found.detail);
    const updates = s.tiles.updates;
    setField("upd-state", updates.label);
    tone("upd-state", updates.state === "current", updates.security > 0);
    const waiting = updates.state === "pending" || updates.state === "unknown";
    document.querySelector('[data-field="upd-state"]').classList.toggle("warn", waiting && !updates.security);
    setField("upd-detail", updates.detail);
    firewallNotice(fw.notice);
    const banner = document.getElementById("rotation-alert");
    const alerts = banner.querySelector('[data-list="cred-alerts"]');
    clear(alerts);
    s.credentials.alerts.forEach((id, i) => {
      if (i) alerts.append(", ");
      alerts.append(el("a", { href: `/devices/${id}` }, id));
    });
    banner.hidden = !s.credentials.alerts.length;
    const list = document.querySelector('[data-list="audit"]');
    clear(list);
    for (const e of snap.audit) list.append(auditRow(e));
  },
  devices(snap) {
    const list = document.querySelector('[data-list="devices"]');
    clear(list);
    if (!snap.devices.length) list.append(el("tr", { class: "empty" }, el("td", { colspan: "5" }, "No devices yet.")));
    for (const d of snap.devices) {
      const dot = el("span", { class: `dot ${d.online ? "on" : "off"}`, title: d.online ? "online" : "offline" });
      const name = el("td", {}, dot, el("a", { href: `/devices/${d.id}` }, d.name));
      if (d.name !== d.id) name.append(el("br"), el("small", {}, d.id));
      list.append(el("tr", { id: `device-${d.id}`, "data-id": d.id }, name,
        el("td", {}, d.kind), el("td", {}, el("span", { class: "pill" }, d.status)),
        el("td", { class: "nowrap", "data-seen": d.last_seen || "" }, ago(d.last_seen)),
        el("td", { class: "nowrap c-cred" }, credentialCell(d.credential))));
    }
    // The discovered list is redrawn when something was found, left, adopted or ignored;
    // not while an admin is filling in an Adopt form (the next snapshot tries again).
    const shown = JSON.stringify([snap.status.discovery.found, snap.status.discovery.new,
      snap.devices.map((d) => d.id)]);
    if (discoveredShown !== null && shown !== discoveredShown) {
      const active = document.activeElement;
      if (active && active.closest("#discovered form") && active.matches("input, select")) return;
      refreshFragments();
    }
    discoveredShown = shown;
  },
  homeassistant(snap) {
    firewallNotice(snap.status.tiles.firewall.notice);
    const ha = snap.status.homeassistant;
    if (ha.login) haUsername(ha.login.username);
    const shown = JSON.stringify(ha);
    if (haShown !== null && shown !== haShown) refreshFragments();
    haShown = shown;
  },
  device(snap) {
    const id = document.body.dataset.device;
    const d = snap.devices.find((x) => x.id === id);
    if (!d) { setField("seen", "removed"); return; }
    const dot = document.querySelector('[data-field="dot"]');
    dot.className = `dot ${d.online ? "on" : "off"}`;
    dot.title = d.online ? "online" : "offline";
    const seen = document.querySelector('[data-field="seen"]');
    if (String(d.last_seen || "") !== seen.dataset.seen) refreshChart();
    seen.dataset.seen = d.last_seen || "";
    seen.textContent = ago(d.last_seen);
    const list = document.querySelector('[data-list="state"]');
    clear(list);
    if (!Object.keys(d.state).length) list.append(el("tr", { class: "empty" }, el("td", {}, "Nothing reported yet.")));
    for (const [k, v] of Object.entries(d.state)) list.append(el("tr", {}, el("th", {}, k), el("td", {}, shown(v))));
    const c = d.credential;
    setField("cred-user", c.username || "none");
    const since = document.querySelector('[data-field="cred-age"]');
    since.dataset.since = c.rotated_at || "";
    since.textContent = age(c.age_s);
    setField("cred-next", c.rotating ? `rotating now (${c.step})` : until(c.next_rotation));
    setField("cred-result", c.last_result || "never rotated");
    const result = document.querySelector('[data-field="cred-result"]');
    result.classList.toggle("ok", c.last_result === "ok");
    result.classList.toggle("bad", c.last_result !== "" && c.last_result !== "ok");
    setField("cred-failures", c.failures);
    document.querySelector('[data-field="cred-alert"]').hidden = !c.alert;
    setField("fw-policy", d.policy);
    document.querySelector('[data-field="fw-policy"]').className =
      { restricted: "ok", open: "warn", blocked: "bad" }[d.policy] || "";
    setField("fw-profile", d.profile);
  },
  cloud(snap) {
    firewallNotice(snap.status.tiles.firewall.notice);
    // The page's lists are fetched again when what they show may have changed: the link,
    // the spool, or anything audited (every command and schedule change is).
    const c = snap.status.cloud;
    const last = c.history.length ? c.history[c.history.length - 1].ts : 0;
    const shown = JSON.stringify([c.state, c.connections, c.last_error, last, c.spool.messages,
      snap.audit.length ? snap.audit[0].id : 0, snap.devices.map((d) => [d.id, d.name])]);
    if (cloudShown !== null && shown !== cloudShown) refreshFragments();
    cloudShown = shown;
  },
  privacy(snap) {
    firewallNotice(snap.status.tiles.firewall.notice);
    // Consent, the budget, the queue or the history changed: the sections are redrawn.
    const shown = JSON.stringify(snap.status.privacy);
    if (privacyShown !== null && shown !== privacyShown) refreshFragments();
    privacyShown = shown;
  },
  network(snap) {
    firewallNotice(snap.status.tiles.firewall.notice);
    // What the page shows of the firewall changes with its status or the devices'
    // policies: then the page's sections are fetched again (the chart: every check).
    const shown = JSON.stringify([snap.status.firewall,
      snap.devices.map((d) => [d.id, d.name, d.ip, d.policy, d.profile])]);
    if (networkShown !== null && shown !== networkShown) refreshNetwork();
    networkShown = shown;
  },
};

let discoveredShown = null;
let haShown = null;

// Home Assistant's current login on its page; a password shown for another one is hidden.
function haUsername(username) {
  const node = document.querySelector('[data-field="ha-username"]');
  if (!node || node.textContent === username) return;
  node.textContent = username;
  const password = document.getElementById("ha-password");
  if (password) {
    password.hidden = true;
    password.textContent = "";
    document.querySelector("#ha-reveal button").hidden = false;
  }
}

// The live stream, closed before logging out: its end would otherwise reload the page
// and race the logout's own navigation to the login page.
let liveSource = null;

function follow() {
  const view = document.body.dataset.live;
  if (!view || !window.EventSource) return;
  const source = new EventSource("/api/v1/events");
  liveSource = source;
  source.addEventListener("snapshot", (event) => live[view](JSON.parse(event.data)));
  source.addEventListener("end", () => { source.close(); location.reload(); });
  // A refused stream (the session ended or timed out) is not retried by the browser:
  // reload, which leads to the login page if that is why.
  source.addEventListener("error", () => {
    if (source.readyState === EventSource.CLOSED) setTimeout(() => location.reload(), 3000);
  });
}

// -- telemetry chart (SVG, no library) -------------------------------------------------

const SVG = "http://www.w3.org/2000/svg";

function svg(tag, attrs) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  return node;
}

// Units by the metric names' convention (power_w, energy_wh, temperature, ...).
function unit(name) {
  if (name.endsWith("_wh")) return " Wh";
  if (name.endsWith("_w")) return " W";
  if (/temperature|target/.test(name)) return " °C";
  if (/humidity|battery|brightness/.test(name)) return " %";
  return "";
}

function round(v) { return Math.round(v * 1000) / 1000; }

// One series of [time, value] from t0 to now as a sparkline W wide between lo and hi: the
// line, the area below it and its last point; `steps` for on/off values. `short` ones are
// 40 px high instead of 64 (CSS sets the height: the CSP allows no inline style).
function spark(series, { t0, now, W, lo, hi, steps = false, label, short = false }) {
  const H = short ? 40 : 64;
  const PAD = 5;
  const x = (t) => Math.max(0, Math.min(W, ((t - t0) / (now - t0)) * W));
  const y = (v) => H - PAD - ((v - lo) / (hi - lo)) * (H - 2 * PAD);
  const xy = [];
  series.forEach(([t, v], i) => {
    if (steps && i) xy.push([x(t), y(series[i - 1][1])]); // on/off: a step, not a slope
    xy.push([x(t), y(v)]);
  });
  const line = xy.map(([a, b]) => `${a.toFixed(1)},${b.toFixed(1)}`).join(" ");
  const [lx, ly] = xy[xy.length - 1];
  const chart = svg("svg", { viewBox: `0 0 ${W} ${H}`, class: short ? "spark short" : "spark",
                             role: "img", "aria-label": label });
  chart.append(svg("line", { x1: 0, y1: H - 0.5, x2: W, y2: H - 0.5, class: "axis" }));
  chart.append(svg("polygon", { points: `${xy[0][0].toFixed(1)},${H} ${line} ${lx.toFixed(1)},${H}`, class: "area" }));
  chart.append(svg("polyline", { points: line, class: "line" }));
  chart.append(svg("circle", { cx: lx.toFixed(1), cy: ly.toFixed(1), r: 3.5, class: "last" }));
  return chart;
}

function drawChart(box, points) {
  clear(box);
  const metrics = {}, booleans = new Set();
  for (const p of points) {
    for (const [k, v] of Object.entries(p.values)) {
      if (typeof v === "boolean") booleans.add(k);
      if (typeof v === "number" || typeof v === "boolean") (metrics[k] = metrics[k] || []).push([p.ts, Number(v)]);
    }
  }
  const names = Object.keys(metrics);
  if (!names.length) { box.append(el("p", { class: "hint" }, "No readings in the last hour.")); return; }
  // The x axis spans the last hour, or less while the device has reported for less.
  const now = Date.now() / 1000;
  const first = Math.min(...names.map((n) => metrics[n][0][0]));
  const t0 = Math.min(Math.max(now - 3600, first), now - 10);
  const W = Math.max(120, Math.round(box.clientWidth || 320));
  for (const name of names) {
    const series = metrics[name], flag = booleans.has(name);
    const values = series.map((s) => s[1]);
    let lo = flag ? 0 : Math.min(...values), hi = flag ? 1 : Math.max(...values);
    if (lo === hi) { lo -= 1; hi += 1; }
    const chart = spark(series, { t0, now, W, lo, hi, steps: flag, label: `${name}, last hour` });
    const last = values[values.length - 1];
    const caption = el("figcaption", {}, el("strong", {}, name),
      el("span", { class: "value" }, flag ? shown(Boolean(last)) : `${round(last)}${unit(name)}`));
    if (!flag) caption.append(el("small", {}, `min ${round(Math.min(...values))} · max ${round(Math.max(...values))}`));
    box.append(el("figure", {}, caption, chart));
  }
  const span = Math.round((now - t0) / 60);
  box.append(el("div", { class: "span" },
    el("span", {}, span >= 2 ? `${span} min ago` : `${Math.round(now - t0)} s ago`), el("span", {}, "now")));
}

// Redraws the chart with fresh readings; the live view calls it when the device reports.
let refreshChart = () => {};

async function chart() {
  const box = document.getElementById("chart");
  if (!box) return;
  let points = null, loaded = 0;
  const load = async () => {
    loaded = Date.now();
    let res;
    try { res = await api("GET", box.dataset.telemetry); } catch (e) { return; } // offline
    if (res.ok) { points = res.data.points; drawChart(box, points); }
  };
  refreshChart = () => { if (Date.now() - loaded > 3000) load(); };
  let resized = null;
  window.addEventListener("resize", () => {
    clearTimeout(resized);
    resized = setTimeout(() => { if (points) drawChart(box, points); }, 100);
  });
  await load();
  setInterval(load, 10000);
}

// -- the Cloud page --------------------------------------------------------------------

let cloudShown = null;

// The schedule form offers the actions of the chosen device's kind, each with parameters
// it accepts to start from.
function scheduleForm() {
  const form = document.getElementById("schedule-form");
  if (!form) return;
  const device = form.elements.device, action = form.elements.action, params = form.elements.params;
  const example = () => {
    const option = action.selectedOptions[0];
    if (option) params.value = option.dataset.example;
  };
  const kinds = () => {
    const kind = device.selectedOptions[0] ? device.selectedOptions[0].dataset.kind : "";
    for (const group of action.querySelectorAll("optgroup")) {
      group.hidden = group.disabled = group.dataset.kind !== kind;
    }
    const current = action.selectedOptions[0];
    if (!current || current.parentNode.dataset.kind !== kind) {
      const first = action.querySelector(`optgroup[data-kind="${kind}"] option`);
      if (first) first.selected = true;
    }
    example();
  };
  device.addEventListener("change", kinds);
  action.addEventListener("change", example);
  kinds();
}

function cloudPage() {
  if (document.body.dataset.live !== "cloud") return;
  scheduleForm();
  setInterval(refreshFragments, 15000); // ages, next runs and reported values
}

// -- the Network page ------------------------------------------------------------------

let networkShown = null;
let dropData = null;

// The page's [data-fragment] sections, replaced by the server's current rendering of
// them: every view has one renderer (the template), and the forms in them keep working.
async function refreshFragments() {
  let text;
  try {
    const res = await fetch(location.pathname, { credentials: "same-origin" });
    if (!res.ok) return;
    text = await res.text();
  } catch (e) { return; } // offline: the next change tries again
  const doc = new DOMParser().parseFromString(text, "text/html");
  const focused = document.activeElement && document.activeElement.id;
  for (const old of document.querySelectorAll("[data-fragment]")) {
    const fresh = doc.getElementById(old.id);
    if (!fresh || fresh.dataset.fragment === undefined) continue;
    const node = document.importNode(fresh, true);
    // A disclosure the user opened stays open.
    for (const details of old.querySelectorAll("details[id][open]")) {
      const again = node.querySelector(`#${CSS.escape(details.id)}`);
      if (again) again.open = true;
    }
    old.replaceWith(node);
    for (const form of node.querySelectorAll("form[data-api]")) wireForm(form);
  }
  // Keyboard users keep their place: the redrawn control takes the focus back.
  if (focused && !document.activeElement.id) {
    const again = document.getElementById(focused);
    if (again) again.focus();
  }
  localTimes();
}

async function loadDrops() {
  let res;
  try { res = await api("GET", "/api/v1/firewall?minutes=60"); } catch (e) { return; }
  if (res.ok) { dropData = res.data; drawDrops(); }
}

async function refreshNetwork() {
  await refreshFragments();
  await loadDrops();
}

// Each drop class's packets per check (the difference of consecutive running totals).
function drawDrops() {
  if (!dropData) return;
  const samples = dropData.history;
  const now = Date.now() / 1000;
  for (const figure of document.querySelectorAll("#drops figure[data-class]")) {
    const name = figure.dataset.class, box = figure.querySelector(".spark-box");
    clear(box);
    const series = [];
    for (let i = 1; i < samples.length; i++) {
      // a table replaced outside the gateway restarts its counters: never a negative count
      series.push([samples[i].at, Math.max(0, samples[i].dropped[name] - samples[i - 1].dropped[name])]);
    }
    const recent = figure.querySelector(".recent");
    if (!series.length) { recent.textContent = ""; continue; }
    const values = series.map((x) => x[1]);
    const sum = values.reduce((a, b) => a + b, 0);
    recent.textContent = `${sum} in the last hour`;
    const t0 = Math.min(Math.max(now - dropData.minutes * 60, series[0][0]), now - 10);
    const W = Math.max(120, Math.round(box.clientWidth || 240));
    box.append(spark(series, { t0, now, W, lo: 0, hi: Math.max(1, ...values), short: true,
                               label: `${name}: dropped packets per check, last hour` }));
  }
}

function network() {
  if (document.body.dataset.live !== "network") return;
  loadDrops();
  setInterval(loadDrops, 30000);
  let resized = null;
  window.addEventListener("resize", () => { clearTimeout(resized); resized = setTimeout(drawDrops, 100); });
}

// -- the Privacy page ------------------------------------------------------------------

let privacyShown = null;

function privacySay(text, kind) {
  const out = document.getElementById("privacy-result");
  out.textContent = visible(text);
  out.className = "result " + kind;
}

// A consent switch: the choice goes to the API at once (the gateway audits it); refused,
// the switch goes back and the card says why.
async function consentChanged(input) {
  const card = input.closest(".consent");
  const granted = input.checked;
  input.disabled = true;
  say(card, "…", "");
  let res;
  try {
    res = await api("PUT", `/api/v1/privacy/consent/${encodeURIComponent(input.dataset.consent)}`,
                    { granted });
  } catch (e) {
    res = { ok: false, status: 0, data: { error: "the gateway did not answer" } };
  }
  input.disabled = false;
  if (!res.ok) {
    input.checked = !granted;
    say(card, res.data.error || `failed (${res.status})`, "error");
    return;
  }
  const d = res.data;
  const purged = d.purged ? `; ${d.purged} queued report${d.purged === 1 ? "" : "s"} deleted` : "";
  privacySay(`${d.category}: ${d.granted ? "turned on" : "turned off"}${purged}.`, "ok");
  await refreshFragments();
  const again = document.getElementById(input.id); // the redrawn switch keeps the focus
  if (again && (!document.activeElement || document.activeElement === document.body)) again.focus();
}

function privacyPage() {
  if (document.body.dataset.live !== "privacy") return;
  // Delegated: the switches are redrawn with their sections.
  document.addEventListener("change", (event) => {
    if (event.target.matches("input[data-consent]")) consentChanged(event.target);
  });
  setInterval(refreshFragments, 15000); // "in 3 h" and the like
}

document.addEventListener("DOMContentLoaded", () => {
  localTimes();
  wireForms();
  follow();
  chart();
  network();
  cloudPage();
  privacyPage();
  setInterval(refreshTimes, 5000);
});
