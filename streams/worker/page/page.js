// The results page: every call goes to the query API v1; nothing here builds HTML from data
// (textContent only), so a product title can never inject markup.
"use strict";

const $ = (id) => document.getElementById(id);
const liked = new Map();  // product_id -> title, in the order liked
const KEY_STORE = "shelfstream-api-key";
const RESULTS = 24;

function headers(extra = {}) {
  const key = localStorage.getItem(KEY_STORE);
  return key ? { ...extra, "X-API-Key": key } : extra;
}

async function call(method, path, body) {
  const init = { method, headers: headers() };
  if (body instanceof FormData) init.body = body;
  else if (body !== undefined) {
    init.headers = headers({ "Content-Type": "application/json" });
    init.body = JSON.stringify(body);
  }
  const response = await fetch(path, init);
  if (response.status === 401) {
    $("key-box").hidden = false;
    throw new Error("this server needs an API key: enter it at the top right and search again");
  }
  const data = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(describe(data.detail) || `${response.status} ${response.statusText}`);
  return data;
}

function describe(detail) {
  if (Array.isArray(detail)) return detail.map((e) => `${(e.loc || []).slice(1).join(".") || "body"}: ${e.msg}`).join("; ");
  return detail ? String(detail) : "";
}

function filter() {
  const out = {};
  const category = $("category").value.trim();
  if (category) out.category = category;
  for (const [id, field] of [["price-min", "price_min"], ["price-max", "price_max"]]) {
    const value = $(id).value.trim();
    if (value !== "") out[field] = Number(value);
  }
  const attributes = {};
  for (const pair of $("attributes").value.split(";")) {
    const [name, values] = pair.split("=").map((s) => (s || "").trim());
    if (!name || !values) continue;
    const options = values.split("|").map((s) => s.trim()).filter(Boolean);
    attributes[name] = options.length === 1 ? options[0] : options;
  }
  if (Object.keys(attributes).length) out.attributes = attributes;
  return Object.keys(out).length ? out : null;
}

async function run(heading, request) {
  setStatus("searching…");
  try {
    const results = await request();
    $("heading").textContent = heading;
    render(results.hits);
    setStatus(`${results.hits.length} products`);
  } catch (error) {
    setStatus(error.message, true);
  }
}

function setStatus(text, error = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", error);
}

function render(hits) {
  const grid = $("results");
  grid.replaceChildren(...hits.map(card));
}

function card(hit) {
  const node = $("card").content.firstElementChild.cloneNode(true);
  node.dataset.productId = hit.product_id;
  node.querySelector(".title").textContent = hit.title || hit.product_id;
  node.querySelector(".price").textContent = hit.price == null ? "" : `${hit.price.toFixed(2)} ${hit.currency || ""}`.trim();
  node.querySelector(".score").textContent = `${hit.score_kind} ${hit.score.toFixed(3)}`;
  const why = Object.entries(hit.scores || {}).filter(([, v]) => v != null).map(([k, v]) => `${k} ${v.toFixed(2)}`);
  node.querySelector(".why").textContent = why.length ? `matched on ${why.join(" · ")}` : "";
  node.querySelector(".category").textContent = (hit.category || []).join(" › ");
  const img = node.querySelector("img");
  img.alt = hit.title || hit.product_id;
  if ((hit.image_uris || []).length) loadImage(img, hit.product_id);
  node.querySelector(".more").addEventListener("click", () => moreLike(hit));
  const like = node.querySelector(".like");
  const show = () => {
    const on = liked.has(hit.product_id);
    like.setAttribute("aria-pressed", String(on));
    like.textContent = on ? "\u2665 Liked" : "\u2661 Like";
    node.classList.toggle("liked", on);
  };
  like.addEventListener("click", () => {
    if (liked.has(hit.product_id)) liked.delete(hit.product_id); else liked.set(hit.product_id, hit.title);
    show();
    $("recommend").disabled = liked.size === 0;
    $("recommend").textContent = `Recommend from liked (${liked.size})`;
  });
  show();
  return node;
}

async function loadImage(img, productId) {
  // fetched (not a plain src) so that the API key header goes along when one is set
  const response = await fetch(`/v1/products/${encodeURIComponent(productId)}/images/0`, { headers: headers() });
  if (!response.ok) return;
  img.src = URL.createObjectURL(await response.blob());
}

function moreLike(hit) {
  run(`More like “${hit.title || hit.product_id}”`, () =>
    call("POST", "/v1/search/similar", { product_id: hit.product_id, limit: RESULTS, filter: filter() }));
}

function search(event) {
  event.preventDefault();
  const file = $("image").files[0];
  const text = $("text").value.trim();
  if (file) {
    const form = new FormData();
    form.append("file", file);
    form.append("limit", String(RESULTS));
    const f = filter();
    if (f) form.append("filter", JSON.stringify(f));
    run(`Looks like ${file.name}`, () => call("POST", "/v1/search/image", form));
  } else if (text) {
    run(`Results for “${text}”`, () => call("POST", "/v1/search/text", { text, limit: RESULTS, filter: filter() }));
  } else {
    setStatus("type a query or choose an image", true);
  }
}

function recommend() {
  const names = [...liked.values()].map((t) => `“${t}”`).join(", ");
  run(`Recommended from ${names}`, () =>
    call("POST", "/v1/recommend", { positive: [...liked.keys()], limit: RESULTS, filter: filter() }));
}

$("search").addEventListener("submit", search);
$("recommend").addEventListener("click", recommend);
$("image").addEventListener("change", () => { if ($("image").files.length) $("text").value = ""; });
$("text").addEventListener("input", () => { if ($("text").value) $("image").value = ""; });
$("api-key").addEventListener("change", (e) => localStorage.setItem(KEY_STORE, e.target.value));
