// The imagegate console: plain JavaScript, same-origin requests only (the page's CSP allows nothing else).
// The API key lives in this tab's sessionStorage and goes out as the bearer; nothing is kept server-side.
"use strict";

const KEY = "imagegate-api-key";
const SVG = "http://www.w3.org/2000/svg";
// The API's base: the console is served at <base>/console (under API Gateway, <base> is the stage).
const BASE = location.pathname.replace(/\/console\/?$/, "");
const $ = (id) => document.getElementById(id);
let logCursor = null;
let sizes = new Map(); // model -> the sizes its prices name

function status(text, error = false) {
  $("status").textContent = text;
  $("status").className = error ? "error" : "";
}

async function api(path, options = {}) {
  const headers = { authorization: `Bearer ${sessionStorage.getItem(KEY)}`, ...(options.headers || {}) };
  if (options.json !== undefined) {
    headers["content-type"] = "application/json";
    options = { ...options, method: options.method || "POST", body: JSON.stringify(options.json) };
  }
  const response = await fetch(BASE + path, { ...options, headers });
  const type = response.headers.get("content-type") || "";
  const body = type.includes("json") ? await response.json() : await response.text();
  if (!response.ok) {
    const error = new Error((body && body.error && body.error.message) || `HTTP ${response.status}`);
    error.status = response.status;
    throw error;
  }
  return { body, response };
}

function cell(row, text, className) {
  const td = row.insertCell();
  td.textContent = text;
  if (className) td.className = className;
  return td;
}

function when(epochSeconds) {
  return new Date(epochSeconds * 1000).toISOString().replace("T", " ").slice(0, 16);
}

function usd(decimal) {
  const [whole, frac = ""] = String(decimal).split(".");
  return `$${whole}.${(frac + "00").slice(0, 2)}${frac.slice(2).replace(/0+$/, "")}`;
}

async function loadBalance() {
  const days = document.querySelector("input[name=days]:checked").value;
  const { body } = await api(`/v1/balance?days=${days}`);
  $("balance").textContent = usd(body.balance_usd);
  $("balance").dataset.micros = body.balance_micros;
  drawChart(body.usage.data, Number(days));
}

function drawChart(data, days) {
  const perDay = new Map();
  for (const row of data) perDay.set(row.date, (perDay.get(row.date) || 0) + row.charged_micros);
  const today = new Date();
  const points = [];
  for (let i = days - 1; i >= 0; i--) {
    const day = new Date(Date.UTC(today.getUTCFullYear(), today.getUTCMonth(), today.getUTCDate() - i));
    const iso = day.toISOString().slice(0, 10);
    points.push([iso, perDay.get(iso) || 0]);
  }
  const max = Math.max(1, ...points.map((p) => p[1]));
  const width = 600, height = 140, pad = 20, bar = (width - pad) / points.length;
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("viewBox", `0 0 ${width} ${height + 16}`);
  svg.setAttribute("role", "img");
  const total = points.reduce((sum, p) => sum + p[1], 0);
  svg.setAttribute("aria-label", `Spend per day over ${days} days, $${(total / 1e6).toFixed(6)} in all`);
  points.forEach(([iso, micros], i) => {
    const h = Math.round((micros / max) * (height - 10));
    const rect = document.createElementNS(SVG, "rect");
    rect.setAttribute("class", "bar");
    rect.setAttribute("x", pad + i * bar);
    rect.setAttribute("y", height - h);
    rect.setAttribute("width", Math.max(1, bar - 1));
    rect.setAttribute("height", h);
    const title = document.createElementNS(SVG, "title");
    title.textContent = `${iso}: $${(micros / 1e6).toFixed(6)}`;
    rect.appendChild(title);
    svg.appendChild(rect);
  });
  for (const [i, anchor] of [[0, "start"], [points.length - 1, "end"]]) {
    const label = document.createElementNS(SVG, "text");
    label.setAttribute("x", anchor === "start" ? pad : width);
    label.setAttribute("y", height + 12);
    label.setAttribute("text-anchor", anchor);
    label.textContent = points[i][0];
    svg.appendChild(label);
  }
  $("chart").replaceChildren(svg);
  $("chart-caption").textContent = `Spent $${(total / 1e6).toFixed(6)} in the last ${days} days (max $${(max / 1e6).toFixed(6)} a day).`;
}

async function loadTopups() {
  const [{ body: packs }, { body: topups }] = await Promise.all([api("/v1/billing/packs"), api("/v1/billing/topups")]);
  $("pack").replaceChildren(
    ...packs.data.map((p) => new Option(`${p.label}: pay ${usd(p.price_usd)}`, p.id)),
  );
  const tbody = $("topups").tBodies[0];
  tbody.replaceChildren();
  for (const t of topups.data) {
    const row = tbody.insertRow();
    cell(row, when(t.created_at));
    cell(row, t.kind === "topup" ? "Top-up" : `Reversal (${t.reason})`);
    cell(row, usd(t.amount_usd), "num");
  }
  if (!topups.data.length) cell(tbody.insertRow(), "No top-ups yet.").colSpan = 3;
}

async function loadLog(more = false) {
  const query = more && logCursor ? `&after=${encodeURIComponent(logCursor)}` : "";
  const { body } = await api(`/v1/usage/requests?limit=20${query}`);
  const tbody = $("log").tBodies[0];
  if (!more) tbody.replaceChildren();
  for (const r of body.data) {
    const row = tbody.insertRow();
    row.dataset.requestId = r.request_id;
    cell(row, when(r.created_at));
    cell(row, r.model);
    cell(row, r.size);
    cell(row, r.quality);
    cell(row, r.tokens || "", "num");
    cell(row, usd(r.cost_usd), "num");
    cell(row, r.status);
    cell(row, r.job_id);
    const image = cell(row, "");
    r.image_urls.forEach((url, i) => {
      const a = document.createElement("a");
      a.href = url;
      a.textContent = `image ${i + 1}`;
      a.rel = "noopener";
      image.append(a, " ");
    });
  }
  logCursor = body.next;
  $("more").hidden = !body.has_more;
}

async function exportCsv() {
  const { body } = await api("/v1/usage/requests?limit=1000&format=csv");
  const link = document.createElement("a");
  link.href = URL.createObjectURL(new Blob([body], { type: "text/csv" }));
  link.download = "imagegate-requests.csv";
  link.click();
  URL.revokeObjectURL(link.href);
}

async function loadKeys() {
  let body;
  try {
    ({ body } = await api("/v1/keys"));
  } catch (error) {
    if (error.status !== 403) throw error;
    $("keys-note").textContent = "This key is not an admin key of its account: it cannot manage keys.";
    $("key-create").hidden = true;
    $("keys").hidden = true;
    return;
  }
  $("keys-note").textContent = "Keys of this account. A new key is shown once.";
  const tbody = $("keys").tBodies[0];
  tbody.replaceChildren();
  for (const k of body.data) {
    const row = tbody.insertRow();
    row.dataset.keyId = k.key_id;
    cell(row, `${k.prefix} (${k.key_id})${k.admin ? ", admin" : ""}${k.current ? ", this key" : ""}`);
    cell(row, k.label);
    cell(row, k.status);
    cell(row, k.images_per_minute || "default", "num");
    cell(row, `${usd(k.spent_usd)} / ${k.budget_usd === null ? "no budget" : usd(k.budget_usd)}`, "num");
    cell(row, k.last_used || "never");
    const actions = cell(row, "");
    if (k.status === "active" && !k.current) {
      const revoke = document.createElement("button");
      revoke.type = "button";
      revoke.textContent = "Revoke";
      revoke.setAttribute("aria-label", `Revoke key ${k.key_id}`);
      revoke.addEventListener("click", () => guarded(async () => {
        await api(`/v1/keys/${encodeURIComponent(k.key_id)}/revoke`, { json: {} });
        status(`Key ${k.key_id} revoked.`);
        await loadKeys();
      }));
      actions.append(revoke);
    }
  }
}

async function loadModels() {
  const { body: prices } = await api("/v1/prices");
  let ids;
  try {
    ids = (await api("/v1/models")).body.data.map((m) => m.id);
  } catch (error) {
    ids = prices.data.map((p) => p.model); // no /v1/models on this deployment: the price book's models
  }
  sizes = new Map(prices.data.map((p) => [p.model, [...new Set(p.per_image.map((q) => q.size))]]));
  $("model").replaceChildren(...ids.map((id) => new Option(id, id)));
  fillSizes();
  const tbody = $("prices").tBodies[0];
  tbody.replaceChildren();
  for (const p of prices.data) {
    for (const price of p.per_image) {
      const row = tbody.insertRow();
      cell(row, p.model);
      cell(row, price.quality);
      cell(row, price.size);
      cell(row, usd(price.usd) + (p.token_priced ? " (or by tokens)" : ""), "num");
    }
  }
}

// The sizes the price book lists for the chosen model (a model it does not list: the common square).
function fillSizes() {
  const listed = sizes.get($("model").value) || ["1024x1024"];
  $("size").replaceChildren(...listed.map((size) => new Option(size, size)));
}

async function generate(event) {
  event.preventDefault();
  const form = new FormData($("play-form"));
  $("play-result").textContent = "Generating…";
  $("play-image").hidden = true;
  const { body, response } = await api("/v1/images/generations", {
    // b64_json: shown from a data: URL, which the page's CSP allows wherever the images are stored.
    json: {
      model: form.get("model"), prompt: form.get("prompt"), size: form.get("size"), n: 1, response_format: "b64_json",
    },
  });
  const image = body.data[0];
  $("play-image").src = image.url || `data:image/${body.output_format || "png"};base64,${image.b64_json}`;
  $("play-image").alt = `Generated: ${form.get("prompt")}`;
  $("play-image").hidden = false;
  const requestId = response.headers.get("x-request-id");
  await Promise.all([loadBalance(), loadLog()]);
  const row = [...$("log").tBodies[0].rows].find((r) => r.dataset.requestId === requestId);
  const cost = row ? row.cells[5].textContent : "see the usage log";
  $("play-result").textContent = `Done (${requestId}): it cost ${cost}.`;
}

async function buy(event) {
  event.preventDefault();
  const { body } = await api("/v1/billing/checkout", { json: { pack: $("pack").value } });
  location.assign(body.url);
}

async function createKey(event) {
  event.preventDefault();
  const json = { label: $("key-label").value };
  if ($("key-ipm").value) json.images_per_minute = Number($("key-ipm").value);
  if ($("key-budget").value) json.budget_usd = $("key-budget").value.trim();
  const { body } = await api("/v1/keys", { json });
  $("new-key-value").textContent = body.key;
  $("new-key").hidden = false;
  $("key-create").reset();
  await loadKeys();
}

async function guarded(work) {
  try {
    await work();
  } catch (error) {
    status(error.message, true);
    if (error.status === 401) signOut();
  }
}

function signOut() {
  sessionStorage.removeItem(KEY);
  $("account").hidden = true;
  $("forget").hidden = true;
  $("api-key").value = "";
}

async function open() {
  $("account").hidden = false;
  $("forget").hidden = false;
  status("Loading…");
  await Promise.all([loadBalance(), loadTopups(), loadLog(), loadKeys(), loadModels()]);
  const params = new URLSearchParams(location.search);
  if (params.get("checkout") === "success") {
    status("Payment received: the credit appears once Stripe confirms it.");
    history.replaceState(null, "", location.pathname);
  } else if (params.get("checkout") === "cancelled") {
    status("Checkout cancelled: nothing was charged.");
    history.replaceState(null, "", location.pathname);
  } else {
    status("Ready.");
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    sessionStorage.setItem(KEY, $("api-key").value.trim());
    $("api-key").value = "";
    guarded(open);
  });
  $("forget").addEventListener("click", () => { signOut(); status("Key forgotten."); });
  $("buy-form").addEventListener("submit", (event) => guarded(() => buy(event)));
  $("play-form").addEventListener("submit", (event) => guarded(() => generate(event)));
  $("key-create").addEventListener("submit", (event) => guarded(() => createKey(event)));
  $("refresh-log").addEventListener("click", () => guarded(() => loadLog()));
  $("more").addEventListener("click", () => guarded(() => loadLog(true)));
  $("csv").addEventListener("click", () => guarded(exportCsv));
  $("model").addEventListener("change", fillSizes);
  for (const radio of document.querySelectorAll("input[name=days]")) {
    radio.addEventListener("change", () => guarded(loadBalance));
  }
  if (sessionStorage.getItem(KEY)) guarded(open);
});
