"use strict";
// The mmkgrec web page: pick a user (or be a new listener), see recommendations with their
// explanations and modality bars, like songs and watch the list change. Talks to the JSON API
// of the same server only; every text goes through textContent (no HTML injection).

const state = { user: null, k: 10 };
const $ = (id) => document.getElementById(id);

function el(tag, props = {}, children = []) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key.startsWith("data-")) node.setAttribute(key, value);
    else node[key] = value;
  }
  for (const child of children) node.append(child);
  return node;
}

// A server started with an API key wants it on POST /feedback and POST /items: asked for once
// (on the first 401), kept for this tab only (sessionStorage), sent as X-API-Key.
const KEY_STORE = "mmkgrec-api-key";

async function api(path, options = {}, retried = false) {
  const headers = { "Content-Type": "application/json" };
  const key = sessionStorage.getItem(KEY_STORE);
  if (key && options.method === "POST") headers["X-API-Key"] = key;
  const response = await fetch(path, { ...options, headers });
  const body = await response.json().catch(() => ({}));
  if (response.status === 401) {
    sessionStorage.removeItem(KEY_STORE);
    const entered = retried ? null : window.prompt("This server needs its API key to store feedback:");
    if (entered && entered.trim()) {
      sessionStorage.setItem(KEY_STORE, entered.trim());
      return api(path, options, true);
    }
  }
  if (!response.ok) throw new Error(typeof body.detail === "string" ? body.detail : response.statusText);
  return body;
}

function status(text) { $("status").textContent = text; }

function bar(label, share, present = true) {
  return el("div", { class: "bar-row" + (present ? "" : " absent") }, [
    el("span", { class: "label", text: label }),
    el("span", { class: "bar" }, [el("div", { style: `width:${(100 * share).toFixed(1)}%` })]),
    el("span", { class: "value", text: present ? `${(100 * share).toFixed(0)}%` : "absent" }),
  ]);
}

// A path the model walked (MKRLN / PGPR): every node by name, every step with its relation and
// the policy's probability of taking it, then the path's probability.
function walkedPath(path) {
  const parts = [el("span", { class: `node ${path.nodes[0].kind || ""}`, text: path.nodes[0].name })];
  path.relations.forEach((step, i) => {
    const node = path.nodes[i + 1];
    parts.push(el("span", { class: "step", text: ` ─${step.relation} · p ${step.probability.toFixed(2)}→ ` }));
    parts.push(el("span", { class: `node ${node.kind || ""}`, text: node.name }));
  });
  parts.push(el("span", { class: "muted", text: ` (path probability ${path.probability.toPrecision(2)})` }));
  return el("li", { class: "walked" }, parts);
}

async function toggleWhy(item, box) {
  if (!box.hidden) { box.hidden = true; return; }
  box.hidden = false;
  box.replaceChildren(el("span", { class: "muted", text: "explaining…" }));
  try {
    const why = await api(`/users/${encodeURIComponent(state.user)}/recommendations/${encodeURIComponent(item)}/explanation?limit=5`);
    const parts = [];
    const walked = why.explainer === "walked-path";
    parts.push(el("strong", { text: walked ? "The path the model walked to this song"
      : `Paths from your history (${why.n_paths} found)` }));
    const list = el("ul", { class: "paths" });
    for (const path of why.paths) list.append(path.kind === "walked" ? walkedPath(path) : el("li", { text: path.text }));
    if (!why.paths.length) list.append(el("li", { class: "muted", text: "no 1–2 hop path from your history" }));
    parts.push(list);
    if (why.modalities.length) {
      parts.push(el("strong", { text: "What the item's vector is made of" }));
      for (const m of why.modalities) parts.push(bar(m.modality, m.share, m.present));
    }
    const relations = Object.entries(why.relation_weights).slice(0, 4);
    if (relations.length) {
      parts.push(el("div", { class: "muted", text: "Your relation attention: " +
        relations.map(([r, w]) => `${r} ${w.toFixed(2)}`).join(", ") }));
    }
    box.replaceChildren(...parts);
  } catch (error) {
    box.replaceChildren(el("span", { class: "muted", text: `no explanation: ${error.message}` }));
  }
}

async function like(item) {
  status(`liking ${item}…`);
  try {
    await api("/feedback", { method: "POST", body: JSON.stringify({ user_id: state.user, item_id: item, value: 1 }) });
    status(`liked ${item}; recommendations updated`);
    await loadRecommendations();
  } catch (error) { status(`could not like ${item}: ${error.message}`); }
}

async function loadRecommendations() {
  if (!state.user) return;
  const recs = $("recs");
  try {
    const data = await api(`/users/${encodeURIComponent(state.user)}/recommendations?k=${state.k}`);
    $("empty").hidden = data.items.length > 0;
    $("rec-meta").textContent = `for ${data.user_id} · ${data.retrieval} · ${data.liked_items} liked here`;
    recs.replaceChildren(...data.items.map((item) => {
      const attrs = Object.entries(item.attributes).filter(([k]) => ["artist", "genre", "tags"].includes(k))
        .map(([, v]) => v).filter(Boolean).join(" · ");
      const why = el("div", { class: "why", hidden: true });
      const head = el("div", { class: "rec-head" }, [
        el("span", { class: "rank", text: `${item.rank}.` }),
        el("span", { class: "title" }, [
          el("span", { class: "name", text: item.name || item.item_id }),
          el("span", { class: "attrs", text: attrs ? `${item.item_id} · ${attrs}` : item.item_id }),
        ]),
        el("span", { class: "score", title: `score ${item.score.toFixed(3)}` },
          [el("div", { style: `width:${(100 * item.score).toFixed(1)}%` })]),
        el("span", { class: "actions" }, [
          el("button", { class: "like-btn", type: "button", text: "♥ like", onclick: () => like(item.item_id) }),
          el("button", { class: "why-btn", type: "button", text: "why?", onclick: () => toggleWhy(item.item_id, why) }),
        ]),
      ]);
      return el("li", { class: "rec-item", "data-item-id": item.item_id }, [head, why]);
    }));
  } catch (error) {
    recs.replaceChildren();
    $("empty").hidden = false;
    $("empty").textContent = `No recommendations: ${error.message}`;
  }
}

function selectUser(user) {
  state.user = user;
  $("listener-id").textContent = user ? `listening as ${user}` : "";
  if (user) loadRecommendations();
}

async function searchSongs() {
  const query = $("song-query").value.trim();
  const data = await api(`/items?q=${encodeURIComponent(query)}&limit=15`);
  $("song-results").replaceChildren(...data.items.map((item) => el("li", {}, [
    el("span", { text: item.name || item.item_id }),
    el("button", { type: "button", text: "♥", title: "like", onclick: () => like(item.item_id) }),
  ])));
}

async function init() {
  try {
    const health = await api("/health");
    $("model-info").textContent = `${health.model} on ${health.dataset} · ${health.items} songs · ${health.retrieval} ranking`;
    if (!health.new_listeners) $("new-listener").disabled = true;
    const users = await api("/users?limit=200");
    for (const user of users.users) {
      $("user-select").append(el("option", { value: user.user_id, text: `${user.user_id} (${user.history} songs)` }));
    }
  } catch (error) { status(`server not reachable: ${error.message}`); }
  $("user-select").addEventListener("change", (event) => selectUser(event.target.value));
  $("new-listener").addEventListener("click", () => {
    const id = "listener-" + Math.random().toString(36).slice(2, 8);
    $("user-select").value = "";
    $("song-search").hidden = false;
    state.user = id;
    $("listener-id").textContent = `listening as ${id}: like a few songs to begin`;
    $("recs").replaceChildren();
    searchSongs();
  });
  let timer = null;
  $("song-query").addEventListener("input", () => { clearTimeout(timer); timer = setTimeout(searchSongs, 200); });
}

init();
